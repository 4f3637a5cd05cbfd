"""Exact integer matrix products with fused requantization on the device: the CUDA twin of
:mod:`qrt.kernels.cpu.qgemm`, on the shared tiled skeleton (:func:`.gemm.build_tiled`).

``acc[m, n] = sum_k (a[m, k] - za) * (b[k, n] - zb[n])`` accumulates in int32. Constant weights
are centered once (``b - zb`` as int16, :func:`center_columns`), so the B loader is one load;
activations are centered as they are loaded. 8-bit values are widened to int32 before any
arithmetic (the simulator would otherwise wrap them like numpy). The epilogue writes the
int32 sum (MatMulInteger, ConvInteger), or like the CPU kernels either
``saturate(rint(float64(acc + bias[c]) * mult[c]) + zy)`` into an 8-bit output or
``float32(acc + bias[c]) * scale[c]`` into a float32 one (QGemm without ``y_scale``).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import config
from . import device as dev
from .elementwise import rint_function
from .gemm import build_tiled, device_constant, launch_tiled, pad8, tile_config

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
           qmax=255):
    """``out[z] = epilogue((a[z] - za) @ b_centered[z])``; int32 ``out`` gets the sums, an 8-bit
    ``out`` the requantized values (``bias`` int32 and ``mult`` float64 per column), a float32
    ``out`` the scaled sums (``mult`` is then the float32 scale per column)."""
    from .gemm import batch_offsets
    count = int(np.prod(batch, dtype=np.int64))
    kind = _epilogue_kind(out)
    a_off = device_constant(batch_offsets(a_batch, batch, M * K))
    b_off = device_constant(batch_offsets(b_batch, batch, K * N))
    e0 = bias if bias is not None else device_constant(np.zeros(N, np.int32), np.int32)
    e1 = mult if mult is not None else device_constant([0.0], np.float64)
    kernel = _qmatmul(kind, *tile_config())
    launch_tiled(kernel, count, M, N, K, dev.flat(a), pad8((K, za)), a_off, dev.flat(b_centered), pad8((N,)), b_off,
                 dev.flat(out), pad8((M, N)), e0, e1, (float(zy), float(qmin), float(qmax)))
    return out
