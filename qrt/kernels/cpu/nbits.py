"""Blockwise low-bit weights: com.microsoft ``MatMulNBits`` and ``GatherBlockQuantized`` on the CPU.

``MatMulNBits`` stores ``B`` transposed and packed: ``b[n, blk, byte]`` holds ``8 // bits`` codes of
column ``n``, block ``blk``, lowest bits first; code ``k`` of the column dequantizes to
``(q - zero[n, blk]) * scale[n, blk]`` with ``blk = k // block_size``. The op retiles the constant
weight once, at plan time (:func:`tile_weights`), into panels of ``NC`` columns: ``codes[t, blk,
byte, c]`` is byte ``byte`` of block ``blk`` of column ``t * NC + c``, so one 16-byte load brings the
same byte of 16 columns, and ``scale[t, blk, c]``, ``zero_scale[t, blk, c]`` (= zero * scale) are
read as vectors of columns too. Columns past N are padded with zero codes and scales. The float
weight is never materialised whole:

* few rows (batch-1 decoding; the op uses it below 8 rows): :func:`matmul_nbits_rows` streams the
  packed bytes once, parallel over column panels. Its micro-kernel unpacks 16 bytes into float
  lanes (one column per lane) with vector shifts and masks and multiply-adds them with the
  broadcast activation; a block's partial
  sums are scaled once at the end of the block and the zero point is folded out of the inner loop,
  ``y[m, n] = sum_blk scale * dot - (zero * scale) * sum_k a[m, k]``. A is first copied into the
  order of the packed bit fields (:func:`_split_rows`) so field ``f`` of byte ``i`` meets one
  activation;
* many rows: :func:`matmul_nbits_panels` packs A (in parallel, 8 rows a task), then
  dequantizes one panel per task, ``PANEL_K`` rows of k at a time into an L1-resident float buffer,
  and multiplies each chunk with a register-blocked float micro-kernel (8 rows x 32 columns of
  accumulators, A packed 8 rows at a time) for every row group;
* ``accuracy_level=4`` (few rows): :func:`matmul_nbits_rows_int8` quantizes each block of A to
  int8 (symmetric, ``amax / 127``, round half to even) and sums the products of codes and int8
  activations per block, as onnxruntime's ``CompInt8`` path does, in the streaming micro-kernel:
  the products are integers and a block's sum stays below 2 ** 24 up to 512-wide blocks, so float
  lanes add them exactly (and faster than int32 multiplies);
* ``accuracy_level=4`` on AVX-512 VNNI hosts (every row count): :func:`matmul_nbits_rows_vnni` sums
  the same products with ``vpdpbusd``, codes regrouped once (:func:`tile_weights_vnni`) so that a
  32-bit lane holds one column's codes in k order; same activations, same float epilogue, same bits.

The parallel kernels start one worker per thread and the workers claim tasks (panels) from an atomic
counter: Numba's ``prange`` splits its range into fixed equal shares, and on a machine running
other work one descheduled thread then leaves the other idle for most of the product (measured:
10.5 ms against 2.6 ms for the two halves of a 128 x 768 x 3072 product on a loaded machine).

The micro-kernels are LLVM IR written through ``numba.extending.intrinsic`` (as :mod:`qgemm`'s), because
LLVM does not keep Numba-level accumulator arrays in registers. They use only LLVM's portable
vector types (``<16 x float>``, ``<16 x i32>``, ``<16 x i8>``) and ``llvm.fmuladd``, no ISA intrinsic
(except the VNNI kernel, chosen by the op only where the CPU has it): LLVM lowers them to zmm registers
on AVX-512, to pairs of ymm on AVX2 and to SSE elsewhere, so one path serves every x86 CPU.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .qgemm import _const, _k_loop as _loop

# Columns per panel: two vectors of LANES floats, the micro-kernels' width.
LANES = 16
NC = 2 * LANES
# k rows of a dequantized panel chunk: PANEL_K x NC floats (16 KB) stay in L1 while every row tile uses them.
PANEL_K = 128
# Bytes of packed A per panel task: that many rows (a multiple of GROUP) stay in L2 while the panels pass.
# 2 MB keeps a 128-token product of K <= 4096 in one chunk, so no panel is dequantized twice.
PANEL_A_BYTES = 2 << 20
# Rows of the float micro-kernel's largest tile (2 * GROUP accumulator vectors, 16 of the 32 zmm); A is
# packed GROUP rows at a time so that a step's activations are adjacent.
GROUP = 8

# --------------------------------------------------------------------------- micro-kernels in LLVM IR

_I8, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
_VF = ir.VectorType(_F32, LANES)
_VI = ir.VectorType(_I32, LANES)
_VB = ir.VectorType(_I8, LANES)


def _splat_const(value, ty=_VI):
    return ir.Constant(ty, [ir.Constant(ty.element, value)] * LANES)


def _fmuladd(builder):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VF, _VF]),
                                          "llvm.fmuladd.v16f32")


def _vector_at(builder, ptr, index, ty=_VF):
    return builder.load(builder.bitcast(builder.gep(ptr, [index]), ty.as_pointer()), align=1)


def _broadcast(builder, value):
    vec = builder.insert_element(ir.Constant(_VF, ir.Undefined), value, _const(0, _I32))
    return builder.shuffle_vector(vec, ir.Constant(_VF, ir.Undefined), ir.Constant(_VI, None))


def _codes(builder, codes_ptr, offset, bits):
    """The ``8 // bits`` code vectors (float, one column per lane) of the 16 bytes at ``codes_ptr + offset``."""
    wide = builder.zext(_vector_at(builder, codes_ptr, offset, _VB), _VI)
    fields = []
    for f in range(8 // bits):
        x = wide if f == 0 else builder.lshr(wide, _splat_const(f * bits))
        if f < 8 // bits - 1:
            x = builder.and_(x, _splat_const((1 << bits) - 1))
        fields.append(builder.uitofp(x, _VF))
    return fields


def _store_tile(builder, accs, tile_ptr, rows):
    for m in range(rows):
        for v in range(2):
            builder.store(accs[2 * m + v], builder.bitcast(builder.gep(tile_ptr, [_const(m * NC + v * LANES)]),
                                                          _VF.as_pointer()), align=1)


def _emit_rows(builder, codes_ptr, a_ptr, lda, row_scale_ptr, row_sum_ptr, ldr, scale_ptr, zs_ptr, k_blocks, blob,
               tile_ptr, rows, bits, row_scaled):
    """tile[rows, NC] = a @ W for one panel, W streamed from its packed codes.

    Per block: ``part = sum_i q_i * a_i`` in float lanes, then ``acc += part * scale - zero_scale *
    row_sum``, ``scale`` times the block's activation scale when ``row_scaled`` (int8 activations:
    their products with the codes are integers below 2 ** 24 for blocks up to 512, so the float
    lanes sum them exactly).
    """
    fmuladd = _fmuladd(builder)
    per_byte = 8 // bits
    zero = ir.Constant(_VF, None)

    def block(blk, accs):
        def byte(i, parts):
            offset = builder.mul(builder.add(builder.mul(blk, blob), i), _const(NC))
            q = [_codes(builder, codes_ptr, builder.add(offset, _const(v * LANES)), bits) for v in range(2)]
            out = list(parts)
            for m in range(rows):
                for f in range(per_byte):
                    field = builder.add(builder.mul(blk, _const(per_byte)), _const(f))
                    index = builder.add(builder.add(builder.mul(_const(m), lda), builder.mul(field, blob)), i)
                    a = _broadcast(builder, builder.load(builder.gep(a_ptr, [index])))
                    for v in range(2):
                        out[2 * m + v] = builder.call(fmuladd, [q[v][f], a, out[2 * m + v]])
            return out

        parts = _loop(builder, blob, [zero] * (2 * rows), byte)
        scale = [_vector_at(builder, scale_ptr, builder.add(builder.mul(blk, _const(NC)), _const(v * LANES)))
                 for v in range(2)]
        zs = [_vector_at(builder, zs_ptr, builder.add(builder.mul(blk, _const(NC)), _const(v * LANES)))
              for v in range(2)]
        out = []
        for m in range(rows):
            at = builder.add(builder.mul(_const(m), ldr), blk)
            minus_sum = _broadcast(builder, builder.fneg(builder.load(builder.gep(row_sum_ptr, [at]))))
            if row_scaled:
                row_scale = _broadcast(builder, builder.load(builder.gep(row_scale_ptr, [at])))
            for v in range(2):
                s = builder.fmul(scale[v], row_scale) if row_scaled else scale[v]
                acc = builder.call(fmuladd, [parts[2 * m + v], s, accs[2 * m + v]])
                out.append(builder.call(fmuladd, [zs[v], minus_sum, acc]))
        return out

    accs = _loop(builder, k_blocks, [zero] * (2 * rows), block)
    _store_tile(builder, accs, tile_ptr, rows)


def _emit_rows_vnni(builder, codes_ptr, a_ptr, lda, row_scale_ptr, row_sum_ptr, ldr, scale_ptr, zs_ptr, k_blocks,
                    words, tile_ptr, rows, bits):
    """:func:`_emit_rows` with int8 activations, the products summed by ``vpdpbusd``: codes (unsigned) times
    activations (signed), four per int32 lane, in :func:`tile_weights_vnni`'s layout (a lane holds
    ``32 // bits`` codes of one column in k order). Bit field ``f`` of the word's four bytes (mask and
    shift) holds codes ``k = j * per_byte + f`` (j = 0..3), and :func:`_split_rows_vnni` lays the
    activations out as those four bytes, field after field, so one broadcast int32 meets them. A
    block's integer sum is exact; its float epilogue is :func:`_emit_rows`' (row_scaled) operation for
    operation, so both paths give the same bits."""
    fmuladd = _fmuladd(builder)
    fields = 8 // bits
    v64 = ir.VectorType(_I8, 64)
    dpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VI, [_VI, v64, v64]),
                                            "llvm.x86.avx512.vpdpbusd.512")
    mask = _splat_const(int.from_bytes(bytes([(1 << bits) - 1] * 4), "little")) if bits < 8 else None
    zero = ir.Constant(_VF, None)
    izero = ir.Constant(_VI, None)

    def block(blk, accs):
        def word(w, parts):
            at = builder.add(builder.mul(blk, words), w)
            x = [_vector_at(builder, codes_ptr, builder.mul(builder.add(builder.mul(at, _const(NC)),
                                                                       _const(v * LANES)), _const(4)), _VI)
                 for v in range(2)]
            q = []
            for v in range(2):
                per_field = []
                for f in range(fields):
                    y = x[v] if f == 0 else builder.lshr(x[v], _splat_const(f * bits))
                    if mask is not None:
                        y = builder.and_(y, mask)
                    per_field.append(builder.bitcast(y, v64))
                q.append(per_field)
            out = list(parts)
            for m in range(rows):
                for f in range(fields):
                    offset = builder.add(builder.mul(_const(m), lda),
                                         builder.mul(builder.add(builder.mul(at, _const(fields)), _const(f)),
                                                     _const(4)))
                    a = builder.load(builder.bitcast(builder.gep(a_ptr, [offset]), _I32.as_pointer()), align=1)
                    splat = builder.insert_element(ir.Constant(_VI, ir.Undefined), a, _const(0, _I32))
                    splat = builder.bitcast(builder.shuffle_vector(splat, ir.Constant(_VI, ir.Undefined),
                                                                   ir.Constant(_VI, None)), v64)
                    for v in range(2):
                        out[2 * m + v] = builder.call(dpbusd, [out[2 * m + v], q[v][f], splat])
            return out

        parts = _loop(builder, words, [izero] * (2 * rows), word)
        scale = [_vector_at(builder, scale_ptr, builder.add(builder.mul(blk, _const(NC)), _const(v * LANES)))
                 for v in range(2)]
        zs = [_vector_at(builder, zs_ptr, builder.add(builder.mul(blk, _const(NC)), _const(v * LANES)))
              for v in range(2)]
        out = []
        for m in range(rows):
            at = builder.add(builder.mul(_const(m), ldr), blk)
            minus_sum = _broadcast(builder, builder.fneg(builder.load(builder.gep(row_sum_ptr, [at]))))
            row_scale = _broadcast(builder, builder.load(builder.gep(row_scale_ptr, [at])))
            for v in range(2):
                part = builder.sitofp(parts[2 * m + v], _VF)
                acc = builder.call(fmuladd, [part, builder.fmul(scale[v], row_scale), accs[2 * m + v]])
                out.append(builder.call(fmuladd, [zs[v], minus_sum, acc]))
        return out

    accs = _loop(builder, k_blocks, [zero] * (2 * rows), block)
    _store_tile(builder, accs, tile_ptr, rows)


