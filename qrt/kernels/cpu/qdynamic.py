"""Run-time (dynamic) quantization of float32 activations into the int8 GEMM's row form.

ONNX DynamicQuantizeLinear needs the tensor's minimum and maximum before it can quantize anything,
so it is two passes over the input, both parallel over row chunks for large tensors:

* :func:`range_keys` finds the range on the floats' bit patterns mapped to ordered int32 keys
  (``bits ^ ((bits >> 31) & 0x7FFFFFFF)`` orders like the floats, -0 just below +0). Integer
  min/max reductions vectorize where float ones with NaN semantics do not; a NaN shows as a key
  above +inf's or below -inf's, so the caller sees it without a separate test per element.
* :func:`quantize_rows` writes ``saturate(rint(x / scale) + zero_point)`` (division, round half to
  even, NaN to 0, as the spec and qrt.qmath) straight into the GEMM's A buffer, (M, Kp) uint8
  with zeros past K, and each row's sum for the weights' zero-point term: no separate copy or
  row-sum pass before the product.

* :func:`quantization_params` turns the range into the spec's float32 scale and zero point.

:func:`quantize_small` does all three in one call for tensors too small to split, or on one thread (one Python-to-Numba
crossing instead of three, and no numpy scalar arithmetic in between). Serial and ``parallel=True``
variants have distinct names (Numba caches by function name).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Below this many elements a parallel launch costs more than the pass itself.
PARALLEL_MIN_ELEMENTS = 1 << 16

_KEY_MAX = np.int32(0x7FFFFFFF)
_KEY_MIN = np.int32(-0x80000000)


@njit(cache=True, inline="always")
def _range_of(bits, start, stop):
    lo = _KEY_MAX
    hi = _KEY_MIN
    for i in range(start, stop):
        b = bits[i]
        key = b ^ ((b >> 31) & 0x7FFFFFFF)
        lo = min(lo, key)
        hi = max(hi, key)
    return lo, hi


@njit(cache=True)
def range_keys(bits):
    """(lowest, highest) ordered key of the float32 bit patterns ``bits`` (flat int32)."""
    return _range_of(bits, 0, bits.size)


@njit(cache=True, parallel=True)
def range_keys_parallel(bits, chunks):
    n = bits.size
    step = (n + chunks - 1) // chunks
    los = np.empty(chunks, np.int32)
    his = np.empty(chunks, np.int32)
    for c in prange(chunks):
        los[c], his[c] = _range_of(bits, c * step, min(n, (c + 1) * step))
    return los.min(), his.max()


@njit(cache=True, inline="always")
def _quantize_row(x, r, scale, zero_point, out, row_sum):
    K = x.shape[1]
    s = np.int32(0)
    for k in range(K):
        v = np.rint(x[r, k] / scale) + zero_point
        if not v >= 0:
            v = np.float32(0)
        elif v > 255:
            v = np.float32(255)
        q = np.uint8(v)
        out[r, k] = q
        s += np.int32(q)
    for k in range(K, out.shape[1]):
        out[r, k] = 0
    row_sum[r] = s


@njit(cache=True)
def quantize_rows(x, scale, zero_point, out, row_sum):
    """``out[:, :K]`` = x (M, K) float32 quantized to uint8 (``scale``, ``zero_point`` float32); zeros after."""
    for r in range(x.shape[0]):
        _quantize_row(x, r, scale, zero_point, out, row_sum)


@njit(cache=True, parallel=True)
def quantize_rows_parallel(x, scale, zero_point, out, row_sum):
    for r in prange(x.shape[0]):
        _quantize_row(x, r, scale, zero_point, out, row_sum)


_POS_INF_KEY = np.int32(0x7F800000)                                    # +inf's bits are its key
_NEG_INF_KEY = np.array(-np.inf, np.float32).view(np.int32) ^ np.int32(0x7FFFFFFF)
_F0 = np.float32(0)
_F1 = np.float32(1)
_F255 = np.float32(255)


@njit(cache=True)
def quantization_params(lo_key, hi_key):
    """(scale, zero point as float32) of DynamicQuantizeLinear from the range's ordered keys.

    The spec's float32 arithmetic: the range widened to include 0, ``scale = (max - min) / 255``
    (a zero range gives 1 / 255), ``zero_point = rint(clip(-min / scale, 0, 255))``; a NaN anywhere
    makes the range, the scale, and so every quantized value NaN-saturated, and the zero point 0.
    """
    if lo_key < _NEG_INF_KEY or hi_key > _POS_INF_KEY:
        return np.float32(np.nan), _F0
    lo_bits = np.int32(lo_key ^ ((lo_key >> 31) & 0x7FFFFFFF))
    hi_bits = np.int32(hi_key ^ ((hi_key >> 31) & 0x7FFFFFFF))
    pair = np.empty(2, np.int32)
    pair[0] = lo_bits
    pair[1] = hi_bits
    values = pair.view(np.float32)
    minx = values[0] if values[0] < _F0 else _F0
    maxx = values[1] if values[1] > _F0 else _F0
    span = _F1 if maxx == minx else np.float32(maxx - minx)
    scale = np.float32(span / _F255)
    if not scale == scale:
        return scale, _F0
    zp = np.float32(_F0 - np.float32(minx / scale))
    if not zp == zp:          # -inf / inf
        return scale, _F0
    zp = _F0 if zp < _F0 else (_F255 if zp > _F255 else zp)
    return scale, np.float32(np.rint(zp))


@njit(cache=True)
def quantize_small(x, out, row_sum):
    """DynamicQuantizeLinear of x (M, K) float32 into ``out`` (M, Kp) uint8 and ``row_sum``; returns (scale, zp)."""
    lo, hi = _range_of(x.reshape(-1).view(np.int32), 0, x.size)
    scale, zp = quantization_params(lo, hi)
    for r in range(x.shape[0]):
        _quantize_row(x, r, scale, zp, out, row_sum)
    return scale, zp


# --------------------------------------------------------------------------- one range per row

_TINY = np.float32(np.finfo(np.float32).tiny)
_INT32_MIN = np.int32(-0x80000000)


@njit(cache=True, inline="always")
def _quantize_row_own_range(x, r, out, row_t, row_scale, row_zero_point):
    """Row ``r`` quantized with its own range, as ``quantize_dynamic(per_row=True)`` writes it in ONNX ops.

    Each step is the float32 operation of the pattern's node, in its order: ``lo = Min(min, 0)``,
    ``hi = Max(max, 0)``, ``scale = Max(Div(Sub(hi, lo), 255), FLT_MIN)``, ``zp = Clip(Round(Neg(Div(lo,
    scale))), 0, 255)``, ``q = Cast<uint8>(Clip(Add(Round(Div(x, scale)), zp), 0, 255))`` and
    ``Cast<int32>(zp)``, with the casts' x86 results for NaN (0 and INT32_MIN). Which of -0/+0 the
    range holds changes no integer result. A NaN in the row makes its scale NaN, so the row's
    products are NaN (the unfused ReduceMin/ReduceMax skip a NaN unless it comes first).
    ``row_t`` receives the row's weight-zero-point term for the GEMM, ``sum(q) - K * zero_point``
    (wrapping int32, as :func:`qrt.kernels.cpu.qgemm.matmul_rows` computes it).
    """
    K = x.shape[1]
    lo_key, hi_key = _range_of(x[r].view(np.int32), 0, K)
    if K == 0:
        lo_key, hi_key = np.int32(0), np.int32(0)
    if lo_key < _NEG_INF_KEY or hi_key > _POS_INF_KEY:
        for k in range(out.shape[1]):
            out[r, k] = 0
        row_t[r] = np.int32(np.int64(-K) * np.int64(_INT32_MIN))
        row_scale[r] = np.float32(np.nan)
        row_zero_point[r] = _INT32_MIN
        return
    pair = np.empty(2, np.int32)
    pair[0] = lo_key ^ ((lo_key >> 31) & 0x7FFFFFFF)
    pair[1] = hi_key ^ ((hi_key >> 31) & 0x7FFFFFFF)
    values = pair.view(np.float32)
    lo = values[0] if values[0] <= _F0 else _F0
    hi = values[1] if values[1] >= _F0 else _F0
    raw = np.float32(np.float32(hi - lo) / _F255)
    scale = raw if raw >= _TINY else _TINY
    zp = np.rint(-np.float32(lo / scale))
    if zp == zp:
        zp = _F0 if zp < _F0 else (_F255 if zp > _F255 else zp)
        zp_int = np.int32(zp)
    else:
        zp_int = _INT32_MIN
    row_zero_point[r] = zp_int
    s = np.int32(0)
    for k in range(K):
        v = np.rint(x[r, k] / scale) + zp
        if v != v:
            q = np.uint8(0)
        else:
            v = _F0 if v < _F0 else (_F255 if v > _F255 else v)
            q = np.uint8(v)
        out[r, k] = q
        s += np.int32(q)
    for k in range(K, out.shape[1]):
        out[r, k] = 0
    row_t[r] = np.int32(np.int64(s) - np.int64(K) * np.int64(zp_int))
    row_scale[r] = scale


@njit(cache=True)
def quantize_rows_own_range(x, out, row_t, row_scale, row_zero_point):
    """Each row of x (M, K) float32 quantized to uint8 with its own range into ``out`` (M, Kp), zeros
    after K; per row its zero-point term, float32 scale and int32 zero point (see
    :func:`_quantize_row_own_range`)."""
    for r in range(x.shape[0]):
        _quantize_row_own_range(x, r, out, row_t, row_scale, row_zero_point)


@njit(cache=True, parallel=True)
def quantize_rows_own_range_parallel(x, out, row_t, row_scale, row_zero_point):
    for r in prange(x.shape[0]):
        _quantize_row_own_range(x, r, out, row_t, row_scale, row_zero_point)
