"""Layer and RMS normalization on the device: the CUDA twin of :mod:`qrt.kernels.cpu.transformer`.

``normalize_rows`` gives each row of ``x`` (rows, n) one block of :data:`.config.REDUCE_THREADS`
threads: the mean (unless ``rms``), then the mean of squared deviations, each a float64 tree in
shared memory, then ``y = (x - mean) * inv_std * scale + bias`` with ``scale``/``bias`` of shape
(1 | rows, n). Mean and 1 / std land in (rows,) arrays for the optional outputs.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import config
from . import device as dev


@cuda.jit(device=True)
def _block_sum(partial, t, threads, value):
    partial[t] = value
    cuda.syncthreads()
    width = threads // 2
    while width > 0:
        if t < width:
            partial[t] += partial[t + width]
        cuda.syncthreads()
        width //= 2
    total = partial[0]
    cuda.syncthreads()
    return total


@dev.kernel_factory
def _normalize(threads, ftype):
    ft = np.dtype(ftype).type

    @cuda.jit
    def kernel(x, scale, scale_rows, bias, bias_rows, has_bias, epsilon, rms, y, mean_out, inv_out, n):
        partial = cuda.shared.array(threads, np.float64)
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        base = r * n
        mean = 0.0
        if rms == 0:
            s = 0.0
            for j in range(t, n, threads):
                s += np.float64(x[base + j])
            mean = _block_sum(partial, t, threads, s) / n
        sq = 0.0
        for j in range(t, n, threads):
            d = np.float64(x[base + j]) - mean
            sq += d * d
        variance = _block_sum(partial, t, threads, sq) / n
        inv = 1.0 / math.sqrt(variance + epsilon)
        mean_f = ft(mean)
        inv_f = ft(inv)
        s_base = r * n if scale_rows > 1 else 0
        b_base = r * n if bias_rows > 1 else 0
        for j in range(t, n, threads):
            v = (x[base + j] - mean_f) * inv_f * scale[s_base + j]
            if has_bias != 0:
                v += bias[b_base + j]
            y[base + j] = v
        if t == 0:
            mean_out[r] = mean_f
            inv_out[r] = inv_f

    return kernel


def normalize_rows(x, scale, bias, has_bias, epsilon, rms, y, mean, inv_std):
    rows, n = x.shape
    kind = np.dtype(x.dtype)
    if kind.name not in ("float32", "float64"):
        raise dev.Unsupported(f"device normalization of {kind}")
    if rows and n:
        threads = config.REDUCE_THREADS
        dev.launch(_normalize(threads, kind.name), rows, threads, dev.flat(x), dev.flat(scale), int(scale.shape[0]),
                   dev.flat(bias), int(bias.shape[0]), int(bool(has_bias)), float(epsilon), int(bool(rms)),
                   dev.flat(y), dev.flat(mean), dev.flat(inv_std), int(n))
    return y
