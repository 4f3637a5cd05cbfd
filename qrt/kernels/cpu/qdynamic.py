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

Serial and ``parallel=True`` variants have distinct names (Numba caches by function name).
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