def _emit_panel(builder, panel_ptr, a_ptr, kc, tile_ptr, rows):
    """tile[rows, NC] += a @ panel[kc, NC], ``a`` packed ``[kc, GROUP]`` (row m of step k at ``k * GROUP
    + m``), the accumulators in registers throughout."""
    fmuladd = _fmuladd(builder)
    init = [_vector_at(builder, tile_ptr, _const(m * NC + v * LANES)) for m in range(rows) for v in range(2)]

    def step(k, accs):
        b = [_vector_at(builder, panel_ptr, builder.add(builder.mul(k, _const(NC)), _const(v * LANES)))
             for v in range(2)]
        out = []
        for m in range(rows):
            a = builder.load(builder.gep(a_ptr, [builder.add(builder.mul(k, _const(GROUP)), _const(m))]))
            a = _broadcast(builder, a)
            for v in range(2):
                out.append(builder.call(fmuladd, [a, b[v], accs[2 * m + v]]))
        return out

    _store_tile(builder, _loop(builder, kc, init, step), tile_ptr, rows)


def _emit_dequantize(builder, codes_ptr, scale_ptr, zs_ptr, blocks, blob, panel_ptr, bits):
    """panel rows of ``blocks`` blocks of one panel: ``q * scale - zero_scale`` per lane, bit field by
    bit field within each block (the order of :func:`_split_rows`)."""
    fmuladd = _fmuladd(builder)
    per_byte = 8 // bits

    def block(blk, no_values):
        s_at = builder.mul(blk, _const(NC))
        scale = [_vector_at(builder, scale_ptr, builder.add(s_at, _const(v * LANES))) for v in range(2)]
        minus_zs = [builder.fneg(_vector_at(builder, zs_ptr, builder.add(s_at, _const(v * LANES)))) for v in range(2)]

        def byte(i, no_values_inner):
            offset = builder.mul(builder.add(builder.mul(blk, blob), i), _const(NC))
            for v in range(2):
                fields = _codes(builder, codes_ptr, builder.add(offset, _const(v * LANES)), bits)
                for f in range(per_byte):
                    row = builder.add(builder.mul(builder.add(builder.mul(blk, _const(per_byte)), _const(f)), blob), i)
                    at = builder.add(builder.mul(row, _const(NC)), _const(v * LANES))
                    value = builder.call(fmuladd, [fields[f], scale[v], minus_zs[v]])
                    builder.store(value, builder.bitcast(builder.gep(panel_ptr, [at]), _VF.as_pointer()), align=1)
            return []

        _loop(builder, blob, [], byte)
        return []

    _loop(builder, blocks, [], block)


