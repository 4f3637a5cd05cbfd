"""Numba kernels for the quantized element-wise, pooling and normalisation ops.

* Element-wise functions of one 8-bit tensor (QLinearSigmoid, QLinearLeakyRelu, and the
  ``qrt::QLinearTable`` groups of :mod:`qrt.fusion.qtables`) are a 256-entry lookup table indexed
  by the uint8 bit pattern of the input: one gather per element.
* Binary ops (QLinearAdd, QLinearMul) compute in float32 as onnxruntime does, rounding half to even
  and saturating, over a 3-D strided view of the broadcast the op binds once per input shape.
  Requantization (QLinearConcat) is a flat loop.
* Pooling and softmax work on integer sums of ``x - zero_point``, exact until the final scaling.

The table, binary and channels-last pooling kernels have ``parallel=True`` twins (distinct names: Numba's cache is keyed by
function name) for tensors large enough to pay for waking the thread pool; the other loops are
memory-bound and cheap next to the convolutions around them, so they stay serial.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types, vectorize
from numba.extending import intrinsic

from . import qgemm


# --------------------------------------------------------------------------- reductions


@njit(cache=True)
def min_max(x):
    """(min, max) of a flat float array, NaN-propagating like ``np.min``/``np.max``."""
    n = x.size
    chunks = max(1, min(64, n // 4096))
    lo = np.empty(chunks, np.float64)
    hi = np.empty(chunks, np.float64)
    step = (n + chunks - 1) // chunks
    for c in range(chunks):
        a = np.inf
        b = -np.inf
        nan = False
        for i in range(c * step, min(n, (c + 1) * step)):
            v = x[i]
            if v != v:
                nan = True
            if v < a:
                a = v
            if v > b:
                b = v
        if nan:
            a = np.nan
            b = np.nan
        lo[c] = a
        hi[c] = b
    a = lo[0]
    b = hi[0]
    for c in range(1, chunks):
        if lo[c] != lo[c] or a != a:
            a = np.nan
        elif lo[c] < a:
            a = lo[c]
        if hi[c] != hi[c] or b != b:
            b = np.nan
        elif hi[c] > b:
            b = hi[c]
    return a, b


# --------------------------------------------------------------------------- element-wise ufuncs


@vectorize(cache=True)
def divide_clamp(x, scale, lo, hi):
    """``x / scale`` clamped to [lo, hi] with NaN kept (the float8 saturating conversion's first half)."""
    v = x / scale
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


# Element count from which the element-wise kernels (tables, binary ops, Quantize/DequantizeLinear)
# run their parallel twins: they are memory-bound, so a second thread pays only on large tensors.
PARALLEL_MIN_ELEMENTS = 1 << 18

# Binary kernels take each operand as a flat uint8 or int8 array plus element strides over a 3-D
# view of the output (dims, strides); a stride of 0 broadcasts. The caller collapses the broadcast
# once per input shape, so the common forms (same shape, a scalar, one value per channel) become
# rows whose inner loop reads both operands contiguously (through slices, so LLVM sees unit-stride
# loads it can vectorize) or one of them as a constant. Work is split into tasks of up to
# BINARY_CHUNK elements of one row. Zero points and bounds are in the data's own type (no bit flip:
# an xor in the loop keeps LLVM from vectorizing the conversions).
BINARY_CHUNK = 1 << 14


@njit(cache=True, inline="always")
def _saturate(v, zc, qmin, qmax):
    r = np.float32(np.rint(v)) + zc
    return np.int32(min(max(r, qmin), qmax))


@njit(cache=True, inline="always")
def _task_span(task, dims, sa, sb):
    """(row offset of A, of B, of the output, first and end element in the row) of one task."""
    d1, d2 = dims[1], dims[2]
    chunks = (d2 + BINARY_CHUNK - 1) // BINARY_CHUNK
    row = task // chunks
    lo = (task - row * chunks) * BINARY_CHUNK
    hi = min(d2, lo + BINARY_CHUNK)
    i0 = row // d1
    i1 = row - i0 * d1
    return i0 * sa[0] + i1 * sa[1], i0 * sb[0] + i1 * sb[1], row * d2, lo, hi


@njit(cache=True, inline="always")
def _qadd_task(task, a, b, dims, sa, sb, za, zb, ratio_a, ratio_b, zc, qmin, qmax, out):
    ia, ib, io, lo, hi = _task_span(task, dims, sa, sb)
    n = hi - lo
    o = out[io + lo:io + hi]
    s2a, s2b = sa[2], sb[2]
    if s2a == 1 and s2b == 1:
        av = a[ia + lo:ia + hi]
        bv = b[ib + lo:ib + hi]
        for i in range(n):
            v = np.float32(np.int32(av[i]) - za) * ratio_a + np.float32(np.int32(bv[i]) - zb) * ratio_b
            o[i] = _saturate(v, zc, qmin, qmax)
    elif s2a == 1 and s2b == 0:
        av = a[ia + lo:ia + hi]
        tb = np.float32(np.int32(b[ib]) - zb) * ratio_b
        for i in range(n):
            o[i] = _saturate(np.float32(np.int32(av[i]) - za) * ratio_a + tb, zc, qmin, qmax)
    elif s2a == 0 and s2b == 1:
        bv = b[ib + lo:ib + hi]
        ta = np.float32(np.int32(a[ia]) - za) * ratio_a
        for i in range(n):
            o[i] = _saturate(ta + np.float32(np.int32(bv[i]) - zb) * ratio_b, zc, qmin, qmax)
    else:
        for i in range(lo, hi):
            v = (np.float32(np.int32(a[ia + i * s2a]) - za) * ratio_a
                 + np.float32(np.int32(b[ib + i * s2b]) - zb) * ratio_b)
            o[i - lo] = _saturate(v, zc, qmin, qmax)


@njit(cache=True, inline="always")
def _qmul_task(task, a, b, dims, sa, sb, za, zb, ratio, zc, qmin, qmax, out):
    ia, ib, io, lo, hi = _task_span(task, dims, sa, sb)
    n = hi - lo
    o = out[io + lo:io + hi]
    s2a, s2b = sa[2], sb[2]
    if s2a == 1 and s2b == 1:
        av = a[ia + lo:ia + hi]
        bv = b[ib + lo:ib + hi]
        for i in range(n):
            v = np.float32((np.int32(av[i]) - za) * (np.int32(bv[i]) - zb)) * ratio
            o[i] = _saturate(v, zc, qmin, qmax)
    elif s2a == 1 and s2b == 0:
        av = a[ia + lo:ia + hi]
        fb = np.int32(b[ib]) - zb
        for i in range(n):
            o[i] = _saturate(np.float32((np.int32(av[i]) - za) * fb) * ratio, zc, qmin, qmax)
    elif s2a == 0 and s2b == 1:
        bv = b[ib + lo:ib + hi]
        fa = np.int32(a[ia]) - za
        for i in range(n):
            o[i] = _saturate(np.float32(fa * (np.int32(bv[i]) - zb)) * ratio, zc, qmin, qmax)
    else:
        for i in range(lo, hi):
            v = np.float32((np.int32(a[ia + i * s2a]) - za) * (np.int32(b[ib + i * s2b]) - zb)) * ratio
            o[i - lo] = _saturate(v, zc, qmin, qmax)


@njit(cache=True, inline="always")
def binary_tasks(dims):
    """How many tasks the binary kernels split an output of 3-D ``dims`` into."""
    return dims[0] * dims[1] * ((dims[2] + BINARY_CHUNK - 1) // BINARY_CHUNK)


@njit(cache=True)
def qadd(a, b, dims, sa, sb, za, zb, ratio_a, ratio_b, zc, qmin, qmax, out):
    """``saturate(rint((a - za) * sa/sc + (b - zb) * sb/sc) + zc)`` in float32 (layout: see above)."""
    for task in range(binary_tasks(dims)):
        _qadd_task(task, a, b, dims, sa, sb, za, zb, ratio_a, ratio_b, zc, qmin, qmax, out)


@njit(cache=True, parallel=True)
def qadd_parallel(a, b, dims, sa, sb, za, zb, ratio_a, ratio_b, zc, qmin, qmax, out):
    for task in prange(binary_tasks(dims)):
        _qadd_task(task, a, b, dims, sa, sb, za, zb, ratio_a, ratio_b, zc, qmin, qmax, out)


@njit(cache=True)
def qmul(a, b, dims, sa, sb, za, zb, ratio, zc, qmin, qmax, out):
    """``saturate(rint((a - za) * (b - zb) * sa*sb/sc) + zc)`` in float32 (layout: see above)."""
    for task in range(binary_tasks(dims)):
        _qmul_task(task, a, b, dims, sa, sb, za, zb, ratio, zc, qmin, qmax, out)


@njit(cache=True, parallel=True)
def qmul_parallel(a, b, dims, sa, sb, za, zb, ratio, zc, qmin, qmax, out):
    for task in prange(binary_tasks(dims)):
        _qmul_task(task, a, b, dims, sa, sb, za, zb, ratio, zc, qmin, qmax, out)


@njit(cache=True)
def requantize(x, flip, zx, ratio, zy, qmin, qmax, out):
    """``saturate(rint((x - zx) * sx/sy) + zy)`` in float32: a change of scale and zero point."""
    n = out.size
    chunk = 1 << 14
    for c in range((n + chunk - 1) // chunk):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            v = np.float32(np.rint(np.float32(np.int32(x[i] ^ flip) - zx) * ratio)) + zy
            v = min(max(v, qmin), qmax)
            out[i] = np.uint8(np.int32(v)) ^ flip


@vectorize(cache=True)
def requantize_int32(acc, bias, mult, zy, qmin, qmax):
    """``saturate(rint(float64(acc + bias) * mult) + zy)``: int32 sums with a broadcast bias to 8 bits."""
    v = np.rint(np.float64(np.int32(acc + bias)) * mult) + zy
    if v < qmin:
        v = qmin
    elif v > qmax:
        v = qmax
    return v


@vectorize(cache=True)
def scale_sum(acc, bias, scale):
    """``float32(acc + bias) * scale``: int32 sums with a broadcast int32 bias to float."""
    return np.float32(np.int32(acc + bias)) * scale


# --------------------------------------------------------------------------- lookup tables


@njit(cache=True)
def sigmoid_table(x_scale, x_zero, y_scale, y_zero, qmin, qmax, signed):
    """Table indexed by the uint8 bit pattern of x: quantize(sigmoid(dequantize(x)))."""
    table = np.empty(256, np.uint8)
    for bits in range(256):
        v = bits - 256 if signed and bits >= 128 else bits
        x = np.float32(np.float32(v - x_zero) * x_scale)
        y = np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-x)))
        q = np.rint(y / y_scale) + y_zero
        q = min(max(q, qmin), qmax)
        table[bits] = np.uint8(np.int64(q) & 255)
    return table


