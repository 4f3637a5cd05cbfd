"""Numba kernels for QuantizeLinear / DequantizeLinear arithmetic.

The arithmetic follows the ONNX spec exactly:

* quantize: ``q = saturate(rint(x / scale) + zero_point)``, division (not multiplication by a
  reciprocal, which rounds differently) in the compute dtype, round half to even, NaN saturates to
  ``qmin`` as the reference evaluator does on x86.
* dequantize: ``y = (float(q) - float(zero_point)) * scale``.

Zero points and the saturation bounds arrive as floats of the compute dtype so the inner loop has one
type and LLVM vectorizes it (division, ``vroundps``, min/max selects, conversion).

Three layouts cover per-tensor, per-axis and blocked quantization:

* ``*_rows``: ``x`` is (R, I) and row ``r`` has one scale (per-tensor in chunks, per-axis when the
  axis is not the last one).
* ``*_cols``: ``x`` is (R, C) and column ``c`` has its own scale (per-axis on the last axis).
* ``*_blocked``: ``x`` is (O, D, I) and ``scale`` is (O, NB, I) with NB = ceil(D / block_size);
  element (o, d, i) uses ``scale[o, d // block_size, i]``.

Each has a serial and a ``parallel=True`` variant with distinct names (Numba's cache index is keyed
by function name, so one Python function must not be compiled twice with different flags).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _quantize_one(value, scale, zero_point, lo, hi):
    v = np.rint(value / scale) + zero_point
    if not v >= lo:
        v = lo
    elif v > hi:
        v = hi
    return v


# ---------------------------------------------------------------- quantize

@njit(cache=True)
def quantize_rows(x, scale, zero_point, lo, hi, out):
    rows, inner = x.shape
    for r in range(rows):
        s = scale[r]
        z = zero_point[r]
        for i in range(inner):
            out[r, i] = _quantize_one(x[r, i], s, z, lo, hi)


@njit(cache=True, parallel=True)
def quantize_rows_parallel(x, scale, zero_point, lo, hi, out):
    rows, inner = x.shape
    for r in prange(rows):
        s = scale[r]
        z = zero_point[r]
        for i in range(inner):
            out[r, i] = _quantize_one(x[r, i], s, z, lo, hi)


@njit(cache=True)
def quantize_cols(x, scale, zero_point, lo, hi, out):
    rows, cols = x.shape
    for r in range(rows):
        for c in range(cols):
            out[r, c] = _quantize_one(x[r, c], scale[c], zero_point[c], lo, hi)


@njit(cache=True, parallel=True)
def quantize_cols_parallel(x, scale, zero_point, lo, hi, out):
    rows, cols = x.shape
    for r in prange(rows):
        for c in range(cols):
            out[r, c] = _quantize_one(x[r, c], scale[c], zero_point[c], lo, hi)


@njit(cache=True, parallel=True)
def quantize_blocked(x, scale, zero_point, block_size, lo, hi, out):
    outer, depth, inner = x.shape
    for row in prange(outer * depth):
        o = row // depth
        d = row - o * depth
        b = d // block_size
        for i in range(inner):
            out[o, d, i] = _quantize_one(x[o, d, i], scale[o, b, i], zero_point[o, b, i], lo, hi)


# -------------------------------------------------------------- dequantize
# ``q`` holds 8- or 16-bit integers (exactly representable in float32) or, for int32 inputs, floats
# the caller converted first as the spec does; ``q - z`` then promotes to the float type of ``z``.

@njit(cache=True)
def dequantize_rows(q, scale, zero_point, out):
    rows, inner = q.shape
    for r in range(rows):
        s = scale[r]
        z = zero_point[r]
        for i in range(inner):
            out[r, i] = (q[r, i] - z) * s


@njit(cache=True, parallel=True)
def dequantize_rows_parallel(q, scale, zero_point, out):
    rows, inner = q.shape
    for r in prange(rows):
        s = scale[r]
        z = zero_point[r]
        for i in range(inner):
            out[r, i] = (q[r, i] - z) * s


@njit(cache=True)
def dequantize_cols(q, scale, zero_point, out):
    rows, cols = q.shape
    for r in range(rows):
        for c in range(cols):
            out[r, c] = (q[r, c] - zero_point[c]) * scale[c]


@njit(cache=True, parallel=True)
def dequantize_cols_parallel(q, scale, zero_point, out):
    rows, cols = q.shape
    for r in prange(rows):
        for c in range(cols):
            out[r, c] = (q[r, c] - zero_point[c]) * scale[c]


@njit(cache=True, parallel=True)
def dequantize_blocked(q, scale, zero_point, block_size, out):
    outer, depth, inner = q.shape
    for row in prange(outer * depth):
        o = row // depth
        d = row - o * depth
        b = d // block_size
        for i in range(inner):
            out[o, d, i] = (q[o, d, i] - zero_point[o, b, i]) * scale[o, b, i]


# ------------------------------------------------------- per-tensor, flat
# What QuantizeLinear / DequantizeLinear nodes with constant per-tensor parameters run: one scale and
# zero point for the whole flat tensor, the same arithmetic as the row kernels above, and a parallel
# twin splitting the tensor into chunks.
FLAT_CHUNK = 1 << 15


@njit(cache=True)
def quantize_flat(x, scale, zero_point, lo, hi, out):
    for i in range(x.size):
        out[i] = _quantize_one(x[i], scale, zero_point, lo, hi)


@njit(cache=True, parallel=True)
def quantize_flat_parallel(x, scale, zero_point, lo, hi, out):
    n = x.size
    for c in prange((n + FLAT_CHUNK - 1) // FLAT_CHUNK):
        for i in range(c * FLAT_CHUNK, min(n, (c + 1) * FLAT_CHUNK)):
            out[i] = _quantize_one(x[i], scale, zero_point, lo, hi)


@njit(cache=True)
def dequantize_flat(q, scale, zero_point, out):
    for i in range(q.size):
        out[i] = (q[i] - zero_point) * scale


@njit(cache=True, parallel=True)
def dequantize_flat_parallel(q, scale, zero_point, out):
    n = q.size
    for c in prange((n + FLAT_CHUNK - 1) // FLAT_CHUNK):
        for i in range(c * FLAT_CHUNK, min(n, (c + 1) * FLAT_CHUNK)):
            out[i] = (q[i] - zero_point) * scale


# ---------------------------------------------------------------- dequantize, add, relu, quantize


@njit(cache=True, inline="always")
def _dequantize_add_span(start, stop, a, a_scale, a_zero, b, b_scale, b_zero, relu, y_scale, y_zero, lo, hi,
                         write_float, write_quantized, out_f, out_q):
    for i in range(start, stop):
        # Each term is dequantize_flat's expression; a float input comes with scale 1 and zero 0,
        # which leave every float32 (signed zeros, NaN) as it is.
        v = (a[i] - a_zero) * a_scale + (b[i] - b_zero) * b_scale
        if relu:
            v = np.float32(0) if v <= 0 else v     # the Relu kernel's expression
        if write_float:
            out_f[i] = v
        if write_quantized:
            out_q[i] = _quantize_one(v, y_scale, y_zero, lo, hi)


@njit(cache=True)
def dequantize_add(a, a_scale, a_zero, b, b_scale, b_zero, relu, y_scale, y_zero, lo, hi, write_float,
                   write_quantized, out_f, out_q):
    """``DequantizeLinear`` of each 8-bit operand, their sum, an optional Relu and an optional
    ``QuantizeLinear``, in one pass over flat equal-size arrays: the float32 operations of the
    separate kernels, in their order, so the same bits."""
    _dequantize_add_span(0, a.size, a, a_scale, a_zero, b, b_scale, b_zero, relu, y_scale, y_zero, lo, hi,
                         write_float, write_quantized, out_f, out_q)


@njit(cache=True, parallel=True)
def dequantize_add_parallel(a, a_scale, a_zero, b, b_scale, b_zero, relu, y_scale, y_zero, lo, hi, write_float,
                            write_quantized, out_f, out_q):
    n = a.size
    for c in prange((n + FLAT_CHUNK - 1) // FLAT_CHUNK):
        _dequantize_add_span(c * FLAT_CHUNK, min(n, (c + 1) * FLAT_CHUNK), a, a_scale, a_zero, b, b_scale, b_zero,
                             relu, y_scale, y_zero, lo, hi, write_float, write_quantized, out_f, out_q)