def _data(context, builder, ty, value, offset, element):
    array = context.make_array(ty)(context, builder, value)
    return builder.gep(builder.bitcast(array.data, element.as_pointer()), [offset])


@intrinsic
def _claim(typingctx, counter):
    """``counter[0] += 1`` atomically; returns the value before (the next task of the calling thread)."""
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        ptr = _data(context, builder, signature.args[0], args[0], _const(0), _I64)
        return builder.atomic_rmw("add", ptr, _const(1), "monotonic")

    return sig, codegen


def _rows_kernel(rows, bits, row_scaled):
    @intrinsic
    def kernel(typingctx, codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, k_blocks,
               blob, tile):
        sig = types.void(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, k_blocks,
                         blob, tile)

        def codegen(context, builder, signature, args):
            t = signature.args
            (codes_v, c_off_v, a_v, a_off_v, lda_v, rs_v, rsum_v, r_off_v, ldr_v, scale_v, zs_v, s_off_v, kb_v,
             blob_v, tile_v) = args
            _emit_rows(builder, _data(context, builder, t[0], codes_v, c_off_v, _I8),
                       _data(context, builder, t[2], a_v, a_off_v, _F32), lda_v,
                       _data(context, builder, t[5], rs_v, r_off_v, _F32),
                       _data(context, builder, t[6], rsum_v, r_off_v, _F32), ldr_v,
                       _data(context, builder, t[9], scale_v, s_off_v, _F32),
                       _data(context, builder, t[10], zs_v, s_off_v, _F32), kb_v, blob_v,
                       _data(context, builder, t[14], tile_v, _const(0), _F32), rows, bits, row_scaled)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


