"""Exact integer matrix products with fused requantization on the device: the CUDA twin of
:mod:`qrt.kernels.cpu.qgemm`, on the shared tiled skeleton (:func:`.gemm.build_tiled`).

``acc[m, n] = sum_k (a[m, k] - za) * (b[k, n] - zb[n])`` accumulates in int32. Constant weights
are centered once (``b - zb`` as int16, :func:`center_columns`), so the B loader is one load;
activations are centered as they are loaded. 8-bit values are widened to int32 before any
arithmetic (the simulator would otherwise wrap them like numpy). The epilogue writes the
int32 sum (MatMulInteger, ConvInteger), or like the CPU kernels either
``saturate(rint(float64(acc + bias[c]) * mult[c]) + zy)`` into an 8-bit output or
``float32(acc + bias[c]) * scale[c]`` into a float32 one (QGemm without ``y_scale``).

The dp4a path (devices of compute capability >= 6.1, :func:`.gemm.use_dp4a`) multiplies raw
activation bytes by centered weights that fit in int8, four products per instruction, and moves
the activation zero point into the bias: ``sum_k (a - za) * bc = sum_k a * bc - za * colsum(bc)``,
so the epilogue is unchanged and the int32 sums are the same. :func:`dp4a_bias` gives that bias.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import config
from . import device as dev
from .elementwise import rint_function
from .gemm import build_dp4a, build_tiled, byte_word, device_constant, launch_tiled, pad8, tile_config

_rint64 = rint_function(np.float64)


@cuda.jit(device=True)
def requantize(acc, bias, mult, zy, lo, hi):
    v = _rint64(np.float64(np.int32(acc + bias)) * mult) + zy
    if v < lo:
        v = lo
    elif v > hi:
        v = hi
    return np.int32(v)


@cuda.jit(device=True)
def _load_centered_a(a, ga, base, m, k, zero):
    # ga: (K, za)
    return np.int32(a[base + m * ga[0] + k]) - np.int32(ga[1])


@cuda.jit(device=True)
def _load_centered_b(b, gb, base, k, n, zero):
    # gb: (N,) ; b holds b - zb already (int16)
    return np.int32(b[base + k * gb[0] + n])


@cuda.jit(device=True)
def _store_matmul_q(out, go, e0, e1, fe, z, m, n, acc):
    # go: (M, N); e0: int32 bias per column; e1: float64 multiplier per column; fe: (zy, qmin, qmax)
    out[(z * go[0] + m) * go[1] + n] = requantize(acc, e0[n], e1[n], fe[0], fe[1], fe[2])


@cuda.jit(device=True)
def _store_matmul_i32(out, go, e0, e1, fe, z, m, n, acc):
    out[(z * go[0] + m) * go[1] + n] = acc


@cuda.jit(device=True)
def _store_matmul_f32(out, go, e0, e1, fe, z, m, n, acc):
    # e1: float32 scale per column (a_scale * b_scale[n] * alpha, computed as the CPU twin does)
    out[(z * go[0] + m) * go[1] + n] = np.float32(np.int32(acc + e0[n])) * e1[n]


_STORES = {"int32": _store_matmul_i32, "requantized": _store_matmul_q, "float32": _store_matmul_f32}


def _epilogue_kind(out):
    dtype = np.dtype(out.dtype)
    return dtype.name if dtype.name in ("int32", "float32") else "requantized"


@dev.kernel_factory
def _qmatmul(kind, bm, bn, bk, tm, tn):
    store = _STORES[kind]
    return build_tiled(_load_centered_a, _load_centered_b, store, "int32", bm, bn, bk, tm, tn)


@cuda.jit(device=True)
def _load_raw_a4(a, ga, base, m, k, K):
    # ga: (K, za); the bytes of a[m, k .. k+3] as stored, zeros past K
    row = base + m * ga[0] + k
    return byte_word(a[row], a[row + 1] if k + 1 < K else 0, a[row + 2] if k + 2 < K else 0,
                     a[row + 3] if k + 3 < K else 0)


@cuda.jit(device=True)
def _load_centered_b4(b, gb, base, k, n, K):
    # gb: (N,); b - zb (int16, within int8 on this path) at rows k .. k+3 of column n
    at = base + k * gb[0] + n
    step = gb[0]
    return byte_word(b[at], b[at + step] if k + 1 < K else 0, b[at + 2 * step] if k + 2 < K else 0,
                     b[at + 3 * step] if k + 3 < K else 0)


@dev.kernel_factory
def _qmatmul_dp4a(kind, a_signed, bm, bn, bk, tm, tn):
    return build_dp4a(_load_raw_a4, _load_centered_b4, _STORES[kind], bool(a_signed), True, bm, bn, bk, tm, tn)


def int8_sums(centered):
    """Per-row sums of centered weights (host, rows = the axis a zero point multiplies), or None when
    some value is outside int8 and dp4a cannot take them."""
    centered = np.asarray(centered)
    if centered.size and (centered.min() < -128 or centered.max() > 127):
        return None
    return centered.astype(np.int64).sum(axis=1)


def dp4a_bias(bias, zero_point, sums):
    """``bias - zero_point * sums`` as int32 (host arrays; ``bias`` None means zeros)."""
    adjusted = -np.int64(zero_point) * sums
    if bias is not None:
        adjusted = adjusted + np.asarray(bias, np.int64).reshape(-1)
    return adjusted.astype(np.int32)


@dev.kernel_factory
def _center():
    @cuda.jit
    def kernel(b, zb, out, n, cols):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            out[i] = np.int32(b[i]) - np.int32(zb[i % cols])
            i += step

    return kernel


def center_columns(b, zb, cols):
    """``b - zb[column]`` as int16 for ``b`` (…, cols) 8-bit and ``zb`` (cols,) int32 (device arrays)."""
    out = dev.empty(b.shape, np.int16)
    n = out.size
    if n:
        dev.launch(_center(), dev.blocks_for(n), config.THREADS, dev.flat(b), zb, dev.flat(out), n, int(cols))
    return out


def matmul(a, za, b_centered, out, batch, a_batch, b_batch, M, N, K, bias=None, mult=None, zy=0, qmin=0,
           qmax=255, dp4a=False):
    """``out[z] = epilogue((a[z] - za) @ b_centered[z])``; int32 ``out`` gets the sums, an 8-bit
    ``out`` the requantized values (``bias`` int32 and ``mult`` float64 per column), a float32
    ``out`` the scaled sums (``mult`` is then the float32 scale per column). With ``dp4a`` (an 8-bit
    or float32 ``out``), ``bias`` must be :func:`dp4a_bias` of the real bias and ``b_centered`` within
    int8."""
    from .gemm import batch_offsets
    count = int(np.prod(batch, dtype=np.int64))
    kind = _epilogue_kind(out)
    a_off = device_constant(batch_offsets(a_batch, batch, M * K))
    b_off = device_constant(batch_offsets(b_batch, batch, K * N))
    e0 = bias if bias is not None else device_constant(np.zeros(N, np.int32), np.int32)
    e1 = mult if mult is not None else device_constant([0.0], np.float64)
    if dp4a and kind != "int32":
        kernel = _qmatmul_dp4a(kind, int(np.dtype(a.dtype) == np.int8), *tile_config())
    else:
        kernel = _qmatmul(kind, *tile_config())
    launch_tiled(kernel, count, M, N, K, dev.flat(a), pad8((K, za)), a_off, dev.flat(b_centered), pad8((N,)), b_off,
                 dev.flat(out), pad8((M, N)), e0, e1, (float(zy), float(qmin), float(qmax)))
    return out
