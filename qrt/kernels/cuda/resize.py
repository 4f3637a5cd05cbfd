"""Separable resampling on the device: the CUDA twin of :mod:`qrt.kernels.cpu.resize`.

The op computes each axis's tap table on the host with the CPU kernels (a few values per output
position); :func:`resample_axis` applies it to the tensor viewed as ``(outer, length, inner)``,
one thread per output element, in float64 like the CPU kernel, so linear and cubic modes (any tap
count) share it. Nearest mode is a gather (:func:`.movement.gather`).
"""
from __future__ import annotations

from numba import cuda

from . import config
from . import device as dev


@dev.kernel_factory
def _resample():
    @cuda.jit
    def kernel(x, index, weight, out, outer, length, out_len, inner, taps):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        n = outer * out_len * inner
        while i < n:
            c = i % inner
            rest = i // inner
            j = rest % out_len
            o = rest // out_len
            acc = 0.0
            for t in range(taps):
                w = weight[j * taps + t]
                if w != 0.0:
                    acc += w * x[(o * length + index[j * taps + t]) * inner + c]
            out[i] = acc
            i += step

    return kernel


def resample_axis(x, index, weight, out):
    """``out[o, j, :] = sum_t weight[j, t] * x[o, index[j, t], :]`` (device arrays, ``out`` float64)."""
    outer, length, inner = x.shape
    out_len, taps = index.shape
    n = out.size
    if n:
        dev.launch(_resample(), dev.blocks_for(n), config.THREADS, dev.flat(x), dev.flat(index), dev.flat(weight),
                   dev.flat(out), int(outer), int(length), int(out_len), int(inner), int(taps))
    return out
