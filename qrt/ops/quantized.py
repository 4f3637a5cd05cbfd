"""ai.onnx quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearMatMul,
MatMulInteger, QLinearConv and ConvInteger.

Integer ops compute exactly: int32 sums that never saturate (:mod:`qrt.kernels.cpu.qgemm`), then
requantization as the spec (and ``onnx.reference``) does it: ``rint(float64(acc) * m) + zero_point``
saturated to the output type, where ``m = a_scale * b_scale / y_scale`` is computed in the scales'
own float type. QuantizeLinear and DequantizeLinear use :mod:`qrt.qmath` for the integer types and
convert float8/float4 with ml_dtypes' round-to-nearest-even casts.

Scales and zero points are validated in ``prepare`` (the planner calls it with the node's constant
inputs, so a model with a bad scale fails at session creation) and, when they are not constants,
at run time. Constant weights are packed in ``prepare`` and reused by every run: the planner binds
each constant once, so the same array object arrives each time and is recognised by identity.
"""
from __future__ import annotations

import math
import operator

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper

from .. import qmath
from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import qconv as kconv
from ..kernels.cpu import qdynamic as kdyn
from ..kernels.cpu import qelementwise as kq
from ..kernels.cpu import qgemm as kgemm
from ..kernels.cpu import qgemm_amx as kamx
from ..kernels.cpu import quantize as kquant
from ..kernels.cpu.threads import call_with_threads, num_threads, threads_for
from ..kernels.cpu.ufunc import call
from ..registry import register
from .base import Op, ShapeCache
from .conv import _scratch_buffer

_U8, _I8 = np.dtype(np.uint8), np.dtype(np.int8)
# Types Quantize/DequantizeLinear's flat per-tensor kernels handle (exact in float32).
_FLAT_QTYPES = (_U8, _I8, np.dtype(np.uint16), np.dtype(np.int16))
EIGHT_BIT = (_U8, _I8)
_INT_QTYPES = {
    TensorProto.UINT8: _U8, TensorProto.INT8: _I8,
    TensorProto.UINT16: np.dtype(np.uint16), TensorProto.INT16: np.dtype(np.int16),
    TensorProto.UINT4: np.dtype(ml_dtypes.uint4), TensorProto.INT4: np.dtype(ml_dtypes.int4),
    TensorProto.UINT2: np.dtype(ml_dtypes.uint2), TensorProto.INT2: np.dtype(ml_dtypes.int2),
}
# 2-bit values are computed in the 8-bit type of the same signedness, then clipped.
_TWO_BIT = {np.dtype(ml_dtypes.int2): (_I8, -2, 1), np.dtype(ml_dtypes.uint2): (_U8, 0, 3)}
_FLOAT8_MAX = {
    np.dtype(ml_dtypes.float8_e4m3fn): 448.0, np.dtype(ml_dtypes.float8_e4m3fnuz): 240.0,
    np.dtype(ml_dtypes.float8_e5m2): 57344.0, np.dtype(ml_dtypes.float8_e5m2fnuz): 57344.0,
}
# Float formats without infinities or NaN: ml_dtypes' cast saturates on its own.
_SMALL_FLOATS = (np.dtype(ml_dtypes.float4_e2m1fn), np.dtype(ml_dtypes.float6_e2m3fn),
                 np.dtype(ml_dtypes.float6_e3m2fn))
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_FLOAT_SCALES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64), _BFLOAT16)


# --------------------------------------------------------------------------- parameter checks

