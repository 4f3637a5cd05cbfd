"""QuantizeLinear / DequantizeLinear on the device: the CUDA twin of :mod:`qrt.kernels.cpu.quantize`.

The arithmetic is the CPU kernels' exactly: quantize divides by the scale in the compute type
(float32 for float32 data), rounds half to even (:func:`.elementwise.rint_function`), adds the
zero point and saturates (NaN to ``qmin``); dequantize is ``(float(q) - zero_point) * scale``.
Per-tensor and per-axis layouts share one kernel over ``(outer, depth, inner)``: element ``i``
uses parameter ``(i // inner) % depth`` (depth 1 for per-tensor).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import config
from . import device as dev
from .elementwise import rint_function


@dev.kernel_factory
def _quantize(ftype):
    ft = np.dtype(ftype).type
    rint = rint_function(ft)

    @cuda.jit
    def kernel(x, scale, zero_point, lo, hi, out, n, depth, inner):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            c = (i // inner) % depth
            v = rint(x[i] / scale[c]) + zero_point[c]
            if not v >= lo:
                v = lo
            elif v > hi:
                v = hi
            out[i] = np.int32(v)
            i += step

    return kernel


@dev.kernel_factory
def _dequantize(ftype):
    ft = np.dtype(ftype).type

    @cuda.jit
    def kernel(q, scale, zero_point, out, n, depth, inner):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            c = (i // inner) % depth
            out[i] = (ft(q[i]) - zero_point[c]) * scale[c]
            i += step

    return kernel


def quantize(x, scale, zero_point, lo, hi, out, depth, inner):
    """``out = saturate(rint(x / scale) + zero_point)``; ``scale``/``zero_point`` are device arrays of
    the compute float type with ``depth`` entries."""
    kind = np.dtype(x.dtype)
    n = out.size
    if n:
        dev.launch(_quantize(kind.name), dev.blocks_for(n), config.THREADS, dev.flat(x), scale, zero_point,
                   kind.type(lo), kind.type(hi), dev.flat(out), n, int(depth), int(inner))
    return out


def dequantize(q, scale, zero_point, out, depth, inner):
    kind = np.dtype(out.dtype)
    n = out.size
    if n:
        dev.launch(_dequantize(kind.name), dev.blocks_for(n), config.THREADS, dev.flat(q), scale, zero_point,
                   dev.flat(out), n, int(depth), int(inner))
    return out
