"""LayerNormalization (:mod:`qrt.kernels.cuda.transformer`) and inference-mode BatchNormalization
(a per-channel affine map from constants folded once at plan time) on the device. The CPU twins
are :mod:`qrt.ops.transformer` and :mod:`qrt.ops.normalization`."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import elementwise as ke
from ...kernels.cuda import transformer as k
from ..transformer import _axis
from .base import CudaOp, twin

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _param_rows(self, i, param, shape, axis):
    """A Scale/B input broadcast to (1 | rows, n) on the device, as the CPU op lays it out."""
    rows = int(np.prod(shape[:axis], dtype=np.int64))
    n = int(np.prod(shape[axis:], dtype=np.int64))
    target = tuple(shape[axis:]) if param.ndim <= len(shape) - axis else tuple(shape)
    try:
        np.broadcast_shapes(tuple(param.shape), target)
    except ValueError:
        raise InvalidArgument(f"{self.op_type} input {i} of shape {list(param.shape)} does not broadcast to the "
                              f"input shape {list(shape)}") from None
    p = self.device(i, param)
    if tuple(p.shape) != target:
        out = dev.empty(target, p.dtype)
        p = ke.apply_unary("identity", p, out)
    return p.reshape(rows if len(target) == len(shape) else 1, n)


@twin("LayerNormalization")
class LayerNormalization(CudaOp):
    def run_device(self, x, scale, b=None):
        if x.dtype not in _FLOATS or scale.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
            raise dev.Unsupported(f"device LayerNormalization of {x.dtype}")
        if self.n_outputs > 1 and self.stash_dtype != x.dtype:
            raise dev.Unsupported("stash_type differs from the input type")
        axis = _axis(self.axis, x.ndim, self.op_type)
        shape = tuple(x.shape)
        rows = int(np.prod(shape[:axis], dtype=np.int64))
        n = int(np.prod(shape[axis:], dtype=np.int64))
        a = self.device(0, x)
        s = _param_rows(self, 1, scale, shape, axis)
        bias = _param_rows(self, 2, b, shape, axis) if b is not None else s
        y = dev.empty(shape, a.dtype)
        mean = dev.empty((rows,), a.dtype)
        inv = dev.empty((rows,), a.dtype)
        k.normalize_rows(a.reshape(rows, n), s, bias, b is not None, self.epsilon, False, y.reshape(rows, n), mean, inv)
        if self.n_outputs <= 1:
            return y
        stat_shape = shape[:axis] + (1,) * (len(shape) - axis)
        return y, mean.reshape(stat_shape), inv.reshape(stat_shape)


@twin("BatchNormalization")
class BatchNormalization(CudaOp):
    device_inputs = (0,)

    def prepare_device(self, constants):
        self._affine = None
        if self._training() or any(c is None for c in constants[1:5]):
            return
        scale, bias, mean, var = (np.asarray(c, np.float64).reshape(-1) for c in constants[1:5])
        factor = scale / np.sqrt(var + self.epsilon)
        self._affine = (constants[1:5], factor, bias - mean * factor)

    def run_device(self, X, scale, B, input_mean, input_var):
        affine = getattr(self, "_affine", None)
        if (affine is None or any(a is not b for a, b in zip(affine[0], (scale, B, input_mean, input_var)))
                or X.dtype not in _FLOATS or X.ndim < 2 or self.spatial == 0 or affine[1].size != X.shape[1]):
            raise dev.Unsupported("BatchNormalization with run-time statistics, training mode or per-activation "
                                  "parameters")
        cache = getattr(self, "_device_affine", None)
        if cache is None or cache[0] != X.dtype:
            shape = (X.shape[1],) + (1,) * (X.ndim - 2)
            cache = (X.dtype, dev.upload(affine[1].astype(X.dtype).reshape(shape)),
                     dev.upload(affine[2].astype(X.dtype).reshape(shape)))
            self._device_affine = cache
        x = self.device(0, X)
        scaled = ke.apply_binary("mul", x, cache[1], dev.empty(x.shape, x.dtype))
        return ke.apply_binary("add", scaled, cache[2], scaled)