@njit(cache=True)
def leaky_relu_table(x_scale, x_zero, y_scale, y_zero, alpha, qmin, qmax, signed):
    """Table indexed by the uint8 bit pattern of x: quantize(leaky_relu(dequantize(x)))."""
    table = np.empty(256, np.uint8)
    for bits in range(256):
        v = bits - 256 if signed and bits >= 128 else bits
        x = np.float32(np.float32(v - x_zero) * x_scale)
        y = x if x >= 0 else np.float32(x * alpha)
        q = np.rint(y / y_scale) + y_zero
        q = min(max(q, qmin), qmax)
        table[bits] = np.uint8(np.int64(q) & 255)
    return table


@njit(cache=True)
def requantize_table(x_scale, x_zero, y_scale, y_zero, qmin, qmax, signed):
    """Table indexed by the uint8 bit pattern of x: quantize(dequantize(x)) to the output's parameters,
    in float32 as onnxruntime's lookup tables compute it."""
    table = np.empty(256, np.uint8)
    for bits in range(256):
        v = bits - 256 if signed and bits >= 128 else bits
        x = np.float32(np.float32(v - x_zero) * x_scale)
        q = np.rint(x / y_scale) + y_zero
        q = min(max(q, qmin), qmax)
        table[bits] = np.uint8(np.int64(q) & 255)
    return table


