"""com.microsoft quantized ops, as onnxruntime's quantizer emits them (all since_version 1).

QGemm, MatMulIntegerToFloat, DynamicQuantizeMatMul and QLinearConv (channels_last) share the exact
int32 GEMM of :mod:`qrt.ops.quantized`. The element-wise ops (QLinearAdd, QLinearMul,
QLinearSigmoid, QLinearLeakyRelu), pooling (QLinearGlobalAveragePool, QLinearAveragePool),
QLinearConcat and QLinearSoftmax follow onnxruntime's contrib-op definitions: dequantize, apply the
float op, quantize (round half to even, saturate), computed on integer sums where that is exact
and in float32 where onnxruntime computes in float32, so results agree to within one quantization
step (a rounding tie decided the other way).

Beside them, qrt's own ``qrt::QLinearTable`` (what :mod:`qrt.fusion.qtables` turns element-wise
functions of one 8-bit tensor into) shares the table lookup of QLinearSigmoid and QLinearLeakyRelu,
and ``qrt::PerRowDynamicQuantizeMatMul`` (what :mod:`qrt.fusion.per_row_matmul` turns
``quantize_dynamic(per_row=True)``'s pattern into) the GEMM of DynamicQuantizeMatMul.
"""
from __future__ import annotations

import math
import operator

import numpy as np
from onnx import TensorProto, helper

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import qdynamic as kdyn
from ..kernels.cpu import qelementwise as kq
from ..kernels.cpu import qgemm as kgemm
from ..kernels.cpu import qgemm_amx as kamx
from ..kernels.cpu import qmovement as kmove
from ..kernels.cpu import quantize as kquant
from ..kernels.cpu.threads import call_with_threads, num_threads, threads_for
from ..kernels.cpu.ufunc import call
from ..registry import register
from .base import Op, ShapeCache
from .quantized import (EIGHT_BIT, ConvGeometry, QuantizedMatMul, _ConstantCache, _DequantizeLinear,
                        _QuantizeLinear, _vector_for, check_scale, check_zero_point, dynamic_quantize,
                        _writable_view, dynamic_quantize_rows, flip_of, qbounds, scalar_int, shifted)

MS = "com.microsoft"


def _check_pairs(pairs, error, data_dtype=None):
    """(name, scale, zero point) triples of per-tensor parameters."""
    for name, scale, zp in pairs:
        if scale is not None:
            check_scale(scale, f"{name}_scale", error, scalar=True)
        if zp is not None:
            zp = np.asarray(zp)
            if zp.dtype not in EIGHT_BIT:
                raise error(f"{name}_zero_point must be int8 or uint8, got {zp.dtype}")
            if data_dtype is not None and zp.dtype != data_dtype:
                raise error(f"{name}_zero_point has type {zp.dtype} but the data has type {data_dtype}")
            check_zero_point(zp, f"{name}_zero_point", error=error, scalar=True)


def _data_dtype(constants, index):
    x = constants[index] if index < len(constants) else None
    return None if x is None else x.dtype


def _scalar(value, dtype=np.float32):
    return np.asarray(value, dtype=dtype).reshape(-1)[0]


# ------------------------------------------------------------------ QuantizeLinear / DequantizeLinear

@register("QuantizeLinear", 1, domain=MS)
class QuantizeLinearMS(_QuantizeLinear):
    """com.microsoft QuantizeLinear (onnxruntime's quantizer writes it with ``UseQDQContribOps``, for
    16-bit and 4-bit types before ONNX had them): ai.onnx QuantizeLinear-13 with those types."""

    def __init__(self, axis=1):
        super().__init__(axis=axis)


@register("DequantizeLinear", 1, domain=MS)
class DequantizeLinearMS(_DequantizeLinear):
    """com.microsoft DequantizeLinear: ai.onnx DequantizeLinear-13 with 16-bit, 4-bit and int32 inputs."""

    def __init__(self, axis=1):
        super().__init__(axis=axis)


# --------------------------------------------------------------------------- GEMM family

