"""Softmax and LogSoftmax on the device: the CUDA twin of :mod:`qrt.kernels.cpu.softmax`.

Layout ``(outer, n, inner)``: each of the ``outer * inner`` rows (stride ``inner`` along ``n``) is
reduced by one block of :data:`.config.REDUCE_THREADS` threads: the row maximum, then the sum of
``exp(x - max)`` (accumulated in float64), both as shared-memory trees, then one pass writing
``exp(x - max) / sum`` (or ``x - max - log(sum)``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import config
from . import device as dev


@dev.kernel_factory
def _softmax(threads, ftype):
    ft = np.dtype(ftype).type

    @cuda.jit
    def kernel(x, out, n, inner, log):
        partial = cuda.shared.array(threads, np.float64)
        row = cuda.blockIdx.x
        t = cuda.threadIdx.x
        base = (row // inner) * n * inner + row % inner
        m = -math.inf
        for j in range(t, n, threads):
            v = np.float64(x[base + j * inner])
            if v > m:
                m = v
        partial[t] = m
        cuda.syncthreads()
        width = threads // 2
        while width > 0:
            if t < width and partial[t + width] > partial[t]:
                partial[t] = partial[t + width]
            cuda.syncthreads()
            width //= 2
        row_max = ft(partial[0])
        cuda.syncthreads()
        total = 0.0
        for j in range(t, n, threads):
            total += np.float64(math.exp(x[base + j * inner] - row_max))
        partial[t] = total
        cuda.syncthreads()
        width = threads // 2
        while width > 0:
            if t < width:
                partial[t] += partial[t + width]
            cuda.syncthreads()
            width //= 2
        row_sum = partial[0]
        if log != 0:
            log_sum = ft(math.log(row_sum))
            for j in range(t, n, threads):
                out[base + j * inner] = (x[base + j * inner] - row_max) - log_sum
        else:
            inv = ft(1.0 / row_sum)
            for j in range(t, n, threads):
                out[base + j * inner] = ft(math.exp(x[base + j * inner] - row_max)) * inv

    return kernel


def softmax_strided(x, out, log):
    """Softmax over axis 1 of ``x`` (outer, n, inner) into ``out`` of the same shape."""
    outer, n, inner = x.shape
    kind = np.dtype(x.dtype)
    if kind.name not in ("float32", "float64"):
        raise dev.Unsupported(f"device Softmax of {kind}")
    rows = outer * inner
    if rows and n:
        threads = config.REDUCE_THREADS
        dev.launch(_softmax(threads, kind.name), rows, threads, dev.flat(x), dev.flat(out), int(n), int(inner),
                   int(bool(log)))
    return out


def softmax_rows(x, out, log):
    return softmax_strided(x.reshape(x.shape[0], x.shape[1], 1), out.reshape(out.shape[0], out.shape[1], 1), log)
