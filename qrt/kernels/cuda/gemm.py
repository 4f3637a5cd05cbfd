"""Tiled matrix products on the device: the CUDA twin of :mod:`qrt.kernels.cpu.gemm`.

:func:`tiled_kernel` builds the one GEMM skeleton every product shares (MatMul, Gemm, and through
:mod:`.conv`, :mod:`.qgemm` and :mod:`.qconv` the implicit-GEMM convolutions and integer
products). A block computes a ``BM x BN`` tile of ``C[z] = A[z] @ B[z]`` for batch ``z =
blockIdx.z``: it walks K in steps of ``BK``, the block's threads cooperatively load the ``BM x
BK`` slice of A and the ``BK x BN`` slice of B into shared memory (zeros past the edges), sync,
and each thread accumulates its ``TM x TN`` register tile from registers. The tile sizes come
from :mod:`.config`.

What the products differ in is plugged in as device functions:

* ``load_a(a, ga, a_base, m, k, zero)`` / ``load_b(b, gb, b_base, k, n, zero)``: one element of
  A or B as the accumulator type, for in-range indices only (``zero`` is the accumulator's 0, for
  loaders that produce padding). ``a_base``/``b_base`` come from per-batch offset
  arrays (``a_off[z]``), which handle broadcast batches and conv groups without copies;
  ``ga``/``gb`` are int64 tuples of strides and geometry.
* ``store(out, go, e0, e1, fe, z, m, n, acc)``: the epilogue (alpha/beta/C, bias, requantization).
  ``e0``/``e1`` are extra device arrays, ``fe`` a tuple of scalars.

float32 accumulates in float32 (fused multiply-add order differs from BLAS: results agree to
float32 rounding, ~1e-6 relative); integer products accumulate exactly in int32.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import cuda

from . import config
from . import device as dev

_ACCUMULATORS = {"float32": np.float32, "float64": np.float64, "int32": np.int32}


def tile_config():
    return (config.GEMM_BM, config.GEMM_BN, config.GEMM_BK, config.GEMM_TM, config.GEMM_TN)


def build_tiled(load_a, load_b, store, acc_name, bm, bn, bk, tm, tn):
    """The GEMM skeleton specialised for a loader pair, an epilogue, an accumulator and a tile."""
    acc_t = _ACCUMULATORS[acc_name]
    if bm % tm or bn % tn:
        raise ValueError(f"GEMM tile {bm}x{bn} is not a multiple of the thread tile {tm}x{tn}")
    tx_count = bn // tn
    ty_count = bm // tm
    threads = tx_count * ty_count
    tile = tm * tn

    @cuda.jit
    def kernel(a, ga, a_off, b, gb, b_off, out, go, e0, e1, fe, M, N, K):
        sa = cuda.shared.array((bk, bm), acc_t)
        sb = cuda.shared.array((bk, bn), acc_t)
        acc = cuda.local.array(tile, acc_t)
        ra = cuda.local.array(tm, acc_t)
        rb = cuda.local.array(tn, acc_t)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tx_count + tx
        z = cuda.blockIdx.z
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        a_base = a_off[z]
        b_base = b_off[z]
        zero = acc_t(0)
        for i in range(tile):
            acc[i] = zero
        for k0 in range(0, K, bk):
            for e in range(tid, bm * bk, threads):
                r = e // bk
                kk = e - r * bk
                m = row0 + r
                k = k0 + kk
                if m < M and k < K:
                    sa[kk, r] = load_a(a, ga, a_base, m, k, zero)
                else:
                    sa[kk, r] = zero
            for e in range(tid, bk * bn, threads):
                kk = e // bn
                c = e - kk * bn
                n = col0 + c
                k = k0 + kk
                if n < N and k < K:
                    sb[kk, c] = load_b(b, gb, b_base, k, n, zero)
                else:
                    sb[kk, c] = zero
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    ra[i] = sa[kk, ty + i * ty_count]
                for j in range(tn):
                    rb[j] = sb[kk, tx + j * tx_count]
                for i in range(tm):
                    for j in range(tn):
                        acc[i * tn + j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(tm):
            m = row0 + ty + i * ty_count
            if m < M:
                for j in range(tn):
                    n = col0 + tx + j * tx_count
                    if n < N:
                        store(out, go, e0, e1, fe, z, m, n, acc[i * tn + j])

    return kernel


# --------------------------------------------------------------------------- dp4a


def _ptx_dp4a(variant):
    """``dp4a.<variant> d, a, b, c``: ``c`` plus the four byte products of the words ``a`` and ``b``
    (PTX ISA 5.0, compute capability >= 6.1). numba.cuda has no dp4a function; inline PTX emits it."""
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def dp4a(typingctx, a, b, c):
        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            return builder.asm(ir.FunctionType(i32, [i32, i32, i32]), f"dp4a.{variant} $0, $1, $2, $3;",
                               "=r,r,r,r", args, side_effect=False)
        return types.int32(types.uint32, types.uint32, types.int32), codegen

    @cuda.jit(device=True)
    def dot(a, b, c):
        return dp4a(np.uint32(a), np.uint32(b), np.int32(c))

    return dot


def _emulated_dp4a(a_signed, b_signed):
    """dp4a's arithmetic in plain integer code: what the simulator runs (it cannot run PTX)."""

    @cuda.jit(device=True)
    def dot(a, b, c):
        s = np.int32(c)
        for j in range(4):
            x = np.int32((a >> np.uint32(8 * j)) & np.uint32(255))
            y = np.int32((b >> np.uint32(8 * j)) & np.uint32(255))
            if a_signed and x >= 128:
                x -= 256
            if b_signed and y >= 128:
                y -= 256
            s += x * y
        return s

    return dot


