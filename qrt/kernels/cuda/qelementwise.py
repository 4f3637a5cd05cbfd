"""Quantized element-wise and pooling kernels on the device: the CUDA twin of
:mod:`qrt.kernels.cpu.qelementwise`.

* ``qadd`` / ``qmul`` (QLinearAdd / QLinearMul, with broadcasting): the CPU ufuncs' float32
  formulas, ``saturate(rint((a - za) * ra + (b - zb) * rb) + zc)`` and
  ``saturate(rint((a - za) * (b - zb) * r) + zc)``, with 8-bit values widened to int32 first.
* ``apply_table`` (the unary QLinear ops: QLinearSigmoid, QLinearLeakyRelu, ...): ``out[i] =
  table[bits of x[i]]`` with the CPU op's 256-entry table, held in the output's type.
* ``average_pool`` (QLinearAveragePool): one thread per output, the CPU kernel's exact int64
  window sum of ``x - zx`` and ``saturate(rint(float64(sum) * ratio / count) + zy)``.
* ``global_average`` (QLinearGlobalAveragePool): one block per row, an exact int64 sum of
  ``x - zx`` as a shared-memory tree, then ``saturate(rint(float64(sum) * mult) + zy)``.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import config
from . import device as dev
from .elementwise import rint_function

_rint32 = rint_function(np.float32)
_rint64 = rint_function(np.float64)


@cuda.jit(device=True)
def _saturate(v, lo, hi):
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


@dev.kernel_factory
def _qbinary(multiply):
    @cuda.jit
    def kernel(a, b, out, n, ndim, dims, sa, sb, za, zb, ra, rb, zc, lo, hi):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            rem = i
            ia = 0
            ib = 0
            for d in range(ndim - 1, -1, -1):
                size = dims[d]
                q = rem // size
                idx = rem - q * size
                rem = q
                ia += idx * sa[d]
                ib += idx * sb[d]
            x = np.int32(a[ia]) - za
            y = np.int32(b[ib]) - zb
            if multiply != 0:
                v = np.float32(np.float32(x * y) * ra)
            else:
                v = np.float32(np.float32(x) * ra + np.float32(y) * rb)
            out[i] = np.int32(_saturate(_rint32(v) + zc, lo, hi))
            i += step

    return kernel


def _binary(multiply, a, b, out, za, zb, ra, rb, zc, lo, hi):
    n = out.size
    if n == 0:
        return out
    ndim, dims, (sa, sb) = dev.merge_dims(out.shape, [dev.broadcast_strides(out.shape, a.shape),
                                                      dev.broadcast_strides(out.shape, b.shape)])
    dev.launch(_qbinary(int(multiply)), dev.blocks_for(n), config.THREADS, dev.flat(a), dev.flat(b), dev.flat(out),
               n, ndim, dims, sa, sb, np.int32(za), np.int32(zb), np.float32(ra), np.float32(rb), np.float32(zc),
               np.float32(lo), np.float32(hi))
    return out


def qadd(a, b, out, za, zb, ratio_a, ratio_b, zc, qmin, qmax):
    return _binary(False, a, b, out, za, zb, ratio_a, ratio_b, zc, qmin, qmax)


def qmul(a, b, out, za, zb, ratio, zc, qmin, qmax):
    return _binary(True, a, b, out, za, zb, ratio, 0.0, zc, qmin, qmax)


@dev.kernel_factory
def _global_average(threads):
    @cuda.jit
    def kernel(x, out, rows, length, inner, zx, mult, zy, lo, hi):
        # x viewed as (outer, length, inner); row r = (o, c) reduces over the middle axis.
        partial = cuda.shared.array(threads, np.int64)
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        o = r // inner
        c = r - o * inner
        base = o * length * inner + c
        s = np.int64(0)
        for j in range(t, length, threads):
            s += np.int64(x[base + j * inner]) - zx
        partial[t] = s
        cuda.syncthreads()
        width = threads // 2
        while width > 0:
            if t < width:
                partial[t] += partial[t + width]
            cuda.syncthreads()
            width //= 2
        if t == 0:
            v = _saturate(_rint64(np.float64(partial[0]) * mult) + zy, lo, hi)
            out[r] = np.int32(v)

    return kernel


def global_average(x, out, outer, length, inner, zx, mult, zy, qmin, qmax):
    """Requantized mean over the middle axis of ``x`` (outer, length, inner) into ``out`` (outer * inner)."""
    rows = outer * inner
    if rows:
        threads = config.REDUCE_THREADS
        dev.launch(_global_average(threads), rows, threads, dev.flat(x), dev.flat(out), int(rows), int(length),
                   int(inner), np.int64(zx), float(mult), float(zy), float(qmin), float(qmax))
    return out


@dev.kernel_factory
def _apply_table():
    @cuda.jit
    def kernel(x, table, out, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            out[i] = table[np.int32(x[i]) & 255]
            i += step

    return kernel


def apply_table(x, table, out):
    """``out[i] = table[x[i] & 255]``: ``x`` 8-bit, ``table`` 256 entries of ``out``'s type (the CPU
    table's bit patterns viewed as int8 for int8 outputs)."""
    n = out.size
    if n:
        dev.launch(_apply_table(), dev.blocks_for(n), config.THREADS, dev.flat(x), table, dev.flat(out), n)
    return out


