"""The number of threads a kernel may use, read cheaply on every call.

``numba.get_num_threads()`` called from Python takes a lock to check that the thread pool is up on
every call (1.2 us measured here, several times per node). Once the pool is up, the thread-local
count it returns is one C call away (0.15 us). Reading it from an ``@njit`` function instead would
be as fast but cannot be cached (Numba treats the thread-pool hooks as dynamic globals), so every
process would compile it again. The value is what ``numba.set_num_threads`` last set in the
calling thread, so a session's ``intra_op_num_threads`` still holds per caller.
"""
import types

import numba
from numba import get_num_threads
from numba.np.ufunc import parallel

from ...errors import QrtError

# Numba's 'workqueue' layer aborts the process when two threads launch parallel kernels at once,
# and a session may be run from several threads: ask for OpenMP or TBB unless the user chose.
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "threadsafe"
_THREADSAFE_LAYERS = ("omp", "tbb")
_layer_checked = False


def require_threadsafe_layer():
    """Start Numba's thread pool (once) and refuse to go on without a thread-safe layer."""
    global _layer_checked
    if _layer_checked:
        return
    try:
        num_threads()
        layer = numba.threading_layer()
    except ValueError as exc:
        raise QrtError(f"qrt needs a thread-safe Numba threading layer (OpenMP or TBB) and none could be "
                       f"loaded: install an OpenMP runtime or tbb (pip install tbb). Numba said: {exc}") from None
    if layer not in _THREADSAFE_LAYERS:
        raise QrtError(f"Numba's threading layer is {layer!r}, which aborts the process when two threads run "
                       f"parallel kernels at once; qrt needs {' or '.join(_THREADSAFE_LAYERS)} "
                       f"(unset NUMBA_THREADING_LAYER, or set it to 'threadsafe')")
    _layer_checked = True


def num_threads() -> int:
    return _read()


def set_num_threads(count: int):
    """``numba.set_num_threads(count)`` without its per-call checks (1 us); ``count`` must be between
    1 and ``numba.config.NUMBA_NUM_THREADS``."""
    _write(count)


# onnxruntime's MLAS gives a GEMM one thread per 64K multiply-adds (MLAS_QGEMM_THREAD_COMPLEXITY):
# below that, a launch costs more than its share of the work saves (~1-2 us with the workers
# spinning between kernels, qrt's default; ~40 us to wake a sleeping one on an idle VM). Float
# kernels count element visits (an exp- or polynomial-based function's element as 8, see
# fused_elementwise.COSTLY_ELEMENT) in the same unit.
WORK_PER_THREAD = 1 << 16


def threads_for(work: int) -> int:
    """How many of the calling thread's kernel threads ``work`` multiply-adds (or element visits) keep busy."""
    return min(_read(), work // WORK_PER_THREAD + 1)


def call_with_threads(count: int, function, *args):
    """``function(*args)`` with the calling thread's kernel thread count at most ``count`` meanwhile.

    The count is thread-local, so other threads running kernels at the same time keep theirs. On
    one thread, a kernel with a :func:`serial_twin` runs that instead.
    """
    current = _read()
    if count >= current:
        if current == 1:
            return _SERIAL.get(function, function)(*args)
        return function(*args)
    if count == 1:
        serial = _SERIAL.get(function)
        if serial is not None:
            return serial(*args)
    _write(count)
    try:
        return function(*args)
    finally:
        _write(current)


# parallel kernel -> its serial compile, used by call_with_threads on one thread.
_SERIAL = {}


def launcher(kernel):
    """``kernel``, or its :func:`serial_twin` where the calling thread runs kernels on one thread."""
    return _SERIAL.get(kernel, kernel) if _read() == 1 else kernel


def serial_twin(kernel):
    """Register a serial compile of the ``@njit(parallel=True)`` ``kernel`` for :func:`call_with_threads`.

    A parallel kernel pays a launch through Numba's scheduler for every ``prange`` loop even on one
    thread (~2 us each, measured here), more than a digits-sized layer's whole work. The twin is the
    same Python function compiled without ``parallel`` (``prange`` runs as ``range``), under its own
    name so the two compiles keep separate on-disk cache entries; it compiles on its first call.
    Returns ``kernel``, so it can decorate.
    """
    py = kernel.py_func
    twin = types.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial", py.__defaults__, py.__closure__)
    twin.__qualname__ = py.__qualname__ + "_serial"
    twin.__module__ = py.__module__
    twin.__doc__ = py.__doc__
    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}
    options["parallel"] = False
    _SERIAL[kernel] = numba.njit(cache=True, **options)(twin)
    return kernel


def _first_read():
    global _read, _write
    count = get_num_threads()   # launches the pool
    # A Numba without the C hooks keeps the public functions.
    _read = getattr(parallel, "_get_num_threads", get_num_threads)
    _write = getattr(parallel, "_set_num_threads", numba.set_num_threads)
    return count


def _first_write(count):
    _first_read()
    _write(count)


_read = _first_read
_write = _first_write