def dp4a_function(a_signed, b_signed):
    if dev.SIMULATED:
        return _emulated_dp4a(a_signed, b_signed)
    return _ptx_dp4a(("s32" if a_signed else "u32") + "." + ("s32" if b_signed else "u32"))


_dp4a_available = None


def use_dp4a():
    """Whether integer products take the dp4a kernels: ``config.USE_DP4A`` when set, else whether the
    device has the instruction (compute capability >= 6.1; never in the simulator)."""
    global _dp4a_available
    if config.USE_DP4A is not None:
        return bool(config.USE_DP4A)
    if _dp4a_available is None:
        _dp4a_available = not dev.SIMULATED and tuple(cuda.get_current_device().compute_capability) >= (6, 1)
    return _dp4a_available


def build_dp4a(load_a4, load_b4, store, a_signed, b_signed, bm, bn, bk, tm, tn):
    """:func:`build_tiled` for 8-bit operands with dp4a: shared memory holds words of 4 consecutive k
    (``load_a4(a, ga, base, m, k, K)`` / ``load_b4(b, gb, base, k, n, K)`` pack bytes ``k .. k+3``,
    zeros past K), and each step of the register tile is one dp4a of a word of A by a word of B.
    ``a_signed``/``b_signed`` say how the bytes of each operand are read. Same arguments and launch
    geometry as :func:`build_tiled` (:func:`launch_tiled`); ``bk`` must be a multiple of 4."""
    if bm % tm or bn % tn or bk % 4:
        raise ValueError(f"dp4a GEMM tile {bm}x{bn}x{bk} does not fit the thread tile {tm}x{tn} and words of 4")
    dot = dp4a_function(a_signed, b_signed)
    words = bk // 4
    tx_count = bn // tn
    ty_count = bm // tm
    threads = tx_count * ty_count
    tile = tm * tn

    @cuda.jit
    def kernel(a, ga, a_off, b, gb, b_off, out, go, e0, e1, fe, M, N, K):
        sa = cuda.shared.array((words, bm), np.uint32)
        sb = cuda.shared.array((words, bn), np.uint32)
        acc = cuda.local.array(tile, np.int32)
        ra = cuda.local.array(tm, np.uint32)
        rb = cuda.local.array(tn, np.uint32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tx_count + tx
        z = cuda.blockIdx.z
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        a_base = a_off[z]
        b_base = b_off[z]
        for i in range(tile):
            acc[i] = np.int32(0)
        for k0 in range(0, K, bk):
            for e in range(tid, bm * words, threads):
                r = e // words
                w = e - r * words
                m = row0 + r
                k = k0 + 4 * w
                if m < M and k < K:
                    sa[w, r] = load_a4(a, ga, a_base, m, k, K)
                else:
                    sa[w, r] = np.uint32(0)
            for e in range(tid, words * bn, threads):
                w = e // bn
                c = e - w * bn
                n = col0 + c
                k = k0 + 4 * w
                if n < N and k < K:
                    sb[w, c] = load_b4(b, gb, b_base, k, n, K)
                else:
                    sb[w, c] = np.uint32(0)
            cuda.syncthreads()
            for w in range(words):
                for i in range(tm):
                    ra[i] = sa[w, ty + i * ty_count]
                for j in range(tn):
                    rb[j] = sb[w, tx + j * tx_count]
                for i in range(tm):
                    for j in range(tn):
                        acc[i * tn + j] = dot(ra[i], rb[j], acc[i * tn + j])
            cuda.syncthreads()
        for i in range(tm):
            m = row0 + ty + i * ty_count
            if m < M:
                for j in range(tn):
                    n = col0 + tx + j * tx_count
                    if n < N:
                        store(out, go, e0, e1, fe, z, m, n, acc[i * tn + j])

    return kernel


@cuda.jit(device=True)
def byte_word(b0, b1, b2, b3):
    """Four 8-bit values (any integer type, read as their low byte) packed into one uint32, b0 lowest."""
    return (np.uint32(np.int32(b0) & 255) | (np.uint32(np.int32(b1) & 255) << np.uint32(8))
            | (np.uint32(np.int32(b2) & 255) << np.uint32(16)) | (np.uint32(np.int32(b3) & 255) << np.uint32(24)))


def launch_tiled(kernel, batches, M, N, K, a, ga, a_off, b, gb, b_off, out, go, e0, e1, fe):
    bm, bn, _, tm, tn = tile_config()
    if M == 0 or N == 0 or batches == 0:
        return
    grid = (-(-N // bn), -(-M // bm), batches)
    dev.launch(kernel, grid, (bn // tn, bm // tm), a, ga, a_off, b, gb, b_off, out, go, e0, e1, fe,
               int(M), int(N), int(K))


# --------------------------------------------------------------------------- small device constants

_constants_lock = threading.Lock()
_constants: dict = {}
_CONSTANTS_MAX = 512


def device_constant(values, dtype=np.int64):
    """A small device array holding ``values``, uploaded once per distinct content (offset tables,
    dummy epilogue operands): launches reuse it instead of copying on every call."""
    key = (np.dtype(dtype).str, tuple(np.asarray(values).reshape(-1).tolist()))
    found = _constants.get(key)
    if found is None:
        with _constants_lock:
            found = _constants.get(key)
            if found is None:
                if len(_constants) >= _CONSTANTS_MAX:
                    _constants.clear()
                found = dev.upload(np.asarray(values, dtype=dtype).reshape(-1))
                _constants[key] = found
    return found


def pad8(values):
    values = [int(v) for v in values]
    return tuple(values + [0] * (8 - len(values)))


# --------------------------------------------------------------------------- float products


@cuda.jit(device=True)
def _load_strided_a(a, ga, base, m, k, zero):
    return a[base + m * ga[0] + k * ga[1]]


@cuda.jit(device=True)
def _load_strided_b(b, gb, base, k, n, zero):
    return b[base + k * gb[0] + n * gb[1]]


@cuda.jit(device=True)
def _store_gemm(out, go, e0, e1, fe, z, m, n, acc):
    # go: (rows, cols, c_row_stride, c_col_stride, has_c); fe: (alpha, beta) in the output's type.
    v = fe[0] * acc
    if go[4] != 0:
        v += fe[1] * e0[m * go[2] + n * go[3]]
    out[(z * go[0] + m) * go[1] + n] = v


@dev.kernel_factory
def _float_gemm(acc_name, bm, bn, bk, tm, tn):
    return build_tiled(_load_strided_a, _load_strided_b, _store_gemm, acc_name, bm, bn, bk, tm, tn)


def batch_offsets(own_batch, batch, matrix_size):
    """Per output batch (C order over ``batch``), the element offset of an operand's matrix, the
    operand's own batch dims broadcast to ``batch``."""
    own = (1,) * (len(batch) - len(own_batch)) + tuple(own_batch)
    count = int(np.prod(own, dtype=np.int64))
    positions = np.arange(count, dtype=np.int64).reshape(own)
    return np.broadcast_to(positions, tuple(batch)).reshape(-1) * int(matrix_size)


def matmul(a, b, out, batch, a_batch, b_batch, M, N, K, alpha=1.0, trans_a=False, trans_b=False,
           c=None, beta=0.0, c_strides=(0, 0)):
    """``out[z] = alpha * op(a[z]) @ op(b[z]) (+ beta * c)`` with numpy batch broadcasting.

    ``a``/``b``/``out`` are contiguous device arrays; ``a`` stores (…, M, K) or with ``trans_a``
    (…, K, M), ``b`` (…, K, N) or (…, N, K). ``c`` (optional, 2-D products only) is read at
    ``m * c_strides[0] + n * c_strides[1]``.
    """
    dtype = np.dtype(out.dtype)
    if dtype.name not in ("float32", "float64"):
        raise dev.Unsupported(f"device matmul of {dtype}")
    count = int(np.prod(batch, dtype=np.int64))
    ga = (1, M) if trans_a else (K, 1)
    gb = (1, K) if trans_b else (N, 1)
    a_off = device_constant(batch_offsets(a_batch, batch, M * K))
    b_off = device_constant(batch_offsets(b_batch, batch, K * N))
    if c is None:
        c = device_constant([0], dtype)
        has_c = 0
    else:
        has_c = 1
    fe = (dtype.type(alpha), dtype.type(beta))
    kernel = _float_gemm(dtype.name, *tile_config())
    launch_tiled(kernel, count, M, N, K, dev.flat(a), pad8(ga), a_off, dev.flat(b), pad8(gb), b_off, dev.flat(out),
                 pad8((M, N, c_strides[0], c_strides[1], has_c)), dev.flat(c), dev.flat(c), fe)
    return out


def gemm(a, b, out, M, N, K, alpha, beta, trans_a, trans_b, c=None, c_strides=(0, 0)):
    """2-D ``out = alpha * op(a) @ op(b) + beta * c``: the CPU ``gemm``'s contract on the device."""
    return matmul(a, b, out, (), (), (), M, N, K, alpha, trans_a, trans_b, c, beta, c_strides)