@register("QGemm", 1, domain=MS)
class QGemm(Op):
    """``Y = alpha * A' B'`` on quantized A, B plus int32 C; quantized if y_scale is given, else float."""

    def __init__(self, alpha=1.0, transA=0, transB=0):
        self.alpha = float(alpha)
        self.transA = int(transA)
        self.transB = int(transB)
        self._mm = QuantizedMatMul()
        self._epilogues = _ConstantCache()
        self._prepared = None
        self._runner = None     # (rows' zero points, kgemm.matmul_runner bound to them) of the last prepared run

    def _b_matrix(self, b):
        return b.T if self.transB else b

    def _check(self, inputs, error):
        a, a_scale, a_zp, b, b_scale, b_zp = inputs[:6]
        y_scale = inputs[7] if len(inputs) > 7 else None
        y_zp = inputs[8] if len(inputs) > 8 else None
        _check_pairs((("a", a_scale, a_zp),), error, None if a is None else a.dtype)
        if b_scale is not None:
            check_scale(b_scale, "b_scale", error)
        if b_zp is not None and b is not None and np.asarray(b_zp).dtype != b.dtype:
            raise error(f"b_zero_point has type {np.asarray(b_zp).dtype} but B has type {b.dtype}")
        if b is not None:
            if b.ndim != 2:
                raise error(f"B must be 2-D, got shape {list(b.shape)}")
            n = self._b_matrix(b).shape[1]
            if b_scale is not None:
                _vector_for(b_scale, n, "b_scale", error, "column of B")
        _check_pairs((("y", y_scale, y_zp),), error)

    def prepare(self, constants):
        self._check(constants, InvalidModel)
        b = constants[3]
        if b is not None and b.dtype in EIGHT_BIT and b.ndim == 2:
            b_m = self._b_matrix(b)
            self._b_view = (b, b_m)
            self._mm.prepare_b(b_m, constants[5])
            # A C, y_scale or y_zero_point that is not a constant keys as omitted here, but a run with
            # it passes the array itself, which never matches: such runs take the checked path.
            params = self._params(list(constants) + [None] * (9 - len(constants)))
            if all(p is not None for p in params):
                epi = self._column_epilogue(b_m.shape[1], *params[1:])
                if epi is not None:
                    self._epilogues.put(params, epi)
                    self._prepare_run(constants, epi)

    def _prepare_run(self, constants, epilogue):
        """What a run takes from the parameters when they are all constants, A's zero point included:
        a run given these very arrays checks A's type and depth and multiplies."""
        parameters = tuple(constants[1:9]) + (None,) * (9 - len(constants))
        a_zp = parameters[1]
        packs = self._mm._packs.get((self._b_view[1], parameters[4]))
        if a_zp is None or np.asarray(a_zp).dtype not in EIGHT_BIT or packs is None:
            return
        a_dtype = np.asarray(a_zp).dtype
        self._prepared = (parameters, a_dtype, flip_of(a_dtype), packs) + epilogue

    @staticmethod
    def _params(inputs):
        """What the epilogue is made from: B, the scales, C and Y's zero point (``_NONE`` when omitted)."""
        A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp = inputs
        return (B, a_scale, b_scale, _NONE if C is None else C, _NONE if y_scale is None else y_scale,
                _NONE if y_zp is None else y_zp)

    def _column_epilogue(self, N, a_scale, b_scale, C, y_scale, y_zero_point):
        """The fused epilogue (bias per column or none), or None when C needs a separate pass."""
        C = None if C is _NONE else C
        scale_ab = (np.float32(self.alpha) * np.asarray(a_scale, np.float32).reshape(())
                    * _vector_for(b_scale, N, "b_scale", InvalidArgument, "column of B").astype(np.float32))
        if C is not None and (C.dtype != np.int32 or not (C.size == 1 or (C.shape[-1] == N and C.size == N))):
            return None
        bias = None if C is None else np.broadcast_to(C.reshape(-1), (N,))
        if y_scale is _NONE:
            return np.dtype(np.float32), kgemm.Epilogue(2, 1, N, bias=bias, fscale=scale_ab)
        out_dtype = np.dtype(np.uint8) if y_zero_point is _NONE else np.asarray(y_zero_point).dtype
        qmin, qmax = qbounds(out_dtype)
        mult = (scale_ab / np.asarray(y_scale, np.float32).reshape(())).astype(np.float64)
        return out_dtype, kgemm.Epilogue(1, 1, N, bias=bias, mult=mult,
                                         zy=scalar_int(None if y_zero_point is _NONE else y_zero_point),
                                         qmin=qmin, qmax=qmax)

    def run(self, A, a_scale, a_zero_point, B, b_scale, b_zero_point, C=None, y_scale=None, y_zero_point=None):
        prepared = self._prepared
        if prepared is not None and A.dtype == prepared[1] and A.ndim == 2 and all(map(operator.is_, prepared[0], (
                a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point))):
            parameters, a_dtype, flip, packs, out_dtype, epi = prepared
            a = A.T if self.transA else A
            if a.shape[1] == packs.K:
                za_rows = self._mm.shifted_row_zero_points(a_zero_point, (a.shape[0],), a_dtype, flip,
                                                           InvalidArgument)
                # The runner binds these rows' zero points (the same array for every run of this row count).
                runner = self._runner
                if runner is None or runner[0] is not za_rows:
                    runner = self._runner = (za_rows, kgemm.matmul_runner(a.shape[0], packs.K, flip, za_rows,
                                                                          packs, epi))
                rows = a.shape[0]
                out = np.empty((rows, packs.N), out_dtype)
                call_with_threads(threads_for(rows * packs.K * packs.N), runner[1],
                                  np.ascontiguousarray(a).view(np.uint8), _writable_view(out))
                return out
        cached = getattr(self, "_b_view", None)
        prepared = self._epilogues.get(self._params((A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale,
                                                     y_zero_point)))
        if prepared is not None and A.ndim == 2 and A.dtype in EIGHT_BIT and (
                a_zero_point is None or np.asarray(a_zero_point).dtype == A.dtype):
            # Constant parameters, checked and turned into the epilogue at prepare: only A is new.
            out_dtype, epi = prepared
            return self._mm.compute(A.T if self.transA else A, a_zero_point, cached[1], b_zero_point,
                                    lambda r, n, i: epi, out_dtype)
        self._check((A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point),
                    InvalidArgument)
        if A.ndim != 2:
            raise InvalidArgument(f"A must be 2-D, got shape {list(A.shape)}")
        a_m = A.T if self.transA else A
        b_m = cached[1] if cached is not None and cached[0] is B else self._b_matrix(B)
        N = b_m.shape[1]
        scale_ab = (np.float32(self.alpha) * np.asarray(a_scale, np.float32).reshape(())
                    * _vector_for(b_scale, N, "b_scale", InvalidArgument, "column of B").astype(np.float32))
        column_c = C is None or C.size == 1 or (C.shape[-1] == N and C.size == N)
        if C is not None and C.dtype != np.int32:
            raise InvalidArgument(f"C must be int32, got {C.dtype}")
        bias = None if C is None else (np.broadcast_to(C.reshape(-1), (N,)) if column_c else None)
        quantized = y_scale is not None
        if quantized:
            out_dtype = np.uint8 if y_zero_point is None else np.asarray(y_zero_point).dtype
            qmin, qmax = qbounds(out_dtype)
            zy = scalar_int(y_zero_point)
            mult = (scale_ab / np.asarray(y_scale, np.float32).reshape(())).astype(np.float64)
            if column_c:
                return self._mm.compute(a_m, a_zero_point, b_m, b_zero_point,
                                        lambda r, n, i: kgemm.Epilogue(1, 1, n, bias=bias, mult=mult, zy=zy,
                                                                       qmin=qmin, qmax=qmax), out_dtype)
            acc = self._mm.compute(a_m, a_zero_point, b_m, b_zero_point,
                                   lambda r, n, i: kgemm.Epilogue(0, 1, n), np.int32)
            return call(kq.requantize_int32, acc, C, mult, np.float64(zy), np.float64(qmin), np.float64(qmax),
                        dtype=out_dtype)
        if column_c:
            return self._mm.compute(a_m, a_zero_point, b_m, b_zero_point,
                                    lambda r, n, i: kgemm.Epilogue(2, 1, n, bias=bias, fscale=scale_ab),
                                    np.float32)
        acc = self._mm.compute(a_m, a_zero_point, b_m, b_zero_point, lambda r, n, i: kgemm.Epilogue(0, 1, n),
                               np.int32)
        return call(kq.scale_sum, acc, C, scale_ab, dtype=np.float32)


class _ConstantWeights:
    """A constant 2-D B with constant scale, zero point and bias, packed once with the float epilogue's
    per-column arrays, so a run on them does no validation, broadcasting or allocation beyond its output.

    ``matches`` compares the run's arrays by identity with the ones prepared (the planner passes the
    same constant objects to ``prepare`` and ``run``; an omitted input is None in both).
    """

    __slots__ = ("b", "b_scale", "b_zero_point", "bias", "packed", "K", "N", "scale", "fbias", "zeros", "zb_nonzero")

    def __init__(self, mm, b, b_scale, b_zero_point, bias):
        self.b, self.b_scale, self.b_zero_point, self.bias = b, b_scale, b_zero_point, bias
        self.K, self.N = b.shape
        self.packed = mm.packed(b, b_zero_point, InvalidModel)
        self.zb_nonzero = self.packed.zb_nonzero
        self.scale = _vector_for(b_scale, self.N, "b_scale", InvalidModel, "column of B").astype(np.float32)
        fbias = np.zeros(self.N, np.float32) if bias is None else np.broadcast_to(
            np.asarray(bias, np.float32).reshape(-1), (self.N,))
        self.fbias = np.ascontiguousarray(fbias).reshape(1, self.N)
        self.zeros = (np.zeros((1, self.N), np.int32), np.zeros((1, self.N), np.float64))

    @staticmethod
    def of(mm, b, b_scale, b_zero_point, bias):
        if b is None or b_scale is None or b.ndim != 2 or b.dtype not in EIGHT_BIT or not b.shape[0]:
            return None
        if bias is not None and (np.asarray(bias).dtype != np.float32 or np.asarray(bias).size != b.shape[1]):
            return None
        return _ConstantWeights(mm, b, b_scale, b_zero_point, bias)

    def matches(self, b, b_scale, b_zero_point, bias):
        return b is self.b and b_scale is self.b_scale and b_zero_point is self.b_zero_point and bias is self.bias

    def epilogue(self, a_scale):
        return kgemm.float_epilogue((np.float32(a_scale) * self.scale).reshape(1, self.N), self.fbias, self.zeros)


