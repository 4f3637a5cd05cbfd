"""The int8 GEMM of :mod:`qrt.kernels.cpu.qgemm` on Intel AMX tiles, where the CPU has them.

AMX (``amx-int8``) multiplies a 16 x 64 tile of unsigned bytes by a 16 x 64 tile of signed bytes
laid out four k per column into a 16 x 16 int32 tile in one instruction (``tdpbusd``: 16K exact
multiply-adds, int32 accumulation without saturation), several times the rate of AVX-512 VNNI.
The weights need no second layout: a panel of ``qgemm.pack_weights`` for the VNNI kernel is
``[Kp/4][32][4]`` bytes, so 16 consecutive k-quads of columns 0-15 (or 16-31) are a B tile at a
row stride of 128 bytes. A depth that is not a multiple of 64 ends in a partial block whose B tile
runs on into the next panel (or into the ``tail_slack`` zero bytes past the last one): those
bytes meet A bytes that are zero (rows padded to :func:`depth`), so they add exactly nothing.
The micro-kernel computes 32 (or 16) rows x 32 columns with four (two) accumulator tiles over
the whole depth, stores them to a (32, 32) int32 buffer, and the VNNI driver's epilogue (zero
points, bias, requantization or float scaling) finishes it unchanged. The convolution driver
built on these blocks is :func:`qrt.kernels.cpu.qconv.qconv_amx`.

Requirements, checked by :func:`usable`: the host has AMX-INT8 and Linux grants the process the
tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, asked once), the weights are packed for the VNNI
kernel, and either the depth ``Kp`` is a multiple of 64 or the caller pads A's rows to
:func:`depth` with zeros and the weights were packed with ``tail_slack``. The A buffer must be
readable for whole 32-row blocks (rows past M are read, their results discarded):
:func:`padded_rows` allocates it.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import qgemm
from .threads import num_threads

_I8, _I16, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
_VOID = ir.VoidType()
_PTR = _I8.as_pointer()

ROWS = 32            # rows per micro-kernel call (two 16-row A tiles)
DEPTH = 64           # bytes of k per tile row


def _request_tile_state() -> bool:
    """Ask Linux for the AMX tile data state (needed once per process before any tile instruction)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        arch_prctl, req_xcomp_perm, xtiledata = 158, 0x1023, 18
        return libc.syscall(arch_prctl, req_xcomp_perm, xtiledata) == 0
    except (OSError, AttributeError):
        return False


def _host_has_amx() -> bool:
    if os.environ.get("QRT_INT8_ISA") or qgemm.ISA != "avx512vnni":
        return False          # an ISA override (tests of other paths) turns AMX off too
    features = qgemm._target_features()
    return bool(features.get("amx-int8") and features.get("amx-tile")) and _request_tile_state()


AVAILABLE = _host_has_amx()


# Shallower products than this stay on VNNI when the caller pads: each 32 x 32 block then costs
# more in tile stores, the gather and the epilogue than the tiles save (measured on one thread:
# 3x3 over 16 or 24 channels 1.7x VNNI's time, 3x3 over 32 channels 1.0x, 3x3 over 256 0.33x).
# A 1x1 convolution whose rows the tiles read in place, without a gather, takes them from a depth
# of 64 (0.55-0.75x VNNI's time at 64 to 192 channels). Tests lower it to run every shape on the tiles.
MIN_PADDED_DEPTH = 256


def usable(packed, padded=False) -> bool:
    """Whether the AMX drivers run ``packed``. ``padded``: the caller (a convolution, QLinearMatMul,
    QGemm) pads A's rows with zeros up to :func:`depth`, so any depth from ``MIN_PADDED_DEPTH`` on
    will do; other callers need a depth that is a multiple of 64."""
    if not AVAILABLE or packed.isa != "avx512vnni":
        return False
    if padded:
        return packed.Kp >= MIN_PADDED_DEPTH and (packed.Kp % DEPTH == 0 or packed.tail_slack >= TAIL_SLACK)
    return packed.Kp % DEPTH == 0