def _vnni_rows_kernel(rows, bits):
    @intrinsic
    def kernel(typingctx, codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, k_blocks,
               words, tile):
        sig = types.void(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, k_blocks,
                         words, tile)

        def codegen(context, builder, signature, args):
            t = signature.args
            (codes_v, c_off_v, a_v, a_off_v, lda_v, rs_v, rsum_v, r_off_v, ldr_v, scale_v, zs_v, s_off_v, kb_v,
             words_v, tile_v) = args
            _emit_rows_vnni(builder, _data(context, builder, t[0], codes_v, c_off_v, _I8),
                            _data(context, builder, t[2], a_v, a_off_v, _I8), lda_v,
                            _data(context, builder, t[5], rs_v, r_off_v, _F32),
                            _data(context, builder, t[6], rsum_v, r_off_v, _F32), ldr_v,
                            _data(context, builder, t[9], scale_v, s_off_v, _F32),
                            _data(context, builder, t[10], zs_v, s_off_v, _F32), kb_v, words_v,
                            _data(context, builder, t[14], tile_v, _const(0), _F32), rows, bits)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


def _panel_kernel(rows):
    @intrinsic
    def kernel(typingctx, panel, a, a_off, kc, tile, t_off):
        sig = types.void(panel, a, a_off, kc, tile, t_off)

        def codegen(context, builder, signature, args):
            t = signature.args
            panel_v, a_v, a_off_v, kc_v, tile_v, t_off_v = args
            _emit_panel(builder, _data(context, builder, t[0], panel_v, _const(0), _F32),
                        _data(context, builder, t[1], a_v, a_off_v, _F32), kc_v,
                        _data(context, builder, t[4], tile_v, t_off_v, _F32), rows)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


def _dequantize_kernel(bits):
    @intrinsic
    def kernel(typingctx, codes, c_off, scale, zs, s_off, blocks, blob, panel):
        sig = types.void(codes, c_off, scale, zs, s_off, blocks, blob, panel)

        def codegen(context, builder, signature, args):
            t = signature.args
            codes_v, c_off_v, scale_v, zs_v, s_off_v, blocks_v, blob_v, panel_v = args
            _emit_dequantize(builder, _data(context, builder, t[0], codes_v, c_off_v, _I8),
                             _data(context, builder, t[2], scale_v, s_off_v, _F32),
                             _data(context, builder, t[3], zs_v, s_off_v, _F32), blocks_v, blob_v,
                             _data(context, builder, t[7], panel_v, _const(0), _F32), bits)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


