"""Numba kernels for the data-movement ops that do arithmetic: scatter reductions, Range, and the
float8e8m0 rounding of Cast.

Plain copies (gather, concatenation, padding, transposes) stay in numpy, where they are already a
single memcpy-like pass; these kernels cover the loops whose element updates depend on each other
(a reduction into duplicate indices must apply every update in order) or that compute values, and
the one transpose numpy copies slowly: a short axis moved to the end (an NCHW image with 3 channels
to NHWC, 1x3x224x224 uint8 in 180 us against 30 us here); and :func:`transpose_block`, the 16x16
float32 block transpose the channels-last depthwise convolution moves its image and output with.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# Reduction codes shared with qrt.ops.movement.
REDUCE_ADD = 1
REDUCE_MUL = 2
REDUCE_MAX = 3
REDUCE_MIN = 4


@njit(cache=True)
def scatter_reduce(out, rows, updates, reduction):
    """``out[rows[i], :] = reduce(out[rows[i], :], updates[i, :])`` in index order, on 2-D arrays.

    ScatterND passes one row per index tuple (the slice it addresses, contiguous, so the inner loop
    vectorizes); ScatterElements passes rows of length 1. Applying updates one by one in order keeps
    duplicate indices exact: every update to an element is combined, not just the last one.
    """
    n = rows.shape[0]
    width = updates.shape[1]
    if reduction == REDUCE_ADD:
        for i in range(n):
            target = out[rows[i]]
            source = updates[i]
            for j in range(width):
                target[j] += source[j]
    elif reduction == REDUCE_MUL:
        for i in range(n):
            target = out[rows[i]]
            source = updates[i]
            for j in range(width):
                target[j] *= source[j]
    elif reduction == REDUCE_MAX:
        for i in range(n):
            target = out[rows[i]]
            source = updates[i]
            for j in range(width):
                if source[j] > target[j]:
                    target[j] = source[j]
    else:
        for i in range(n):
            target = out[rows[i]]
            source = updates[i]
            for j in range(width):
                if source[j] < target[j]:
                    target[j] = source[j]


@njit(cache=True)
def range_fill(out, start, delta):
    """``out[i] = start + i * delta``: each element computed directly, so no error accumulates."""
    for i in range(out.shape[0]):
        out[i] = start + i * delta


def range_values(start, delta, count, dtype):
    """A 1-D array of ``count`` values of ``dtype`` from ``start`` by ``delta``."""
    out = np.empty(count, dtype=dtype)
    if count:
        scalar = dtype.type
        range_fill(out, scalar(start), scalar(delta))
    return out


# Rounding modes of a cast to float8e8m0 (Cast opset 24 'round_mode').
E8M0_ROUND_UP = 0
E8M0_ROUND_DOWN = 1
E8M0_ROUND_NEAREST = 2


@njit(cache=True)
def float32_to_e8m0(bits, out, round_mode, saturate):
    """float32 bit patterns to float8e8m0 codes (value ``2**(code - 127)``, 0xFF is NaN).

    A float32 with exponent field ``e`` lies in ``[2**(e-127), 2**(e-126))``, so the code is ``e``
    rounded by the mantissa. Zero and subnormals lie below or at the smallest code; values that
    round past the largest code saturate to it or become NaN. The sign is ignored (negative inputs
    are undefined in the spec).
    """
    for i in range(bits.shape[0]):
        b = bits[i]
        exponent = (b >> 23) & 0xFF
        mantissa = b & 0x7FFFFF
        if exponent == 0xFF:
            out[i] = 0xFE if (mantissa == 0 and saturate) else 0xFF
            continue
        if exponent == 0:
            # Subnormal value = mantissa * 2**-149; code 0 is 2**-127 (mantissa 0x400000), code 1 is 2**-126.
            if round_mode == E8M0_ROUND_UP:
                code = 1 if mantissa > 0x400000 else 0
            elif round_mode == E8M0_ROUND_NEAREST:
                code = 1 if mantissa >= 0x600000 else 0
            else:
                code = 0
            if not saturate and mantissa < 0x400000:
                code = 0xFF
            out[i] = code
            continue
        code = exponent
        if round_mode == E8M0_ROUND_UP:
            if mantissa != 0:
                code += 1
        elif round_mode == E8M0_ROUND_NEAREST:
            if mantissa >= 0x400000:
                code += 1
        if code == 0xFF:
            code = 0xFE if saturate else 0xFF
        out[i] = code


# The longest axis group :func:`short_axis_to_end` moves; past it numpy's strided copy is as fast.
SHORT_AXIS = 8


@njit(cache=True)
def short_axis_to_end(x, out):
    """``out[b, c, r] = x[b, r, c]`` for a short middle axis ``r``: reads ``x`` in order, one pass
    per ``r``, where numpy's copy walks ``x`` with a stride for every element it writes."""
    n, rows, cols = x.shape
    for b in range(n):
        for r in range(rows):
            for c in range(cols):
                out[b, c, r] = x[b, r, c]


