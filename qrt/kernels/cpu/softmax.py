"""Softmax, LogSoftmax and Hardmax kernels.

Two layouts cover every axis: ``*_rows`` works on a (rows, n) array reduced along its contiguous last
axis; ``*_strided`` on an (outer, n, inner) array reduced along the middle axis, vectorized across
``inner``. Softmax is computed as ``exp(x - max) / sum`` (``x - max - log(sum)`` for LogSoftmax), so
it never overflows; a row containing NaN comes out NaN, as numpy's formula gives.

Fast-math: the exp-sum is a float reduction that LLVM vectorizes only when allowed to reassociate,
so these kernels use reassociation and contraction but keep ``nnan``/``ninf`` off: masked attention
scores are ``-inf`` and must give exactly 0, and NaN must propagate.

``exp`` is :func:`qrt.kernels.cpu.vmath.exp`: a float32 polynomial that LLVM vectorizes (within
1 ulp, exact 0 for -inf), ``math.exp`` for float64.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import vmath
from .vmath import float32_bits, float32_from_bits, fmax

FASTMATH = {"reassoc", "contract", "nsz"}



# ---------------------------------------------------------------- narrow float types

# float16/bfloat16 data is computed in float32 but rounded to its own type at every step where the
# ONNX definition (and its reference implementation) produces a tensor of that type; the backend
# tests' expected values depend on it at the last bit.
ROUND_NONE = 0
ROUND_FLOAT16 = 1
ROUND_BFLOAT16 = 2


@functools.lru_cache(maxsize=32)
def rounding_for(dtype):
    """The ``ROUND_*`` code for data of ``dtype`` computed in float32 (cached: comparing a dtype with
    a scalar type costs microseconds, and every call asks)."""
    if dtype == np.float16:
        return ROUND_FLOAT16
    if np.dtype(dtype).name == "bfloat16":
        return ROUND_BFLOAT16
    return ROUND_NONE


def round_to(x, rounding):
    """``x`` (float32) rounded to float16 or bfloat16 precision, returned as float32."""
    return x


@njit(cache=True, inline="always")
def _round_float16(x):
    magnitude = abs(x)
    if not magnitude < np.float32(65520.0):
        # Overflow (and inf) become inf; NaN stays NaN.
        return x if x != x else np.float32(np.inf) if x > 0 else np.float32(-np.inf)
    if magnitude < np.float32(6.103515625e-05):
        # float16 subnormals are multiples of 2**-24; scaling by powers of two is exact.
        return np.float32(np.rint(x * np.float32(16777216.0)) * np.float32(5.9604644775390625e-08))
    bits = float32_bits(x)
    bits = (bits + np.int32(0xFFF) + ((bits >> np.int32(13)) & np.int32(1))) & np.int32(-8192)
    return float32_from_bits(bits)


@njit(cache=True, inline="always")
def _round_bfloat16(x):
    if x != x:
        return x
    bits = float32_bits(x)
    bits = (bits + np.int32(0x7FFF) + ((bits >> np.int32(16)) & np.int32(1))) & np.int32(-65536)
    return float32_from_bits(bits)


@overload(round_to)
def _round_to_overload(x, rounding):
    if x == types.float32:
        def impl(x, rounding):
            if rounding == ROUND_FLOAT16:
                return _round_float16(x)
            if rounding == ROUND_BFLOAT16:
                return _round_bfloat16(x)
            return x
        return impl
    return lambda x, rounding: x


# ---------------------------------------------------------------- softmax / logsoftmax

@njit(cache=True, inline="always", fastmath=FASTMATH)
def _row_max(x):
    m = x[0]
    for i in range(1, x.shape[0]):
        m = fmax(m, x[i])
    return m


@njit(cache=True, fastmath=FASTMATH)
def _softmax_row(x, out, log):
    n = x.shape[0]
    if n == 0:
        return
    m = _row_max(x)
    total = x.dtype.type(0.0)
    if log:
        for i in range(n):
            shifted = x[i] - m
            out[i] = shifted
            total += vmath.exp(shifted)
        log_total = math.log(total)
        for i in range(n):
            out[i] = out[i] - log_total
    else:
        for i in range(n):
            e = vmath.exp(x[i] - m)
            out[i] = e
            total += e
        # One division and n multiplications: within an ulp of dividing each, and several times
        # faster than a vector division per element.
        inv_total = x.dtype.type(1.0) / total
        for i in range(n):
            out[i] = out[i] * inv_total


@njit(cache=True, fastmath=FASTMATH)
def _softmax_row_rounded(x, out, log, rounding, sequential_sum):
    """The float16/bfloat16 formula: exp(x - max) / sum, log of that, each step rounded.

    The sum is rounded once (float32 accumulation, as numpy sums a contiguous float16 axis) or,
    with ``sequential_sum``, after every addition (bfloat16, or numpy summing a strided axis).
    """
    n = x.shape[0]
    if n == 0:
        return
    m = _row_max(x)
    for i in range(n):
        out[i] = round_to(vmath.exp(round_to(x[i] - m, rounding)), rounding)
    total = x.dtype.type(0.0)
    if sequential_sum:
        for i in range(n):
            total = round_to(total + out[i], rounding)
    else:
        for i in range(n):
            total += out[i]
        total = round_to(total, rounding)
    for i in range(n):
        p = round_to(out[i] / total, rounding)
        out[i] = round_to(math.log(p), rounding) if log else p


@njit(cache=True, fastmath=FASTMATH)
def softmax_rows(x, out, log, rounding, sequential_sum):
    for r in range(x.shape[0]):
        if rounding == ROUND_NONE:
            _softmax_row(x[r], out[r], log)
        else:
            _softmax_row_rounded(x[r], out[r], log, rounding, sequential_sum)


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def softmax_rows_parallel(x, out, log):
    for r in prange(x.shape[0]):
        _softmax_row(x[r], out[r], log)


@njit(cache=True, fastmath=FASTMATH)
def softmax_strided(x, out, log):
    outer, n, inner = x.shape
    if n == 0:
        return
    peak = np.empty(inner, dtype=x.dtype)
    total = np.empty(inner, dtype=x.dtype)
    for o in range(outer):
        for j in range(inner):
            peak[j] = x[o, 0, j]
            total[j] = 0.0
        for k in range(1, n):
            for j in range(inner):
                peak[j] = fmax(peak[j], x[o, k, j])
        for k in range(n):
            for j in range(inner):
                shifted = x[o, k, j] - peak[j]
                e = vmath.exp(shifted)
                out[o, k, j] = shifted if log else e
                total[j] += e
        if log:
            for j in range(inner):
                total[j] = math.log(total[j])
            for k in range(n):
                for j in range(inner):
                    out[o, k, j] = out[o, k, j] - total[j]
        else:
            for k in range(n):
                for j in range(inner):
                    out[o, k, j] = out[o, k, j] / total[j]


# ---------------------------------------------------------------- hardmax

@njit(cache=True)
def hardmax_rows(x, out):
    rows, n = x.shape
    for r in range(rows):
        best = 0
        for i in range(n):
            out[r, i] = 0
        for i in range(1, n):
            v = x[r, i]
            if v != v:
                if x[r, best] == x[r, best]:
                    best = i
                break
            if v > x[r, best]:
                best = i
        if n:
            out[r, best] = 1


@njit(cache=True)
def hardmax_strided(x, out):
    outer, n, inner = x.shape
    for o in range(outer):
        for j in range(inner):
            best = 0
            for k in range(n):
                out[o, k, j] = 0
            for k in range(1, n):
                v = x[o, k, j]
                if v != v:
                    if x[o, best, j] == x[o, best, j]:
                        best = k
                    break
                if v > x[o, best, j]:
                    best = k
            if n:
                out[o, best, j] = 1
