"""numba.cuda twins of the CPU kernels in :mod:`qrt.kernels.cpu`, module for module, with the same
function names. Each public function is a host-side launcher: it takes device arrays (numba
``DeviceNDArray``), chooses a launch geometry from :mod:`.config`, and launches ``@cuda.jit``
kernels built by the factories in each module. Shape logic stays in the op classes
(:mod:`qrt.ops.cuda`); nothing here copies data to the host.
"""
