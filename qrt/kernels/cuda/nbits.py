"""MatMulNBits on the device: the CUDA twin of :mod:`qrt.kernels.cpu.nbits` (``matmul_nbits``).

One thread per output element (grid-stride over ``M * N``) reads its column's packed codes and
dequantizes them on the fly, ``q * scale - zero * scale``, so the float weight is never
materialised. The weights are the CPU op's, uploaded once per session, in the CPU kernels' panel
layout (:func:`qrt.kernels.cpu.nbits.tile_weights`): ``codes[n // NC, blk, byte, n % NC]``, ``scale``
and ``zero_scale`` ``[n // NC, blk, n % NC]``. Codes are widened to int32 before shifting (the
simulator would otherwise shift uint8 with numpy's rules).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import config
from . import device as dev


@dev.plain_kernel
def _matmul_nbits(a, codes, scale, zero_scale, bias, out, bits, block_size, K):
    M, N = out.shape
    nc = codes.shape[3]
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    for index in range(cuda.grid(1), M * N, cuda.gridsize(1)):
        m = index // N
        n = index % N
        t = n // nc
        c = n % nc
        acc = np.float32(0.0)
        for k in range(K):
            blk = k // block_size
            kk = k % block_size
            byte = np.int32(codes[t, blk, kk // per_byte, c])
            q = (byte >> ((kk % per_byte) * bits)) & mask
            acc += (np.float32(q) * scale[t, blk, c] - zero_scale[t, blk, c]) * a[m, k]
        out[m, n] = acc + bias[n]


def matmul_nbits(a, codes, scale, zero_scale, bias, out, bits, block_size, K):
    """``out [M, N] = a [M, K] @ dequantized B + bias``, all device arrays."""
    total = out.shape[0] * out.shape[1]
    dev.launch(_matmul_nbits, dev.blocks_for(total), config.THREADS, a, codes, scale, zero_scale, bias, out,
               int(bits), int(block_size), int(K))
    return out
