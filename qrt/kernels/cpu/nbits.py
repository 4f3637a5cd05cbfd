"""Blockwise low-bit weights: com.microsoft ``MatMulNBits`` and ``GatherBlockQuantized`` on the CPU.

``MatMulNBits`` stores ``B`` transposed and packed: ``b[n, blk, byte]`` holds ``8 // bits`` codes of
column ``n``, block ``blk``, lowest bits first; code ``k`` of the column dequantizes to
``(q - zero[n, blk]) * scale[n, blk]`` with ``blk = k // block_size``. The op prepares ``scale`` and
``zero`` as float32 ``[N, k_blocks]`` (packed uint8 zero points unpacked once at plan time) so every
kernel reads one layout. The float weight is never materialised:

* few rows (batch-1 decoding, small batches): :func:`matmul_nbits_rows` streams the packed bytes
  once, parallel over column tiles, and folds the zero point out of the inner loop,
  ``y[m, n] = sum_blk scale * (sum_k q_k a[m, k] - zero * sum_k a[m, k])``; the inner loop reads
  nibbles and A only, so it runs at the speed of reading ``B`` (half a byte per weight);
* many rows: :func:`matmul_nbits_panels` dequantizes one tile of ``PANEL`` columns (``K x PANEL``
  floats, L2-resident) per task and multiplies it with single-threaded BLAS (``np.dot``), parallel
  over tiles;
* ``accuracy_level=4`` (few rows): :func:`matmul_nbits_rows_int8` quantizes each block of A to
  int8 (symmetric, ``amax / 127``, round half to even) and accumulates exact int32 products of
  codes and int8 activations per block, as onnxruntime's ``CompInt8`` path does.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Output columns per task of the streaming kernels, and per dequantized panel of the BLAS kernel.
COLUMN_TILE = 16
PANEL = 64


@njit(cache=True, inline="always")
def _code(b, n, blk, kk, bits):
    per_byte = 8 // bits
    byte = np.int32(b[n, blk, kk // per_byte])
    return (byte >> ((kk % per_byte) * bits)) & ((1 << bits) - 1)


@njit(cache=True)
def _block_sums(a, K, block_size, k_blocks):
    """sum_k a[m, k] over each block of K, float32 [M, k_blocks]."""
    M = a.shape[0]
    sums = np.zeros((M, k_blocks), np.float32)
    for m in range(M):
        for k in range(K):
            sums[m, k // block_size] += a[m, k]
    return sums


@njit(cache=True, parallel=True)
def matmul_nbits_rows(a, b, scale, zero, bits, block_size, K, bias, out):
    M = a.shape[0]
    N = out.shape[1]
    k_blocks = b.shape[1]
    a_sums = _block_sums(a, K, block_size, k_blocks)
    tiles = (N + COLUMN_TILE - 1) // COLUMN_TILE
    for t in prange(tiles):
        acc = np.zeros(M, np.float32)
        for n in range(t * COLUMN_TILE, min(N, (t + 1) * COLUMN_TILE)):
            acc[:] = 0.0
            for blk in range(k_blocks):
                k0 = blk * block_size
                width = min(block_size, K - k0)
                s = scale[n, blk]
                z = zero[n, blk]
                for m in range(M):
                    dot = np.float32(0.0)
                    if bits == 4:
                        for i in range(width // 2):
                            byte = np.int32(b[n, blk, i])
                            dot += np.float32(byte & 15) * a[m, k0 + 2 * i] + np.float32(byte >> 4) * a[m, k0 + 2 * i + 1]
                        if width % 2:
                            dot += np.float32(np.int32(b[n, blk, width // 2]) & 15) * a[m, k0 + width - 1]
                    else:
                        for kk in range(width):
                            dot += np.float32(_code(b, n, blk, kk, bits)) * a[m, k0 + kk]
                    acc[m] += s * (dot - z * a_sums[m, blk])
            for m in range(M):
                out[m, n] = acc[m] + bias[n]


@njit(cache=True)
def _dequantize_panel(b, scale, zero, bits, block_size, K, n0, cols, panel):
    """panel[k, j] = dequantized B[k, n0 + j] for j < cols, 0 beyond."""
    k_blocks = b.shape[1]
    for j in range(panel.shape[1]):
        if j >= cols:
            for k in range(K):
                panel[k, j] = 0.0
            continue
        n = n0 + j
        for blk in range(k_blocks):
            k0 = blk * block_size
            s = scale[n, blk]
            z = zero[n, blk]
            for kk in range(min(block_size, K - k0)):
                panel[k0 + kk, j] = (np.float32(_code(b, n, blk, kk, bits)) - z) * s


@njit(cache=True, parallel=True)
def matmul_nbits_panels(a, b, scale, zero, bits, block_size, K, bias, out):
    M = a.shape[0]
    N = out.shape[1]
    tiles = (N + PANEL - 1) // PANEL
    for t in prange(tiles):
        n0 = t * PANEL
        cols = min(PANEL, N - n0)
        panel = np.empty((K, PANEL), np.float32)
        _dequantize_panel(b, scale, zero, bits, block_size, K, n0, cols, panel)
        tile = np.empty((M, PANEL), np.float32)
        np.dot(a, panel, tile)
        for m in range(M):
            for j in range(cols):
                out[m, n0 + j] = tile[m, j] + bias[n0 + j]


@njit(cache=True)
def quantize_rows_int8(a, K, block_size, k_blocks):
    """Per-block symmetric int8 activations: (codes [M, k_blocks * block_size], scales, code sums)."""
    M = a.shape[0]
    codes = np.zeros((M, k_blocks * block_size), np.int8)
    scales = np.zeros((M, k_blocks), np.float32)
    sums = np.zeros((M, k_blocks), np.int32)
    for m in range(M):
        for blk in range(k_blocks):
            k0 = blk * block_size
            k1 = min(K, k0 + block_size)
            amax = np.float32(0.0)
            for k in range(k0, k1):
                amax = max(amax, abs(a[m, k]))
            s = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            scales[m, blk] = s
            total = 0
            for k in range(k0, k1):
                q = np.int32(np.rint(a[m, k] * inv))
                codes[m, k] = q
                total += q
            sums[m, blk] = total
    return codes, scales, sums


@njit(cache=True, parallel=True)
def matmul_nbits_rows_int8(a, b, scale, zero, bits, block_size, K, bias, out):
    M = a.shape[0]
    N = out.shape[1]
    k_blocks = b.shape[1]
    codes, a_scale, a_sums = quantize_rows_int8(a, K, block_size, k_blocks)
    tiles = (N + COLUMN_TILE - 1) // COLUMN_TILE
    for t in prange(tiles):
        acc = np.zeros(M, np.float32)
        for n in range(t * COLUMN_TILE, min(N, (t + 1) * COLUMN_TILE)):
            acc[:] = 0.0
            for blk in range(k_blocks):
                k0 = blk * block_size
                width = min(block_size, K - k0)
                s = scale[n, blk]
                z = zero[n, blk]
                for m in range(M):
                    dot = np.int32(0)
                    if bits == 4:
                        for i in range(width // 2):
                            byte = np.int32(b[n, blk, i])
                            dot += (byte & 15) * np.int32(codes[m, k0 + 2 * i]) + (byte >> 4) * np.int32(codes[m, k0 + 2 * i + 1])
                        if width % 2:
                            dot += (np.int32(b[n, blk, width // 2]) & 15) * np.int32(codes[m, k0 + width - 1])
                    else:
                        for kk in range(width):
                            dot += _code(b, n, blk, kk, bits) * np.int32(codes[m, k0 + kk])
                    acc[m] += s * a_scale[m, blk] * (np.float32(dot) - z * np.float32(a_sums[m, blk]))
            for m in range(M):
                out[m, n] = acc[m] + bias[n]


@njit(cache=True)
def unpack_zero_points(packed, N, k_blocks, bits):
    """Packed uint8 zero points ``[N, ceil(k_blocks * bits / 8)]`` (lowest bits first) as float32."""
    per_byte = 8 // bits
    row = packed.size // N
    zero = np.empty((N, k_blocks), np.float32)
    for n in range(N):
        for blk in range(k_blocks):
            byte = np.int32(packed[n * row + blk // per_byte])
            zero[n, blk] = (byte >> ((blk % per_byte) * bits)) & ((1 << bits) - 1)
    return zero


@njit(cache=True, parallel=True)
def gather_blocks(data, zero, scale, block_of, indices, out):
    """Rows ``data[:, indices]`` of a ``[outer, rows, inner]`` code array, dequantized.

    ``zero`` and ``scale`` are ``[outer, rows, inner_blocks]`` and ``block_of[c]`` is the block of
    inner position ``c``; ``indices`` are checked and non-negative; ``out`` is ``[outer,
    len(indices), inner]`` float32.
    """
    outer, n_idx, inner = out.shape
    for task in prange(outer * n_idx):
        o = task // n_idx
        i = task % n_idx
        r = indices[i]
        for c in range(inner):
            blk = block_of[c]
            out[o, i, c] = (np.float32(data[o, r, c]) - zero[o, r, blk]) * scale[o, r, blk]
