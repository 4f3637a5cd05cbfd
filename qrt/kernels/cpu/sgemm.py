"""float32 products on a register-blocked AVX-512 micro-kernel: Conv, and Gemm/MatMul with a constant weight.

The product is ``C[m, j] = sum_k A[m, k] * B[k, j]`` with C's rows contiguous. The micro-kernel keeps
an ``MR x 32`` block of C in ``2 * MR`` zmm accumulators (MR up to 14: 28 accumulators, two B vectors
and the broadcast fill the 32 registers) and for every k loads 32 values of B's row k (two vectors),
broadcasts each of the MR values of A's column k and issues ``2 * MR`` ``vfmadd231ps`` (208 GFLOP/s
with both operands in L1, one thread). It is written as LLVM IR through ``numba.extending.intrinsic``:
plain Numba code kept scalar register blocks in memory or picked 256-bit vectors (54-70 GFLOP/s). The
bias (one per row, or one per column for a linear layer) and a ReLU/Clip clamp are applied to the
accumulators before the store; other activations run over the stored rows.

A is addressed by two strides (``a[i * a_rs + k * a_ks]``) and B's row k by a stride or an offset
table, so one kernel serves

* convolutions, A the weight packed once into blocks of MR output channels (``[K][MR]`` each) and B
  either the image itself through a table of tap offsets (:func:`conv_implicit`, 2-D convolutions:
  the image is copied once, zero-padded, as stride phases) or a column tile packed into strips of 32
  (:func:`conv_sgemm`: pointwise and 3-D convolutions, through im2col for the latter);
* linear layers, A the activations as they lie and B the weight packed once into strips of 32
  columns (:class:`PackedMatrix`).

Partial blocks: rows run through kernels for 8, 4, 2 and 1 rows; a strip narrower than 32 columns
reads a zero-padded copy and stores through a scratch tile (or into a wide output rounded up to 32).

``ISA`` is ``"avx512"`` where Numba compiles for a CPU with AVX-512F (the host's, or NUMBA_CPU_FEATURES)
and ``"generic"`` otherwise; QRT_SGEMM_ISA=generic forces the latter. Callers keep their OpenBLAS path
when ``ISA`` is generic (OpenBLAS picks its own kernel for any CPU), so the 512-bit vectors of this
module are only compiled where they map to registers.
"""
from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .activation import bias_activate_row
from .conv import im2col_tile
from .qgemm import _I64, _const, _k_loop, _target_features
from .threads import call_with_threads, serial_twin, threads_for

NR = 32
MR = 14
_F32 = ir.FloatType()
_V16 = ir.VectorType(_F32, 16)


def _host_isa() -> str:
    return "avx512" if _target_features().get("avx512f") else "generic"


ISA = os.environ.get("QRT_SGEMM_ISA") or _host_isa()


def _emit_fma(builder, a_ptr, a_rs, a_ks, b_ptr, b_row, depth, c_ptr, ldc, bias_ptr, lo, hi, mr, column_bias):
    """C[i, 16j:16j+16] = clamp(sum_k a[i, k] * b[k, 16j:16j+16] + bias, lo, hi) for i < mr, j < 2;
    row k of b starts at ``b_row(k)`` (k times a stride, or a table's entry).

    The bias is one value per row (splat) or, with ``column_bias``, 32 values along the columns.
    The clamp is ReLU (lo = 0) or Clip, or nothing (infinite bounds); NaN passes through, as the
    comparisons are ordered."""
    fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]),
                                             "llvm.fmuladd.v16f32")
    zero = ir.Constant(_V16, None)
    row_offsets = [builder.mul(_const(i), a_rs) for i in range(mr)]

    def vec_at(ptr, offset):
        return builder.bitcast(builder.gep(ptr, [offset]), _V16.as_pointer())

    def step(kk, accs):
        row = b_row(kk)
        b_vecs = [builder.load(vec_at(b_ptr, builder.add(row, _const(16 * j))), align=4) for j in range(2)]
        a_k = builder.mul(kk, a_ks)
        out = []
        for i in range(mr):
            splat = _splat(builder, builder.load(builder.gep(a_ptr, [builder.add(row_offsets[i], a_k)]), align=4))
            for j in range(2):
                out.append(builder.call(fmuladd, [splat, b_vecs[j], accs[2 * i + j]]))
        return out

    accs = _k_loop(builder, depth, [zero] * (2 * mr), step)
    lo_v, hi_v = _splat(builder, lo), _splat(builder, hi)
    if column_bias:
        col_bias = [builder.load(vec_at(bias_ptr, _const(16 * j)), align=4) for j in range(2)]
    for i in range(mr):
        row_bias = None if column_bias else _splat(builder, builder.load(builder.gep(bias_ptr, [_const(i)]), align=4))
        row = builder.mul(_const(i), ldc)
        for j in range(2):
            v = builder.fadd(accs[2 * i + j], col_bias[j] if column_bias else row_bias)
            v = builder.select(builder.fcmp_ordered("<", v, lo_v), lo_v, v)
            v = builder.select(builder.fcmp_ordered(">", v, hi_v), hi_v, v)
            builder.store(v, vec_at(c_ptr, builder.add(row, _const(16 * j))), align=4)


