"""com.microsoft quantized ops on the device: QLinearAdd, QLinearMul and QLinearGlobalAveragePool
(:mod:`qrt.kernels.cuda.qelementwise`). They are registered for CUDA whether or not a CPU kernel
exists; a CPU kernel of the same name, when there is one, serves the host fallback."""
from __future__ import annotations

import numpy as np

from ... import registry
from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import qelementwise as k
from ..base import Op
from ..quantized import EIGHT_BIT, check_scale, qbounds, scalar_int
from .base import CudaOp
from .elementwise import broadcast_shape

MS = "com.microsoft"


def _contrib(op_type):
    def decorate(impl):
        cpu = registry.lookup(op_type, MS, 1, registry.CPU)
        bases = (impl, cpu) if cpu is not None else (impl, Op)
        cls = type(f"{op_type}CUDA", bases, {"_cpu_class": cpu, "__module__": __name__})
        registry.register(op_type, 1, MS, provider=registry.CUDA)(cls)
        return impl

    return decorate


def _scalar_scale(value, name):
    return float(np.float32(check_scale(value, name, InvalidArgument, scalar=True).reshape(-1)[0]))


class _QBinary(CudaOp):
    multiply = False

    def __init__(self, **attrs):
        if attrs:
            raise TypeError(f"unexpected attributes {sorted(attrs)}")

    def run_device(self, A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None):
        if A.dtype not in EIGHT_BIT or B.dtype != A.dtype:
            raise InvalidArgument(f"expected int8/uint8 inputs of one type, got {A.dtype} and {B.dtype}")
        sa, sb, sc = (_scalar_scale(self.host(s), n) for s, n in ((A_scale, "A_scale"), (B_scale, "B_scale"),
                                                                   (C_scale, "C_scale")))
        za, zb = scalar_int(self.host(A_zero_point)), scalar_int(self.host(B_zero_point))
        zc = scalar_int(self.host(C_zero_point))
        a, b = self.device(0, A), self.device(3, B)
        out = dev.empty(broadcast_shape(a, b), A.dtype)
        qmin, qmax = qbounds(A.dtype)
        if self.multiply:
            return k.qmul(a, b, out, za, zb, np.float32(sa * sb / sc), zc, qmin, qmax)
        return k.qadd(a, b, out, za, zb, np.float32(sa / sc), np.float32(sb / sc), zc, qmin, qmax)


@_contrib("QLinearAdd")
class QLinearAdd(_QBinary):
    multiply = False


@_contrib("QLinearMul")
class QLinearMul(_QBinary):
    multiply = True


@_contrib("QLinearGlobalAveragePool")
class QLinearGlobalAveragePool(CudaOp):
    def __init__(self, channels_last=0):
        self.channels_last = int(channels_last)

    def run_device(self, X, x_scale, x_zero_point, y_scale, y_zero_point):
        if X.dtype not in EIGHT_BIT or X.ndim < 3:
            raise InvalidArgument(f"expected an int8/uint8 (N, C, spatial...) input, got {X.dtype}{list(X.shape)}")
        sx = float(np.float32(check_scale(self.host(x_scale), "x_scale", InvalidArgument, scalar=True)
                              .reshape(-1)[0]))
        sy = float(np.float32(check_scale(self.host(y_scale), "y_scale", InvalidArgument, scalar=True)
                              .reshape(-1)[0]))
        zx, zy = scalar_int(self.host(x_zero_point)), scalar_int(self.host(y_zero_point))
        x = self.device(0, X)
        n = x.shape[0]
        if self.channels_last:
            channels = x.shape[x.ndim - 1]
            length = x.size // (n * channels)
            outer, inner = n, channels
            out_shape = (n,) + (1,) * (x.ndim - 2) + (channels,)
        else:
            channels = x.shape[1]
            length = x.size // (n * channels)
            outer, inner = n * channels, 1
            out_shape = (n, channels) + (1,) * (x.ndim - 2)
        qmin, qmax = qbounds(X.dtype)
        out = dev.empty(out_shape, X.dtype)
        return k.global_average(x, out, outer, length, inner, zx, sx / (sy * length), zy, qmin, qmax)
