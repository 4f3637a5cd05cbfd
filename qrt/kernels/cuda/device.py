"""Launch plumbing shared by the CUDA kernel modules.

* Device arrays: :func:`empty`, :func:`upload`, :func:`download`, :func:`is_device`.
* Kernel factories: :func:`kernel_factory` caches one ``@cuda.jit`` kernel per parameter tuple
  (tile sizes, the operation a generic kernel applies) and remembers how each kernel was built,
  so :func:`compile_recorded` can rebuild it outside the simulator and compile it for a real GPU.
* :func:`launch`: every kernel launch goes through it. With ``QRT_CUDA_SIGNATURES=<file>`` set it
  appends the kernel's key and argument types to that file (one JSON line per launch); the CUDA
  tests run the simulator that way, then compile every recorded signature to PTX, which checks
  typing and lowering the simulator (plain Python) never does.
* Strided iteration: :func:`merge_dims` turns an output shape and the operands' layouts into the
  fewest dimensions with per-operand element strides (0 where an operand is broadcast), which the
  element-wise and data-movement kernels walk with one division per dimension.
"""
from __future__ import annotations

import functools
import json
import os
import threading

import numpy as np
from numba import cuda
from numba.cuda.core import config as _cuda_config

from . import config

SIMULATED = bool(_cuda_config.ENABLE_CUDASIM)


def _serialize_simulated_shared_arrays():
    """The simulator's ``cuda.shared.array`` looks an allocation up in a launch-wide dict, keyed by the
    calling line, and fills it unlocked: when two threads of the first block reach the line together,
    each may get its own array, so one thread's tile loads land where nobody reads them and a few
    outputs of that block come out wrong (1 run in ~300 of the int8 CNN case, always image 0). This
    is the same allocation under one lock, which is what hardware gives."""
    import sys
    import traceback

    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    if getattr(original, "qrt_locked", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe(1), limit=1)[-1][0:2]
        with lock:
            result = self._allocations.get(caller)
            if result is None:
                result = self._allocations[caller] = np.empty(shape, dtype)
        return result

    array.qrt_locked = True
    kernelapi.FakeCUDAShared.array = array


if SIMULATED:
    _serialize_simulated_shared_arrays()


class Unsupported(Exception):
    """A launcher cannot take this case on the device (rank, dtype); the op runs its host kernel."""


def is_device(a) -> bool:
    return hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray)


def empty(shape, dtype):
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def upload(a):
    return cuda.to_device(np.ascontiguousarray(a))


def download(a):
    return a.copy_to_host() if is_device(a) else a


def flat(a):
    """A contiguous device array as its 1-D view (no copy)."""
    return a.reshape(a.size) if a.ndim != 1 else a


def synchronize():
    cuda.synchronize()


