"""Quantization ops on the device: QuantizeLinear, DequantizeLinear, QLinearMatMul, MatMulInteger,
QLinearConv and ConvInteger (:mod:`qrt.kernels.cuda.quantize`, :mod:`.qgemm`, :mod:`.qconv`).

Validation, attribute parsing and the requantization multiplier are the CPU twins'
(:mod:`qrt.ops.quantized`), so both providers reject the same models and compute the same
multipliers. Weights are centered (``w - zero_point``, int16) and uploaded once per session in
``prepare``, together with the per-channel multipliers when the scales are constants.
Float8/4-bit/16-bit types, blocked quantization and per-row activation zero points run the CPU twin.

Where the device has dp4a (:func:`qrt.kernels.cuda.gemm.use_dp4a`) and the centered weights fit in
int8, QLinearConv, QLinearMatMul (2-D weights) and QGemm take the dp4a kernels with the activation
zero point folded into a per-session bias (:func:`qrt.kernels.cuda.qgemm.dp4a_bias`).
"""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument, InvalidModel
from ...kernels.cuda import device as dev
from ...kernels.cuda import qconv as kc
from ...kernels.cuda import qgemm as kg
from ...kernels.cuda import quantize as kq
from ...kernels.cuda.gemm import use_dp4a
from ..conv import pack_geometry
from ..quantized import (EIGHT_BIT, _column_zero_points, _conv_weight_zero_points, _per_channel, _vector_for,
                         qbounds, requant_multiplier, scalar_int)
from .base import CudaOp, twin
from .conv import canonical5

_F32 = np.dtype(np.float32)


class _Memo:
    """Device values derived from host arrays, recomputed only when the arrays are other objects.

    The key, the arrays (held so their ids cannot be reused) and the value live in one tuple,
    written and read once per call: a thread never pairs one run's key with another's value.
    """

    def __init__(self):
        self._entry = None      # (ids, arrays, value)

    def get(self, arrays, build):
        key = tuple(id(a) for a in arrays)
        entry = self._entry
        if entry is None or entry[0] != key:
            entry = (key, tuple(arrays), build())
            self._entry = entry
        return entry[2]


def dp4a_weight_sums(centered, rows_last=False):
    """Row sums of device-centered weights when the dp4a path can take them, else None (downloads
    once per session; ``rows_last`` for (K, N) matrices whose zero point multiplies columns)."""
    if not use_dp4a():
        return None
    host = np.asarray(dev.download(centered))
    host = host.reshape(host.shape[0], -1)
    return kg.int8_sums(host.T if rows_last else host)


class _Dp4aBiases:
    """Per-op device biases ``bias - zero_point * sums``, one per (zero point, bias array)."""

    def __init__(self):
        self._entries = {}

    def get(self, bias, zero_point, sums):
        key = (int(zero_point), id(bias), id(sums))
        entry = self._entries.get(key)
        if entry is None or entry[0] is not bias or entry[1] is not sums:
            host_bias = None if bias is None else np.asarray(dev.download(bias))
            entry = (bias, sums, dev.upload(kg.dp4a_bias(host_bias, zero_point, sums)))
            self._entries = {key: entry}     # one live entry: zero points are constants in practice
        return entry[2]


def dp4a_biases(op):
    return op.__dict__.setdefault("_dp4a_biases", _Dp4aBiases())


def _per_axis_layout(x, scale, axis):
    """(depth, inner) of the parameter layout: per tensor is depth 1."""
    if scale.size == 1:
        return 1, 1
    axis = axis % x.ndim
    return x.shape[axis], int(np.prod(x.shape[axis + 1:], dtype=np.int64))


# --------------------------------------------------------------------------- QuantizeLinear


@twin("QuantizeLinear")
class QuantizeLinear(CudaOp):
    device_inputs = (0,)

    def run_device(self, x, y_scale, y_zero_point=None):
        scale = self.host(y_scale)
        zp = self.host(y_zero_point)
        out_type = self._check(x, scale, zp, InvalidArgument)
        if (out_type not in EIGHT_BIT or x.dtype != _F32 or scale.dtype != _F32 or self.block_size
                or getattr(self, "precision", 0)):
            raise dev.Unsupported(f"QuantizeLinear of {x.dtype} by {scale.dtype} scales to {out_type}")
        depth, inner = _per_axis_layout(x, scale, self.axis)
        params = getattr(self, "_params", None) or _Memo()
        self._params = params
        dev_scale, dev_zp = params.get((y_scale, y_zero_point), lambda: (
            dev.upload(scale.astype(np.float32).reshape(-1)),
            dev.upload((np.zeros(scale.size) if zp is None else zp.astype(np.float64)).astype(np.float32)
                       .reshape(-1))))
        a = self.device(0, x)
        lo, hi = qbounds(out_type)
        return kq.quantize(a, dev_scale, dev_zp, lo, hi, dev.empty(a.shape, out_type), depth, inner)