@register("MatMulIntegerToFloat", 1, domain=MS)
class MatMulIntegerToFloat(Op):
    """``Y = (A - za)(B - zb) * a_scale * b_scale + bias`` in float (int32 sums, float32 scaling)."""

    def __init__(self):
        self._mm = QuantizedMatMul()
        self._weights = None

    def prepare(self, constants):
        a, b, a_scale, b_scale = constants[:4]
        a_zp = constants[4] if len(constants) > 4 else None
        b_zp = constants[5] if len(constants) > 5 else None
        for name, s in (("a_scale", a_scale), ("b_scale", b_scale)):
            if s is not None:
                check_scale(s, name, InvalidModel)
        if a_scale is not None and np.asarray(a_scale).size != 1:
            raise InvalidModel("a_scale must be a scalar (per-tensor)")
        for name, z, data in (("a_zero_point", a_zp, a), ("b_zero_point", b_zp, b)):
            if z is not None and data is not None and np.asarray(z).dtype != data.dtype:
                raise InvalidModel(f"{name} has type {np.asarray(z).dtype} but its tensor has type {data.dtype}")
        if b is not None and b.dtype in EIGHT_BIT:
            if b_scale is not None and np.asarray(b_scale).size > 1:
                _vector_for(b_scale, b.shape[-1], "b_scale", InvalidModel, "column of B")
            self._mm.prepare_b(b, b_zp)
            bias = constants[6] if len(constants) > 6 else None
            self._weights = _ConstantWeights.of(self._mm, b, b_scale, b_zp, bias)

    def run(self, A, B, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
        w = self._weights
        if w is not None and w.matches(B, b_scale, b_zero_point, bias) and A.dtype == np.uint8 and A.ndim >= 1 \
                and A.shape[-1] == w.K and a_scale.dtype == np.float32 and a_scale.size == 1 \
                and a_zero_point is not None and a_zero_point.dtype == np.uint8 and a_zero_point.size == 1:
            s = float(a_scale.reshape(-1)[0])
            if not 0 < s < np.inf:
                check_scale(a_scale, "a_scale", InvalidArgument, scalar=True)    # raises, naming the value
            rows = int(np.prod(A.shape[:-1], dtype=np.int64))
            out = np.empty((rows, w.N), np.float32)
            a2 = np.ascontiguousarray(A).reshape(rows, w.K)
            za = int(a_zero_point.reshape(-1)[0])
            if kamx.usable(w.packed):
                # Rows copied into a buffer the AMX driver can read in whole blocks, sums taken on the way.
                a_rows = kamx.padded_rows(rows, w.packed.Kp)
                row_sum = np.empty(rows, np.int32)
                kgemm.prepare_a(a2, np.uint8(0), w.packed.Kp, a_rows, row_sum)
                kgemm.matmul_rows(a_rows, w.K, row_sum, za, w.packed, w.epilogue(s), out, w.zb_nonzero)
            else:
                kgemm.matmul(a2, 0, np.full(rows, za, np.int32), w.packed, w.epilogue(s), out)
            return out.reshape(A.shape[:-1] + (w.N,))
        check_scale(a_scale, "a_scale", InvalidArgument, scalar=True)
        check_scale(b_scale, "b_scale", InvalidArgument)
        out_dtype = np.asarray(a_scale).dtype
        N = B.shape[-1] if B.ndim > 1 else 1
        fscale = (np.asarray(a_scale, np.float32).reshape(())
                  * _vector_for(b_scale, N, "b_scale", InvalidArgument, "column of B").astype(np.float32))
        fbias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (N,))
        y = self._mm.compute(A, a_zero_point, B, b_zero_point,
                             lambda r, n, i: kgemm.Epilogue(2, 1, n, fscale=fscale, fbias=fbias), np.float32)
        return y if out_dtype == np.float32 else y.astype(out_dtype)


@register("DynamicQuantizeMatMul", 1, domain=MS)
class DynamicQuantizeMatMul(Op):
    """``Y = A @ dequantize(B) + bias`` with A quantized to uint8 on the fly (DynamicQuantizeLinear)."""

    def __init__(self):
        self._mm = QuantizedMatMul()
        self._weights = None

    def prepare(self, constants):
        b, b_scale = constants[1], constants[2]
        b_zp = constants[3] if len(constants) > 3 else None
        if b_scale is not None:
            check_scale(b_scale, "b_scale", InvalidModel)
        if b is not None and b.dtype in EIGHT_BIT:
            if b_zp is not None and np.asarray(b_zp).dtype != b.dtype:
                raise InvalidModel(f"b_zero_point has type {np.asarray(b_zp).dtype} but B has type {b.dtype}")
            if b_scale is not None and np.asarray(b_scale).size > 1:
                _vector_for(b_scale, b.shape[-1], "b_scale", InvalidModel, "column of B")
            self._mm.prepare_b(b, b_zp)
            bias = constants[4] if len(constants) > 4 else None
            self._weights = _ConstantWeights.of(self._mm, b, b_scale, b_zp, bias)

    def run(self, A, B, b_scale, b_zero_point=None, bias=None):
        if A.dtype != np.float32:
            raise InvalidArgument(f"A must be float32, got {A.dtype}")
        w = self._weights
        if w is not None and w.matches(B, b_scale, b_zero_point, bias) and A.ndim >= 1 and A.shape[-1] == w.K:
            # A is quantized straight into the GEMM's row buffer, its row sums taken in the same pass.
            x2 = (A if A.flags.c_contiguous else np.ascontiguousarray(A)).reshape(-1, w.K)
            rows, row_sum, a_scale, a_zp = dynamic_quantize_rows(x2, w.packed.Kp)
            out = np.empty((rows.shape[0], w.N), np.float32)
            kgemm.matmul_rows(rows, w.K, row_sum, int(a_zp), w.packed, w.epilogue(a_scale), out, w.zb_nonzero)
            return out.reshape(A.shape[:-1] + (w.N,))
        check_scale(b_scale, "b_scale", InvalidArgument)
        N = B.shape[-1] if B.ndim > 1 else 1
        b_scale = _vector_for(b_scale, N, "b_scale", InvalidArgument, "column of B").astype(np.float32)
        fbias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (N,))
        a_q, a_scale, a_zp = dynamic_quantize(A)
        return self._mm.compute(a_q, np.asarray(a_zp), B, b_zero_point,
                                lambda r, n, i: kgemm.Epilogue(2, 1, n, fscale=a_scale * b_scale, fbias=fbias),
                                np.float32)


