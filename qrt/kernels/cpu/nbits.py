"""Blockwise low-bit weights: com.microsoft ``MatMulNBits`` and ``GatherBlockQuantized`` on the CPU.

``MatMulNBits`` stores ``B`` transposed and packed: ``b[n, blk, byte]`` holds ``8 // bits`` codes of
column ``n``, block ``blk``, lowest bits first; code ``k`` of the column dequantizes to
``(q - zero[n, blk]) * scale[n, blk]`` with ``blk = k // block_size``. The op prepares ``scale`` and
``zero`` as float32 ``[N, k_blocks]`` (packed uint8 zero points unpacked once at plan time) so every
kernel reads one layout. The float weight is never materialised:

* few rows (batch-1 decoding, small batches): :func:`matmul_nbits_rows` streams the packed bytes
  once, parallel over column tiles, and folds the zero point out of the inner loop,
  ``y[m, n] = sum_blk scale * (sum_k q_k a[m, k] - zero * sum_k a[m, k])``; A is first copied into
  the order of the packed bit fields (:func:`_split_rows`) so the inner loop reads codes and
  activations at unit stride and vectorizes; it runs at the speed of reading ``B``;
* many rows: :func:`matmul_nbits_panels` dequantizes ``PANEL`` columns at a time (``PANEL x K``
  floats, L2-resident) per task and multiplies them with single-threaded BLAS (``np.dot``),
  parallel over panels;
* ``accuracy_level=4`` (few rows): :func:`matmul_nbits_rows_int8` quantizes each block of A to
  int8 (symmetric, ``amax / 127``, round half to even) and accumulates exact int32 products of
  codes and int8 activations per block, as onnxruntime's ``CompInt8`` path does. It is plain Numba
  integer arithmetic, which LLVM vectorizes; qrt's VNNI micro-kernel (:mod:`qgemm`) sums over all
  of K, not per block, so it does not serve here.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Output columns per task of the streaming kernels, and per dequantized panel of the BLAS kernel.
COLUMN_TILE = 16
PANEL = 64
_FAST = {"reassoc", "contract", "nsz"}


@njit(cache=True)
def _split_rows(a, K, block_size, k_blocks, per_byte, dtype):
    """``[M, k_blocks, per_byte, blob]`` copy of A in the order of the packed codes: ``[m, blk, j, i]``
    is ``a[m, blk * block_size + i * per_byte + j]``, the activation that meets bit field ``j`` of
    byte ``i``; so the dot products read bytes and activations at unit stride (zeros pad K)."""
    M = a.shape[0]
    blob = block_size // per_byte
    split = np.zeros((M, k_blocks, per_byte, blob), dtype)
    for m in range(M):
        for k in range(K):
            kk = k % block_size
            split[m, k // block_size, kk % per_byte, kk // per_byte] = a[m, k]
    return split


@njit(cache=True)
def _block_sums(a, K, block_size, k_blocks, dtype):
    M = a.shape[0]
    sums = np.zeros((M, k_blocks), dtype)
    for m in range(M):
        for k in range(K):
            sums[m, k // block_size] += a[m, k]
    return sums


@njit(cache=True, parallel=True, fastmath=_FAST)
def matmul_nbits_rows(a, b, scale, zero, bits, block_size, K, bias, out):
    M = a.shape[0]
    N = out.shape[1]
    k_blocks, blob = b.shape[1], b.shape[2]
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    split = _split_rows(a, K, block_size, k_blocks, per_byte, np.float32)
    a_sums = _block_sums(a, K, block_size, k_blocks, np.float32)
    tiles = (N + COLUMN_TILE - 1) // COLUMN_TILE
    for t in prange(tiles):
        for n in range(t * COLUMN_TILE, min(N, (t + 1) * COLUMN_TILE)):
            for m in range(M):
                acc = np.float32(0.0)
                for blk in range(k_blocks):
                    dot = np.float32(0.0)
                    if bits == 4:  # one loop, one reduction per block
                        for i in range(blob):
                            byte = np.int32(b[n, blk, i])
                            dot += (np.float32(byte & 15) * split[m, blk, 0, i]
                                    + np.float32(byte >> 4) * split[m, blk, 1, i])
                    else:
                        for j in range(per_byte):
                            shift = j * bits
                            for i in range(blob):
                                dot += np.float32((np.int32(b[n, blk, i]) >> shift) & mask) * split[m, blk, j, i]
                    acc += scale[n, blk] * (dot - zero[n, blk] * a_sums[m, blk])
                out[m, n] = acc + bias[n]


@njit(cache=True, fastmath=_FAST)
def _dequantize_columns(b, scale, zero, bits, n0, cols, panel):
    """panel[j] = dequantized column n0 + j of B, k in the order of :func:`_split_rows` (bit field
    by bit field within each block, so reads and writes are contiguous), padded blocks included."""
    k_blocks, blob = b.shape[1], b.shape[2]
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    for j in range(cols):
        n = n0 + j
        for blk in range(k_blocks):
            s = scale[n, blk]
            zs = zero[n, blk] * s
            for f in range(per_byte):
                base = (blk * per_byte + f) * blob
                shift = f * bits
                for i in range(blob):
                    panel[j, base + i] = np.float32((np.int32(b[n, blk, i]) >> shift) & mask) * s - zs


@njit(cache=True, parallel=True)
def matmul_nbits_panels(a, b, scale, zero, bits, block_size, K, bias, out):
    M = a.shape[0]
    N = out.shape[1]
    k_blocks = b.shape[1]
    per_byte = 8 // bits
    # A in the panels' k order; its zeros on padded k cancel whatever codes pad the last block
    split = _split_rows(a, K, block_size, k_blocks, per_byte, np.float32).reshape(M, k_blocks * block_size)
    tiles = (N + PANEL - 1) // PANEL
    for t in prange(tiles):
        n0 = t * PANEL
        cols = min(PANEL, N - n0)
        panel = np.zeros((PANEL, k_blocks * block_size), np.float32)
        _dequantize_columns(b, scale, zero, bits, n0, cols, panel)
        tile = np.empty((M, PANEL), np.float32)
        np.dot(split, panel.T, tile)
        for m in range(M):
            for j in range(cols):
                out[m, n0 + j] = tile[m, j] + bias[n0 + j]


@njit(cache=True)
def quantize_rows_int8(a, K, block_size, k_blocks):
    """Per-block symmetric int8 activations ``[M, k_blocks * block_size]`` (zeros pad K), their scales
    ``amax / 127`` and code sums."""
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
            scales[m, blk] = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
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
    k_blocks, blob = b.shape[1], b.shape[2]
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    codes, a_scale, a_sums = quantize_rows_int8(a, K, block_size, k_blocks)
    split = _split_rows(codes, k_blocks * block_size, block_size, k_blocks, per_byte, np.int32)
    tiles = (N + COLUMN_TILE - 1) // COLUMN_TILE
    for t in prange(tiles):
        for n in range(t * COLUMN_TILE, min(N, (t + 1) * COLUMN_TILE)):
            for m in range(M):
                acc = np.float32(0.0)
                for blk in range(k_blocks):
                    dot = 0  # exact: |sum| <= block_size * 255 * 128
                    if bits == 4:
                        for i in range(blob):
                            byte = np.int32(b[n, blk, i])
                            dot += (byte & 15) * split[m, blk, 0, i] + (byte >> 4) * split[m, blk, 1, i]
                    else:
                        for j in range(per_byte):
                            shift = j * bits
                            for i in range(blob):
                                dot += ((np.int32(b[n, blk, i]) >> shift) & mask) * split[m, blk, j, i]
                    centered = np.float32(dot) - zero[n, blk] * np.float32(a_sums[m, blk])
                    acc += scale[n, blk] * a_scale[m, blk] * centered
                out[m, n] = acc + bias[n]


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
