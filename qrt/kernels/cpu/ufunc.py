"""Calling the Numba ufuncs with an explicit result type.

Numba infers a ufunc's result type from its body, and small-int or literal arithmetic widens it
(``float32 * 0`` is float64 in Numba). ONNX fixes every output type, so each call site names it: the
first call with a new combination of input dtypes compiles (and caches) the loop ``out(in, ...)``
and remembers how to call it. Later calls allocate the result (broadcasting worked out only when the
input shapes differ) and hand it to numpy's ufunc, which runs the compiled loop: about 0.6 us for a
small binary op where the generic path through Numba's DUFunc took 5.
"""
import threading
from functools import lru_cache

import numpy as np
from numba import from_dtype

_lock = threading.Lock()
# (ufunc, requested result dtype, input dtypes...) -> (numpy ufunc to call or None for half types, result dtype)
_resolved: dict = {}


_HALF_KINDS = ("float16", "bfloat16")


def call(ufunc, *args, dtype=None, out=None):
    """Apply ``ufunc`` to numpy arrays/scalars; the result has ``dtype`` (default: the first input's)."""
    arrays = [a if isinstance(a, np.ndarray) else np.asarray(a) for a in args]
    key = (ufunc, dtype) + tuple([a.dtype for a in arrays])
    resolved = _resolved.get(key)
    if resolved is None:
        resolved = _resolve(ufunc, arrays, dtype, key)
    loop, result_dtype = resolved
    if loop is None:
        # Numba has no half-precision arithmetic: compute in float32, round once to the half type.
        widened = [a.astype(np.float32) if a.dtype.name in _HALF_KINDS else a for a in arrays]
        compute = np.float32 if result_dtype.name in _HALF_KINDS else result_dtype
        result = call(ufunc, *widened, dtype=compute)
        return result.astype(result_dtype) if out is None else np.copyto(out, result, casting="unsafe") or out
    if out is None:
        shape = arrays[0].shape
        for a in arrays:
            if a.shape != shape:
                shape = _broadcast_shape(tuple([a.shape for a in arrays]))
                break
        out = np.empty(shape, dtype=result_dtype)
    # The plain numpy ufunc that Numba fills with compiled loops: its loop for these input types
    # exists now, so calling it directly skips the DUFunc's Python-level dispatch.
    loop(*arrays, out=out, casting="unsafe")
    return out


def binary(ufunc, a, b, dtype):
    """``call(ufunc, a, b, dtype=dtype)`` for two arrays, on the shortest path (the hot case of every model)."""
    resolved = _resolved.get((ufunc, dtype, a.dtype, b.dtype)) if type(a) is type(b) is np.ndarray else None
    if resolved is None or resolved[0] is None:
        return call(ufunc, a, b, dtype=dtype)
    shape = a.shape
    if b.shape != shape:
        shape = _broadcast_shape((shape, b.shape))
    out = np.empty(shape, dtype=resolved[1])
    resolved[0](a, b, out, casting="unsafe")
    return out


def unary(ufunc, x, dtype):
    """``call(ufunc, x, dtype=dtype)`` for one array, on the shortest path."""
    resolved = _resolved.get((ufunc, dtype, x.dtype)) if type(x) is np.ndarray else None
    if resolved is None or resolved[0] is None:
        return call(ufunc, x, dtype=dtype)
    out = np.empty(x.shape, dtype=resolved[1])
    resolved[0](x, out, casting="unsafe")
    return out


def _resolve(ufunc, arrays, dtype, key):
    """Compile the loop for this combination of input dtypes once; return how ``call`` runs it."""
    result_dtype = np.dtype(dtype) if dtype is not None else arrays[0].dtype
    with _lock:
        if key not in _resolved:
            if any(a.dtype.name in _HALF_KINDS for a in arrays) or result_dtype.name in _HALF_KINDS:
                _resolved[key] = (None, result_dtype)
            else:
                in_types = tuple(from_dtype(a.dtype) for a in arrays)
                # A ufunc holds one loop per input-type tuple; if one exists already (from another
                # result type), numpy casts its result into ``out``.
                if not any(tuple(sig.args) == in_types for sig in _loop_signatures(ufunc)):
                    ufunc.add(from_dtype(result_dtype)(*in_types))
                _resolved[key] = (ufunc.ufunc, result_dtype)
    return _resolved[key]


@lru_cache(maxsize=1024)
def _broadcast_shape(shapes):
    return np.broadcast_shapes(*shapes)


def _loop_signatures(ufunc):
    return list(ufunc._dispatcher.overloads.keys()) and [
        cres.signature for cres in ufunc._dispatcher.overloads.values()]