@register("PerRowDynamicQuantizeMatMul", 1, domain="qrt")
class PerRowDynamicQuantizeMatMul(Op):
    """``Y_i = A @ dequantize(B_i) + bias_i`` for each output i, A quantized to uint8 once per call with
    one scale and zero point per row (per token), as ``quantize_dynamic(per_row=True)`` writes it in
    standard ops (:mod:`qrt.fusion.per_row_matmul` turns that pattern into this node).

    Inputs: ``A`` (float32, [..., K]), then per output four: ``B_i`` ([K, N_i] int8/uint8),
    ``b_scale_i`` and ``b_zero_point_i`` (one value or one per column), ``bias_i`` (N_i float32,
    optional); B, its scale and zero point and the bias are constants. The rows are quantized straight
    into the GEMM's row buffer (:func:`qrt.kernels.cpu.qdynamic.quantize_rows_own_range`), every product
    reads that buffer, and each epilogue scales by ``row_scale * b_scale`` (rounded to float32 first,
    as the pattern's Mul does), so the outputs equal the pattern run node by node, bit for bit.
    """

    def __init__(self):
        self._mm = QuantizedMatMul()
        self._weights = []

    def prepare(self, constants):
        if len(constants) < 3 or (len(constants) - 1) % 4 == 1:
            raise InvalidModel(f"PerRowDynamicQuantizeMatMul takes A then (B, b_scale, b_zero_point, bias) per "
                               f"output; got {len(constants)} inputs")
        padded = list(constants) + [None] * (-(len(constants) - 1) % 4)
        self._weights = []
        for i in range(1, len(padded), 4):
            b, b_scale, b_zp, bias = padded[i:i + 4]
            which = f"product {(i - 1) // 4}"
            if b is None or b_scale is None:
                raise InvalidModel(f"{which}: B and b_scale must be constants")
            if b.dtype not in EIGHT_BIT or b.ndim != 2 or not b.shape[0]:
                raise InvalidModel(f"{which}: B must be a 2-D int8 or uint8 matrix with K > 0, got {b.dtype} "
                                   f"{list(b.shape)}")
            check_scale(b_scale, "b_scale", InvalidModel)
            if b_zp is not None and np.asarray(b_zp).dtype != b.dtype:
                raise InvalidModel(f"{which}: b_zero_point has type {np.asarray(b_zp).dtype} but B has type "
                                   f"{b.dtype}")
            if bias is not None and (bias.dtype != np.float32 or bias.size != b.shape[1]):
                raise InvalidModel(f"{which}: bias must be {b.shape[1]} float32 values, got {bias.dtype} "
                                   f"{list(bias.shape)}")
            if self._weights and b.shape[0] != self._weights[0][0].K:
                raise InvalidModel(f"{which}: B has {b.shape[0]} rows, product 0's has {self._weights[0][0].K}")
            w = _ConstantWeights.of(self._mm, b, b_scale, b_zp, bias)
            self._weights.append((w, w.scale, np.ascontiguousarray(w.fbias.reshape(-1))))

    def run(self, A, *weights):
        if A.dtype != np.float32:
            raise InvalidArgument(f"A must be float32, got {A.dtype}")
        first = self._weights[0][0]
        K = first.K
        if A.ndim < 1 or A.shape[-1] != K:
            raise InvalidArgument(f"A has shape {list(A.shape)}; B has {K} rows")
        x2 = (A if A.flags.c_contiguous else np.ascontiguousarray(A)).reshape(-1, K)
        m = x2.shape[0]
        rows = kamx.padded_rows(m, first.packed.Kp)
        row_t, row_zero_point = np.empty(m, np.int32), np.empty(m, np.int32)
        row_scale = np.empty(m, np.float32)
        if x2.size < kdyn.PARALLEL_MIN_ELEMENTS or num_threads() == 1:
            kdyn.quantize_rows_own_range(x2, rows, row_t, row_scale, row_zero_point)
        else:
            kdyn.quantize_rows_own_range_parallel(x2, rows, row_t, row_scale, row_zero_point)
        leading = A.shape[:-1]
        outputs = []
        for w, fscale, fbias in self._weights:
            out = np.empty((m, w.N), np.float32)
            kgemm.matmul_rows_scaled(rows, K, row_t, row_zero_point, row_scale, w.packed, fscale, fbias, out)
            outputs.append(out.reshape(leading + (w.N,)))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


@register("QLinearConv", 1, domain=MS)
class QLinearConvMS(Op):
    """com.microsoft QLinearConv: the ai.onnx op plus ``channels_last`` (NHWC input and output)."""

    def __init__(self, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
                 channels_last=0):
        from .quantized import QLinearConv
        self.channels_last = int(channels_last)
        self._inner = QLinearConv(auto_pad, dilations, group, kernel_shape, pads, strides)
        # The kernel reads and writes channels-last tensors as they are: no transposes.
        self._inner.conv.channels_last = bool(self.channels_last)
        # The plan calls the ai.onnx op's run itself: one Python call less on every run.
        self.run = self._inner.run

    def prepare(self, constants):
        self._inner.prepare(constants)


# --------------------------------------------------------------------------- element-wise

def _binary_layout(shape_a, shape_b):
    """(output shape, 3-D dims, element strides of A, of B) of a broadcast, or None past 3 axes.

    Size-1 axes are dropped and neighbouring axes merged wherever both operands step through them
    as one, so same-shape inputs become one run, a scalar a stride of 0, per-channel values rows.
    """
    shape = np.broadcast_shapes(shape_a, shape_b)

    def strides(s):
        s = (1,) * (len(shape) - len(s)) + tuple(s)
        out, step = [], 1
        for d in reversed(s):
            out.append(step if d != 1 else 0)
            step *= d
        return out[::-1]

    dims, sa, sb = [], [], []
    for d, x, y in zip(shape, strides(shape_a), strides(shape_b)):
        if d == 1:
            continue
        if dims and sa[-1] == x * d and sb[-1] == y * d:
            dims[-1] *= d
            sa[-1], sb[-1] = x, y
        else:
            dims.append(d)
            sa.append(x)
            sb.append(y)
    if len(dims) > 3:
        return None
    pad = 3 - len(dims)
    return (shape, np.array([1] * pad + dims, np.int64), np.array([0] * pad + sa, np.int64),
            np.array([0] * pad + sb, np.int64))


class _Binary(Op):
    """QLinearAdd / QLinearMul: parameters checked and converted once per set of constant inputs,
    the broadcast bound once per pair of input shapes."""

    def __init__(self):
        self._params_cache = _ConstantCache()
        self._layouts = ShapeCache()

    def prepare(self, constants):
        a, b = constants[0], constants[3]
        _check_pairs((("A", constants[1], constants[2]),), InvalidModel, None if a is None else a.dtype)
        _check_pairs((("B", constants[4], constants[5] if len(constants) > 5 else None),), InvalidModel,
                     None if b is None else b.dtype)
        c_scale = constants[6] if len(constants) > 6 else None
        c_zp = constants[7] if len(constants) > 7 else None
        _check_pairs((("C", c_scale, c_zp),), InvalidModel, None if a is None else a.dtype)
        params = [constants[i] if i < len(constants) else None for i in (1, 2, 4, 5, 6, 7)]
        if params[0] is not None and params[2] is not None and params[4] is not None:
            zp = next((z for z in params[1::2] if z is not None), None)
            dtypes = (a.dtype,) if a is not None else ((zp.dtype,) if zp is not None else EIGHT_BIT)
            self._params_cache.put(params, {d: self._params(d, *params) for d in dtypes})

    def _params(self, dtype, A_scale, A_zero_point, B_scale, B_zero_point, C_scale, C_zero_point):
        """(za, zb, ratios, zc, qmin, qmax) as the kernels take them."""
        qmin, qmax = qbounds(dtype)
        return (np.int32(scalar_int(A_zero_point)), np.int32(scalar_int(B_zero_point)),
                self._ratios(A_scale, B_scale, C_scale), np.float32(scalar_int(C_zero_point)), np.float32(qmin),
                np.float32(qmax))

    def _run(self, A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point, kernels):
        if A.dtype not in EIGHT_BIT or B.dtype != A.dtype:
            raise InvalidArgument(f"A and B must be both int8 or both uint8, got {A.dtype} and {B.dtype}")
        arrays = (A_scale, A_zero_point, B_scale, B_zero_point, C_scale, C_zero_point)
        cached = self._params_cache.get(arrays)
        params = None if cached is None else cached.get(A.dtype)
        if params is None:
            _check_pairs((("A", A_scale, A_zero_point), ("B", B_scale, B_zero_point), ("C", C_scale, C_zero_point)),
                         InvalidArgument, A.dtype)
            params = self._params(A.dtype, *arrays)
        za, zb, ratios, zc, lo, hi = params
        key = (A.shape, B.shape)
        layout = self._layouts.get(key)
        if layout is None:
            try:
                layout = _binary_layout(A.shape, B.shape)
            except ValueError:
                raise InvalidArgument(f"shapes {list(A.shape)} and {list(B.shape)} do not broadcast") from None
            if layout is None:   # more than 3 axes that broadcast differently: copy both to the output shape
                shape = np.broadcast_shapes(A.shape, B.shape)
                n = math.prod(shape)
                layout = (shape, np.array([1, 1, n], np.int64), np.array([0, 0, 1], np.int64),
                          np.array([0, 0, 1], np.int64), True)
            else:
                layout = layout + (False,)
            self._layouts.put(key, layout)
        shape, dims, sa, sb, copy = layout
        if copy:
            A = np.broadcast_to(A, shape)
            B = np.broadcast_to(B, shape)
        out = np.empty(shape, A.dtype)
        if out.size:
            kernel = kernels[1] if out.size >= kq.PARALLEL_MIN_ELEMENTS and num_threads() > 1 else kernels[0]
            kernel(np.ascontiguousarray(A).reshape(-1), np.ascontiguousarray(B).reshape(-1), dims, sa, sb, za, zb,
                   *ratios, zc, lo, hi, out.reshape(-1))
        return out