@dev.kernel_factory
def _average_pool():
    @cuda.jit
    def kernel(x, out, n, dims, geom, zx, ratio, zy, lo, hi):
        # dims: (D, H, W, OD, OH, OW); geom: kernel, strides, pads begin, pads end (3 each), count_include_pad
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        D, H, W, OD, OH, OW = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]
        while i < n:
            ow = i % OW
            rest = i // OW
            oh = rest % OH
            rest //= OH
            od = rest % OD
            c = rest // OD
            d0 = od * geom[3] - geom[6]
            h0 = oh * geom[4] - geom[7]
            w0 = ow * geom[5] - geom[8]
            s = np.int64(0)
            count = 0
            for d in range(max(d0, 0), min(d0 + geom[0], D)):
                for h in range(max(h0, 0), min(h0 + geom[1], H)):
                    for w in range(max(w0, 0), min(w0 + geom[2], W)):
                        s += np.int64(x[((c * D + d) * H + h) * W + w]) - zx
                        count += 1
            if geom[12] != 0:
                count = ((min(d0 + geom[0], D + geom[9]) - max(d0, -geom[6]))
                         * (min(h0 + geom[1], H + geom[10]) - max(h0, -geom[7]))
                         * (min(w0 + geom[2], W + geom[11]) - max(w0, -geom[8])))
            if count <= 0:
                v = zy
            else:
                v = _rint64(np.float64(s) * ratio / np.float64(count)) + zy
            out[i] = np.int32(_saturate(v, lo, hi))
            i += step

    return kernel


def average_pool(x, zx, kernel, strides, pads_begin, pads_end, out_shape, count_include_pad, ratio, zy, qmin, qmax,
                 out):
    """Requantized AveragePool of ``x`` (NC, D, H, W) into ``out`` (NC, OD, OH, OW): the CPU kernel's
    arithmetic (``ratio = x_scale / y_scale`` in float64)."""
    n = out.size
    if n:
        dims = tuple(int(v) for v in tuple(x.shape[1:]) + tuple(out_shape))
        geom = tuple(int(v) for v in list(kernel) + list(strides) + list(pads_begin) + list(pads_end)
                     + [int(bool(count_include_pad))])
        dev.launch(_average_pool(), dev.blocks_for(n), config.THREADS, dev.flat(x), dev.flat(out), n, dims, geom,
                   np.int64(zx), float(ratio), float(zy), float(qmin), float(qmax))
    return out