_dq2, _dq4, _dq8 = (_dequantize_kernel(b) for b in (2, 4, 8))

# Streaming kernels of 1-3 rows for 2, 4 and 8 bits, float and int8 activations (4 rows measured no faster
# than 3 + 1); float panels of 8/4/2/1 rows
# (GROUP = 8).
_f2_1, _f2_2, _f2_3 = (_rows_kernel(r, 2, False) for r in (1, 2, 3))
_f4_1, _f4_2, _f4_3 = (_rows_kernel(r, 4, False) for r in (1, 2, 3))
_f8_1, _f8_2, _f8_3 = (_rows_kernel(r, 8, False) for r in (1, 2, 3))
_i2_1, _i2_2, _i2_3 = (_rows_kernel(r, 2, True) for r in (1, 2, 3))
_i4_1, _i4_2, _i4_3 = (_rows_kernel(r, 4, True) for r in (1, 2, 3))
_i8_1, _i8_2, _i8_3 = (_rows_kernel(r, 8, True) for r in (1, 2, 3))
_p8, _p4, _p2, _p1 = (_panel_kernel(r) for r in (8, 4, 2, 1))
# int8 products by vpdpbusd (AVX-512 VNNI hosts only: the op checks the ISA before choosing them)
_v2_1, _v2_2, _v2_3 = (_vnni_rows_kernel(r, 2) for r in (1, 2, 3))
_v4_1, _v4_2, _v4_3 = (_vnni_rows_kernel(r, 4) for r in (1, 2, 3))
_v8_1, _v8_2, _v8_3 = (_vnni_rows_kernel(r, 8) for r in (1, 2, 3))


@njit(cache=True, inline="always")
def _rows_tile(bits, rows, codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob,
               tile):
    """One panel of up to 3 rows (returns how many) with float activations."""
    if rows >= 3:
        if bits == 4:
            _f4_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        elif bits == 2:
            _f2_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        else:
            _f8_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        return 3
    if rows == 2:
        if bits == 4:
            _f4_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        elif bits == 2:
            _f2_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        else:
            _f8_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        return 2
    if bits == 4:
        _f4_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
    elif bits == 2:
        _f2_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
    else:
        _f8_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
    return 1


@njit(cache=True, inline="always")
def _rows_tile_int8(bits, rows, codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb,
                    blob, tile):
    """:func:`_rows_tile` with int8 activations (``a`` their codes as floats, ``row_scale`` their block
    scales)."""
    if rows >= 3:
        if bits == 4:
            _i4_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        elif bits == 2:
            _i2_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        else:
            _i8_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        return 3
    if rows == 2:
        if bits == 4:
            _i4_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        elif bits == 2:
            _i2_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        else:
            _i8_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
        return 2
    if bits == 4:
        _i4_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
    elif bits == 2:
        _i2_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
    else:
        _i8_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, blob, tile)
    return 1