@register("QLinearAdd", 1, domain=MS)
class QLinearAdd(_Binary):
    """``C = saturate(rint((A_scale (A - za) + B_scale (B - zb)) / C_scale) + zc)``, broadcasting."""

    @staticmethod
    def _ratios(A_scale, B_scale, C_scale):
        return np.float32(_scalar(A_scale) / _scalar(C_scale)), np.float32(_scalar(B_scale) / _scalar(C_scale))

    def run(self, A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None):
        return self._run(A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point,
                         (kq.qadd, kq.qadd_parallel))


@register("QLinearMul", 1, domain=MS)
class QLinearMul(_Binary):
    """``C = saturate(rint((A - za)(B - zb) A_scale B_scale / C_scale) + zc)``, broadcasting."""

    @staticmethod
    def _ratios(A_scale, B_scale, C_scale):
        return (np.float32(_scalar(A_scale) * _scalar(B_scale) / _scalar(C_scale)),)

    def run(self, A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None):
        return self._run(A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point,
                         (kq.qmul, kq.qmul_parallel))


def lookup(X, table, out_dtype):
    """``table[X]`` for 8-bit ``X`` (indexed by its uint8 bit pattern), as an array of ``out_dtype``."""
    x = np.ascontiguousarray(X).view(np.uint8).reshape(-1)
    out = np.empty(X.shape, out_dtype)
    if kq.TABLE_VBMI:   # memory-bound at one thread
        kq.apply_table_vbmi(x, table, out.reshape(-1).view(np.uint8))
    elif x.size >= kq.PARALLEL_MIN_ELEMENTS and num_threads() > 1:
        kq.apply_table_parallel(x, table, out.reshape(-1).view(np.uint8))
    else:
        kq.apply_table(x, table, out.reshape(-1).view(np.uint8))
    return out


class _TableOp(Op):
    """A unary op on 8-bit data as a 256-entry table, rebuilt only when the parameters change."""

    def __init__(self):
        self._tables = _ConstantCache()

    def _table(self, dtype, x_scale, x_zp, y_scale, y_zp):
        raise TypeError

    def prepare(self, constants):
        x = constants[0]
        x_scale, y_scale = constants[1], constants[3]
        x_zp = constants[2] if len(constants) > 2 else None
        y_zp = constants[4] if len(constants) > 4 else None
        dtype = None if x is None else x.dtype
        _check_pairs((("X", x_scale, x_zp), ("Y", y_scale, y_zp)), InvalidModel, dtype)
        if x_scale is not None and y_scale is not None:
            # Omitted zero points arrive as None at run time too; a non-constant one misses the cache.
            zp = x_zp if x_zp is not None else y_zp
            dtypes = (dtype,) if dtype is not None else ((np.asarray(zp).dtype,) if zp is not None else EIGHT_BIT)
            self._tables.put((x_scale, x_zp, y_scale, y_zp),
                             {d: self._table(d, x_scale, x_zp, y_scale, y_zp) for d in dtypes})

    def run(self, X, X_scale, X_zero_point=None, Y_scale=None, Y_zero_point=None):
        if X.dtype not in EIGHT_BIT:
            raise InvalidArgument(f"X must be int8 or uint8, got {X.dtype}")
        tables = self._tables.get((X_scale, X_zero_point, Y_scale, Y_zero_point))
        table = None if tables is None else tables.get(X.dtype)
        if table is None:
            _check_pairs((("X", X_scale, X_zero_point), ("Y", Y_scale, Y_zero_point)), InvalidArgument, X.dtype)
            table = self._table(X.dtype, X_scale, X_zero_point, Y_scale, Y_zero_point)
        return lookup(X, table, X.dtype)


def _table_args(dtype, x_scale, x_zp, y_scale, y_zp):
    qmin, qmax = qbounds(dtype)
    return (np.float32(_scalar(x_scale)), np.float32(scalar_int(x_zp)), np.float32(_scalar(y_scale)),
            np.float32(scalar_int(y_zp)))


@register("QLinearSigmoid", 1, domain=MS)
class QLinearSigmoid(_TableOp):
    def _table(self, dtype, x_scale, x_zp, y_scale, y_zp):
        qmin, qmax = qbounds(dtype)
        return kq.sigmoid_table(*_table_args(dtype, x_scale, x_zp, y_scale, y_zp), np.float32(qmin),
                                np.float32(qmax), dtype == np.int8)


@register("QLinearLeakyRelu", 1, domain=MS)
class QLinearLeakyRelu(_TableOp):
    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = np.float32(alpha)

    def _table(self, dtype, x_scale, x_zp, y_scale, y_zp):
        qmin, qmax = qbounds(dtype)
        return kq.leaky_relu_table(*_table_args(dtype, x_scale, x_zp, y_scale, y_zp), self.alpha,
                                   np.float32(qmin), np.float32(qmax), dtype == np.int8)