# --------------------------------------------------------------------------- DequantizeLinear


@twin("DequantizeLinear")
class DequantizeLinear(CudaOp):
    device_inputs = (0,)

    def run_device(self, x, x_scale, x_zero_point=None):
        scale = self.host(x_scale)
        zp = self.host(x_zero_point)
        self._check(x, scale, zp, InvalidArgument)
        out_dtype = self.output_dtype or scale.dtype
        if (x.dtype not in EIGHT_BIT + (np.dtype(np.int32),) or scale.dtype != _F32 or out_dtype != _F32
                or self.block_size):
            raise dev.Unsupported(f"DequantizeLinear of {x.dtype} with {scale.dtype} scales")
        depth, inner = _per_axis_layout(x, scale, self.axis)
        params = getattr(self, "_params", None) or _Memo()
        self._params = params
        dev_scale, dev_zp = params.get((x_scale, x_zero_point), lambda: (
            dev.upload(scale.reshape(-1)),
            dev.upload((np.zeros(scale.size) if zp is None else zp.astype(np.float64)).astype(np.float32)
                       .reshape(-1))))
        a = self.device(0, x)
        return kq.dequantize(a, dev_scale, dev_zp, dev.empty(a.shape, np.float32), depth, inner)


# --------------------------------------------------------------------------- matrix products


class _IntegerMatMul(CudaOp):
    device_inputs = (0,)
    validate_with_cpu_prepare = False

    def _operands(self, a, a_zero_point, b, b_zero_point):
        if a.dtype not in EIGHT_BIT or b.dtype not in EIGHT_BIT:
            raise InvalidArgument(f"expected int8/uint8 inputs, got {a.dtype} and {b.dtype}")
        if a.ndim == 0 or b.ndim == 0:
            raise InvalidArgument("matmul inputs must have at least one dimension")
        za = self.host(a_zero_point)
        if za is not None:
            if za.dtype != a.dtype:
                raise InvalidArgument(f"a's zero point has type {za.dtype} but a has type {a.dtype}")
            if za.size != 1:
                raise dev.Unsupported("per-row zero points of a")
        zb = self.host(b_zero_point)
        if zb is not None and zb.ndim >= 3 and b.ndim >= 3:
            raise dev.Unsupported("per-batch zero points of b")
        a_shape = (1,) + tuple(a.shape) if a.ndim == 1 else tuple(a.shape)
        b_shape = tuple(b.shape) + (1,) if b.ndim == 1 else tuple(b.shape)
        M, K = a_shape[-2:]
        K2, N = b_shape[-2:]
        if K != K2:
            raise InvalidArgument(f"matmul shapes {list(a.shape)} and {list(b.shape)} do not align ({K} != {K2})")
        batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
        memo = getattr(self, "_centered", None) or _Memo()
        self._centered = memo
        zcol = _column_zero_points(zb, N, b.dtype, InvalidArgument)

        def center():
            centered = kg.center_columns(self.device(3 if self.op_type == "QLinearMatMul" else 1, b),
                                         dev.upload(zcol), N)
            return centered, (dp4a_weight_sums(centered, rows_last=True) if b.ndim == 2 else None)

        centered, sums = memo.get((b, b_zero_point), center)
        return (self.device(0, a), scalar_int(za), centered, batch, a_shape, b_shape, M, N, K, sums)

    @staticmethod
    def _shape(a, b, batch, M, N):
        shape = tuple(batch) + (M, N)
        if a.ndim == 1:
            shape = shape[:-2] + (N,)
        if b.ndim == 1:
            shape = shape[:-1]
        return shape


