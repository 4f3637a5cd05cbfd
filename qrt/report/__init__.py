"""Reports: float vs int8 accuracy, per-layer error, size and latency.

    from qrt.report import compare
    r = compare("model.onnx", "model.int8.onnx", data=reader, labels=y)
    r; r.plot(); r.to_html("report.html")
"""
from .compare import LayerError, OutputError, Report, compare
from .metrics import cosine_similarity, sqnr_db, top1_agreement

__all__ = ["compare", "Report", "LayerError", "OutputError", "sqnr_db", "cosine_similarity", "top1_agreement"]