@njit(cache=True)
def select_tables(condition, x, x_table, y, y_table, out):
    """``out[i] = x_table[x[i]] if condition[i] else y_table[y[i]]`` on flat views of one shape."""
    for i in range(out.size):
        out[i] = x_table[x[i]] if condition[i] else y_table[y[i]]


TABLE_CHUNK = 1 << 14
# ``vpermi2b`` (AVX-512 VBMI) looks up 64 bytes at once in a 128-byte table held in two registers:
# two of them and a select on the index's top bit cover 256 entries, ~4x the scalar loop. Used
# where Numba compiles for a CPU that has it and the int8 ISA is not overridden to a lesser one.
TABLE_VBMI = qgemm.ISA == "avx512vnni" and bool(qgemm._target_features().get("avx512vbmi"))
_V64 = ir.VectorType(ir.IntType(8), 64)


@intrinsic
def _lookup64(typingctx, x, table, out, start):
    """``out[start:start+64] = table[x[start:start+64]]`` (uint8 arrays, table of 256)."""
    sig = types.void(x, table, out, start)

    def codegen(context, builder, signature, args):
        x_v, t_v, o_v, start_v = args
        x_ptr, t_ptr, o_ptr = (builder.bitcast(context.make_array(signature.args[i])(context, builder, v).data,
                                               _V64.as_pointer()) for i, v in ((0, x_v), (1, t_v), (2, o_v)))
        index = builder.load(builder.bitcast(builder.gep(builder.bitcast(x_ptr, ir.IntType(8).as_pointer()),
                                                         [start_v]), _V64.as_pointer()), align=1)
        quarters = [builder.load(builder.gep(t_ptr, [ir.Constant(ir.IntType(64), q)]), align=1) for q in range(4)]
        permute = builder.module.declare_intrinsic("llvm.x86.avx512.vpermi2var.qi.512",
                                                   fnty=ir.FunctionType(_V64, [_V64, _V64, _V64]))
        low = builder.call(permute, [quarters[0], index, quarters[1]])
        high = builder.call(permute, [quarters[2], index, quarters[3]])
        value = builder.select(builder.icmp_signed("<", index, ir.Constant(_V64, None)), high, low)
        builder.store(value, builder.bitcast(builder.gep(builder.bitcast(o_ptr, ir.IntType(8).as_pointer()),
                                                         [start_v]), _V64.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def apply_table_vbmi(x, table, out):
    """:func:`apply_table` 64 bytes at a time with ``vpermi2b`` (only compiled where TABLE_VBMI)."""
    n = x.size
    full = n - n % 64
    for start in range(0, full, 64):
        _lookup64(x, table, out, start)
    for i in range(full, n):
        out[i] = table[x[i]]


@njit(cache=True)
def apply_table(x, table, out):
    """``out[i] = table[x[i]]`` on flat uint8 views."""
    for i in range(x.size):
        out[i] = table[x[i]]


@njit(cache=True, parallel=True)
def apply_table_parallel(x, table, out):
    n = x.size
    for c in prange((n + TABLE_CHUNK - 1) // TABLE_CHUNK):
        for i in range(c * TABLE_CHUNK, min(n, (c + 1) * TABLE_CHUNK)):
            out[i] = table[x[i]]


# --------------------------------------------------------------------------- pooling


@njit(cache=True)
def apply_channel_tables(x, tables, out):
    """``out[o, c, i] = tables[c, x[o, c, i]]``: one 256-entry table per channel of (O, C, I) bytes."""
    O, C, I = x.shape
    for o in range(O):
        for c in range(C):
            table = tables[c]
            src = x[o, c]
            dst = out[o, c]
            for i in range(I):
                dst[i] = table[src[i]]


@njit(cache=True, inline="always")
def _channel_tables_row(x, tables, out, o):
    src = x[o]
    dst = out[o]
    for c in range(src.shape[0]):
        dst[c] = tables[c, src[c]]


@njit(cache=True)
def apply_channel_tables_last(x, tables, out):
    """Channels-last :func:`apply_channel_tables`: ``out[o, c] = tables[c, x[o, c]]`` for (O, C) bytes."""
    for o in range(x.shape[0]):
        _channel_tables_row(x, tables, out, o)


@njit(cache=True, parallel=True)
def apply_channel_tables_last_parallel(x, tables, out):
    for o in prange(x.shape[0]):
        _channel_tables_row(x, tables, out, o)


@njit(cache=True)
def global_average(x, flip, zx, mult, zy, qmin, qmax, out):
    """``x`` (R, L) bytes (xor ``flip``: uint8, ``zx`` shifted): one requantized mean per row.

    ``mult = x_scale / (y_scale * L)`` in float64; the sum of ``x - zx`` is exact.
    """
    R, L = x.shape
    for r in range(R):
        s = 0
        for i in range(L):
            s += np.int64(x[r, i] ^ flip)
        v = np.rint(np.float64(s - np.int64(L) * zx) * mult) + zy
        if v < qmin:
            v = qmin
        elif v > qmax:
            v = qmax
        out[r] = np.uint8(np.int64(v) & 255)


@njit(cache=True)
def global_average_last(x, flip, zx, mult, zy, qmin, qmax, out):
    """Channels-last variant: ``x`` (N, L, C) averaged over L into ``out`` (N, C)."""
    N, L, C = x.shape
    for t in range(N):
        acc = np.zeros(C, np.int64)
        for i in range(L):
            for c in range(C):
                acc[c] += np.int64(x[t, i, c] ^ flip)
        for c in range(C):
            v = np.rint(np.float64(acc[c] - np.int64(L) * zx) * mult) + zy
            if v < qmin:
                v = qmin
            elif v > qmax:
                v = qmax
            out[t, c] = np.uint8(np.int64(v) & 255)


@njit(cache=True, parallel=True)
def average_pool(x, flip, zx, kernel, strides, pads_begin, pads_end, out_shape, count_include_pad,
                 ratio, zy, qmin, qmax, out):
    """AveragePool of ``x`` (NC, D, H, W) bytes into ``out`` (NC, OD, OH, OW), requantized.

    Each window's sum of ``x - zx`` is exact; the divisor counts the window's elements inside the
    input, or inside the padded input with ``count_include_pad`` (padding is ``zx``, i.e. zero).
    ``ratio = x_scale / y_scale`` in float64, so the result is the correctly rounded mean (a tie of
    the float32 path would round the other way about as often as not). A task is one (channel,
    output depth): the window's rows are summed once per output row into column sums (zero in the
    padding), an output row adds ``kw`` shifted runs of them, and its scaling runs as vectors.
    """
    NC, D, H, W = x.shape
    OD, OH, OW = out_shape[0], out_shape[1], out_shape[2]
    kd, kh, kw = kernel[0], kernel[1], kernel[2]
    sd, sh, sw = strides[0], strides[1], strides[2]
    pd, ph, pw = pads_begin[0], pads_begin[1], pads_begin[2]
    ed, eh, ew = pads_end[0], pads_end[1], pads_end[2]
    span = max(W + pw, (OW - 1) * sw + kw)
    for t in prange(NC * OD):
        c = t // OD
        od = t - c * OD
        d0 = od * sd - pd
        # Column w of the input sits at ``w + pw`` of ``columns``, whose other entries stay 0.
        columns = np.zeros(span, np.int64)
        sums = np.empty(OW, np.int64)
        inside_w = np.empty(OW, np.int64)
        extent_w = np.empty(OW, np.int64)
        for ow in range(OW):
            w0 = ow * sw - pw
            inside_w[ow] = max(min(w0 + kw, W) - max(w0, 0), 0)
            extent_w[ow] = min(w0 + kw, W + ew) - max(w0, -pw)
        for oh in range(OH):
            h0 = oh * sh - ph
            at = columns[pw:pw + W]
            for w in range(W):
                at[w] = 0
            rows = 0
            for d in range(max(d0, 0), min(d0 + kd, D)):
                for h in range(max(h0, 0), min(h0 + kh, H)):
                    src = x[c, d, h]
                    for w in range(W):
                        at[w] += np.int64(src[w] ^ flip)
                    rows += 1
            for ow in range(OW):
                sums[ow] = 0
            for j in range(kw):
                for ow in range(OW):
                    sums[ow] += columns[ow * sw + j]
            extent_dh = (min(d0 + kd, D + ed) - max(d0, -pd)) * (min(h0 + kh, H + eh) - max(h0, -ph))
            dst = out[c, od, oh]
            for ow in range(OW):
                inside = rows * inside_w[ow]
                n = extent_dh * extent_w[ow] if count_include_pad else inside
                v = np.rint(np.float64(sums[ow] - inside * zx) * ratio / np.float64(max(n, 1))) + zy
                if n <= 0:
                    v = np.float64(zy)
                v = min(max(v, np.float64(qmin)), np.float64(qmax))
                dst[ow] = np.uint8(np.int64(v) & 255)


@njit(cache=True, inline="always")
def _average_pool_last_row(row, x, flip, zx, kernel, strides, pads_begin, pads_end, out_shape, count_include_pad,
                           ratio, zy, qmin, qmax, out):
    """One output row (n, od, oh) of :func:`average_pool_last`."""
    N, D, H, W, C = x.shape
    OD, OH, OW = out_shape[0], out_shape[1], out_shape[2]
    kd, kh, kw = kernel[0], kernel[1], kernel[2]
    sd, sh, sw = strides[0], strides[1], strides[2]
    pd, ph, pw = pads_begin[0], pads_begin[1], pads_begin[2]
    ed, eh, ew = pads_end[0], pads_end[1], pads_end[2]
    n = row // (OD * OH)
    od = row // OH - n * OD
    oh = row - (n * OD + od) * OH
    d0 = od * sd - pd
    h0 = oh * sh - ph
    acc = np.empty(C, np.int32)
    for ow in range(OW):
        w0 = ow * sw - pw
        acc[:] = 0
        count = 0
        for d in range(max(d0, 0), min(d0 + kd, D)):
            for h in range(max(h0, 0), min(h0 + kh, H)):
                for w in range(max(w0, 0), min(w0 + kw, W)):
                    pixel = x[n, d, h, w]
                    for c in range(C):
                        acc[c] += np.int32(pixel[c] ^ flip)
                    count += 1
        divisor = count
        if count_include_pad:
            divisor = ((min(d0 + kd, D + ed) - max(d0, -pd)) * (min(h0 + kh, H + eh) - max(h0, -ph))
                       * (min(w0 + kw, W + ew) - max(w0, -pw)))
        y = out[n, od, oh, ow]
        if divisor <= 0:
            v = min(max(np.float64(zy), qmin), qmax)
            for c in range(C):
                y[c] = np.uint8(np.int64(v) & 255)
            continue
        offset = np.int32(zx) * np.int32(count)
        for c in range(C):
            v = np.rint(np.float64(acc[c] - offset) * ratio / np.float64(divisor)) + zy
            v = min(max(v, qmin), qmax)
            y[c] = np.uint8(np.int64(v) & 255)


@njit(cache=True)
def average_pool_last(x, flip, zx, kernel, strides, pads_begin, pads_end, out_shape, count_include_pad,
                      ratio, zy, qmin, qmax, out):
    """:func:`average_pool` on channels-last bytes: ``x`` (N, D, H, W, C) into ``out`` (N, OD, OH, OW, C).

    The channels are the inner, contiguous loop, so a window's sums and their scaling are vector
    operations; the arithmetic is :func:`average_pool`'s (window sums exact in int32 for windows
    under 2**23 elements, one float64 scaling each), so the results are the same bits.
    """
    for row in range(x.shape[0] * out_shape[0] * out_shape[1]):
        _average_pool_last_row(row, x, flip, zx, kernel, strides, pads_begin, pads_end, out_shape,
                               count_include_pad, ratio, zy, qmin, qmax, out)


@njit(cache=True, parallel=True)
def average_pool_last_parallel(x, flip, zx, kernel, strides, pads_begin, pads_end, out_shape, count_include_pad,
                               ratio, zy, qmin, qmax, out):
    for row in prange(x.shape[0] * out_shape[0] * out_shape[1]):
        _average_pool_last_row(row, x, flip, zx, kernel, strides, pads_begin, pads_end, out_shape,
                               count_include_pad, ratio, zy, qmin, qmax, out)


# --------------------------------------------------------------------------- softmax


@njit(cache=True)
def softmax_rows(x, flip, x_scale, y_scale, zy, qmin, qmax, out):
    """Quantized softmax over the rows of ``x`` (R, L) bytes (xor ``flip`` gives uint8).

    Uses ``exp((x - max) * x_scale)``: the input zero point cancels out of softmax.
    """
    R, L = x.shape
    for r in range(R):
        m = 0
        for i in range(L):
            v = np.int32(x[r, i] ^ flip)
            if v > m:
                m = v
        e = np.empty(L, np.float32)
        total = np.float32(0.0)
        for i in range(L):
            e[i] = np.float32(math.exp(np.float32(np.int32(x[r, i] ^ flip) - m) * x_scale))
            total += e[i]
        inv = np.float32(1.0) / (total * y_scale)
        for i in range(L):
            v = np.rint(e[i] * inv) + zy
            if v < qmin:
                v = qmin
            elif v > qmax:
                v = qmax
            out[r, i] = np.uint8(np.int64(v) & 255)