def depth(kp):
    """The row length of A the tiles read: ``kp`` rounded up to whole 64-byte blocks."""
    return -(-kp // DEPTH) * DEPTH


# Bytes a partial last depth block's B tile reads past the end of the last panel (15 k-quad rows of 128).
TAIL_SLACK = qgemm.AMX_TAIL_SLACK


def padded_rows(m, kp):
    """An (m, kp) uint8 array whose buffer holds whole 32-row blocks (for the micro-kernel's reads)."""
    return np.empty((-(-m // ROWS) * ROWS, kp), np.uint8)[:m]


def _tile(builder, name, *args):
    arg_types = [a.type for a in args]
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VOID, arg_types), name)
    builder.call(fn, args)


@intrinsic
def _configure(typingctx):
    """ldtilecfg: palette 1, tiles 0-7 all 16 rows x 64 bytes (kept by the thread until released)."""
    def codegen(context, builder, signature, args):
        cfg = cgutils.alloca_once(builder, ir.ArrayType(_I8, 64))
        builder.store(ir.Constant(ir.ArrayType(_I8, 64), None), cfg)
        base = builder.bitcast(cfg, _PTR)
        builder.store(ir.Constant(_I8, 1), base)
        for t in range(8):
            colsb = builder.bitcast(builder.gep(base, [ir.Constant(_I64, 16 + 2 * t)]), _I16.as_pointer())
            builder.store(ir.Constant(_I16, DEPTH), colsb)
            builder.store(ir.Constant(_I8, 16), builder.gep(base, [ir.Constant(_I64, 48 + t)]))
        _tile(builder, "llvm.x86.ldtilecfg", base)
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _release(typingctx):
    def codegen(context, builder, signature, args):
        _tile(builder, "llvm.x86.tilerelease")
        return context.get_dummy_value()

    return types.void(), codegen


# How far ahead of the k-block being multiplied its B rows are prefetched: tile loads that miss
# the cache wait for memory (a weight panel read once per row block, from L2 or beyond).
PREFETCH_BYTES = 6 * 16 * 128


def _prefetch_block(builder, ptr):
    """prefetcht0 of the 2 KiB of one B k-block (16 rows of 128 bytes) at ``ptr``."""
    i32 = ir.IntType(32)
    name = "llvm.prefetch.p0" if str(ptr.type) == "ptr" else "llvm.prefetch.p0i8"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VOID, [ptr.type, i32, i32, i32]), name)
    for line in range(0, 16 * 128, 64):
        builder.call(fn, [builder.gep(ptr, [ir.Constant(_I64, line)]), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])


