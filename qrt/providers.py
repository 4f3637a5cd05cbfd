"""Execution providers: where a node's kernel runs and where its tensors live.

A provider knows how to move arrays between host memory and its own memory. The planner places each
node on the first provider (in the session's order) that has a kernel for it, and inserts copies only
where a tensor crosses from one provider's memory to another's.
"""
from __future__ import annotations

import logging
import os

from .errors import InvalidArgument
from .registry import CPU, CUDA

log = logging.getLogger("qrt")


class CPUProvider:
    name = CPU
    on_host = True

    def to_device(self, array):
        return array

    def to_host(self, array):
        return array


class CUDAProvider:
    name = CUDA
    on_host = False

    def __init__(self):
        from numba import cuda

        import qrt.ops.cuda  # noqa: F401  (registers the CUDA kernels; only sessions that ask for CUDA load numba.cuda)
        self._cuda = cuda

    def to_device(self, array):
        import numpy as np
        return self._cuda.to_device(np.ascontiguousarray(array))

    def to_host(self, array):
        if hasattr(array, "copy_to_host"):
            return array.copy_to_host()
        return array


def cuda_available() -> bool:
    try:
        from numba import cuda
    except Exception:
        return False
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def get_available_providers() -> list[str]:
    """Provider names usable on this machine, in preference order, as onnxruntime reports them."""
    names = [CPU]
    if cuda_available():
        names.insert(0, CUDA)
    return names


def get_all_providers() -> list[str]:
    return [CUDA, CPU]


def resolve_providers(requested) -> list:
    """Provider objects for a session's ``providers`` argument (names or (name, options) tuples)."""
    if not requested:
        return [CPUProvider()]
    names = []
    for entry in requested:
        name = entry[0] if isinstance(entry, (tuple, list)) else entry
        if name not in get_all_providers():
            raise InvalidArgument(f"unknown execution provider {name!r}; qrt knows {get_all_providers()}")
        names.append(name)
    available = get_available_providers()
    missing = [n for n in names if n not in available]
    usable = [n for n in names if n in available]
    if missing:
        if not usable:
            raise InvalidArgument(f"requested provider(s) {missing} are not available on this machine "
                                  f"(available: {available})")
        log.warning("qrt: provider(s) %s not available, falling back to %s", missing, usable)
    providers = []
    for n in usable:
        providers.append(CPUProvider() if n == CPU else CUDAProvider())
    if CPU not in usable:
        # Nodes without a device kernel still need somewhere to run, as in onnxruntime.
        providers.append(CPUProvider())
    return providers
