"""The number of threads a kernel may use, read cheaply on every call.

``numba.get_num_threads()`` called from Python takes a lock to check that the thread pool is up on
every call (1.2 us measured here, several times per node). Once the pool is up, the thread-local
count it returns is one C call away (0.15 us). Reading it from an ``@njit`` function instead would
be as fast but cannot be cached (Numba treats the thread-pool hooks as dynamic globals), so every
process would compile it again. The value is what ``numba.set_num_threads`` last set in the
calling thread, so a session's ``intra_op_num_threads`` still holds per caller.
"""
from numba import get_num_threads
from numba.np.ufunc import parallel


def num_threads() -> int:
    return _read()


def _first_read():
    global _read
    count = get_num_threads()   # launches the pool
    # A Numba without the C hook keeps the public function.
    _read = getattr(parallel, "_get_num_threads", get_num_threads)
    return count


_read = _first_read
