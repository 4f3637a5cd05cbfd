"""Reports: float vs int8 accuracy (metrics chosen per output kind), per-layer error, size, latency, coverage.

    from qrt.report import compare
    r = compare("model.onnx", "model.int8.onnx", data=reader, labels=y)
    r; r.plot(); r.to_html("report.html")

    from qrt.report import compare_techniques
    t = compare_techniques("model.onnx", calibration_feeds, eval_feeds)   # plain int8 vs each technique
    t; t.to_html("techniques.html")
"""
from .compare import LayerError, OutputError, Report, compare
from .coverage import Coverage, node_coverage
from .kinds import KINDS, output_kind
from .metrics import cosine_similarity, exact_agreement, sqnr_db, top1_agreement, topk_agreement
from .techniques import TECHNIQUES, TechniqueReport, TechniqueRun, compare_techniques

__all__ = ["compare", "Report", "LayerError", "OutputError", "output_kind", "KINDS", "node_coverage", "Coverage",
           "compare_techniques", "TechniqueReport", "TechniqueRun", "TECHNIQUES",
           "sqnr_db", "cosine_similarity", "top1_agreement", "topk_agreement", "exact_agreement"]
