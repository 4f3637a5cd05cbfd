"""Pooling on the device (:mod:`qrt.kernels.cuda.pool`): MaxPool (float and 8-bit data, without
the Indices output), AveragePool and the global average/max pools. Geometry is the CPU twins'
(:mod:`qrt.ops.pool`); LpPool and MaxPool's Indices output run the CPU twin."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import pool as k
from ..conv import MAX_SPATIAL_AXES
from .base import CudaOp, twin

_MAX_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int8, np.uint8))
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _planes(x):
    if x.ndim < 3 or x.ndim - 2 > MAX_SPATIAL_AXES:
        raise InvalidArgument(f"pooling input X has shape {list(x.shape)}; qrt supports (N, C, spatial...) with "
                              f"1 to {MAX_SPATIAL_AXES} spatial axes")
    lead = (1,) * (MAX_SPATIAL_AXES - (x.ndim - 2))
    return x.reshape((x.shape[0] * x.shape[1],) + lead + tuple(x.shape[2:]))


def _output(x, outs):
    out = dev.empty(tuple(x.shape[:2]) + tuple(outs), x.dtype)
    return out, out.reshape((x.shape[0] * x.shape[1],) + (1,) * (MAX_SPATIAL_AXES - len(outs)) + tuple(outs))


@twin("MaxPool")
class MaxPool(CudaOp):
    def run_device(self, X):
        if self.n_outputs > 1 or X.dtype not in _MAX_DTYPES or X.size == 0:
            raise dev.Unsupported("MaxPool with Indices, an empty input or this dtype")
        geom, _, outs = self._geometry(X)
        x = self.device(0, X)
        out, out4 = _output(x, outs)
        k.max_pool(_planes(x), geom, out4)
        return out


@twin("AveragePool")
class AveragePool(CudaOp):
    def run_device(self, X):
        if X.dtype not in _FLOATS or X.size == 0:
            raise dev.Unsupported(f"AveragePool of {X.dtype}")
        geom, ends, outs = self._geometry(X)
        x = self.device(0, X)
        out, out4 = _output(x, outs)
        k.sum_pool(_planes(x), geom, ends, k.MODE_AVERAGE, 1, self.count_include_pad, out4)
        return out


class _Global(CudaOp):
    def run_device(self, X):
        if X.ndim < 3:
            raise InvalidArgument(f"{self.op_type} input X has shape {list(X.shape)}; expected (N, C, spatial...)")
        if X.dtype not in _FLOATS or X.size == 0:
            raise dev.Unsupported(f"{self.op_type} of {X.dtype} or an empty input")
        x = self.device(0, X)
        planes = x.shape[0] * x.shape[1]
        out = dev.empty(tuple(x.shape[:2]) + (1,) * (x.ndim - 2), x.dtype)
        k.global_pool(x.reshape(planes, x.size // planes), self.mode, 2, out.reshape(planes))
        return out


GlobalAveragePool = twin("GlobalAveragePool")(type("GlobalAveragePool", (_Global,), {"__module__": __name__}))
GlobalMaxPool = twin("GlobalMaxPool")(type("GlobalMaxPool", (_Global,), {"__module__": __name__}))