@njit(cache=True, parallel=True)
def swap_middle_axes(x, out):
    """``out[b, c, r] = x[b, r, c]`` where the last axis is a block copied whole, in parallel over
    the (b, c) output runs (each a contiguous stretch of ``out``)."""
    n, rows, cols, block = x.shape
    for task in prange(n * cols):
        b = task // cols
        c = task - b * cols
        for r in range(rows):
            src = x[b, r, c]
            dst = out[b, c, r]
            for i in range(block):
                dst[i] = src[i]


def _transpose_stages():
    """The 16x16 transpose as four rounds of two-input shuffles, ``(a, b, mask)`` per output row:
    unpacklo/hi within 128-bit lanes, then 2-element and 4-element lane pairs, the sequence AVX-512
    code writes with _mm512_unpack*_ps, _mm512_shuffle_ps and _mm512_shuffle_f32x4 (each mask here
    is one of those instructions)."""
    def unpack(lo):
        o = 0 if lo else 2
        return [i for k in range(4) for i in (4 * k + o, 16 + 4 * k + o, 4 * k + o + 1, 16 + 4 * k + o + 1)]

    def pairs(imm):     # _mm512_shuffle_ps
        return [i for k in range(4) for i in (4 * k + (imm & 3), 4 * k + ((imm >> 2) & 3),
                                              16 + 4 * k + ((imm >> 4) & 3), 16 + 4 * k + ((imm >> 6) & 3))]

    def lanes(imm):     # _mm512_shuffle_f32x4
        picked = [imm & 3, (imm >> 2) & 3, 4 + ((imm >> 4) & 3), 4 + ((imm >> 6) & 3)]
        return [4 * lane + e for lane in picked for e in range(4)]

    return [
        [(i - i % 2, i - i % 2 + 1, unpack(i % 2 == 0)) for i in range(16)],
        [(4 * (i // 4) + (i % 4) // 2, 4 * (i // 4) + (i % 4) // 2 + 2, pairs(0x44 if i % 2 == 0 else 0xEE))
         for i in range(16)],
        [(8 * (i // 8) + i % 4, 8 * (i // 8) + i % 4 + 4, lanes(0x88 if i % 8 < 4 else 0xDD)) for i in range(16)],
        [(i % 8, i % 8 + 8, lanes(0x88 if i < 8 else 0xDD)) for i in range(16)],
    ]


_STAGES = _transpose_stages()


@intrinsic
def _transpose16(typingctx, src, src_off, src_stride, dst, dst_off, dst_stride):
    """dst[dst_off + j * dst_stride + i] = src[src_off + i * src_stride + j] for i, j < 16: 16 vector
    loads, 64 shuffles, 16 vector stores (arrays of one dtype, any CPU; one zmm per float32 row with
    AVX-512)."""
    sig = types.void(src, src_off, src_stride, dst, dst_off, dst_stride)

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(context.get_value_type(signature.args[0].dtype), 16)
        i64 = ir.IntType(64)
        src_v, src_off_v, src_stride_v, dst_v, dst_off_v, dst_stride_v = args
        src_base = builder.gep(context.make_array(signature.args[0])(context, builder, src_v).data, [src_off_v])
        dst_base = builder.gep(context.make_array(signature.args[3])(context, builder, dst_v).data, [dst_off_v])
        rows = [builder.load(builder.bitcast(builder.gep(src_base, [builder.mul(ir.Constant(i64, i), src_stride_v)]),
                                             vec.as_pointer()), align=4) for i in range(16)]
        for stage in _STAGES:
            rows = [builder.shuffle_vector(rows[a], rows[b], ir.Constant(ir.VectorType(ir.IntType(32), 16), mask))
                    for a, b, mask in stage]
        for j in range(16):
            target = builder.gep(dst_base, [builder.mul(ir.Constant(i64, j), dst_stride_v)])
            builder.store(rows[j], builder.bitcast(target, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def transpose_block(src, src_off, src_stride, dst, dst_off, dst_stride, rows, cols, vector):
    """dst[dst_off + j * dst_stride + i] = src[src_off + i * src_stride + j] for i < rows, j < cols
    (flat arrays of one dtype). A full 16x16 block with ``vector`` runs as shuffles of 16-float rows; the
    scalar loop (partial blocks, and CPUs without AVX-512, where 16-float vectors are split) moved one
    element per load and store, and two such transposes were half of the depthwise kernel's time."""
    if vector and rows == 16 and cols == 16:
        _transpose16(src, src_off, np.int64(src_stride), dst, dst_off, np.int64(dst_stride))
        return
    for j in range(cols):
        for i in range(rows):
            dst[dst_off + j * dst_stride + i] = src[src_off + i * src_stride + j]