def _make_block(two_row_tiles):
    @intrinsic
    def block(typingctx, a, a_off, lda, bp, b_off, kblocks, tile):
        """Raw sums of 32 (or 16) rows of ``a`` from ``a_off`` times one packed panel into ``tile`` (32, 32) int32."""
        sig = types.void(a, a_off, lda, bp, b_off, kblocks, tile)

        def codegen(context, builder, signature, args):
            a_v, a_off_v, lda_v, bp_v, b_off_v, kb_v, tile_v = args
            a_arr = context.make_array(signature.args[0])(context, builder, a_v)
            b_arr = context.make_array(signature.args[3])(context, builder, bp_v)
            t_arr = context.make_array(signature.args[6])(context, builder, tile_v)
            a_ptr = builder.gep(builder.bitcast(a_arr.data, _PTR), [a_off_v])
            b_ptr = builder.gep(builder.bitcast(b_arr.data, _PTR), [b_off_v])
            t_ptr = builder.bitcast(t_arr.data, _PTR)
            i8 = lambda v: ir.Constant(_I8, v)   # noqa: E731  (tile numbers are immediates)
            accs = (0, 1, 2, 3) if two_row_tiles else (0, 1)
            for t in accs:
                _tile(builder, "llvm.x86.tilezero", i8(t))
            a_rows16 = builder.mul(lda_v, ir.Constant(_I64, 16))
            b_stride = ir.Constant(_I64, 128)
            with cgutils.for_range(builder, kb_v) as loop:
                kb = loop.index
                a_k = builder.gep(a_ptr, [builder.mul(kb, ir.Constant(_I64, DEPTH))])
                b_k = builder.gep(b_ptr, [builder.mul(kb, ir.Constant(_I64, 16 * 128))])
                _tile(builder, "llvm.x86.tileloadd64", i8(4), a_k, lda_v)
                _tile(builder, "llvm.x86.tileloadd64", i8(6), b_k, b_stride)
                _tile(builder, "llvm.x86.tileloadd64", i8(7), builder.gep(b_k, [ir.Constant(_I64, 64)]), b_stride)
                _tile(builder, "llvm.x86.tdpbusd", i8(0), i8(4), i8(6))
                _tile(builder, "llvm.x86.tdpbusd", i8(1), i8(4), i8(7))
                _prefetch_block(builder, builder.gep(b_k, [ir.Constant(_I64, PREFETCH_BYTES)]))
                if two_row_tiles:
                    _tile(builder, "llvm.x86.tileloadd64", i8(5), builder.gep(a_k, [a_rows16]), lda_v)
                    _tile(builder, "llvm.x86.tdpbusd", i8(2), i8(5), i8(6))
                    _tile(builder, "llvm.x86.tdpbusd", i8(3), i8(5), i8(7))
            row_bytes = ir.Constant(_I64, 128)       # the (32, 32) int32 buffer
            for t in accs:
                offset = (t // 2) * 16 * 128 + (t % 2) * 64
                _tile(builder, "llvm.x86.tilestored64", i8(t), builder.gep(t_ptr, [ir.Constant(_I64, offset)]),
                      row_bytes)
            return context.get_dummy_value()

        return sig, codegen

    return block


_block32 = _make_block(True)
_block16 = _make_block(False)


@njit(cache=True, inline="always")
def _task(task, a, lda, M, Kp, K, bp, N, row_za, row_t, col_sum, col_zb, col_bias, mode, mult, zy, qmin, qmax,
          fscale, fbias, out_q, out_i, out_f, mc, n_groups):
    nr = 32
    n_panels = (N + nr - 1) // nr
    kblocks = (Kp + 63) // 64
    per_group = (n_panels + n_groups - 1) // n_groups
    chunk = task // n_groups
    group = task - chunk * n_groups
    tile = np.empty((32, 32), np.int32)
    _configure()
    m_start = chunk * mc
    m_end = min(M, m_start + mc)
    for p in range(group * per_group, min(n_panels, (group + 1) * per_group)):
        n0 = p * nr
        n1 = min(N, n0 + nr)
        cs, czb, cb = col_sum[n0:n1], col_zb[n0:n1], col_bias[n0:n1]
        cm, cf, cfb = mult[n0:n1], fscale[n0:n1], fbias[n0:n1]
        m0 = m_start
        while m0 < m_end:
            rows = min(32, m_end - m0)
            if rows > 16:
                _block32(a, m0 * lda, lda, bp, p * Kp * nr, kblocks, tile)
            else:
                _block16(a, m0 * lda, lda, bp, p * Kp * nr, kblocks, tile)
            qgemm._epilogue(tile, rows, n1 - n0, row_za, row_t, m0, cs, czb, cb, mode, cm, zy, qmin, qmax, cf, cfb,
                            out_q, out_i, out_f, False, m0, n0, qgemm._NO_STAGE_U8, qgemm._NO_STAGE_I32,
                            qgemm._NO_STAGE_F32)
            m0 += rows
    _release()


@njit(cache=True, parallel=True)
def qgemm_amx(a, lda, M, Kp, K, bp, N, row_za, row_t, col_sum, col_zb, col_bias, mode, mult, zy, qmin, qmax, fscale,
              fbias, out_q, out_i, out_f, mc, n_groups):
    """:func:`qrt.kernels.cpu.qgemm.qgemm` (same arguments but the ISA tag, ``nr`` (32) and ``koff``) on AMX tiles."""
    for task in prange(((M + mc - 1) // mc) * n_groups):
        _task(task, a, lda, M, Kp, K, bp, N, row_za, row_t, col_sum, col_zb, col_bias, mode, mult, zy, qmin, qmax,
              fscale, fbias, out_q, out_i, out_f, mc, n_groups)


@njit(cache=True)
def qgemm_amx_serial(a, lda, M, Kp, K, bp, N, row_za, row_t, col_sum, col_zb, col_bias, mode, mult, zy, qmin, qmax,
                     fscale, fbias, out_q, out_i, out_f):
    """:func:`qgemm_amx` on the calling thread, for products smaller than a parallel launch."""
    _task(0, a, lda, M, Kp, K, bp, N, row_za, row_t, col_sum, col_zb, col_bias, mode, mult, zy, qmin, qmax,
          fscale, fbias, out_q, out_i, out_f, max(M, 1), 1)


# Below this many multiply-adds, and weights this small, one thread finishes before others start.
SERIAL_MAX_MACS = 1 << 22
SERIAL_MAX_WEIGHT_BYTES = 1 << 18


def split_work(rows, n_panels, depth, threads):
    """(rows per task, panel groups): :func:`qgemm.split_work` on 32-row blocks."""
    blocks = -(-rows // ROWS)
    if blocks >= 2 * threads:
        per = -(-blocks // (2 * threads))
        return per * ROWS, 1
    chunks = blocks
    return ROWS, min(n_panels, max(1, -(-2 * threads // chunks)))


def matmul(a_rows, M, K, za_rows, row_t, packed, epi, out_q, out_i, out_f):
    """Runs the product on the calling thread when it is small, else over the session's threads."""
    Kp, N = packed.Kp, packed.N
    threads = num_threads()
    args = (a_rows, depth(Kp), M, Kp, K, packed.data, N, za_rows, row_t, packed.col_sum[0], packed.zb[0], epi.bias[0],
            epi.mode, epi.mult[0], epi.zy, epi.qmin, epi.qmax, epi.fscale[0], epi.fbias[0], out_q, out_i, out_f)
    if threads == 1 or (M * Kp * N <= SERIAL_MAX_MACS and Kp * N <= SERIAL_MAX_WEIGHT_BYTES):
        qgemm_amx_serial(*args)
    else:
        qgemm_amx(*args, *split_work(M, (N + 31) // 32, Kp, threads))


# --------------------------------------------------------------------------- one float scale per row


@njit(cache=True, inline="always")
def _task_row_scaled(task, a, lda, M, Kp, K, bp, N, row_za, row_t, row_scale, col_sum, col_zb, fscale, fbias, out_f,
                     mc, n_groups):
    """:func:`_task` finishing tiles with :func:`qrt.kernels.cpu.qgemm._epilogue_row_scaled`."""
    nr = 32
    n_panels = (N + nr - 1) // nr
    kblocks = (Kp + 63) // 64
    per_group = (n_panels + n_groups - 1) // n_groups
    chunk = task // n_groups
    group = task - chunk * n_groups
    tile = np.empty((32, 32), np.int32)
    _configure()
    m_start = chunk * mc
    m_end = min(M, m_start + mc)
    for p in range(group * per_group, min(n_panels, (group + 1) * per_group)):
        n0 = p * nr
        n1 = min(N, n0 + nr)
        m0 = m_start
        while m0 < m_end:
            rows = min(32, m_end - m0)
            if rows > 16:
                _block32(a, m0 * lda, lda, bp, p * Kp * nr, kblocks, tile)
            else:
                _block16(a, m0 * lda, lda, bp, p * Kp * nr, kblocks, tile)
            qgemm._epilogue_row_scaled(tile, rows, n1 - n0, row_za, row_t, row_scale, m0, col_sum[n0:n1],
                                       col_zb[n0:n1], fscale[n0:n1], fbias[n0:n1], out_f, m0, n0)
            m0 += rows
    _release()


@njit(cache=True, parallel=True)
def qgemm_amx_row_scaled(a, lda, M, Kp, K, bp, N, row_za, row_t, row_scale, col_sum, col_zb, fscale, fbias, out_f,
                         mc, n_groups):
    for task in prange(((M + mc - 1) // mc) * n_groups):
        _task_row_scaled(task, a, lda, M, Kp, K, bp, N, row_za, row_t, row_scale, col_sum, col_zb, fscale, fbias,
                         out_f, mc, n_groups)


@njit(cache=True)
def qgemm_amx_row_scaled_serial(a, lda, M, Kp, K, bp, N, row_za, row_t, row_scale, col_sum, col_zb, fscale, fbias,
                                out_f):
    _task_row_scaled(0, a, lda, M, Kp, K, bp, N, row_za, row_t, row_scale, col_sum, col_zb, fscale, fbias, out_f,
                     max(M, 1), 1)


def matmul_row_scaled(a_rows, M, K, za_rows, row_t, row_scale, packed, fscale, fbias, out_f):
    """:func:`matmul` with :func:`qrt.kernels.cpu.qgemm.matmul_rows_scaled`'s per-row float epilogue."""
    Kp, N = packed.Kp, packed.N
    threads = num_threads()
    args = (a_rows, depth(Kp), M, Kp, K, packed.data, N, za_rows, row_t, row_scale, packed.col_sum[0], packed.zb[0],
            fscale, fbias, out_f)
    if threads == 1 or (M * Kp * N <= SERIAL_MAX_MACS and Kp * N <= SERIAL_MAX_WEIGHT_BYTES):
        qgemm_amx_row_scaled_serial(*args)
    else:
        qgemm_amx_row_scaled(*args, *split_work(M, (N + 31) // 32, Kp, threads))
