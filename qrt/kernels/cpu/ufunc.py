"""Calling the Numba ufuncs with an explicit result type.

Numba infers a ufunc's result type from its body, and small-int or literal arithmetic widens it
(``float32 * 0`` is float64 in Numba). ONNX fixes every output type, so each call site names it: the
first call with a new combination of input dtypes compiles (and caches) the loop ``out(in, ...)``,
and numpy's ufunc machinery then does broadcasting and allocation around the compiled loop.
"""
import threading

import numpy as np
from numba import from_dtype

_lock = threading.Lock()
_compiled: dict = {}


_HALF_KINDS = ("float16", "bfloat16")


def call(ufunc, *args, dtype=None, out=None):
    """Apply ``ufunc`` to numpy arrays/scalars; the result has ``dtype`` (default: the first input's)."""
    arrays = [a if isinstance(a, np.ndarray) else np.asarray(a) for a in args]
    result_dtype = np.dtype(dtype) if dtype is not None else arrays[0].dtype
    if any(a.dtype.name in _HALF_KINDS for a in arrays) or result_dtype.name in _HALF_KINDS:
        # Numba has no half-precision arithmetic: compute in float32, round once to the half type.
        widened = [a.astype(np.float32) if a.dtype.name in _HALF_KINDS else a for a in arrays]
        compute = np.float32 if result_dtype.name in _HALF_KINDS else result_dtype
        result = call(ufunc, *widened, dtype=compute)
        return result.astype(result_dtype) if out is None else np.copyto(out, result, casting="unsafe") or out
    key = (ufunc, tuple(a.dtype for a in arrays), result_dtype)
    if key not in _compiled:
        with _lock:
            if key not in _compiled:
                in_types = tuple(from_dtype(a.dtype) for a in arrays)
                # A ufunc holds one loop per input-type tuple; if one exists already (from another
                # result type), numpy casts its result into ``out`` below.
                if not any(tuple(sig.args) == in_types for sig in _loop_signatures(ufunc)):
                    ufunc.add(from_dtype(result_dtype)(*in_types))
                _compiled[key] = True
    if out is None:
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        out = np.empty(shape, dtype=result_dtype)
    ufunc(*arrays, out=out, casting="unsafe")
    return out


def _loop_signatures(ufunc):
    return list(ufunc._dispatcher.overloads.keys()) and [
        cres.signature for cres in ufunc._dispatcher.overloads.values()]