def _splat(builder, scalar):
    undef = ir.Constant(_V16, ir.Undefined)
    one = builder.insert_element(undef, scalar, _const(0, ir.IntType(32)))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), 16), None))


def _make_microkernel(mr, column_bias, indexed=False):
    """The micro-kernel for ``mr`` rows as a Numba intrinsic. B's row k starts ``k * ldb`` elements
    after ``b_off``, or, ``indexed``, ``koff[k]`` after it (``koff`` an int64 array in ``ldb``'s place:
    an implicit convolution reading its taps straight from a padded image)."""
    @intrinsic
    def microkernel(typingctx, a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi):
        sig = types.void(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)

        def codegen(context, builder, signature, args):
            (a_v, a_off_v, a_rs_v, a_ks_v, b_v, b_off_v, ldb_v, depth_v, c_v, c_off_v, ldc_v, bias_v, bias_off_v,
             lo_v, hi_v) = args
            arg_types = signature.args

            def pointer(position, value, offset):
                data = context.make_array(arg_types[position])(context, builder, value).data
                return builder.gep(builder.bitcast(data, _F32.as_pointer()), [offset])

            if indexed:
                table = context.make_array(arg_types[6])(context, builder, ldb_v).data
                koff = builder.bitcast(table, _I64.as_pointer())

                def b_row(kk):
                    return builder.load(builder.gep(koff, [kk]), align=8)
            else:
                def b_row(kk):
                    return builder.mul(kk, ldb_v)

            _emit_fma(builder, pointer(0, a_v, a_off_v), a_rs_v, a_ks_v, pointer(4, b_v, b_off_v), b_row, depth_v,
                      pointer(8, c_v, c_off_v), ldc_v, pointer(11, bias_v, bias_off_v),
                      context.cast(builder, lo_v, arg_types[13], types.float32),
                      context.cast(builder, hi_v, arg_types[14], types.float32), mr, column_bias)
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


_row_bias = {mr: _make_microkernel(mr, False) for mr in (14, 8, 4, 2, 1)}
_mk14, _mk8, _mk4, _mk2, _mk1 = (_row_bias[mr] for mr in (14, 8, 4, 2, 1))
_column_bias = {mr: _make_microkernel(mr, True) for mr in (14, 8, 4, 2, 1)}
_cb14, _cb8, _cb4, _cb2, _cb1 = (_column_bias[mr] for mr in (14, 8, 4, 2, 1))
_indexed = {mr: _make_microkernel(mr, False, True) for mr in (14, 8, 4, 2, 1)}
_ix14, _ix8, _ix4, _ix2, _ix1 = (_indexed[mr] for mr in (14, 8, 4, 2, 1))