def check_scale(scale, name, error=InvalidModel, scalar=False):
    """A scale must be a float tensor whose values are all finite and > 0."""
    scale = np.asarray(scale)
    if scale.dtype not in _FLOAT_SCALES:
        raise error(f"{name} must be a float tensor, got {scale.dtype}")
    if scalar and scale.size != 1:
        raise error(f"{name} must be a scalar (per-tensor), got shape {list(scale.shape)}")
    values = scale.astype(np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if np.any(bad):
        raise error(f"{name} must be finite and > 0, got {values[bad].reshape(-1)[:4].tolist()} "
                    f"(shape {list(scale.shape)})")
    return scale


def check_zero_point(zp, name, dtype=None, shape=None, error=InvalidModel, scalar=False):
    """A zero point must have the data's dtype and the scale's shape."""
    zp = np.asarray(zp)
    if dtype is not None and zp.dtype != np.dtype(dtype):
        raise error(f"{name} must be {np.dtype(dtype)} like the data it describes, got {zp.dtype}")
    if scalar and zp.size != 1:
        raise error(f"{name} must be a scalar (per-tensor), got shape {list(zp.shape)}")
    if shape is not None and zp.shape != tuple(shape) and not (zp.size == 1 and int(np.prod(shape)) == 1):
        raise error(f"{name} has shape {list(zp.shape)} but its scale has shape {list(shape)}")
    return zp


def check_axis(axis, rank, name="axis", error=InvalidModel):
    if not -rank <= axis < rank:
        raise error(f"{name}={axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def scalar_int(zp) -> int:
    return 0 if zp is None else int(np.asarray(zp).reshape(-1)[0])


def shifted(value: int, dtype) -> int:
    """The zero point of 8-bit data once int8 bytes are read as uint8 with the sign bit flipped."""
    return value + 128 if np.dtype(dtype) == _I8 else value


def flip_of(dtype) -> int:
    return 0x80 if np.dtype(dtype) == _I8 else 0


def qbounds(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


class _ConstantCache:
    """Per-op memo of values derived from constant inputs, keyed by the inputs' identity.

    Filled in ``prepare`` (single-threaded, at plan time) and only read while running: an entry
    keeps references to the arrays it was built from, so their ids cannot be reused by others.
    """

    def __init__(self):
        self._entries = {}

    def put(self, arrays, value):
        self._entries[tuple(map(id, arrays))] = (tuple(arrays), value)

    def get(self, arrays):
        # map() rather than generator expressions: this runs on every call of every int8 op (2 us less).
        entry = self._entries.get(tuple(map(id, arrays)))
        if entry is None or not all(map(operator.is_, entry[0], arrays)):
            return None
        return entry[1]


# --------------------------------------------------------------------------- QuantizeLinear

def _expand(param, shape, axis, block_size):
    """A per-axis or blocked parameter broadcastable to ``shape`` (the rare float8/bfloat16 paths)."""
    param = np.asarray(param)
    if param.size == 1 and not block_size:
        return param.reshape(())
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = param.size
        return param.reshape(dims)
    return np.repeat(param, block_size, axis=axis).take(range(shape[axis]), axis=axis)


class _QuantizeLinear(Op):
    """``y = saturate(round_half_even(x / y_scale) + y_zero_point)``; per tensor, per axis, blocked."""

    def __init__(self, axis=1, saturate=1, block_size=0, output_dtype=0, precision=0):
        self.axis = int(axis)
        self.saturate = int(saturate)
        self.block_size = int(block_size)
        self.output_dtype = int(output_dtype)
        self.precision = int(precision)
        if self.block_size < 0:
            raise InvalidModel(f"block_size must be >= 0, got {self.block_size}")
        if self.output_dtype:
            self._attr_type = _tensor_type(self.output_dtype, "output_dtype")
        else:
            self._attr_type = None
        if self.precision:
            self._precision = _tensor_type(self.precision, "precision")
            if self._precision.kind != "f" and self._precision != _BFLOAT16:
                raise InvalidModel(f"precision must be a float type, got {self._precision}")

    def _out_type(self, zero_point, error):
        if zero_point is not None:
            zdt = np.asarray(zero_point).dtype
            if self._attr_type is not None and zdt != self._attr_type:
                raise error(f"output_dtype {self._attr_type} differs from y_zero_point's type {zdt}")
            return zdt
        return self._attr_type if self._attr_type is not None else _U8

    def _check(self, x, scale, zero_point, error):
        if scale is not None:
            if scale.dtype.kind not in "f" and scale.dtype != _BFLOAT16 and scale.dtype != np.int32:
                raise error(f"y_scale must be a float tensor, got {scale.dtype}")
            if scale.dtype != np.int32:
                check_scale(scale, "y_scale", error)
            if not self.block_size and scale.ndim > 1:
                raise error(f"y_scale must be a scalar or a 1-D tensor, got shape {list(scale.shape)}")
        out = self._out_type(zero_point, error)
        if out not in _INT_QTYPES.values() and out not in _FLOAT8_MAX and out not in _SMALL_FLOATS:
            raise error(f"QuantizeLinear cannot produce {out}")
        if zero_point is not None and scale is not None:
            check_zero_point(zero_point, "y_zero_point", shape=scale.shape, error=error)
        if x is not None and scale is not None:
            self._layout_check(x, scale, error)
        return out

    def _layout_check(self, x, scale, error):
        if scale.size == 1 and not self.block_size:
            return
        axis = check_axis(self.axis, x.ndim, error=error)
        if self.block_size:
            expected = list(x.shape)
            expected[axis] = -(-x.shape[axis] // self.block_size)
            if list(scale.shape) != expected:
                raise error(f"blocked scale for input shape {list(x.shape)}, axis {axis}, block_size "
                            f"{self.block_size} must have shape {expected}, got {list(scale.shape)}")
        elif scale.shape[0] != x.shape[axis]:
            raise error(f"per-axis scale has {scale.shape[0]} values but axis {axis} of the input has "
                        f"{x.shape[axis]} (shape {list(x.shape)})")

    def prepare(self, constants):
        x, scale = constants[0], constants[1]
        zero_point = constants[2] if len(constants) > 2 else None
        out = self._check(x, None if scale is None else np.asarray(scale), zero_point, InvalidModel)
        # Constant per-tensor float32 parameters to 8 or 16 bits (what quantizers emit): checked here,
        # converted once; ``run`` recognises them by identity and goes straight to the flat kernel.
        self._flat = None
        if isinstance(scale, np.ndarray) and scale.dtype == np.float32 and scale.size == 1 and not self.block_size \
                and self.precision in (0, TensorProto.FLOAT) and out in _FLAT_QTYPES \
                and (len(constants) < 3 or zero_point is not None):
            lo, hi = qbounds(out)
            self._flat = (scale, zero_point, scale.reshape(-1)[0], np.float32(scalar_int(zero_point)), np.float32(lo),
                          np.float32(hi), out)

    def run(self, x, y_scale, y_zero_point=None):
        flat = self._flat
        if flat is not None and y_scale is flat[0] and y_zero_point is flat[1] and x.dtype == np.float32:
            _, _, s, z, lo, hi, dtype = flat
            y = np.empty(x.shape, dtype)
            if y.size:
                kernel = kquant.quantize_flat_parallel if y.size >= kq.PARALLEL_MIN_ELEMENTS \
                    and num_threads() > 1 else kquant.quantize_flat
                kernel(np.ascontiguousarray(x).reshape(-1), s, z, lo, hi, y.reshape(-1))
            return y
        scale = np.asarray(y_scale)
        out = self._check(x, scale, y_zero_point, InvalidArgument)
        if self.precision:
            x = x.astype(self._precision)
            scale = scale.astype(self._precision)
        if x.dtype.kind in "iu":
            # The spec divides int32 by the float scale; numpy (and the reference) does it in float64.
            x = x.astype(np.float64)
            scale = scale.astype(np.float64)
        if x.dtype == _BFLOAT16 or scale.dtype == _BFLOAT16:
            x, scale = self._bfloat16_quotient(x, scale)
        if out in _INT_QTYPES.values():
            return self._integer(x, scale, y_zero_point, out)
        return self._float(x, scale, y_zero_point, out)

    def _bfloat16_quotient(self, x, scale):
        # bfloat16 arithmetic rounds the quotient to bfloat16; quantize that value with scale 1.
        quotient = (x.astype(np.float32) / _expand(scale.astype(np.float32), x.shape, self.axis % max(x.ndim, 1),
                                                   self.block_size)).astype(_BFLOAT16).astype(np.float32)
        return quotient, np.ones(scale.shape, np.float32)

    def _integer(self, x, scale, zero_point, out):
        zp = None if zero_point is None else np.asarray(zero_point)
        two_bit = _TWO_BIT.get(out)
        if two_bit is not None:
            container, lo, hi = two_bit
            zp8 = None if zp is None else zp.astype(container)
            q = qmath.quantize(x, scale, zp8, qtype=container, axis=self.axis, block_size=self.block_size)
            return np.clip(q, lo, hi).astype(out)
        return qmath.quantize(x, scale, zp, qtype=out, axis=self.axis, block_size=self.block_size)

    def _float(self, x, scale, zero_point, out):
        axis = self.axis % max(x.ndim, 1)
        s = _expand(scale, x.shape, axis, self.block_size)
        compute = np.result_type(x.dtype, s.dtype)
        x = x.astype(compute, copy=False)
        s = np.asarray(s, dtype=compute)
        if out in _FLOAT8_MAX:
            bound = _FLOAT8_MAX[out] if self.saturate else np.inf
            if zero_point is not None and np.any(np.asarray(zero_point).astype(np.float32) != 0):
                raise InvalidArgument("float8 quantization requires a zero y_zero_point")
            v = call(kq.divide_clamp, x, s, compute.type(-bound), compute.type(bound), dtype=compute)
            return v.astype(out)
        v = call(kq.divide_clamp, x, s, compute.type(-np.inf), compute.type(np.inf), dtype=compute)
        if zero_point is not None:
            v = v + _expand(np.asarray(zero_point).astype(np.float32), x.shape, axis, self.block_size)
        return v.astype(out)


def _tensor_type(enum, what):
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(enum))
    except Exception:
        raise InvalidModel(f"{what}={enum} is not a tensor element type") from None


@register("QuantizeLinear", 10)
class QuantizeLinear10(_QuantizeLinear):
    def __init__(self):
        super().__init__()


@register("QuantizeLinear", 13)
class QuantizeLinear13(_QuantizeLinear):
    def __init__(self, axis=1):
        super().__init__(axis=axis)


@register("QuantizeLinear", 19)
class QuantizeLinear19(_QuantizeLinear):
    def __init__(self, axis=1, saturate=1):
        super().__init__(axis=axis, saturate=saturate)


@register("QuantizeLinear", 21)
class QuantizeLinear21(_QuantizeLinear):
    def __init__(self, axis=1, saturate=1, block_size=0, output_dtype=0):
        super().__init__(axis=axis, saturate=saturate, block_size=block_size, output_dtype=output_dtype)


@register("QuantizeLinear", 23)
class QuantizeLinear23(_QuantizeLinear):
    """Opset 23 adds ``precision`` (the float type of the division); 24, 25 and 28 only add types."""


# --------------------------------------------------------------------------- DequantizeLinear

class _DequantizeLinear(Op):
    """``y = (x - x_zero_point) * x_scale``; per tensor, per axis, blocked."""

    def __init__(self, axis=1, block_size=0, output_dtype=0):
        self.axis = int(axis)
        self.block_size = int(block_size)
        if self.block_size < 0:
            raise InvalidModel(f"block_size must be >= 0, got {self.block_size}")
        self.output_dtype = _tensor_type(int(output_dtype), "output_dtype") if output_dtype else None

    def _check(self, x, scale, zero_point, error):
        if scale is not None:
            check_scale(scale, "x_scale", error)
            if not self.block_size and scale.ndim > 1:
                raise error(f"x_scale must be a scalar or a 1-D tensor, got shape {list(scale.shape)}")
        if x is not None and zero_point is not None:
            zdt = np.asarray(zero_point).dtype
            if zdt != x.dtype:
                raise error(f"x_zero_point has type {zdt} but x has type {x.dtype}")
        if zero_point is not None and scale is not None:
            check_zero_point(zero_point, "x_zero_point", shape=scale.shape, error=error)
        if x is not None and scale is not None and (scale.size > 1 or self.block_size):
            _QuantizeLinear._layout_check(self, x, scale, error)

    def prepare(self, constants):
        x, scale = constants[0], constants[1]
        zero_point = constants[2] if len(constants) > 2 else None
        self._check(x, None if scale is None else np.asarray(scale), zero_point, InvalidModel)
        # Constant per-tensor float32 parameters (see QuantizeLinear): the flat kernel, no per-call checks.
        self._flat = None
        zdt = None if zero_point is None else np.asarray(zero_point).dtype
        if isinstance(scale, np.ndarray) and scale.dtype == np.float32 and scale.size == 1 and not self.block_size \
                and self.output_dtype in (None, np.float32) and (zdt is None or zdt in _FLAT_QTYPES) \
                and (len(constants) < 3 or zero_point is not None):
            self._flat = (scale, zero_point, scale.reshape(-1)[0], np.float32(scalar_int(zero_point)),
                          (zdt,) if zdt is not None else _FLAT_QTYPES)

    def run(self, x, x_scale, x_zero_point=None):
        flat = self._flat
        if flat is not None and x_scale is flat[0] and x_zero_point is flat[1] and x.dtype in flat[4]:
            _, _, s, z, _ = flat
            y = np.empty(x.shape, np.float32)
            if y.size:
                kernel = kquant.dequantize_flat_parallel if y.size >= kq.PARALLEL_MIN_ELEMENTS \
                    and num_threads() > 1 else kquant.dequantize_flat
                kernel(np.ascontiguousarray(x).reshape(-1), s, z, y.reshape(-1))
            return y
        scale = np.asarray(x_scale)
        self._check(x, scale, x_zero_point, InvalidArgument)
        zp = None if x_zero_point is None else np.asarray(x_zero_point)
        out_dtype = self.output_dtype
        if scale.dtype == _BFLOAT16:
            out_dtype = out_dtype or _BFLOAT16
            scale = scale.astype(np.float32)
        two_bit = _TWO_BIT.get(x.dtype)
        if two_bit is not None:
            x = x.astype(two_bit[0])
            zp = None if zp is None else zp.astype(two_bit[0])
        elif x.dtype in _FLOAT8_MAX or x.dtype in _SMALL_FLOATS:
            if zp is not None and x.dtype in _FLOAT8_MAX and np.any(zp.astype(np.float32) != 0):
                raise InvalidArgument("float8 dequantization requires a zero x_zero_point")
            x = x.astype(np.float32)
            zp = None
        return qmath.dequantize(x, scale, zp, axis=self.axis, block_size=self.block_size,
                                output_dtype=out_dtype)


@register("DequantizeLinear", 10)
class DequantizeLinear10(_DequantizeLinear):
    def __init__(self):
        super().__init__()


@register("DequantizeLinear", 13)
class DequantizeLinear13(_DequantizeLinear):
    def __init__(self, axis=1):
        super().__init__(axis=axis)


@register("DequantizeLinear", 19)
class DequantizeLinear19(DequantizeLinear13):
    """Opset 19 adds float16/bfloat16 scales and float8 inputs."""


@register("DequantizeLinear", 21)
class DequantizeLinear21(_DequantizeLinear):
    def __init__(self, axis=1, block_size=0):
        super().__init__(axis=axis, block_size=block_size)


@register("DequantizeLinear", 23)
class DequantizeLinear23(_DequantizeLinear):
    """Opset 23 adds ``output_dtype``; 24, 25 and 28 only add types."""


# --------------------------------------------------------------------------- DynamicQuantizeLinear

def dynamic_quantize_rows(x2, Kp):
    """DynamicQuantizeLinear of float32 ``x2`` (M, K), C-contiguous, in the int8 GEMM's row form.

    Returns (rows (M, Kp) uint8 zero-padded past K, their int32 sums, float32 scale, uint8 zero point).
    """
    rows = kamx.padded_rows(x2.shape[0], Kp)
    row_sum = np.empty(x2.shape[0], np.int32)
    if x2.size < kdyn.PARALLEL_MIN_ELEMENTS or num_threads() == 1:
        scale, zero_point = kdyn.quantize_small(x2, rows, row_sum) if x2.size else (np.float32(1 / 255), 0.0)
    else:
        lo, hi = kdyn.range_keys_parallel(x2.reshape(-1).view(np.int32), min(64, x2.size // 4096))
        scale, zero_point = kdyn.quantization_params(lo, hi)
        kdyn.quantize_rows_parallel(x2, scale, zero_point, rows, row_sum)
    return rows, row_sum, np.float32(scale), np.uint8(zero_point)


def dynamic_quantize(x):
    """ONNX DynamicQuantizeLinear on float32 ``x``: (uint8 y, float32 scale, uint8 zero point)."""
    x32 = np.asarray(x, dtype=np.float32)
    if not x32.flags.c_contiguous:
        x32 = x32.copy()   # (np.ascontiguousarray would make a 0-d input 1-d)
    K = x32.shape[-1] if x32.ndim else 1
    rows, _, scale, zero_point = dynamic_quantize_rows(x32.reshape(-1, K) if K else x32.reshape(0, 0), K)
    return rows.reshape(x32.shape), scale, zero_point


@register("DynamicQuantizeLinear", 11)
class DynamicQuantizeLinear(Op):
    def run(self, x):
        if x.dtype != np.float32:
            raise InvalidArgument(f"DynamicQuantizeLinear expects float32 input, got {x.dtype}")
        y, scale, zero_point = dynamic_quantize(x)
        return y, np.array(scale, dtype=np.float32), np.array(zero_point, dtype=np.uint8)


# --------------------------------------------------------------------------- quantized matmul

def _vector_for(param, n, what, error, axis_len_name):
    """A scale/zero point that is per tensor or per column (last axis) as a length-``n`` vector."""
    param = np.asarray(param)
    if param.size == 1:
        return np.broadcast_to(param.reshape(-1), (n,))
    if param.shape[-1] == n and param.size == n:
        return param.reshape(n)
    raise error(f"{what} has shape {list(param.shape)}; expected a scalar or {n} values (one per "
                f"{axis_len_name})")


class QuantizedMatMul:
    """Shared body of QLinearMatMul, MatMulInteger, MatMulIntegerToFloat and friends.

    ``b`` may be constant (packed once in ``prepare_b``) or a run-time tensor (packed per call).
    """

    def __init__(self):
        self._packs = _ConstantCache()
        self._scalar_za_rows = ShapeCache()

    def prepare_b(self, b, zb):
        if b is None or b.ndim < 1 or b.dtype not in EIGHT_BIT:
            return
        if zb is not None and np.asarray(zb).dtype != b.dtype:
            return
        self._packs.put((b, zb), self._pack_all(b, zb))

    @staticmethod
    def _pack_all(b, zb, error=InvalidModel):
        b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
        N = b2.shape[-1]
        if b2.ndim == 2:
            zcol = _column_zero_points(zb, N, b.dtype, error)
            return kgemm.pack_weights([b2], zcol.reshape(1, N), tail_slack=True)
        batch = b2.shape[:-2]
        packs = []
        for index in np.ndindex(*batch):
            z = zb if zb is None or np.asarray(zb).ndim < 3 else _batch_pick(np.asarray(zb), index)
            packs.append(kgemm.pack_weights([b2[index]], _column_zero_points(z, N, b.dtype, error).reshape(1, N),
                                             tail_slack=True))
        return packs

    def packed(self, b, zb, error):
        found = self._packs.get((b, zb))
        if found is not None:
            return found
        return self._pack_all(b, zb, error)

    def compute(self, a, za, b, zb, epilogue_for, out_dtype, error=InvalidArgument):
        """``a @ b`` with numpy.matmul shape rules; ``epilogue_for(rows, N)`` builds the epilogue.

        ``za`` is a scalar or per-row zero point, ``zb`` a scalar or per-column one. The result has
        ``out_dtype`` (8-bit outputs are written through a uint8 view).
        """
        if a.dtype not in EIGHT_BIT or b.dtype not in EIGHT_BIT:
            raise error(f"expected int8/uint8 inputs, got {a.dtype} and {b.dtype}")
        if a.ndim == 0 or b.ndim == 0:
            raise error("matmul inputs must have at least one dimension")
        a_vec, b_vec = a.ndim == 1, b.ndim == 1
        a2 = a.reshape(1, -1) if a_vec else a
        b2 = b.reshape(-1, 1) if b_vec else b
        K, N = b2.shape[-2], b2.shape[-1]
        if a2.shape[-1] != K:
            raise error(f"matmul shapes {list(a.shape)} and {list(b.shape)} do not align ({a2.shape[-1]} != {K})")
        M = a2.shape[-2]
        packs = self.packed(b, zb, error)
        flip = flip_of(a.dtype)
        if b2.ndim == 2:
            batch = a2.shape[:-2]
            rows = math.prod(batch) * M
            za_rows = self.shifted_row_zero_points(za, a2.shape[:-1], a.dtype, flip, error)
            out = self.rows_times_packed(np.ascontiguousarray(a2).reshape(rows, K), za_rows, flip, packs,
                                         epilogue_for(rows, N, None), out_dtype)
            result = out.reshape(batch + (M, N))
        else:
            batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
            a_b = np.broadcast_to(a2, batch + (M, K))
            za_b = np.broadcast_to(_row_zero_points(za, a2.shape[:-1], a.dtype, error), batch + (M,))
            result = np.empty(batch + (M, N), out_dtype)
            b_index = np.broadcast_to(np.arange(int(np.prod(b2.shape[:-2], dtype=np.int64))).reshape(
                b2.shape[:-2]), batch)
            for index in np.ndindex(*batch):
                pack = packs[int(b_index[index])]
                epi = epilogue_for(M, N, index)
                kgemm.matmul(np.ascontiguousarray(a_b[index]).view(np.uint8), flip,
                             za_b[index].astype(np.int32) + (128 if flip else 0), pack, epi,
                             _writable_view(result[index]))
        if a_vec:
            result = result[..., 0, :]
        if b_vec:
            result = result[..., 0]
        return result

    @staticmethod
    def rows_times_packed(a_rows, za_rows, flip, packs, epi, out_dtype):
        """(rows, N) of ``out_dtype``: the contiguous 8-bit ``a_rows`` (rows, K) times the packed b,
        ``za_rows`` the rows' zero points in the drivers' uint8 domain; small products on one thread."""
        rows, K = a_rows.shape
        out = np.empty((rows, packs.N), out_dtype)
        call_with_threads(threads_for(rows * K * packs.N), kgemm.matmul, a_rows.view(np.uint8), flip, za_rows, packs,
                          epi, _writable_view(out))
        return out

    def shifted_row_zero_points(self, za, row_shape, dtype, flip, error):
        """:func:`_row_zero_points` flattened, in the drivers' uint8 domain. A scalar zero point's
        rows are kept per (value, rows): building them cost more than a small layer's GEMM. The
        key is the value, not the array, so a feed changed in place between runs is read afresh."""
        if type(za) is not np.ndarray or za.size != 1 or za.dtype != dtype:
            return _row_zero_points(za, row_shape, dtype, error).reshape(-1) + (128 if flip else 0)
        key = (za.item(), row_shape, flip)
        rows = self._scalar_za_rows.get(key)
        if rows is None:
            rows = self._scalar_za_rows.put(key, np.full(math.prod(row_shape), key[0] + (128 if flip else 0),
                                                         np.int32))
        return rows


def _writable_view(out):
    return out.view(np.uint8) if out.dtype in EIGHT_BIT else out


def _column_zero_points(zb, N, dtype, error):
    if zb is None:
        return np.zeros(N, np.int32)
    zb = np.asarray(zb)
    if zb.dtype != dtype:
        raise error(f"b's zero point has type {zb.dtype} but b has type {np.dtype(dtype)}")
    if zb.size == 1:
        return np.full(N, int(zb.reshape(-1)[0]), np.int32)
    if zb.size == N and zb.shape[-1] == N:
        return zb.reshape(N).astype(np.int32)
    raise error(f"b's zero point has shape {list(zb.shape)}; expected a scalar or {N} values (one per column)")


def _row_zero_points(za, row_shape, dtype, error):
    """``za`` (scalar, (M,), or (..., M, 1)) as int32 broadcast to ``row_shape`` (..., M)."""
    if za is None:
        return np.zeros(row_shape, np.int32)
    za = np.asarray(za)
    if za.dtype != dtype:
        raise error(f"a's zero point has type {za.dtype} but a has type {np.dtype(dtype)}")
    if za.size == 1:
        return np.full(row_shape, int(za.reshape(-1)[0]), np.int32)
    squeezed = za[..., 0] if za.ndim >= 2 and za.shape[-1] == 1 else za
    try:
        return np.broadcast_to(squeezed.astype(np.int32), row_shape)
    except ValueError:
        raise error(f"a's zero point has shape {list(za.shape)}; expected a scalar or one per row of "
                    f"a (rows shape {list(row_shape)})") from None


def requant_multiplier(a_scale, b_scale, y_scale):
    """``a_scale * b_scale / y_scale`` in the scales' float type (as the reference), as float64."""
    return (np.asarray(a_scale) * np.asarray(b_scale) / np.asarray(y_scale)).astype(np.float64)


@register("QLinearMatMul", 10)
class QLinearMatMul(Op):
    """``y = saturate(rint((a - za)(b - zb) * a_scale*b_scale/y_scale) + zy)`` with exact int32 sums."""

    def __init__(self):
        self._mm = QuantizedMatMul()
        self._prepared = None

    def _check(self, inputs, error):
        a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = inputs
        for name, s in (("a_scale", a_scale), ("b_scale", b_scale), ("y_scale", y_scale)):
            if s is not None:
                check_scale(s, name, error, scalar=(name == "y_scale"))
        for name, z, s, data in (("a_zero_point", a_zp, a_scale, a), ("b_zero_point", b_zp, b_scale, b),
                                 ("y_zero_point", y_zp, y_scale, None)):
            if z is None:
                continue
            z = np.asarray(z)
            if z.dtype not in EIGHT_BIT:
                raise error(f"{name} must be int8 or uint8, got {z.dtype}")
            if data is not None and z.dtype != data.dtype:
                raise error(f"{name} has type {z.dtype} but its tensor has type {data.dtype}")
            if s is not None and np.asarray(s).shape != z.shape and np.asarray(s).size != z.size:
                raise error(f"{name} has shape {list(z.shape)} but its scale has shape {list(np.asarray(s).shape)}")
        if b is not None and b_scale is not None and np.asarray(b_scale).size > 1:
            _vector_for(b_scale, b.shape[-1], "b_scale", error, "column of b")

    def prepare(self, constants):
        self._check(constants, InvalidModel)
        b, b_zp = constants[3], constants[5]
        if b is not None and b.dtype in EIGHT_BIT:
            self._mm.prepare_b(b, b_zp)
            self._prepare_run(constants)

    def _prepare_run(self, constants):
        """The epilogue and packed b, when every parameter is a constant, b is 2-D and a's scale and
        zero point are scalars: a run given these very arrays checks a's type and depth and multiplies
        (checking the scales and building the epilogue on every run cost more than a small GEMM)."""
        a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = constants[1:8]
        if any(v is None for v in (a_scale, a_zp, b_scale, y_scale, y_zp)) or b.ndim != 2:
            return
        a_zp, packs = np.asarray(a_zp), self._mm._packs.get((b, b_zp))
        if packs is None or a_zp.dtype not in EIGHT_BIT or a_zp.size != 1 or np.asarray(a_scale).size != 1:
            return
        out_dtype = np.asarray(y_zp).dtype
        qmin, qmax = qbounds(out_dtype)
        N = b.shape[1]
        mult = requant_multiplier(np.asarray(a_scale).reshape(()), _vector_for(b_scale, N, "b_scale", InvalidModel,
                                                                               "column of b"),
                                  np.asarray(y_scale).reshape(()))
        epi = kgemm.Epilogue(1, 1, N, mult=mult, zy=scalar_int(y_zp), qmin=qmin, qmax=qmax)
        self._prepared = (tuple(constants[1:8]), a_zp.dtype, flip_of(a_zp.dtype), packs, epi, out_dtype)

    def run(self, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
        prepared = self._prepared
        if prepared is not None and a.dtype == prepared[1] and a.ndim >= 2 and all(map(operator.is_, prepared[0], (
                a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point))):
            _, a_dtype, flip, packs, epi, out_dtype = prepared
            if a.shape[-1] == packs.K:
                rows = math.prod(a.shape[:-1])
                za_rows = self._mm.shifted_row_zero_points(a_zero_point, (rows,), a_dtype, flip, InvalidArgument)
                out = self._mm.rows_times_packed(np.ascontiguousarray(a).reshape(rows, packs.K), za_rows, flip, packs,
                                                 epi, out_dtype)
                return out.reshape(a.shape[:-1] + (packs.N,))
        inputs = (a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point)
        self._check(inputs, InvalidArgument)
        out_dtype = np.asarray(y_zero_point).dtype
        qmin, qmax = qbounds(out_dtype)
        zy = scalar_int(y_zero_point)
        a_scale = np.asarray(a_scale)
        per_row = a_scale.size > 1
        if per_row:
            acc = self._mm.compute(a, a_zero_point, b, b_zero_point,
                                   lambda rows, n, index: kgemm.Epilogue(0, 1, n), np.int32)
            a_col = a_scale if a_scale.ndim >= 2 else a_scale.reshape(-1, 1)
            mult = requant_multiplier(a_col, b_scale, y_scale)
            out = call(kq.requantize_int32, acc, np.int32(0), mult, np.float64(zy), np.float64(qmin),
                       np.float64(qmax), dtype=out_dtype)
            return out
        b_scale = np.asarray(b_scale)

        def epilogue_for(rows, n, index):
            bs = b_scale if index is None else _batch_pick(b_scale, index)
            mult = requant_multiplier(a_scale.reshape(()), _vector_for(bs, n, "b_scale", InvalidArgument,
                                                                        "column of b"), y_scale.reshape(()))
            return kgemm.Epilogue(1, 1, n, mult=mult, zy=zy, qmin=qmin, qmax=qmax)

        return self._mm.compute(a, a_zero_point, b, b_zero_point, epilogue_for, out_dtype)


def _batch_pick(param, index):
    """The (…, 1, N) per-batch parameter for batch ``index`` (broadcast over missing batch dims)."""
    lead = param.shape[:-2]
    if not lead:
        return param
    pick = tuple(i if d > 1 else 0 for i, d in zip(index[len(index) - len(lead):], lead))
    return param[pick]


@register("QLinearMatMul", 21)
class QLinearMatMul21(QLinearMatMul):
    """Opset 21 allows float16/bfloat16 scales (the multiplier is computed in their type)."""


@register("MatMulInteger", 10)
class MatMulInteger(Op):
    """``(a - a_zero_point) @ (b - b_zero_point)`` in int32."""

    def __init__(self):
        self._mm = QuantizedMatMul()

    def prepare(self, constants):
        a, b = constants[0], constants[1]
        zb = constants[3] if len(constants) > 3 else None
        za = constants[2] if len(constants) > 2 else None
        for name, z, data in (("a_zero_point", za, a), ("b_zero_point", zb, b)):
            if z is not None:
                z = np.asarray(z)
                if z.dtype not in EIGHT_BIT:
                    raise InvalidModel(f"{name} must be int8 or uint8, got {z.dtype}")
                if data is not None and z.dtype != data.dtype:
                    raise InvalidModel(f"{name} has type {z.dtype} but its tensor has type {data.dtype}")
        if b is not None and b.dtype in EIGHT_BIT:
            self._mm.prepare_b(b, zb)

    def run(self, A, B, a_zero_point=None, b_zero_point=None):
        return self._mm.compute(A, a_zero_point, B, b_zero_point,
                                lambda rows, n, index: kgemm.Epilogue(0, 1, n), np.int32)


# --------------------------------------------------------------------------- convolution

_AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


class ConvGeometry:
    """Attribute parsing and output-shape arithmetic shared by QLinearConv and ConvInteger."""

    def __init__(self, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
        if auto_pad not in _AUTO_PAD:
            raise InvalidModel(f"auto_pad must be one of {', '.join(_AUTO_PAD)}, got {auto_pad!r}")
        self.auto_pad = auto_pad
        self.dilations = None if dilations is None else [int(v) for v in dilations]
        self.group = int(group)
        if self.group < 1:
            raise InvalidModel(f"group must be >= 1, got {self.group}")
        self.kernel_shape = None if kernel_shape is None else [int(v) for v in kernel_shape]
        self.pads = None if pads is None else [int(v) for v in pads]
        self.strides = None if strides is None else [int(v) for v in strides]
        for name, values in (("dilations", self.dilations), ("strides", self.strides)):
            if values is not None and any(v < 1 for v in values):
                raise InvalidModel(f"{name} must be >= 1, got {values}")
        if self.pads is not None and any(v < 0 for v in self.pads):
            raise InvalidModel(f"pads must be >= 0, got {self.pads}")

    def check_weights(self, x_shape, w_shape, error):
        if len(w_shape) < 3:
            raise error(f"w must have rank >= 3 (M, C/group, k...), got shape {list(w_shape)}")
        n_sp = len(w_shape) - 2
        if n_sp > 3:
            raise error(f"at most 3 spatial axes are supported, got {n_sp}")
        if self.kernel_shape is not None and list(w_shape[2:]) != self.kernel_shape:
            raise error(f"kernel_shape {self.kernel_shape} differs from the weights' {list(w_shape[2:])}")
        if w_shape[0] % self.group:
            raise error(f"{w_shape[0]} output channels are not divisible by group={self.group}")
        for name, values in (("dilations", self.dilations), ("strides", self.strides)):
            if values is not None and len(values) != n_sp:
                raise error(f"{name} has {len(values)} values for {n_sp} spatial axes")
        if self.pads is not None and len(self.pads) != 2 * n_sp:
            raise error(f"pads has {len(self.pads)} values; {n_sp} spatial axes need {2 * n_sp}")
        if x_shape is not None:
            if len(x_shape) != len(w_shape):
                raise error(f"x has rank {len(x_shape)} but w has rank {len(w_shape)}")
            if x_shape[1] != w_shape[1] * self.group:
                raise error(f"x has {x_shape[1]} channels; w expects {w_shape[1]} per group x {self.group} groups")

    def resolve(self, x_shape, w_shape, error):
        """(kernel, strides, dilations, begins, ends, outs) over the real spatial axes."""
        self.check_weights(x_shape, w_shape, error)
        n_sp = len(w_shape) - 2
        kernel = list(w_shape[2:])
        strides = self.strides or [1] * n_sp
        dilations = self.dilations or [1] * n_sp
        sizes = list(x_shape[2:])
        begins, ends, outs = [0] * n_sp, [0] * n_sp, []
        for i in range(n_sp):
            extent = (kernel[i] - 1) * dilations[i] + 1
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = -(-sizes[i] // strides[i])
                total = max((out - 1) * strides[i] + extent - sizes[i], 0)
                half = total // 2
                begins[i], ends[i] = (half, total - half) if self.auto_pad == "SAME_UPPER" else (total - half, half)
            elif self.auto_pad == "VALID":
                out = (sizes[i] - extent) // strides[i] + 1
            else:
                if self.pads is not None:
                    begins[i], ends[i] = self.pads[i], self.pads[i + n_sp]
                out = (sizes[i] + begins[i] + ends[i] - extent) // strides[i] + 1
            if out < 0:
                out = 0
            outs.append(out)
        return kernel, strides, dilations, begins, ends, outs


def _canonical3(values, fill):
    """A per-spatial-axis list padded in front to three axes (D, H, W)."""
    return [fill] * (3 - len(values)) + list(values)


class QuantizedConv:
    """Shared body of QLinearConv and ConvInteger: weight packing, binding per input shape and the kernel calls.

    Weights are packed in ``prepare``; the epilogue (bias, multipliers, output zero point) is built
    there too when its inputs are constants. What depends on the input shape (output shape, buffer
    geometry, work split) is bound once per shape, so a run on a known shape is a few dictionary
    look-ups, one buffer fill at most and one kernel call.
    """

    def __init__(self, geometry: ConvGeometry, channels_last=False):
        self.geometry = geometry
        self.channels_last = bool(channels_last)
        self._packs = _ConstantCache()
        self._epilogues = _ConstantCache()
        self._bindings = ShapeCache()

    def depthwise(self, x_channels, w_shape):
        g = self.geometry.group
        return g > 1 and w_shape[1] == 1 and x_channels == g

    def is_depthwise(self, w_shape):
        return self.geometry.group > 1 and w_shape[1] == 1

    def prepare(self, w, wz, error=InvalidModel):
        if w is None or w.dtype not in EIGHT_BIT or w.ndim < 3:
            return
        self.geometry.check_weights(None, w.shape, error)
        self._packs.put((w, wz), self._pack(w, wz, error))

    def prepare_epilogue(self, arrays, epilogue_for, w_shape):
        """Builds the epilogue once; ``arrays`` are the inputs it is made from, all constants."""
        self._epilogues.put(arrays, self._epilogue(epilogue_for, w_shape))

    def prepared_epilogue(self, arrays):
        return self._epilogues.get(arrays)

    def _epilogue(self, epilogue_for, w_shape):
        # The depthwise kernel takes one row of Cout columns; the GEMM one row per group.
        M, G = w_shape[0], self.geometry.group
        return epilogue_for(1, M) if self.is_depthwise(w_shape) else epilogue_for(G, M // G)

    def _pack(self, w, wz, error):
        M, Cg = w.shape[0], w.shape[1]
        G = self.geometry.group
        N = M // G
        taps = int(np.prod(w.shape[2:], dtype=np.int64))
        zw = _conv_weight_zero_points(wz, M, w.dtype, error)
        if G > 1 and Cg == 1:
            centered = (w.reshape(M, taps).astype(np.int32) - zw[:, None]).astype(np.int32)
            wt = np.ascontiguousarray(centered.T)
            return ("depthwise", wt, wt.sum(axis=0, dtype=np.int64), {})
        cgp = (Cg + 3) // 4 * 4
        mats = [np.ascontiguousarray(w[g * N:(g + 1) * N].reshape(N, Cg, taps).transpose(2, 1, 0)).reshape(
            taps * Cg, N) for g in range(G)]
        kmap = (np.arange(taps)[:, None] * cgp + np.arange(Cg)[None, :]).reshape(-1)
        packed = kgemm.pack_weights(mats, zw.reshape(G, N), kmap=kmap, Kp=taps * cgp, tail_slack=True)
        packed.K = taps * Cg
        return ("gemm", packed, cgp, packed.zb_nonzero)

    def _bind(self, x, w, packs, error):
        if x.ndim < 3:
            layout = "(N, spatial..., C)" if self.channels_last else "(N, C, spatial...)"
            raise error(f"x must have rank >= 3 {layout}, got shape {list(x.shape)}")
        nchw = (x.shape[0], x.shape[-1]) + x.shape[1:-1] if self.channels_last else x.shape
        kernel, strides, dilations, begins, ends, outs = self.geometry.resolve(nchw, w.shape, error)
        M = w.shape[0]
        depthwise = packs[0] == "depthwise"
        geometry = (self.geometry.group, _canonical3(kernel, 1), _canonical3(strides, 1), _canonical3(dilations, 1),
                    _canonical3(begins, 0), _canonical3(ends, 0), _canonical3(outs, 1) + [M],
                    0 if depthwise else packs[2])
        n_panels = 0 if depthwise else (packs[1].N + packs[1].nr - 1) // packs[1].nr
        # Multiply-adds per output: the packed depth of a GEMM convolution, the taps of a depthwise one.
        depth = math.prod(kernel) if depthwise else packs[1].K
        threads = threads_for(x.shape[0] * math.prod(outs) * M * depth)
        # Bound for the threads it will run on, so that the work is split for them.
        bound = call_with_threads(threads, kconv.bind, x.shape, self.channels_last, flip_of(x.dtype), geometry,
                                  n_panels, depthwise)
        bound.out_shape = (x.shape[0],) + tuple(outs) + (M,) if self.channels_last else (x.shape[0], M) + tuple(outs)
        return bound, threads

    def compute(self, x, xz, w, wz, epilogue_for, out_dtype, epi=None, error=InvalidArgument):
        """The convolution; ``epi`` is the prepared epilogue when there is one, else ``epilogue_for``
        (groups, columns) makes it."""
        if x.dtype not in EIGHT_BIT or w.dtype not in EIGHT_BIT:
            raise error(f"expected int8/uint8 x and w, got {x.dtype} and {w.dtype}")
        if xz is not None:
            xz = np.asarray(xz)
            if xz.dtype != x.dtype:
                raise error(f"x's zero point has type {xz.dtype} but x has type {x.dtype}")
            if xz.size != 1:
                raise error(f"x's zero point must be a scalar, got shape {list(xz.shape)}")
        packs = self._packs.get((w, wz)) or self._pack(w, wz, error)
        if epi is None:
            epi = self._epilogue(epilogue_for, w.shape)
        return self.execute(x, w, packs, epi, shifted(scalar_int(xz), x.dtype), out_dtype, error)

    def execute(self, x, w, packs, epi, zx, out_dtype, error=InvalidArgument):
        """The convolution of an 8-bit ``x`` whose parameters are checked and resolved: ``packs`` the
        packed ``w``, ``epi`` its epilogue, ``zx`` x's zero point shifted to the uint8 domain."""
        key = (x.shape, x.dtype, w.shape, num_threads())
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings.put(key, self._bind(x, w, packs, error))
        bound, threads = binding
        out = np.empty(bound.out3_shape, out_dtype)
        call_with_threads(threads, self._convolve, bound, x, zx, w, packs, epi, out)
        return out.reshape(bound.out_shape)

    def _convolve(self, bound, x, zx, w, packs, epi, out):
        x5 = np.ascontiguousarray(x).reshape(bound.x5_shape).view(np.uint8)
        xp = kconv.fill_buffer(bound, x5, flip_of(x.dtype), zx,
                               None if bound.direct else _scratch_buffer(bound.buffer_size, np.uint8))
        if packs[0] == "depthwise":
            multiplier = w.shape[0] // bound.x5_shape[-1 if self.channels_last else 1]
            kconv.run_depthwise(bound, xp, packs[1], self._depthwise_const(packs, epi, zx), multiplier, epi,
                                self.channels_last, _writable_view(out))
        else:
            # The runner binds this weight packing, epilogue and zero point: a prepared node's are the same objects
            # on every run.
            runner = bound.runner
            if runner is None or runner[0] is not packs or runner[1] is not epi or runner[2] != zx:
                runner = bound.runner = (packs, epi, zx, kconv.conv_runner(bound, zx, packs[1], packs[3], epi,
                                                                           self.channels_last, packs[2]))
            runner[3](xp, _writable_view(out))

    @staticmethod
    def _depthwise_const(packs, epi, zx):
        """The depthwise kernel's ``bias - zx * sum(w - zw)``, kept per (bias array, zero point)."""
        memo = packs[3]
        key = (id(epi.bias), zx)
        entry = memo.get(key)
        if entry is None or entry[0] is not epi.bias:
            const = (epi.bias.reshape(-1).astype(np.int64) - np.int64(zx) * packs[2]).astype(np.int32)
            if len(memo) >= 16:
                memo.clear()
            entry = memo[key] = (epi.bias, const)
        return entry[1]


def _conv_weight_zero_points(wz, M, dtype, error):
    if wz is None:
        return np.zeros(M, np.int32)
    wz = np.asarray(wz)
    if wz.dtype != dtype:
        raise error(f"w's zero point has type {wz.dtype} but w has type {np.dtype(dtype)}")
    if wz.size == 1:
        return np.full(M, int(wz.reshape(-1)[0]), np.int32)
    if wz.ndim == 1 and wz.size == M:
        return wz.astype(np.int32)
    raise error(f"w's zero point has shape {list(wz.shape)}; expected a scalar or {M} values (one per "
                "output channel)")


def _per_channel(values, M, name, error):
    values = np.asarray(values)
    if values.size == 1:
        return np.broadcast_to(values.reshape(-1), (M,))
    if values.ndim == 1 and values.size == M:
        return values
    raise error(f"{name} has shape {list(values.shape)}; expected a scalar or {M} values (one per "
                "output channel)")


@register("QLinearConv", 10)
class QLinearConv(Op):
    """Quantized convolution: exact int32 sums (+ int32 bias), requantized per output channel."""

    def __init__(self, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
        self.conv = QuantizedConv(ConvGeometry(auto_pad, dilations, group, kernel_shape, pads, strides))
        self._prepared = None

    def _check(self, inputs, error):
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = inputs[:8]
        bias = inputs[8] if len(inputs) > 8 else None
        if x_scale is not None:
            check_scale(x_scale, "x_scale", error, scalar=True)
        if y_scale is not None:
            check_scale(y_scale, "y_scale", error, scalar=True)
        M = None if w is None else w.shape[0]
        if w_scale is not None:
            check_scale(w_scale, "w_scale", error)
            if M is not None:
                _per_channel(w_scale, M, "w_scale", error)
        for name, z, data, s in (("x_zero_point", x_zp, x, x_scale), ("w_zero_point", w_zp, w, w_scale),
                                 ("y_zero_point", y_zp, None, y_scale)):
            if z is None:
                continue
            z = np.asarray(z)
            if z.dtype not in EIGHT_BIT:
                raise error(f"{name} must be int8 or uint8, got {z.dtype}")
            if data is not None and z.dtype != data.dtype:
                raise error(f"{name} has type {z.dtype} but its tensor has type {data.dtype}")
            if name != "w_zero_point" and z.size != 1:
                raise error(f"{name} must be a scalar, got shape {list(z.shape)}")
            if name == "w_zero_point" and M is not None:
                _per_channel(z, M, name, error)
        if bias is not None:
            if bias.dtype != np.int32:
                raise error(f"B must be int32 (quantized with scale x_scale * w_scale), got {bias.dtype}")
            if M is not None and (bias.ndim != 1 or bias.size != M):
                raise error(f"B must have {M} values (one per output channel), got shape {list(bias.shape)}")
        if w is not None:
            x_shape = None if x is None else x.shape
            if x_shape is not None and self.conv.channels_last and len(x_shape) >= 3:
                x_shape = (x_shape[0], x_shape[-1]) + x_shape[1:-1]
            self.conv.geometry.check_weights(x_shape, w.shape, error)

    def prepare(self, constants):
        self._check(constants, InvalidModel)
        self.conv.prepare(constants[3], constants[5])
        w = constants[3]
        if w is not None and w.dtype in EIGHT_BIT and w.ndim >= 3:
            params = self._params(list(constants[:9]) + [None] * (9 - len(constants)))
            if len(constants) < 9:
                params = params[:-1] + (_NO_BIAS,)
            if all(p is not None for p in params):
                self.conv.prepare_epilogue(params, self._epilogue_for(*params[1:], M=w.shape[0]), w.shape)
                self._prepare_run(constants)

    def _prepare_run(self, constants):
        """Everything a run takes from the parameters, when they are all constants (x's zero point
        included): a run given these very arrays only checks x's type and convolves."""
        parameters = tuple(constants[1:9]) + (None,) * (9 - len(constants))
        x_zp, w, w_zp = parameters[1], parameters[2], parameters[4]
        if x_zp is None or np.asarray(x_zp).dtype not in EIGHT_BIT or (
                w_zp is not None and np.asarray(w_zp).dtype != w.dtype):
            return
        x_dtype = np.asarray(x_zp).dtype
        packs = self.conv._packs.get((w, w_zp))
        epi = self.conv.prepared_epilogue(self._params((None,) + parameters[:7] + (
            _NO_BIAS if parameters[7] is None else parameters[7],)))
        if packs is not None and epi is not None:
            zx = shifted(scalar_int(x_zp), x_dtype)
            self._prepared = (parameters, x_dtype, packs, epi, zx, np.asarray(parameters[6]).dtype)

    @staticmethod
    def _params(inputs):
        """The inputs the epilogue is made from: w, scales, output zero point and bias."""
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B = inputs
        return (w, x_scale, w_scale, y_scale, y_zp, B)

    @staticmethod
    def _epilogue_for(x_scale, w_scale, y_scale, y_zero_point, B, M):
        out_dtype = np.asarray(y_zero_point).dtype
        qmin, qmax = qbounds(out_dtype)
        mult = requant_multiplier(np.asarray(x_scale).reshape(()), _per_channel(w_scale, M, "w_scale",
                                                                                 InvalidArgument),
                                  np.asarray(y_scale).reshape(()))
        bias = np.zeros(M, np.int32) if B is None or B is _NO_BIAS else B

        def epilogue_for(groups, n):
            return kgemm.Epilogue(1, groups, n, bias=bias.reshape(groups, n), mult=mult.reshape(groups, n),
                                  zy=scalar_int(y_zero_point), qmin=qmin, qmax=qmax)
        return epilogue_for

    def run(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None):
        prepared = self._prepared
        if prepared is not None and x.dtype == prepared[1] and all(map(operator.is_, prepared[0], (
                x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B))):
            parameters, _, packs, epi, zx, out_dtype = prepared
            return self.conv.execute(x, w, packs, epi, zx, out_dtype)
        epi = self.conv.prepared_epilogue((w, x_scale, w_scale, y_scale, y_zero_point, _NO_BIAS if B is None else B))
        if epi is None:
            # Parameters that are not the session's constants: checked and turned into an epilogue now.
            self._check((x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B),
                        InvalidArgument)
        if w_zero_point is not None and np.asarray(w_zero_point).dtype != w.dtype:
            raise InvalidArgument(f"w_zero_point has type {np.asarray(w_zero_point).dtype} but w has type {w.dtype}")
        def epilogue_for(groups, n):     # only called when the parameters are not the prepared constants
            return self._epilogue_for(x_scale, w_scale, y_scale, y_zero_point, B, w.shape[0])(groups, n)

        return self.conv.compute(x, x_zero_point, w, w_zero_point, epilogue_for, y_zero_point.dtype, epi)


# A stand-in for an omitted bias, so that "no bias" is a constant the epilogue cache can key on.
_NO_BIAS = np.zeros(0, np.int32)


@register("ConvInteger", 10)
class ConvInteger(Op):
    """``conv(x - x_zero_point, w - w_zero_point)`` in int32."""

    def __init__(self, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
        self.conv = QuantizedConv(ConvGeometry(auto_pad, dilations, group, kernel_shape, pads, strides))

    def prepare(self, constants):
        w = constants[1]
        wz = constants[3] if len(constants) > 3 else None
        xz = constants[2] if len(constants) > 2 else None
        if xz is not None and np.asarray(xz).size != 1:
            raise InvalidModel(f"x_zero_point must be a scalar, got shape {list(np.asarray(xz).shape)}")
        if w is not None and wz is not None:
            _conv_weight_zero_points(wz, w.shape[0], w.dtype, InvalidModel)
        self.conv.prepare(w, wz)
        if w is not None and w.dtype in EIGHT_BIT and w.ndim >= 3:
            self.conv.prepare_epilogue((w,), lambda groups, n: kgemm.Epilogue(0, groups, n), w.shape)

    def run(self, x, w, x_zero_point=None, w_zero_point=None):
        def epilogue_for(groups, n):
            return kgemm.Epilogue(0, groups, n)

        return self.conv.compute(x, x_zero_point, w, w_zero_point, epilogue_for, np.int32,
                                 self.conv.prepared_epilogue((w,)))
