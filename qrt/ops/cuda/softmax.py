"""Softmax and LogSoftmax on the device (:mod:`qrt.kernels.cuda.softmax`); layouts are the CPU
twins' (:mod:`qrt.ops.softmax`): opsets 1-12 flatten from ``axis`` on, opset 13 normalizes one
axis. Hardmax runs the CPU twin."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import softmax as k
from ..softmax import _normalize_axis
from .base import CudaOp, twin

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class _Softmax(CudaOp):
    def run_device(self, x):
        if x.dtype not in _FLOATS:
            raise dev.Unsupported(f"device {self.op_type} of {x.dtype}")
        if x.ndim == 0:
            raise InvalidArgument(f"{self.op_type} needs an input of rank >= 1")
        axis = _normalize_axis(self.axis, x.ndim, self.op_type)
        shape = tuple(x.shape)
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        if self.since_version < 13:
            n, inner = int(np.prod(shape[axis:], dtype=np.int64)), 1
        else:
            n, inner = shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64))
        a = self.device(0, x)
        out = dev.empty(shape, a.dtype)
        k.softmax_strided(a.reshape(outer, n, inner), out.reshape(outer, n, inner), self.log)
        return out


Softmax = twin("Softmax")(type("Softmax", (_Softmax,), {"__module__": __name__}))
LogSoftmax = twin("LogSoftmax")(type("LogSoftmax", (_Softmax,), {"__module__": __name__}))