def blocks_for(n, threads=None):
    threads = threads or config.THREADS
    return max(1, min(config.MAX_BLOCKS, -(-int(n) // threads)))


# --------------------------------------------------------------------------- factories and launches

_KEYS: dict[int, tuple] = {}
_factory_lock = threading.Lock()


def kernel_factory(build):
    """Decorator: ``build(*params)`` returns a kernel; the result is cached per ``params``.

    ``params`` must be JSON-representable (ints, floats, strings) so a recorded launch names the
    exact kernel to rebuild.
    """
    cache = {}

    @functools.wraps(build)
    def get(*params):
        kernel = cache.get(params)
        if kernel is None:
            with _factory_lock:
                kernel = cache.get(params)
                if kernel is None:
                    kernel = build(*params)
                    _KEYS[id(kernel)] = (build.__module__, build.__name__, list(params))
                    cache[params] = kernel
        return kernel

    get.cache = cache
    return get


def plain_kernel(fn):
    """``@cuda.jit`` for a kernel without parameters, registered like a factory's."""
    kernel = cuda.jit(fn)
    _KEYS[id(kernel)] = (fn.__module__, fn.__name__, None)
    return kernel


_record_lock = threading.Lock()
# The simulator refuses a launch while another host thread's kernel runs ("concurrent simulated kernel
# not supported"); a real GPU queues launches on one stream anyway, so simulated launches take turns.
_simulated_launch_lock = threading.Lock()


def launch(kernel, grid, block, *args):
    path = os.environ.get("QRT_CUDA_SIGNATURES")
    if path:
        _record(path, kernel, args)
    if SIMULATED:
        with _simulated_launch_lock:
            kernel[grid, block](*args)
    else:
        kernel[grid, block](*args)


def _describe(arg):
    if is_device(arg) or isinstance(arg, np.ndarray):
        contiguous = arg.is_c_contiguous() if is_device(arg) else arg.flags.c_contiguous
        return ["array", np.dtype(arg.dtype).str, int(arg.ndim), bool(contiguous)]
    if isinstance(arg, (bool, np.bool_)):
        return ["scalar", "bool"]
    if isinstance(arg, int):
        return ["scalar", "int64"]
    if isinstance(arg, float):
        return ["scalar", "float64"]
    if isinstance(arg, np.generic):
        return ["scalar", np.dtype(type(arg)).name]
    if isinstance(arg, tuple):
        return ["tuple", [_describe(a) for a in arg]]
    raise TypeError(f"cannot record a kernel argument of type {type(arg).__name__}")


def _record(path, kernel, args):
    key = _KEYS.get(id(kernel))
    if key is None:
        return
    line = json.dumps({"kernel": key, "args": [_describe(a) for a in args]})
    with _record_lock, open(path, "a") as f:
        f.write(line + "\n")


def _numba_type(desc):
    from numba import from_dtype, types
    kind = desc[0]
    if kind == "array":
        _, dtype, ndim, contiguous = desc
        return types.Array(from_dtype(np.dtype(dtype)), ndim, "C" if contiguous else "A")
    if kind == "scalar":
        return types.boolean if desc[1] == "bool" else from_dtype(np.dtype(desc[1]))
    members = [_numba_type(d) for d in desc[1]]
    if members and all(m == members[0] for m in members):
        return types.UniTuple(members[0], len(members))
    return types.Tuple(members)


def compile_recorded(path, cc=(8, 0), ptx=True):
    """Compiles every distinct kernel signature recorded in ``path`` for a real GPU.

    Runs outside the simulator. With ``ptx`` (needs NVVM and NVRTC) each kernel goes to PTX for
    compute capability ``cc``; otherwise typing and lowering to LLVM IR only. Returns
    ``(compiled, failures)`` where failures lists ``(key, argtypes, error)``.
    """
    import importlib

    from numba import types
    from numba.cuda.compiler import compile_cuda

    if SIMULATED:
        raise RuntimeError("compile_recorded must run without NUMBA_ENABLE_CUDASIM")
    from numba.cuda import dispatcher

    class _Device:   # device functions ask the current device for its compute capability
        compute_capability = tuple(cc[:2])

    real_get_device = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device()
    try:
        return _compile_lines(path, cc, ptx, importlib, types, compile_cuda)
    finally:
        dispatcher.get_current_device = real_get_device


def _compile_lines(path, cc, ptx, importlib, types, compile_cuda):
    seen = set()
    compiled, failures = [], []
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    for entry in lines:
        module, name, params = entry["kernel"]
        ident = json.dumps([module, name, params, entry["args"]])
        if ident in seen:
            continue
        seen.add(ident)
        argtypes = tuple(_numba_type(d) for d in entry["args"])
        try:
            owner = getattr(importlib.import_module(module), name)
            kernel = owner(*params) if params is not None else owner
            pyfunc = kernel.py_func
            if ptx:
                cuda.compile_ptx(pyfunc, argtypes, cc=cc)
            else:
                cres = compile_cuda(pyfunc, types.void, argtypes, cc=tuple(cc[:2]))
                cres.library.get_llvm_str()
            compiled.append((module, name, params, argtypes))
        except Exception as exc:   # reported, not raised: the caller lists every failure at once
            failures.append(((module, name, params), argtypes, f"{type(exc).__name__}: {exc}"))
    return compiled, failures


# --------------------------------------------------------------------------- strided iteration

def contiguous_strides(shape):
    strides = [0] * len(shape)
    acc = 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = acc
        acc *= int(shape[d])
    return strides


def merge_dims(shape, operand_strides):
    """Drops unit dimensions and merges neighbours every operand walks contiguously.

    ``shape`` is the iteration shape; ``operand_strides`` one element-stride list per operand (same
    rank). Returns ``(dims, strides)`` padded to :data:`config.MAX_RANK` as tuples, plus the rank;
    raises :class:`Unsupported` if more dimensions remain than the kernels take.
    """
    keep = [d for d in range(len(shape)) if int(shape[d]) != 1]
    dims = [int(shape[d]) for d in keep]
    strides = [[int(s[d]) for d in keep] for s in operand_strides]
    merged_dims = []
    merged = [[] for _ in strides]
    for i, size in enumerate(dims):
        if merged_dims and all(m[-1] == st[i] * size for m, st in zip(merged, strides)):
            merged_dims[-1] *= size
            for m, st in zip(merged, strides):
                m[-1] = st[i]
            continue
        merged_dims.append(size)
        for m, st in zip(merged, strides):
            m.append(st[i])
    if not merged_dims:
        merged_dims = [1]
        merged = [[0] for _ in strides]
    rank = len(merged_dims)
    if rank > config.MAX_RANK:
        raise Unsupported(f"{rank} dimensions after merging; the strided kernels take {config.MAX_RANK}")
    pad = config.MAX_RANK - rank
    return (rank, tuple(merged_dims + [1] * pad), [tuple(m + [0] * pad) for m in merged])


def broadcast_strides(out_shape, in_shape):
    """Element strides of a contiguous ``in_shape`` operand broadcast to ``out_shape``."""
    rank = len(out_shape)
    shape = (1,) * (rank - len(in_shape)) + tuple(int(s) for s in in_shape)
    strides = contiguous_strides(shape)
    return [0 if shape[d] == 1 else strides[d] for d in range(rank)]