@register("QLinearTable", 1, domain="qrt")
class QLinearTable(Op):
    """``Y = table[X]``: ``body`` (element-wise nodes whose one varying input is the 8-bit X, ending at
    an 8-bit Y; see :mod:`qrt.fusion.qtables`) run once, at session creation, on the 256 values of X.

    With ``channels``, the body holds one constant per channel of axis 1 of a rank-``rank`` X and the
    table is one per channel, (channels, 256); ``axis`` says where those channels sit in the X this
    node reads (1, or 3 once :mod:`qrt.fusion.channels_last` has made X (N, H, W, C)).

    Running the body itself on qrt's kernels makes the table equal the unfused nodes bit for bit.
    """

    def __init__(self, body, axis=None, channels=None, rank=None):
        self.body = body
        if len(body.input_names) != 1 or len(body.output_names) != 1:
            raise InvalidModel("QLinearTable body must have one input and one output")
        x_type = body.input_types[0].tensor_type.elem_type if body.input_types else 0
        if x_type not in (TensorProto.UINT8, TensorProto.INT8):
            raise InvalidModel(f"QLinearTable input must be int8 or uint8, got type {x_type}")
        if (axis is None) != (channels is None) or (channels is not None) and (rank is None or rank < 3
                                                                                 or not 0 <= axis < rank):
            raise InvalidModel(f"QLinearTable per-channel attributes are inconsistent: axis {axis}, channels "
                               f"{channels}, rank {rank}")
        self.axis, self.channels, self.rank = axis, channels, rank
        # A body constant of higher rank than X would widen the output: the body's broadcast, not a table.
        self.min_rank = max((np.ndim(v) for v in body.constants.values()), default=0)
        values = np.arange(256, dtype=np.uint8).view(helper.tensor_dtype_to_np_dtype(x_type))
        if channels is None:
            values = values.reshape((1,) * max(self.min_rank - 1, 0) + (256,))
        else:   # (1, C, 256, 1, ...): channels on axis 1 as the body's constants expect, the values beside
            values = np.ascontiguousarray(np.broadcast_to(values.reshape(1, 1, 256), (1, channels, 256))) \
                .reshape((1, channels, 256) + (1,) * (rank - 3))
        y = np.asarray(body.run({body.input_names[0]: values})[0])
        if y.dtype not in EIGHT_BIT or y.size != values.size:
            raise InvalidModel(f"QLinearTable body must map 8-bit values to as many 8-bit values, got "
                               f"dtype {y.dtype} shape {list(y.shape)} from shape {list(values.shape)}")
        self.x_dtype = values.dtype
        self.y_dtype = y.dtype
        self.table = np.ascontiguousarray(y).reshape(-1 if channels is None else (channels, 256)).view(np.uint8)

    def run(self, X):
        if X.dtype != self.x_dtype:
            raise InvalidArgument(f"X must be {self.x_dtype}, got {X.dtype}")
        if self.channels is not None:
            if X.ndim == self.rank and X.shape[self.axis] == self.channels:
                return lookup_per_channel(X, self.table, self.axis, self.y_dtype)
            # Another channel count (a size-1 axis the constants widen): the body's own broadcast, run
            # in the body's layout as the unfused nodes would.
            if self.axis == 1:
                return self.body.run({self.body.input_names[0]: X})[0]
            if X.ndim != self.rank:
                raise InvalidArgument(f"X has shape {list(X.shape)}; this channels-last table needs rank {self.rank}")
            y = self.body.run({self.body.input_names[0]: np.ascontiguousarray(np.moveaxis(X, self.axis, 1))})[0]
            return np.ascontiguousarray(np.moveaxis(y, 1, self.axis))
        if X.ndim < self.min_rank:
            return self.body.run({self.body.input_names[0]: X})[0]
        return lookup(X, self.table, self.y_dtype)


def lookup_per_channel(X, tables, axis, out_dtype):
    """``tables[c][X]`` with c the index along ``axis`` of 8-bit ``X``, as an array of ``out_dtype``."""
    outer = math.prod(X.shape[:axis])
    inner = math.prod(X.shape[axis + 1:])
    x = np.ascontiguousarray(X).view(np.uint8).reshape(outer, X.shape[axis], inner)
    out = np.empty(X.shape, out_dtype)
    y = out.view(np.uint8).reshape(x.shape)
    if inner == 1:
        parallel = x.size >= kq.PARALLEL_MIN_ELEMENTS and outer > 1 and num_threads() > 1
        (kq.apply_channel_tables_last_parallel if parallel else kq.apply_channel_tables_last)(
            x[:, :, 0], tables, y[:, :, 0])
    else:
        kq.apply_channel_tables(x, tables, y)
    return out


@register("DequantizeAdd", 1, domain="qrt")
class DequantizeAdd(Op):
    """``Add(DequantizeLinear(A), DequantizeLinear(B))`` [-> ``Relu``] [-> ``QuantizeLinear``] as one pass
    (what :mod:`qrt.fusion.residual` makes of a residual connection the quantizer leaves in float).

    An operand with no scale input is float32 and taken as it is. Outputs, in order: the float sum
    (with ``float_output``) and its quantization to (Y_scale, Y_zero_point) (with ``quantized_output``).
    The float32 arithmetic is that of the separate kernels, so both are the unfused nodes' bits.
    """

    def __init__(self, relu=0, float_output=1, quantized_output=0):
        self.relu = bool(relu)
        self.float_output = bool(float_output)
        self.quantized_output = bool(quantized_output)
        if not (self.float_output or self.quantized_output):
            raise InvalidModel("DequantizeAdd must have a float or a quantized output")

    @staticmethod
    def _operand(x, scale, zero_point, name):
        if scale is None:
            if x.dtype != np.float32:
                raise InvalidArgument(f"{name} without a scale must be float32, got {x.dtype}")
            return x, np.float32(1), np.float32(0)
        if x.dtype not in EIGHT_BIT or np.asarray(scale).dtype != np.float32 or np.size(scale) != 1:
            raise InvalidArgument(f"{name} must be int8 or uint8 with one float32 scale, got {x.dtype} and scale "
                                  f"{np.asarray(scale).dtype} of shape {list(np.shape(scale))}")
        zero = np.float32(scalar_int(zero_point)) if zero_point is not None else np.float32(0)
        return x, np.asarray(scale).reshape(-1)[0], zero

    def run(self, A, A_scale=None, A_zero_point=None, B=None, B_scale=None, B_zero_point=None, Y_scale=None,
            Y_zero_point=None):
        a, a_s, a_z = self._operand(A, A_scale, A_zero_point, "A")
        b, b_s, b_z = self._operand(B, B_scale, B_zero_point, "B")
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise InvalidArgument(f"A {list(a.shape)} and B {list(b.shape)} do not broadcast") from None
        a, b = (np.ascontiguousarray(np.broadcast_to(x, shape)).reshape(-1) for x in (a, b))
        out_f = np.empty(shape if self.float_output else 0, np.float32)
        y_dtype = np.asarray(Y_zero_point).dtype if Y_zero_point is not None else np.dtype(np.uint8)
        if self.quantized_output and (Y_scale is None or y_dtype not in EIGHT_BIT):
            raise InvalidArgument(f"the quantized output needs a scale and an 8-bit zero point, got {y_dtype}")
        out_q = np.empty(shape if self.quantized_output else 0, y_dtype)
        lo, hi = qbounds(y_dtype) if self.quantized_output else (0, 0)
        y_s = np.float32(np.asarray(Y_scale).reshape(-1)[0]) if self.quantized_output else np.float32(1)
        y_z = np.float32(scalar_int(Y_zero_point)) if self.quantized_output and Y_zero_point is not None \
            else np.float32(0)
        if a.size:
            kernel = kquant.dequantize_add_parallel if a.size >= kq.PARALLEL_MIN_ELEMENTS and num_threads() > 1 \
                else kquant.dequantize_add
            kernel(a, a_s, a_z, b, b_s, b_z, self.relu, y_s, y_z, np.float32(lo), np.float32(hi), self.float_output,
                   self.quantized_output, out_f.reshape(-1), out_q.reshape(-1))
        return tuple(o for o, on in ((out_f, self.float_output), (out_q, self.quantized_output)) if on)


