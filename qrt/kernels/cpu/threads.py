"""The number of threads a kernel may use, read cheaply on every call.

``numba.get_num_threads()`` called from Python takes a lock to check that the thread pool is up on
every call (1.2 us measured here, several times per node). Once the pool is up, the thread-local
count it returns is one C call away (0.15 us). Reading it from an ``@njit`` function instead would
be as fast but cannot be cached (Numba treats the thread-pool hooks as dynamic globals), so every
process would compile it again. The value is what ``numba.set_num_threads`` last set in the
calling thread, so a session's ``intra_op_num_threads`` still holds per caller.
"""
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


def _first_read():
    global _read
    count = get_num_threads()   # launches the pool
    # A Numba without the C hook keeps the public function.
    _read = getattr(parallel, "_get_num_threads", get_num_threads)
    return count


_read = _first_read