@njit(cache=True, inline="always")
def _rows_tile_vnni(bits, rows, codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb,
                    words, tile):
    """:func:`_rows_tile_int8` by ``vpdpbusd`` (``a`` int8 in :func:`_split_rows_vnni`'s order, ``codes`` in
    :func:`tile_weights_vnni`'s)."""
    if rows >= 3:
        if bits == 4:
            _v4_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
        elif bits == 2:
            _v2_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
        else:
            _v8_3(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
        return 3
    if rows == 2:
        if bits == 4:
            _v4_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
        elif bits == 2:
            _v2_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
        else:
            _v8_2(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
        return 2
    if bits == 4:
        _v4_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
    elif bits == 2:
        _v2_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
    else:
        _v8_1(codes, c_off, a, a_off, lda, row_scale, row_sum, r_off, ldr, scale, zs, s_off, kb, words, tile)
    return 1


# --------------------------------------------------------------------------- layout


@njit(cache=True)
def tile_weights(b, scale, zero, N):
    """``(codes [T, k_blocks, blob, NC], scale [T, k_blocks, NC], zero_scale [T, k_blocks, NC])`` from
    ``b [N, k_blocks, blob]`` and float32 ``scale``, ``zero`` ``[N, k_blocks]``; T = ceil(N / NC)."""
    k_blocks, blob = b.shape[1], b.shape[2]
    panels = (N + NC - 1) // NC
    codes = np.zeros((panels, k_blocks, blob, NC), np.uint8)
    tiled_scale = np.zeros((panels, k_blocks, NC), np.float32)
    zero_scale = np.zeros((panels, k_blocks, NC), np.float32)
    for n in range(N):
        t, c = n // NC, n % NC
        for blk in range(k_blocks):
            tiled_scale[t, blk, c] = scale[n, blk]
            zero_scale[t, blk, c] = zero[n, blk] * scale[n, blk]
            for i in range(blob):
                codes[t, blk, i, c] = b[n, blk, i]
    return codes, tiled_scale, zero_scale


def tile_weights_vnni(codes):
    """:func:`tile_weights`' codes ``[T, k_blocks, blob, NC]`` regrouped for :func:`_emit_rows_vnni` as
    ``[T, k_blocks, blob // 4, NC, 4]``: four consecutive bytes of a column (``32 // bits`` codes in k
    order) form one int32 lane."""
    panels, k_blocks, blob, nc = codes.shape
    words = codes.reshape(panels, k_blocks, blob // 4, 4, nc).transpose(0, 1, 2, 4, 3)
    return np.ascontiguousarray(words)


def untile_weights_vnni(words):
    """:func:`tile_weights`' codes back from :func:`tile_weights_vnni`'s words (for a twin that reads them)."""
    panels, k_blocks, n_words, nc, _ = words.shape
    return np.ascontiguousarray(words.transpose(0, 1, 2, 4, 3).reshape(panels, k_blocks, n_words * 4, nc))


@njit(cache=True)
def _split_rows_vnni(q, k_blocks, block_size, bits):
    """int8 activations ``[M, k_blocks * block_size]`` (k order, zeros padding) in the order of
    :func:`tile_weights_vnni`'s words: word ``w`` of a block, bit field ``f``, byte ``j`` is code ``k = w *
    (32 // bits) + j * (8 // bits) + f`` of the block."""
    M = q.shape[0]
    per_byte = 8 // bits
    per_word = 4 * per_byte
    words = block_size // per_word
    out = np.empty_like(q)
    for m in range(M):
        src = q[m]
        dst = out[m]
        for blk in range(k_blocks):
            k0 = blk * block_size
            for w in range(words):
                base = k0 + w * per_word
                for f in range(per_byte):
                    for j in range(4):
                        dst[base + f * 4 + j] = src[base + j * per_byte + f]
    return out


@njit(cache=True)
def _split_rows(a, K, block_size, k_blocks, per_byte, dtype):
    """``[M, k_blocks, per_byte, blob]`` copy of A in the order of the packed codes: ``[m, blk, j, i]``
    is ``a[m, blk * block_size + i * per_byte + j]``, the activation that meets bit field ``j`` of
    byte ``i``; so the dot products read bytes and activations at unit stride (zeros pad K)."""
    M = a.shape[0]
    blob = block_size // per_byte
    split = np.zeros((M, k_blocks, per_byte, blob), dtype)
    # block by block, no division per element (a 64-bit division costs more than the copy)
    for m in range(M):
        for blk in range(k_blocks):
            k0 = blk * block_size
            full = min(blob, (K - k0) // per_byte)
            for j in range(per_byte):
                dst = split[m, blk, j]
                for i in range(full):
                    dst[i] = a[m, k0 + i * per_byte + j]
            for k in range(k0 + full * per_byte, min(K, k0 + block_size)):  # the partial last block
                split[m, blk, (k - k0) % per_byte, (k - k0) // per_byte] = a[m, k]
    return split


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
def _block_sums(a, K, block_size, k_blocks, dtype):
    M = a.shape[0]
    sums = np.zeros((M, k_blocks), dtype)
    for m in range(M):
        for blk in range(k_blocks):
            total = dtype(0)
            for k in range(blk * block_size, min(K, (blk + 1) * block_size)):
                total += a[m, k]
            sums[m, blk] = total
    return sums


@njit(cache=True, inline="always")
def _store_rows(tile, rows, out, m0, n0, bias):
    N = out.shape[1]
    cols = min(NC, N - n0)
    for i in range(rows):
        dst = out[m0 + i, n0:n0 + cols]
        src = tile[i]
        b = bias[n0:n0 + cols]
        for c in range(cols):
            dst[c] = src[c] + b[c]


@njit(cache=True, parallel=True)
def matmul_nbits_rows(a, codes, scale, zero_scale, bits, block_size, K, bias, out, workers):
    """``out = a @ W + bias`` for the tiled weights of :func:`tile_weights`, streaming the codes; ``workers``
    threads claim panels one at a time."""
    M = a.shape[0]
    panels, k_blocks, blob = codes.shape[0], codes.shape[1], codes.shape[2]
    per_byte = 8 // bits
    split = _split_rows(a, K, block_size, k_blocks, per_byte, np.float32)
    sums = _block_sums(a, K, block_size, k_blocks, np.float32)
    lda = k_blocks * block_size
    counter = np.zeros(1, np.int64)
    for worker in prange(workers):
        tile = np.empty((3, NC), np.float32)
        t = _claim(counter)
        while t < panels:
            m = 0
            while m < M:
                rows = _rows_tile(bits, M - m, codes, t * k_blocks * blob * NC, split, m * lda, lda, sums, sums,
                                  m * k_blocks, k_blocks, scale, zero_scale, t * k_blocks * NC, k_blocks, blob, tile)
                _store_rows(tile, rows, out, m, t * NC, bias)
                m += rows
            t = _claim(counter)


@njit(cache=True, inline="always")
def _dequantize_panel(codes, scale, zero_scale, bits, t, blk0, blk1, panel):
    """panel[k, c] = W[blk0 * block_size + k, t * NC + c] for the blocks blk0..blk1-1, k in the order of
    :func:`_split_rows` (bit field by bit field within each block), padded rows included."""
    k_blocks, blob = codes.shape[1], codes.shape[2]
    c_off = (t * k_blocks + blk0) * blob * NC
    s_off = (t * k_blocks + blk0) * NC
    if bits == 4:
        _dq4(codes, c_off, scale, zero_scale, s_off, blk1 - blk0, blob, panel)
    elif bits == 2:
        _dq2(codes, c_off, scale, zero_scale, s_off, blk1 - blk0, blob, panel)
    else:
        _dq8(codes, c_off, scale, zero_scale, s_off, blk1 - blk0, blob, panel)


@njit(cache=True, inline="always")
def _pack_block(a, K, block_size, per_byte, g, blk, packed):
    """Rows ``g * GROUP ...`` of block ``blk`` of A into ``packed[g, blk * block_size:, :]``: packed A is
    ``[ceil(M / GROUP), kp, GROUP]`` (kp = k_blocks * block_size), k in :func:`_split_rows`'s order, zeros
    padding k and the last group's rows."""
    M = a.shape[0]
    blob = block_size // per_byte
    m0 = g * GROUP
    rows = min(GROUP, M - m0)
    k0 = blk * block_size
    full = min(blob, (K - k0) // per_byte)
    dst = packed[g, k0:k0 + block_size]
    if rows < GROUP or full < blob:
        dst[:] = 0
    for r in range(rows):
        src = a[m0 + r]
        for j in range(per_byte):
            for i in range(full):
                dst[j * blob + i, r] = src[k0 + i * per_byte + j]
        for k in range(k0 + full * per_byte, min(K, k0 + block_size)):  # the partial last block
            dst[((k - k0) % per_byte) * blob + (k - k0) // per_byte, r] = src[k]


@njit(cache=True, parallel=True)
def matmul_nbits_panels(a, codes, scale, zero_scale, bits, block_size, K, bias, out, workers):
    """``out = a @ W + bias``: a task is one panel of W and the rows of ``a`` that fit PANEL_A_BYTES; the
    panel is dequantized PANEL_K rows of k at a time into an L1-resident buffer that every row tile
    multiplies. ``workers`` threads claim tasks one at a time, so a thread slowed by other work (or
    given the last odd task) does not hold the others idle behind a fixed split."""
    M = a.shape[0]
    panels, k_blocks = codes.shape[0], codes.shape[1]
    kp = k_blocks * block_size
    chunk_blocks = max(1, PANEL_K // block_size)
    chunk_rows = max(GROUP, PANEL_A_BYTES // (4 * kp) // GROUP * GROUP)
    row_chunks = (M + chunk_rows - 1) // chunk_rows
    # zeros on padded k cancel whatever codes pad the last block
    groups = (M + GROUP - 1) // GROUP
    packed = np.empty((groups, kp, GROUP), np.float32)
    counter = np.zeros(1, np.int64)
    for worker in prange(workers):
        g = _claim(counter)
        while g < groups:
            for blk in range(k_blocks):
                _pack_block(a, K, block_size, 8 // bits, g, blk, packed)
            g = _claim(counter)
    tasks = row_chunks * panels
    counter[0] = 0
    for worker in prange(workers):
        panel = np.empty((chunk_blocks * block_size, NC), np.float32)
        acc = np.empty((min(M, chunk_rows), NC), np.float32)
        task = _claim(counter)
        while task < tasks:
            t = task % panels
            m_start = (task // panels) * chunk_rows
            m_end = min(M, m_start + chunk_rows)
            acc[:] = 0
            for blk0 in range(0, k_blocks, chunk_blocks):
                blk1 = min(k_blocks, blk0 + chunk_blocks)
                _dequantize_panel(codes, scale, zero_scale, bits, t, blk0, blk1, panel)
                k0 = blk0 * block_size
                kc = (blk1 - blk0) * block_size
                m = m_start
                while m < m_end:
                    a_off = ((m // GROUP) * kp + k0) * GROUP + m % GROUP
                    t_off = (m - m_start) * NC
                    if m_end - m >= 8:
                        _p8(panel, packed, a_off, kc, acc, t_off)
                        m += 8
                    elif m_end - m >= 4:
                        _p4(panel, packed, a_off, kc, acc, t_off)
                        m += 4
                    elif m_end - m >= 2:
                        _p2(panel, packed, a_off, kc, acc, t_off)
                        m += 2
                    else:
                        _p1(panel, packed, a_off, kc, acc, t_off)
                        m += 1
            _store_rows(acc, m_end - m_start, out, m_start, t * NC, bias)
            task = _claim(counter)


@njit(cache=True)
def quantize_rows_int8(a, K, block_size, k_blocks):
    """Per-block symmetric int8 activations ``[M, k_blocks * block_size]`` (zeros pad K), their scales
    ``amax / 127`` and code sums."""
    M = a.shape[0]
    codes = np.zeros((M, k_blocks * block_size), np.int8)
    scales = np.zeros((M, k_blocks), np.float32)
    sums = np.zeros((M, k_blocks), np.int32)
    for m in range(M):
        for blk in range(k_blocks):
            k0 = blk * block_size
            k1 = min(K, k0 + block_size)
            amax = np.float32(0.0)
            for k in range(k0, k1):
                amax = max(amax, abs(a[m, k]))
            scales[m, blk] = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            total = 0
            for k in range(k0, k1):
                q = np.int32(np.rint(a[m, k] * inv))
                codes[m, k] = q
                total += q
            sums[m, blk] = total
    return codes, scales, sums


@njit(cache=True, parallel=True)
def matmul_nbits_rows_int8(a, codes, scale, zero_scale, bits, block_size, K, bias, out, workers):
    """:func:`matmul_nbits_rows` with activations quantized to int8 per block (``accuracy_level=4``)."""
    M = a.shape[0]
    panels, k_blocks, blob = codes.shape[0], codes.shape[1], codes.shape[2]
    per_byte = 8 // bits
    q, a_scale, q_sums = quantize_rows_int8(a, K, block_size, k_blocks)
    lda = k_blocks * block_size
    split = _split_rows(q, lda, block_size, k_blocks, per_byte, np.float32)
    # the zero-point term in float: activation scale times the block's code sum
    row_sum = a_scale * q_sums.astype(np.float32)
    counter = np.zeros(1, np.int64)
    for worker in prange(workers):
        tile = np.empty((3, NC), np.float32)
        t = _claim(counter)
        while t < panels:
            m = 0
            while m < M:
                rows = _rows_tile_int8(bits, M - m, codes, t * k_blocks * blob * NC, split, m * lda, lda, a_scale,
                                       row_sum, m * k_blocks, k_blocks, scale, zero_scale, t * k_blocks * NC,
                                       k_blocks, blob, tile)
                _store_rows(tile, rows, out, m, t * NC, bias)
                m += rows
            t = _claim(counter)


@njit(cache=True, parallel=True)
def matmul_nbits_rows_vnni(a, codes, scale, zero_scale, bits, block_size, K, bias, out, workers):
    """:func:`matmul_nbits_rows_int8` (same activations, same bits out) with ``codes`` from
    :func:`tile_weights_vnni` and the integer products by ``vpdpbusd``; AVX-512 VNNI hosts only."""
    M = a.shape[0]
    panels, k_blocks, words = codes.shape[0], codes.shape[1], codes.shape[2]
    q, a_scale, q_sums = quantize_rows_int8(a, K, block_size, k_blocks)
    split = _split_rows_vnni(q, k_blocks, block_size, bits)
    lda = k_blocks * block_size
    row_sum = a_scale * q_sums.astype(np.float32)
    counter = np.zeros(1, np.int64)
    for worker in prange(workers):
        tile = np.empty((3, NC), np.float32)
        t = _claim(counter)
        while t < panels:
            m = 0
            while m < M:
                rows = _rows_tile_vnni(bits, M - m, codes, t * k_blocks * words * NC * 4, split, m * lda, lda,
                                       a_scale, row_sum, m * k_blocks, k_blocks, scale, zero_scale,
                                       t * k_blocks * NC, k_blocks, words, tile)
                _store_rows(tile, rows, out, m, t * NC, bias)
                m += rows
            t = _claim(counter)


@njit(cache=True)
def unpack_zero_points(packed, N, k_blocks, bits):
    """Packed uint8 zero points ``[N, ceil(k_blocks * bits / 8)]`` (lowest bits first) as float32."""
    per_byte = 8 // bits
    row = packed.size // N
    zero = np.empty((N, k_blocks), np.float32)
    for n in range(N):
        for blk in range(k_blocks):
            byte = np.int32(packed[n * row + blk // per_byte])
            zero[n, blk] = (byte >> ((blk % per_byte) * bits)) & ((1 << bits) - 1)
    return zero


@njit(cache=True, parallel=True)
def gather_blocks(data, zero, scale, block_of, indices, out):
    """Rows ``data[:, indices]`` of a ``[outer, rows, inner]`` code array, dequantized.

    ``zero`` and ``scale`` are ``[outer, rows, inner_blocks]`` and ``block_of[c]`` is the block of
    inner position ``c``; ``indices`` are checked and non-negative; ``out`` is ``[outer,
    len(indices), inner]`` float32.
    """
    outer, n_idx, inner = out.shape
    for task in prange(outer * n_idx):
        o = task // n_idx
        i = task % n_idx
        r = indices[i]
        for c in range(inner):
            blk = block_of[c]
            out[o, i, c] = (np.float32(data[o, r, c]) - zero[o, r, blk]) * scale[o, r, blk]