@twin("QLinearMatMul")
class QLinearMatMul(_IntegerMatMul):
    def prepare_device(self, constants):
        self._check(constants, InvalidModel)

    def run_device(self, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
        host = [self.host(v) for v in (a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point)]
        self._check((a, host[0], host[1], b, host[2], host[3], host[4], host[5]), InvalidArgument)
        if host[0].size > 1:
            raise dev.Unsupported("per-row a_scale")
        x, za, centered, batch, a_shape, b_shape, M, N, K, sums = self._operands(a, a_zero_point, b, b_zero_point)
        out_dtype = host[5].dtype
        qmin, qmax = qbounds(out_dtype)
        mult_memo = getattr(self, "_mult", None) or _Memo()
        self._mult = mult_memo
        mult = mult_memo.get((a_scale, b_scale, y_scale, b), lambda: dev.upload(np.ascontiguousarray(
            requant_multiplier(host[0].reshape(()), _vector_for(host[2], N, "b_scale", InvalidArgument,
                                                                "column of b"), host[4].reshape(())),
            dtype=np.float64)))
        out = dev.empty(tuple(batch) + (M, N), out_dtype)
        bias = None if sums is None else dp4a_biases(self).get(None, za, sums)
        kg.matmul(x, za, centered, out, batch, a_shape[:-2], b_shape[:-2], M, N, K, bias=bias, mult=mult,
                  zy=scalar_int(host[5]), qmin=qmin, qmax=qmax, dp4a=sums is not None)
        return out.reshape(self._shape(a, b, batch, M, N))


@twin("MatMulInteger")
class MatMulInteger(_IntegerMatMul):
    def run_device(self, A, B, a_zero_point=None, b_zero_point=None):
        x, za, centered, batch, a_shape, b_shape, M, N, K, _ = self._operands(A, a_zero_point, B, b_zero_point)
        out = dev.empty(tuple(batch) + (M, N), np.int32)
        kg.matmul(x, za, centered, out, batch, a_shape[:-2], b_shape[:-2], M, N, K)
        return out.reshape(self._shape(A, B, batch, M, N))


# --------------------------------------------------------------------------- convolution


class _IntegerConv(CudaOp):
    validate_with_cpu_prepare = False
    w_index = 3
    x_zero_index = 2
    w_zero_index = 5

    def _centered_weights(self, w, wz):
        memo = getattr(self, "_weights", None) or _Memo()
        self._weights = memo

        def build():
            host_w = self.host(w)
            M = host_w.shape[0]
            zw = _conv_weight_zero_points(self.host(wz), M, host_w.dtype, InvalidArgument)
            centered = host_w.reshape(M, -1).astype(np.int32) - zw[:, None]
            return dev.upload(centered.astype(np.int16)), (kg.int8_sums(centered) if use_dp4a() else None)

        return memo.get((w, wz), build)

    def _convolve(self, x, xz, w, wz, out_dtype, B=None, mult=None, zy=0):
        if x.dtype not in EIGHT_BIT or w.dtype not in EIGHT_BIT:
            raise InvalidArgument(f"expected int8/uint8 x and w, got {x.dtype} and {w.dtype}")
        if x.ndim < 3:
            raise InvalidArgument(f"x must have rank >= 3 (N, C, spatial...), got shape {list(x.shape)}")
        geometry = self.conv.geometry
        kernel, strides, dilations, begins, ends, outs = geometry.resolve(x.shape, w.shape, InvalidArgument)
        host_xz = self.host(xz)
        if host_xz is not None and (host_xz.dtype != x.dtype or host_xz.size != 1):
            raise InvalidArgument(f"x's zero point must be a scalar of x's type {x.dtype}, got "
                                  f"{host_xz.dtype}{list(host_xz.shape)}")
        if any(o < 1 for o in outs):
            raise dev.Unsupported("empty convolution output")
        centered, sums = self._centered_weights(w, wz)
        x5 = canonical5(self.device(0, x))
        M = w.shape[0]
        out = dev.empty((x.shape[0], M) + tuple(outs), out_dtype)
        out5 = canonical5(out)
        geom = pack_geometry(kernel, strides, dilations, begins)
        qmin, qmax = qbounds(out_dtype) if out_dtype != np.int32 else (0, 0)
        zx = scalar_int(host_xz)
        if self.conv.depthwise(x.shape[1], w.shape):
            bias = self.device(8, B) if B is not None else None
            kc.conv_depthwise(x5, zx, centered, geom, out5, bias, mult, zy, qmin, qmax)
        elif sums is not None and out_dtype != np.int32:
            bias = dp4a_biases(self).get(B, zx, sums)
            kc.conv(x5, zx, centered, geom, geometry.group, out5, bias, mult, zy, qmin, qmax, dp4a=True)
        else:
            bias = self.device(8, B) if B is not None else None
            kc.conv(x5, zx, centered, geom, geometry.group, out5, bias, mult, zy, qmin, qmax)
        return out


@twin("QLinearConv")
class QLinearConv(_IntegerConv):
    device_inputs = (0, 8)

    def prepare_device(self, constants):
        self._check(constants, InvalidModel)

    def run_device(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None):
        host = [self.host(v) for v in (x_scale, x_zero_point, w_scale, w_zero_point, y_scale, y_zero_point)]
        self._check((x, host[0], host[1], w, host[2], host[3], host[4], host[5], B), InvalidArgument)
        M = w.shape[0]
        out_dtype = host[5].dtype
        memo = getattr(self, "_mult", None) or _Memo()
        self._mult = memo
        mult = memo.get((x_scale, w_scale, y_scale), lambda: dev.upload(np.ascontiguousarray(requant_multiplier(
            host[0].reshape(()), _per_channel(host[2], M, "w_scale", InvalidArgument), host[4].reshape(())),
            dtype=np.float64)))
        return self._convolve(x, x_zero_point, w, w_zero_point, out_dtype, B, mult, scalar_int(host[5]))


@twin("ConvInteger")
class ConvInteger(_IntegerConv):
    device_inputs = (0,)

    def run_device(self, x, w, x_zero_point=None, w_zero_point=None):
        return self._convolve(x, x_zero_point, w, w_zero_point, np.dtype(np.int32))
