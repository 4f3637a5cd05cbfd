"""Pooling on the device: the CUDA twin of :mod:`qrt.kernels.cpu.pool`.

Windowed pools (``max_pool``, ``sum_pool``) run one thread per output on the canonical
``(planes, D, H, W)`` layout with the convolution's ``geom`` vector; taps in the padding are
skipped. MaxPool selects input values, so it runs on 8-bit data as is (the quantized CNN's
MaxPool on uint8). ``global_pool`` reduces each plane with one block of
:data:`.config.REDUCE_THREADS` threads (a strided partial sum per thread, then a tree in shared
memory), summing in float64 like the CPU kernel.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import config
from . import device as dev

MODE_AVERAGE = 0
MODE_LP = 1
GLOBAL_AVERAGE = 0
GLOBAL_MAX = 1
GLOBAL_LP = 2


@cuda.jit(device=True)
def _decompose(i, od, oh, ow):
    o = i % ow
    rest = i // ow
    b = rest % oh
    rest = rest // oh
    a = rest % od
    return rest // od, a, b, o


@cuda.jit(device=True)
def _tap_count(o, stride, pad_begin, pad_end, kernel, dilation, length, include_pad):
    lo = -pad_begin if include_pad != 0 else 0
    hi = length + pad_end if include_pad != 0 else length
    count = 0
    for t in range(kernel):
        z = o * stride - pad_begin + t * dilation
        if z >= lo and z < hi:
            count += 1
    return count


@dev.kernel_factory
def _max_pool():
    @cuda.jit
    def kernel(x, out, n, g, shape, lowest):
        # g: kD kH kW sD sH sW dD dH dW pD pH pW; shape: D H W OD OH OW
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        depth, height, width = shape[0], shape[1], shape[2]
        while i < n:
            q, a, b, o = _decompose(i, shape[3], shape[4], shape[5])
            best = lowest
            for ti in range(g[0]):
                zd = a * g[3] - g[9] + ti * g[6]
                if zd < 0 or zd >= depth:
                    continue
                for tj in range(g[1]):
                    zh = b * g[4] - g[10] + tj * g[7]
                    if zh < 0 or zh >= height:
                        continue
                    for tl in range(g[2]):
                        zw = o * g[5] - g[11] + tl * g[8]
                        if zw < 0 or zw >= width:
                            continue
                        v = x[((q * depth + zd) * height + zh) * width + zw]
                        if v > best:
                            best = v
            out[i] = best
            i += step

    return kernel


@dev.kernel_factory
def _average_pool():
    @cuda.jit
    def kernel(x, out, n, g, shape, ends, include_pad, zero):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        depth, height, width = shape[0], shape[1], shape[2]
        while i < n:
            q, a, b, o = _decompose(i, shape[3], shape[4], shape[5])
            total = zero
            for ti in range(g[0]):
                zd = a * g[3] - g[9] + ti * g[6]
                if zd < 0 or zd >= depth:
                    continue
                for tj in range(g[1]):
                    zh = b * g[4] - g[10] + tj * g[7]
                    if zh < 0 or zh >= height:
                        continue
                    for tl in range(g[2]):
                        zw = o * g[5] - g[11] + tl * g[8]
                        if zw >= 0 and zw < width:
                            total += x[((q * depth + zd) * height + zh) * width + zw]
            count = (_tap_count(a, g[3], g[9], ends[0], g[0], g[6], depth, include_pad)
                     * _tap_count(b, g[4], g[10], ends[1], g[1], g[7], height, include_pad)
                     * _tap_count(o, g[5], g[11], ends[2], g[2], g[8], width, include_pad))
            out[i] = total / count
            i += step

    return kernel


def _shapes(x, out):
    return (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]), int(out.shape[1]), int(out.shape[2]),
            int(out.shape[3]))


def max_pool(x, geom, out):
    n = out.size
    if n:
        kind = np.dtype(out.dtype)
        lowest = kind.type(-np.inf) if kind.kind == "f" else kind.type(np.iinfo(kind).min)
        dev.launch(_max_pool(), dev.blocks_for(n), config.THREADS, dev.flat(x), dev.flat(out), n,
                   tuple(int(v) for v in geom), _shapes(x, out), lowest)
    return out


def sum_pool(x, geom, pads_end, mode, p, count_include_pad, out):
    if mode != MODE_AVERAGE:
        raise dev.Unsupported("LpPool on the device")
    kind = np.dtype(out.dtype)
    if kind.name not in ("float32", "float64"):
        raise dev.Unsupported(f"AveragePool of {kind}")
    n = out.size
    if n:
        dev.launch(_average_pool(), dev.blocks_for(n), config.THREADS, dev.flat(x), dev.flat(out), n,
                   tuple(int(v) for v in geom), _shapes(x, out), tuple(int(v) for v in pads_end),
                   int(count_include_pad), kind.type(0))
    return out


@dev.kernel_factory
def _global_pool(threads):
    @cuda.jit
    def kernel(x, out, size, mode):
        partial = cuda.shared.array(threads, np.float64)
        q = cuda.blockIdx.x
        t = cuda.threadIdx.x
        base = q * size
        if mode == 1:
            acc = -math.inf
            for s in range(t, size, threads):
                v = np.float64(x[base + s])
                if v > acc:
                    acc = v
        else:
            acc = 0.0
            for s in range(t, size, threads):
                acc += np.float64(x[base + s])
        partial[t] = acc
        cuda.syncthreads()
        width = threads // 2
        while width > 0:
            if t < width:
                if mode == 1:
                    if partial[t + width] > partial[t]:
                        partial[t] = partial[t + width]
                else:
                    partial[t] += partial[t + width]
            cuda.syncthreads()
            width //= 2
        if t == 0:
            if mode == 1:
                out[q] = partial[0]
            else:
                out[q] = partial[0] / size

    return kernel


def global_pool(x, mode, p, out):
    """One value per row of ``x`` (planes, positions): mean (mode 0) or maximum (mode 1)."""
    if mode not in (GLOBAL_AVERAGE, GLOBAL_MAX):
        raise dev.Unsupported("GlobalLpPool on the device")
    planes, size = x.shape
    if planes:
        threads = config.REDUCE_THREADS
        dev.launch(_global_pool(threads), planes, threads, dev.flat(x), dev.flat(out), int(size), int(mode))
    return out