@njit(cache=True, inline="always")
def _rows_block(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi, rows):
    """Runs the largest row-bias kernel that fits ``rows``; returns how many rows it did."""
    if rows >= 14:
        _mk14(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 14
    if rows >= 8:
        _mk8(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 8
    if rows >= 4:
        _mk4(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 4
    if rows >= 2:
        _mk2(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 2
    _mk1(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
    return 1


@njit(cache=True, inline="always")
def _rows_block_column_bias(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi, rows):
    """:func:`_rows_block` with the bias along the columns (a linear layer's)."""
    if rows >= 14:
        _cb14(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 14
    if rows >= 8:
        _cb8(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 8
    if rows >= 4:
        _cb4(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 4
    if rows >= 2:
        _cb2(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 2
    _cb1(a, a_off, a_rs, a_ks, b, b_off, ldb, depth, c, c_off, ldc, bias, bias_off, lo, hi)
    return 1


@njit(cache=True, inline="always")
def _rows_block_indexed(a, a_off, a_rs, a_ks, b, b_off, koff, depth, c, c_off, ldc, bias, bias_off, lo, hi, rows):
    """:func:`_rows_block` with B's rows at ``b_off + koff[k]``."""
    if rows >= 14:
        _ix14(a, a_off, a_rs, a_ks, b, b_off, koff, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 14
    if rows >= 8:
        _ix8(a, a_off, a_rs, a_ks, b, b_off, koff, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 8
    if rows >= 4:
        _ix4(a, a_off, a_rs, a_ks, b, b_off, koff, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 4
    if rows >= 2:
        _ix2(a, a_off, a_rs, a_ks, b, b_off, koff, depth, c, c_off, ldc, bias, bias_off, lo, hi)
        return 2
    _ix1(a, a_off, a_rs, a_ks, b, b_off, koff, depth, c, c_off, ldc, bias, bias_off, lo, hi)
    return 1


@njit(cache=True, inline="always")
def clamp_bounds(act, alpha, beta):
    """The (lo, hi) float32 clamp the micro-kernel applies for activation ``act``: ReLU and Clip run
    in the kernel; every other activation (and none) clamps nothing and runs afterwards."""
    if act == 1:
        return np.float32(0.0), np.float32(np.inf)
    if act == 2:
        return np.float32(alpha), np.float32(beta)
    return np.float32(-np.inf), np.float32(np.inf)


@njit(cache=True)
def pack_rows(w3, out):
    """Packs each group's (M/group, K) weight ``w3[g]`` into ``out[g]``: blocks of MR rows, ``[K][MR]``
    each, the last (partial) block ``[K][rows left]``, so row r of a block is at offset
    ``block_start * K + k * block_rows + r``."""
    group, rows, depth = w3.shape
    for g in range(group):
        dst = out[g]
        for r0 in range(0, rows, MR):
            height = min(MR, rows - r0)
            base = r0 * depth
            for k in range(depth):
                for r in range(height):
                    dst[base + k * height + r] = w3[g, r0 + r, k]


@intrinsic
def _copy_nr(typingctx, src, src_off, dst, dst_off):
    """dst[dst_off:dst_off + NR] = src[src_off:src_off + NR] as two unaligned vector moves (Numba's
    loop for it stayed scalar: 13 GB/s, a third of the GEMM's time on a 3x3 conv)."""
    sig = types.void(src, src_off, dst, dst_off)

    def codegen(context, builder, signature, args):
        src_v, src_off_v, dst_v, dst_off_v = args

        def vector_pointer(position, value, offset):
            data = context.make_array(signature.args[position])(context, builder, value).data
            return builder.bitcast(builder.gep(builder.bitcast(data, _F32.as_pointer()), [offset]), _V16.as_pointer())

        source = vector_pointer(0, src_v, src_off_v)
        target = vector_pointer(2, dst_v, dst_off_v)
        for j in range(NR // 16):
            value = builder.load(builder.gep(source, [_const(j)]), align=4)
            builder.store(value, builder.gep(target, [_const(j)]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def pack_panels(b, b_off, ldb, depth, count, panels):
    """Copies B (``b[b_off + k * ldb + q]``, depth x count) into ``panels``, strips of NR columns
    ``[K][NR]`` each, the last one zero-padded: the micro-kernel then reads contiguous memory (32
    columns straight from long rows ran 10-30% slower)."""
    full = count // NR
    for strip in range(full):
        for k in range(depth):
            _copy_nr(b, b_off + k * ldb + strip * NR, panels, (strip * depth + k) * NR)
    width = count - full * NR
    if width:
        for k in range(depth):
            src = b_off + k * ldb + full * NR
            dst = (full * depth + k) * NR
            for j in range(width):
                panels[dst + j] = b[src + j]
            for j in range(width, NR):
                panels[dst + j] = 0.0


@njit(cache=True, inline="always")
def _block_rows(rows):
    """The rows of the largest micro-kernel that fits ``rows`` (see :func:`_rows_block`)."""
    for mr in (14, 8, 4, 2):
        if rows >= mr:
            return mr
    return 1


@njit(cache=True, inline="always")
def rows_times_panels(wp, w_off, rows, depth, panels, count, tile, bias, b0, out2, o_off, act, alpha, beta):
    """out2[r, o_off + q] = act(sum_k W[r, k] * B[k, q] + bias[b0 + r]) for r < rows, q < count.

    ``wp[w_off:]`` holds the rows packed by :func:`pack_rows` (``rows`` from a block boundary), B
    is packed by :func:`pack_panels`, ``bias`` has an entry for every row (zeros for none) and
    ``tile`` is (MR, NR) scratch for the narrow last strip's result. Each block of weight rows runs
    over all strips while it stays in L1 (K x 14 floats); the strips come from L2."""
    lo, hi = clamp_bounds(act, alpha, beta)
    flat_tile = tile.reshape(MR * NR)
    flat_out = out2.reshape(out2.size)
    ldc = out2.shape[1]
    r0 = 0
    while r0 < rows:
        block = r0 - r0 % MR
        height = min(MR, rows - block)
        a_off = w_off + block * depth + r0 - block
        take = _block_rows(rows - r0)
        for q0 in range(0, count, NR):
            width = min(NR, count - q0)
            p_off = (q0 // NR) * depth * NR
            if width == NR:
                _rows_block(wp, a_off, 1, height, panels, p_off, NR, depth, flat_out, r0 * ldc + o_off + q0, ldc,
                            bias, b0 + r0, lo, hi, take)
            else:
                _rows_block(wp, a_off, 1, height, panels, p_off, NR, depth, flat_tile, 0, NR, bias, b0 + r0, lo, hi,
                            take)
                for r in range(take):
                    dst = out2[r0 + r, o_off + q0:o_off + q0 + width]
                    for q in range(width):
                        dst[q] = tile[r, q]
        r0 += take
    if act > 2:
        for r in range(rows):
            row = out2[r, o_off:o_off + count]
            bias_activate_row(row, 0.0, row, act, alpha, beta)


@serial_twin
@njit(cache=True, parallel=True)
def conv_sgemm(x, wp, bias, geom, out, tile_p, block_m, buffers, act, alpha, beta):
    """Grouped convolution through the micro-kernel, parallel over (image, group, column tile,
    output-channel block) tasks as :func:`qrt.kernels.cpu.conv.conv_gemm` splits them; ``wp`` is the
    weight packed by :func:`pack_rows`, (group, M/group * K), ``bias`` (M,) (zeros for none) and
    ``block_m`` a multiple of MR.
    ``buffers`` rows are per-worker scratch: the column tile (none for a pointwise conv, which packs
    the image in place), the tile packed in strips (see :func:`scratch_size`) and the kernel's tile."""
    n_images, channels, depth, height, width = x.shape
    group = wp.shape[0]
    n_out = out.shape[1]
    m_group = n_out // group
    k_group = wp.shape[1] // m_group
    out_d, out_h, out_w = out.shape[2], out.shape[3], out.shape[4]
    plane = out_d * out_h * out_w
    taps = geom[0] * geom[1] * geom[2]
    c_group = channels // group
    n_tiles = (plane + tile_p - 1) // tile_p
    n_blocks = (m_group + block_m - 1) // block_m
    n_tasks = n_images * group * n_tiles * n_blocks
    workers = buffers.shape[0]
    pointwise = taps == 1 and geom[3] == 1 and geom[4] == 1 and geom[5] == 1 and \
        geom[9] == 0 and geom[10] == 0 and geom[11] == 0 and plane == depth * height * width
    col_size = 0 if pointwise else k_group * tile_p
    panel_size = k_group * ((tile_p + NR - 1) // NR) * NR
    out3 = out.reshape(n_images, n_out, plane)
    for worker in prange(workers):
        buffer = buffers[worker]
        panels = buffer[col_size:col_size + panel_size]
        tile = buffer[col_size + panel_size:col_size + panel_size + MR * NR].reshape(MR, NR)
        built = -1
        for task in range(worker * n_tasks // workers, (worker + 1) * n_tasks // workers):
            tile_key = task // n_blocks
            block = task - tile_key * n_blocks
            t = tile_key % n_tiles
            g = (tile_key // n_tiles) % group
            n = tile_key // (n_tiles * group)
            p0 = t * tile_p
            count = min(tile_p, plane - p0)
            if tile_key != built:
                if pointwise:
                    pack_panels(x[n].reshape(channels * plane), g * c_group * plane + p0, plane, k_group, count, panels)
                else:
                    cols = buffer[:k_group * count]
                    im2col_tile(x[n], g * c_group, geom, out_d, out_h, out_w, p0, cols.reshape(k_group, count))
                    pack_panels(cols, 0, count, k_group, count, panels)
                built = tile_key
            m0 = block * block_m
            rows = min(block_m, m_group - m0)
            rows_times_panels(wp[g], m0 * k_group, rows, k_group, panels, count, tile, bias, g * m_group + m0,
                              out3[n, g * m_group + m0:g * m_group + m0 + rows], p0, act, alpha, beta)


def scratch_size(k_group, tile_p, pointwise):
    """Elements of per-worker scratch :func:`conv_sgemm` needs."""
    return (0 if pointwise else k_group * tile_p) + k_group * -(-tile_p // NR) * NR + MR * NR



@njit(cache=True)
def pack_matrix(b, panels):
    """A (K, N) weight packed into strips of NR columns, ``[K][NR]`` each, the last zero-padded;
    ``panels`` has ``ceil(N / NR) * K * NR`` elements."""
    depth, cols = b.shape
    pack_panels(np.ascontiguousarray(b).reshape(depth * cols), 0, cols, depth, cols, panels)


# Rows per parallel task of :func:`rows_times_packed`: whole micro-kernel blocks.
ROW_CHUNK = 4 * MR


@njit(cache=True, inline="always")
def _packed_task(task, chunks, a_flat, rows, depth, panels, bias, out, out_flat, cols, act, alpha, beta, lo, hi):
    """One task of :func:`rows_times_packed`: strip ``task // chunks`` of NR columns times chunk
    ``task % chunks`` of ROW_CHUNK rows."""
    strip = task // chunks
    first = (task % chunks) * ROW_CHUNK
    last = min(rows, first + ROW_CHUNK)
    q0 = strip * NR
    width = min(NR, cols - q0)
    p_off = strip * depth * NR
    r0 = first
    if width == NR:
        while r0 < last:
            r0 += _rows_block_column_bias(a_flat, r0 * depth, depth, 1, panels, p_off, NR, depth, out_flat,
                                          r0 * cols + q0, cols, bias, q0, lo, hi, last - r0)
    else:
        tile = np.empty(MR * NR, dtype=np.float32)
        while r0 < last:
            done = _rows_block_column_bias(a_flat, r0 * depth, depth, 1, panels, p_off, NR, depth, tile, 0, NR,
                                           bias, q0, lo, hi, last - r0)
            for r in range(done):
                for j in range(width):
                    out[r0 + r, q0 + j] = tile[r * NR + j]
            r0 += done
    if act > 2:
        for r in range(first, last):
            row = out[r, q0:q0 + width]
            bias_activate_row(row, 0.0, row, act, alpha, beta)


@serial_twin
@njit(cache=True, parallel=True)
def rows_times_packed(a, panels, bias, out, act, alpha, beta):
    """out = act(a @ B + bias) for C-contiguous float32 ``a`` (M, K) and B packed by
    :func:`pack_matrix` (N = ``out.shape[1]``); ``bias`` is :meth:`PackedMatrix.padded_bias`'s (N
    rounded up to NR entries). Tasks are (strip of NR columns, chunk of ROW_CHUNK rows): with few
    rows each strip of the weight is read from memory once, by one task (the product of a decoder
    step is bound by that read)."""
    rows, depth = a.shape
    cols = out.shape[1]
    a_flat = a.reshape(rows * depth)
    out_flat = out.reshape(rows * cols)
    lo, hi = clamp_bounds(act, alpha, beta)
    chunks = (rows + ROW_CHUNK - 1) // ROW_CHUNK
    for task in prange(((cols + NR - 1) // NR) * chunks):
        _packed_task(task, chunks, a_flat, rows, depth, panels, bias, out, out_flat, cols, act, alpha, beta, lo, hi)


def packs_matrix(b) -> bool:
    """Whether a constant weight ``b`` is worth packing for :class:`PackedMatrix`: float32 2-D and an
    AVX-512 host. Measured against onnxruntime's MatMul (one thread, K x N of 768 x 768 to 3072 x 768):
    0.9-1.2x its time at every row count from 1 to 256, where im2col-free OpenBLAS and the few-rows
    loop it replaces took 1.3-7x (the loop re-read the weight for every row)."""
    return ISA == "avx512" and isinstance(b, np.ndarray) and b.ndim == 2 and b.dtype == np.float32 and b.size > 0


class PackedMatrix:
    """A constant float32 (K, N) weight packed once for :func:`rows_times_packed`."""

    def __init__(self, b):
        self.depth, self.cols = b.shape
        self.panels = np.empty(-(-self.cols // NR) * NR * self.depth, dtype=np.float32)
        pack_matrix(np.ascontiguousarray(b, dtype=np.float32), self.panels)
        self.zeros = self.padded_bias(None)

    def padded_bias(self, bias):
        """``bias`` (N values, or None for zeros) as the kernels read it: rounded up to whole strips."""
        padded = np.zeros(-(-self.cols // NR) * NR, dtype=np.float32)
        if bias is not None:
            padded[:self.cols] = bias
        return padded

    def product(self, a2, bias=None, act=0, alpha=0.0, beta=0.0):
        """act(a2 @ B + bias) for float32 ``a2`` (M, K); ``bias`` from :meth:`padded_bias` or None."""
        rows = a2.shape[0]
        out = np.empty((rows, self.cols), dtype=np.float32)
        if rows:
            # A small layer runs the kernel's serial twin: its parallel launch costs more than the product.
            call_with_threads(threads_for(rows * self.depth * self.cols), rows_times_packed, np.ascontiguousarray(a2),
                              self.panels, self.zeros if bias is None else bias, out, act, alpha, beta)
        return out


@serial_twin
@njit(cache=True, parallel=True)
def conv_implicit(x, wp, bias, geom, out, padded, wide, block_m, act, alpha, beta):
    """2-D convolution without im2col. Each image is copied once, zero-padded, into ``padded`` as
    phase planes: phase (rh, rw) of channel c holds the padded input at rows u*sH + rh and columns
    v*sW + rw, (OH + (kH-1)dH // sH) x (OW + (kW-1)dW // sW) of them (one phase for stride 1). In that
    layout the input under tap (j, l) of every output position is one fixed offset away in a "wide"
    output plane whose rows are as long as the phase rows (as in the depthwise kernel of
    :mod:`qrt.kernels.cpu.conv`). The micro-kernel reads its B rows there through an offset table,
    32 wide positions at a time, into ``wide`` (M rows of the wide plane rounded up to 32); the
    extra columns of each row are dropped when the rows are copied out. Tasks are (group, channel
    block, run of strips). ``wp``, ``bias`` (zeros for none) and ``block_m`` as for
    :func:`conv_sgemm`; sizes from :func:`implicit_scratch`."""
    n_images, channels, _, height, width = x.shape
    group = wp.shape[0]
    n_out = out.shape[1]
    m_group = n_out // group
    k_group = wp.shape[1] // m_group
    kh, kw = geom[1], geom[2]
    sh, sw = geom[4], geom[5]
    dh, dw = geom[7], geom[8]
    ph, pw = geom[10], geom[11]
    out_h, out_w = out.shape[3], out.shape[4]
    rows_q = out_h + ((kh - 1) * dh) // sh
    cols_q = out_w + ((kw - 1) * dw) // sw
    phase_size = rows_q * cols_q
    channel_size = sh * sw * phase_size
    c_group = channels // group
    taps = kh * kw
    koff = np.empty(k_group, dtype=np.int64)
    for k in range(k_group):
        j = (k % taps) // kw
        l = k % kw
        phase = ((j * dh) % sh) * sw + (l * dw) % sw
        koff[k] = (k // taps) * channel_size + phase * phase_size + ((j * dh) // sh) * cols_q + (l * dw) // sw
    strips = (out_h * cols_q + NR - 1) // NR
    ldc = strips * NR
    lo, hi = clamp_bounds(act, alpha, beta)
    n_blocks = (m_group + block_m - 1) // block_m
    runs = max(1, min(strips, 8 // max(1, group * n_blocks)))
    for q in range(channels * channel_size, padded.shape[0]):
        padded[q] = 0.0
    for n in range(n_images):
        for c in prange(channels):
            for rh in range(sh):
                for rw in range(sw):
                    plane = padded[c * channel_size + (rh * sw + rw) * phase_size:
                                   c * channel_size + (rh * sw + rw + 1) * phase_size]
                    off_w = rw - pw
                    v_lo = min(max(0, -((off_w) // sw)), cols_q)
                    v_hi = max(min(cols_q, (width - 1 - off_w) // sw + 1), v_lo)
                    for u in range(rows_q):
                        dst = plane[u * cols_q:(u + 1) * cols_q]
                        y = u * sh + rh - ph
                        if y < 0 or y >= height:
                            for v in range(cols_q):
                                dst[v] = 0.0
                            continue
                        src = x[n, c, 0, y]
                        for v in range(v_lo):
                            dst[v] = 0.0
                        for v in range(v_lo, v_hi):
                            dst[v] = src[v * sw + off_w]
                        for v in range(v_hi, cols_q):
                            dst[v] = 0.0
        for task in prange(group * n_blocks * runs):
            g = task // (n_blocks * runs)
            block = (task // runs) % n_blocks
            run = task % runs
            m0 = block * block_m
            rows = min(block_m, m_group - m0)
            first = run * strips // runs
            last = (run + 1) * strips // runs
            w_off = m0 * k_group
            r0 = 0
            while r0 < rows:
                block_start = r0 - r0 % MR
                height_b = min(MR, rows - block_start)
                a_off = w_off + block_start * k_group + r0 - block_start
                take = _block_rows(rows - r0)
                for strip in range(first, last):
                    _rows_block_indexed(wp[g], a_off, 1, height_b, padded, g * c_group * channel_size + strip * NR,
                                        koff, k_group, wide, (g * m_group + m0 + r0) * ldc + strip * NR, ldc, bias,
                                        g * m_group + m0 + r0, lo, hi, take)
                r0 += take
        for m in prange(n_out):
            for b in range(out_h):
                dst = out[n, m, 0, b]
                src = wide[m * ldc + b * cols_q:m * ldc + b * cols_q + out_w]
                for o in range(out_w):
                    dst[o] = src[o]
                if act > 2:
                    bias_activate_row(dst, 0.0, dst, act, alpha, beta)


def implicit_scratch(channels, n_out, kernel, strides, dilations, out_sizes):
    """(padded image, wide output) element counts for :func:`conv_implicit` (2-D geometry lists)."""
    rows_q = out_sizes[0] + (kernel[0] - 1) * dilations[0] // strides[0]
    cols_q = out_sizes[1] + (kernel[1] - 1) * dilations[1] // strides[1]
    # The last strip of the last channel reads up to (kW-1)dW/sW + NR - 1 elements past the planes.
    padded = channels * strides[0] * strides[1] * rows_q * cols_q + (kernel[1] - 1) * dilations[1] + 2 * NR
    return padded, n_out * -(-out_sizes[0] * cols_q // NR) * NR
