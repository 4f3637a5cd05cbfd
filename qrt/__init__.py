"""qrt: a quantization-first ONNX runtime on Numba kernels.

    sess = qrt.InferenceSession("model.onnx")
    y, = sess.run(None, {"input": x})
"""
import os as _os

# One thread pool owns the cores: Numba's. Spinning idle OpenMP workers slowed alternating calls 12x on
# 2 cores (shared/PERFORMANCE-NOTES.md), and multi-threaded OpenBLAS calls (Numba's np.dot goes to
# scipy's OpenBLAS) interleaved with prange kernels ran 5-45x slower than either alone. So OpenMP
# waits passively and BLAS runs on the calling thread; qrt parallelises around it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _single_threaded_blas():
    try:
        import scipy.linalg  # noqa: F401  (loads the OpenBLAS that Numba's np.dot calls)
        from threadpoolctl import threadpool_limits
        threadpool_limits(1, user_api="blas")
    except Exception:   # threadpoolctl/scipy missing or an unknown BLAS: leave the defaults
        pass


_single_threaded_blas()

from .errors import (InvalidArgument, InvalidModel, MemoryLimitExceeded, NodeExecutionError, QrtError,
                     QuantizationError, RunTerminated, UnsupportedOperator)
from .providers import get_all_providers, get_available_providers
from .session import (ExecutionMode, GraphOptimizationLevel, InferenceSession, ModelMetadata, NodeArg,
                      RunOptions, SessionOptions)

__version__ = "0.1.0"


def __getattr__(name):
    # Heavier sub-packages load on first use, so `import qrt` stays quick for plain inference.
    if name == "optimize":
        from .optimizer import optimize
        return optimize
    if name in ("quantize_static", "quantize_dynamic", "QuantFormat", "QuantType", "CalibrationMethod"):
        from . import quantization
        return getattr(quantization, name)
    if name == "check":
        from .validation import check
        return check
    if name == "convert_opset":
        from .opset import convert_opset
        return convert_opset
    if name == "validate_export":
        from .export_check import validate_export
        return validate_export
    if name == "embed_preprocessing":
        from .preprocessing import embed_preprocessing
        return embed_preprocessing
    raise AttributeError(f"module 'qrt' has no attribute {name!r}")


__all__ = [
    "InferenceSession", "SessionOptions", "RunOptions", "NodeArg", "ModelMetadata", "GraphOptimizationLevel",
    "ExecutionMode", "get_available_providers", "get_all_providers", "optimize", "check", "quantize_static",
    "quantize_dynamic", "QuantFormat", "QuantType", "CalibrationMethod", "convert_opset", "validate_export",
    "embed_preprocessing", "QrtError", "InvalidModel",
    "InvalidArgument", "UnsupportedOperator", "NodeExecutionError", "QuantizationError", "RunTerminated",
    "MemoryLimitExceeded",
]