@register("QLinearWhere", 1, domain=MS)
class QLinearWhere(Op):
    """``Z = condition ? requantize(X) : requantize(Y)`` with numpy broadcasting; each 8-bit input is
    mapped to Z's scale and zero point through a 256-entry table (float32, round half to even), as
    onnxruntime's kernel does."""

    def run(self, condition, X, x_scale, x_zero_point, Y, y_scale, y_zero_point, z_scale, z_zero_point):
        if X.dtype not in EIGHT_BIT or Y.dtype != X.dtype:
            raise InvalidArgument(f"X and Y must be both int8 or both uint8, got {X.dtype} and {Y.dtype}")
        if condition.dtype != np.bool_:
            raise InvalidArgument(f"condition must be bool, got {condition.dtype}")
        _check_pairs((("X", x_scale, x_zero_point), ("Y", y_scale, y_zero_point), ("Z", z_scale, z_zero_point)),
                     InvalidArgument, X.dtype)
        try:
            shape = np.broadcast_shapes(condition.shape, X.shape, Y.shape)
        except ValueError:
            raise InvalidArgument(f"shapes {list(condition.shape)}, {list(X.shape)} and {list(Y.shape)} "
                                  "do not broadcast") from None
        qmin, qmax = qbounds(X.dtype)
        signed = X.dtype == np.int8
        tables = [kq.requantize_table(np.float32(_scalar(scale)), np.float32(scalar_int(zp)),
                                      np.float32(_scalar(z_scale)), np.float32(scalar_int(z_zero_point)),
                                      np.float32(qmin), np.float32(qmax), signed)
                  for scale, zp in ((x_scale, x_zero_point), (y_scale, y_zero_point))]

        def flat(a):
            return np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1)
        out = np.empty(shape, X.dtype)
        kq.select_tables(flat(condition), flat(X).view(np.uint8), tables[0], flat(Y).view(np.uint8), tables[1],
                         out.reshape(-1).view(np.uint8))
        return out


# --------------------------------------------------------------------------- pooling

def _unary_params(X, x_scale, x_zp, y_scale, y_zp):
    if X.dtype not in EIGHT_BIT:
        raise InvalidArgument(f"X must be int8 or uint8, got {X.dtype}")
    _check_pairs((("x", x_scale, x_zp), ("y", y_scale, y_zp)), InvalidArgument, X.dtype)
    qmin, qmax = qbounds(X.dtype)
    return (flip_of(X.dtype), shifted(scalar_int(x_zp), X.dtype), float(_scalar(x_scale, np.float64)),
            float(_scalar(y_scale, np.float64)), scalar_int(y_zp), qmin, qmax)


class _UnaryQ(Op):
    def prepare(self, constants):
        x = constants[0]
        _check_pairs((("x", constants[1], constants[2] if len(constants) > 2 else None),
                      ("y", constants[3] if len(constants) > 3 else None, constants[4] if len(constants) > 4 else None)),
                     InvalidModel, None if x is None else x.dtype)


@register("QLinearGlobalAveragePool", 1, domain=MS)
class QLinearGlobalAveragePool(_UnaryQ):
    """Mean over the spatial axes of (N, C, ...) or, with ``channels_last``, (N, ..., C)."""

    def __init__(self, channels_last=0):
        self.channels_last = int(channels_last)

    def run(self, X, x_scale, x_zero_point, y_scale, y_zero_point):
        flip, zx, sx, sy, zy, qmin, qmax = _unary_params(X, x_scale, x_zero_point, y_scale, y_zero_point)
        if X.ndim < 3:
            raise InvalidArgument(f"X must have rank >= 3, got shape {list(X.shape)}")
        x = np.ascontiguousarray(X).view(np.uint8)
        n = X.shape[0]
        if self.channels_last:
            C = X.shape[-1]
            L = int(np.prod(X.shape[1:-1], dtype=np.int64))
            out = np.empty((n, C), X.dtype)
            mult = sx / (sy * L) if L else 0.0
            kq.global_average_last(x.reshape(n, L, C), np.uint8(flip), zx, mult, zy, qmin, qmax, out.view(np.uint8))
            return out.reshape((n,) + (1,) * (X.ndim - 2) + (C,))
        C = X.shape[1]
        L = int(np.prod(X.shape[2:], dtype=np.int64))
        out = np.empty(n * C, X.dtype)
        mult = sx / (sy * L) if L else 0.0
        kq.global_average(x.reshape(n * C, L), np.uint8(flip), zx, mult, zy, qmin, qmax, out.view(np.uint8))
        return out.reshape((n, C) + (1,) * (X.ndim - 2))


