"""CUDA ops: importing this package registers them with ``provider=registry.CUDA``.

:class:`qrt.providers.CUDAProvider` imports it, so sessions that do not ask for CUDA never load
numba.cuda. Each family module mirrors the CPU op module of the same name.
"""
from . import elementwise, shape, movement  # noqa: F401
from . import linalg, conv, pool, softmax, normalization, resize  # noqa: F401
from . import quantized, contrib  # noqa: F401
from . import nbits  # noqa: F401  (com.microsoft MatMulNBits)