@register("QLinearAveragePool", 1, domain=MS)
class QLinearAveragePool(_UnaryQ):
    """AveragePool on dequantized data, requantized: integer window sums, one scaling per output."""

    def __init__(self, auto_pad="NOTSET", ceil_mode=0, channels_last=0, count_include_pad=0, kernel_shape=None,
                 pads=None, strides=None):
        if kernel_shape is None:
            raise InvalidModel("kernel_shape is required")
        self.geometry = ConvGeometry(auto_pad, None, 1, kernel_shape, pads, strides)
        self.ceil_mode = int(ceil_mode)
        self.channels_last = int(channels_last)
        self.count_include_pad = int(count_include_pad)
        self.kernel_shape = [int(k) for k in kernel_shape]

    def _geometry(self, sizes):
        g = self.geometry
        n_sp = len(self.kernel_shape)
        if len(sizes) != n_sp:
            raise InvalidArgument(f"kernel_shape has {n_sp} axes but X has {len(sizes)} spatial axes")
        strides = g.strides or [1] * n_sp
        if len(strides) != n_sp:
            raise InvalidArgument(f"strides has {len(strides)} values for {n_sp} spatial axes")
        begins, ends, outs = [0] * n_sp, [0] * n_sp, []
        for i in range(n_sp):
            k, s, size = self.kernel_shape[i], strides[i], sizes[i]
            if g.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = -(-size // s)
                total = max((out - 1) * s + k - size, 0)
                half = total // 2
                begins[i], ends[i] = (half, total - half) if g.auto_pad == "SAME_UPPER" else (total - half, half)
            elif g.auto_pad == "VALID":
                out = -(-(size - k + 1) // s)
            else:
                if g.pads is not None:
                    if len(g.pads) != 2 * n_sp:
                        raise InvalidArgument(f"pads has {len(g.pads)} values; {n_sp} spatial axes need {2 * n_sp}")
                    begins[i], ends[i] = g.pads[i], g.pads[i + n_sp]
                span = size + begins[i] + ends[i] - k
                if self.ceil_mode:
                    out = -(-span // s) + 1
                    if (out - 1) * s >= size + begins[i]:
                        out -= 1
                else:
                    out = span // s + 1
            outs.append(max(out, 0))
        return strides, begins, ends, outs

    def run(self, X, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
        flip, zx, sx, sy, zy, qmin, qmax = _unary_params(X, x_scale, x_zero_point, y_scale, y_zero_point)
        x = np.moveaxis(X, -1, 1) if self.channels_last else X
        if x.ndim < 3 or x.ndim > 5:
            raise InvalidArgument(f"X must have 1 to 3 spatial axes, got shape {list(X.shape)}")
        strides, begins, ends, outs = self._geometry(list(x.shape[2:]))
        n, C = x.shape[:2]
        pad3 = lambda v, f: [f] * (3 - len(v)) + list(v)  # noqa: E731
        geometry = (np.array(pad3(self.kernel_shape, 1), np.int64), np.array(pad3(strides, 1), np.int64),
                    np.array(pad3(begins, 0), np.int64), np.array(pad3(ends, 0), np.int64),
                    np.array(pad3(outs, 1), np.int64))
        ratio = float(np.float32(sx)) / float(np.float32(sy))
        if self.channels_last and math.prod(self.kernel_shape) < 1 << 23:   # int32 window sums stay exact
            x5 = np.ascontiguousarray(X).view(np.uint8).reshape((n,) + tuple(pad3(x.shape[2:], 1)) + (C,))
            out = np.empty((n,) + tuple(pad3(outs, 1)) + (C,), X.dtype)
            kernel = (kq.average_pool_last_parallel if out.size * math.prod(self.kernel_shape) >= kq.PARALLEL_MIN_ELEMENTS
                      and n * out.shape[1] * out.shape[2] > 1 and num_threads() > 1 else kq.average_pool_last)
            kernel(x5, np.uint8(flip), zx, *geometry, bool(self.count_include_pad), ratio, zy, qmin, qmax,
                   out.view(np.uint8))
            return out.reshape((n,) + tuple(outs) + (C,))
        x4 = np.ascontiguousarray(x).view(np.uint8).reshape((n * C,) + tuple(pad3(x.shape[2:], 1)))
        out = np.empty((n * C,) + tuple(pad3(outs, 1)), X.dtype)
        kq.average_pool(x4, np.uint8(flip), zx, *geometry, bool(self.count_include_pad), ratio, zy, qmin, qmax,
                        out.view(np.uint8))
        y = out.reshape((n, C) + tuple(outs))
        return np.ascontiguousarray(np.moveaxis(y, 1, -1)) if self.channels_last else y


# --------------------------------------------------------------------------- concat and softmax

@register("QLinearConcat", 1, domain=MS)
class QLinearConcat(Op):
    """Concatenation of (tensor, scale, zero point) triples, each requantized to (Y_scale, Y_zero_point).

    An input whose scale and zero point are Y's is copied as it is, any other is mapped through a
    256-byte requantization table; with constant parameters (the usual case) the tables are built
    once in ``prepare`` and a run is one pass over the output (:mod:`qrt.kernels.cpu.qmovement`).
    """

    def __init__(self, axis=None):
        if axis is None:
            raise InvalidModel("axis is required")
        self.axis = int(axis)
        self._plans = _ConstantCache()

    def prepare(self, constants):
        if (len(constants) - 2) % 3 or len(constants) < 5:
            raise InvalidModel(f"QLinearConcat takes Y_scale, Y_zero_point and (tensor, scale, zero point) "
                               f"triples; got {len(constants)} inputs")
        _check_pairs((("Y", constants[0], constants[1]),), InvalidModel)
        for i in range(2, len(constants), 3):
            _check_pairs(((f"input {(i - 2) // 3}", constants[i + 1], constants[i + 2]),), InvalidModel)
        params = self._params(constants)
        if all(p is not None for p in params):
            self._plans.put(params, self._plan(*params))

    @staticmethod
    def _params(inputs):
        return (inputs[0], inputs[1]) + tuple(v for i in range(2, len(inputs), 3) for v in inputs[i + 1:i + 3])

    @staticmethod
    def _plan(Y_scale, Y_zero_point, *pairs):
        """Y's dtype and, per input, None (a plain copy) or its 256-byte requantization table."""
        dtype = np.asarray(Y_zero_point).dtype
        qmin, qmax = qbounds(dtype)
        sy = np.float32(_scalar(Y_scale))
        zy = scalar_int(Y_zero_point)
        shift = 128 if dtype == np.int8 else 0
        tables = []
        for sx, zx in zip(pairs[::2], pairs[1::2]):
            if np.float32(_scalar(sx)) == sy and scalar_int(zx) == zy:
                tables.append(None)
                continue
            table = np.empty(256, np.uint8)
            kq.requantize(_ALL_BYTES, np.uint8(flip_of(dtype)), np.int32(scalar_int(zx) + shift),
                          np.float32(np.float32(_scalar(sx)) / sy), np.float32(zy + shift), np.float32(qmin + shift),
                          np.float32(qmax + shift), table)
            tables.append(table)
        return dtype, tables

    def run(self, Y_scale, Y_zero_point, *triples):
        if len(triples) % 3 or not triples:
            raise InvalidArgument(f"expected (tensor, scale, zero point) triples, got {len(triples)} inputs")
        params = self._params((Y_scale, Y_zero_point) + triples)
        plan = self._plans.get(params)
        if plan is None:
            _check_pairs((("Y", Y_scale, Y_zero_point),), InvalidArgument)
            for i in range(0, len(triples), 3):
                _check_pairs(((f"input {i // 3}", triples[i + 1], triples[i + 2]),), InvalidArgument,
                             np.asarray(Y_zero_point).dtype)
            plan = self._plan(*params)
        dtype, tables = plan
        parts = triples[::3]
        for i, x in enumerate(parts):
            if x.dtype != dtype:
                raise InvalidArgument(f"input {i} has type {x.dtype}; Y_zero_point is {dtype}")
        first = parts[0].shape
        rank = len(first)
        if not -rank <= self.axis < rank:
            raise InvalidArgument(f"axis={self.axis} is out of range for rank {rank}")
        axis = self.axis % rank
        if any(len(x.shape) != rank or x.shape[:axis] != first[:axis] or x.shape[axis + 1:] != first[axis + 1:]
               for x in parts):
            raise InvalidArgument(f"cannot concatenate shapes {[list(x.shape) for x in parts]} on axis {self.axis}")
        out = np.empty(first[:axis] + (sum(x.shape[axis] for x in parts),) + first[axis + 1:], dtype)
        outer = int(np.prod(first[:axis], dtype=np.int64))
        if out.size == 0:
            return out
        flat = out.reshape(outer, -1).view(np.uint8)
        offset = 0
        for x, table in zip(parts, tables):
            block = np.ascontiguousarray(x).reshape(outer, -1).view(np.uint8)
            if table is not None and kq.TABLE_VBMI and block.shape[1] >= 64:
                kmove.concat_block_vbmi(block, table, flat, offset)
            else:
                kmove.concat_block(block, _ALL_BYTES if table is None else table, table is not None, flat, offset)
            offset += block.shape[1]
        return out


_ALL_BYTES = np.arange(256, dtype=np.uint8)
# A stand-in for an omitted optional input, so that "omitted" is a constant a cache can key on.
_NONE = np.zeros(0, np.float32)


@register("QLinearSoftmax", 1, domain=MS)
class QLinearSoftmax(_UnaryQ):
    """Softmax of dequantized X, quantized; ``opset`` < 13 flattens from ``axis`` on (old Softmax)."""

    def __init__(self, axis=-1, opset=13):
        self.axis = int(axis)
        self.opset = int(opset)

    def run(self, X, X_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
        flip, zx, sx, sy, zy, qmin, qmax = _unary_params(X, X_scale, x_zero_point, y_scale, y_zero_point)
        rank = max(X.ndim, 1)
        if not -rank <= self.axis < rank:
            raise InvalidArgument(f"axis={self.axis} is out of range for rank {X.ndim}")
        axis = self.axis % rank
        if self.opset < 13:
            rows = int(np.prod(X.shape[:axis], dtype=np.int64))
            x2 = np.ascontiguousarray(X).view(np.uint8).reshape(rows, -1)
            out = np.empty(x2.shape, X.dtype)
            kq.softmax_rows(x2, np.uint8(flip), np.float32(sx), np.float32(sy), zy, qmin, qmax, out.view(np.uint8))
            return out.reshape(X.shape)
        moved = np.moveaxis(X, axis, -1)
        x2 = np.ascontiguousarray(moved).view(np.uint8).reshape(-1, X.shape[axis])
        out = np.empty(x2.shape, X.dtype)
        kq.softmax_rows(x2, np.uint8(flip), np.float32(sx), np.float32(sy), zy, qmin, qmax, out.view(np.uint8))
        return np.ascontiguousarray(np.moveaxis(out.reshape(moved.shape), -1, axis))
