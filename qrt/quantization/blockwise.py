"""Blockwise low-bit weight quantization: the RTN grid, GPTQ and HQQ, and MatMulNBits packing.

A weight ``W`` of a MatMul is ``[K, N]``; it is quantized per column ``n`` in blocks of
``block_size`` consecutive ``k`` (the layout of com.microsoft ``MatMulNBits``). Every algorithm
returns ``(codes [N, K_padded] uint8, scale [N, k_blocks] float32, zero [N, k_blocks])`` with
``W[k, n] ~= (codes[n, k] - zero[n, k // block_size]) * scale[n, k // block_size]``.

* **RTN grid** (:func:`block_grid`), the one onnxruntime's ``MatMulNBitsQuantizer`` uses, so RTN
  output is comparable: asymmetric blocks span ``[min(w, 0), max(w, 0)]`` with an integer zero
  point; symmetric blocks use ``scale = w_absmax_signed / -2**(bits-1)`` (the scale may be negative:
  the value of largest magnitude lands exactly on the code ``0``) and the implicit zero point
  ``2**(bits-1)``.
* **GPTQ** (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
  Pre-trained Transformers"): quantizes ``k`` one at a time and moves each rounding error onto the
  not-yet-quantized ``k`` along the inverse Hessian ``H = X^T X`` of the layer's calibration inputs
  (upper Cholesky factor of ``H^-1``, dampened by ``damp * mean(diag H)``), with lazy batched
  updates every ``LAZY_COLUMNS``; block grids are fixed from the updated weights when a block starts.
* **HQQ** (Badri & Shaji, 2023, "Half-Quadratic Quantization of Large Machine Learning Models"):
  no data; per block, alternates rounding with a shrinkage (l_p, p = 0.7) step on the error and a
  closed-form update of a float zero point, which MatMulNBits takes as a float ``zero_points``.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
from numba import njit

# Columns of k between GPTQ's batched updates of the remaining weights (a multiple of the block).
LAZY_COLUMNS = 128
# HQQ's solver parameters (the paper's defaults, as in its reference implementation).
HQQ_LP_NORM, HQQ_BETA, HQQ_KAPPA, HQQ_ITERATIONS = 0.7, 10.0, 1.01, 20


@njit(cache=True)
def _grid_of(values, maxq, symmetric):
    """(scale, zero) of one block of values on the RTN grid."""
    if symmetric:
        signed_max = values[0]
        for v in values:
            if abs(v) > abs(signed_max):
                signed_max = v
        half = (maxq + 1) // 2
        return signed_max / -half, np.float64(half)
    lo = min(values.min(), 0.0)
    hi = max(values.max(), 0.0)
    scale = (hi - lo) / maxq
    if scale == 0.0:
        return 0.0, np.float64((maxq + 1) // 2)
    return scale, min(max(np.rint(-lo / scale), 0.0), np.float64(maxq))


@njit(cache=True, inline="always")
def _code_of(w, scale, zero, maxq):
    if scale == 0.0:
        return zero
    return min(max(np.rint(w / scale) + zero, 0.0), np.float64(maxq))


@njit(cache=True)
def rtn(w_t, block_size, bits, symmetric):
    """Round to nearest on the block grid; ``w_t`` is the weight transposed, ``[N, K]`` float64."""
    N, K = w_t.shape
    maxq = (1 << bits) - 1
    k_blocks = (K + block_size - 1) // block_size
    codes = np.zeros((N, k_blocks * block_size), np.uint8)
    scale = np.zeros((N, k_blocks), np.float64)
    zero = np.zeros((N, k_blocks), np.float64)
    for n in range(N):
        for blk in range(k_blocks):
            k0 = blk * block_size
            k1 = min(K, k0 + block_size)
            s, z = _grid_of(w_t[n, k0:k1], maxq, symmetric)
            scale[n, blk] = s
            zero[n, blk] = z
            for k in range(k0, k1):
                codes[n, k] = np.uint8(_code_of(w_t[n, k], s, z, maxq))
    return codes, scale, zero


@njit(cache=True)
def gptq(w_t, hinv, block_size, bits, symmetric):
    """GPTQ on ``w_t`` ``[N, K]`` (float64, updated in place) with ``hinv`` the upper Cholesky factor of
    the dampened inverse Hessian ``[K, K]``."""
    N, K = w_t.shape
    maxq = (1 << bits) - 1
    k_blocks = (K + block_size - 1) // block_size
    codes = np.zeros((N, k_blocks * block_size), np.uint8)
    scale = np.zeros((N, k_blocks), np.float64)
    zero = np.zeros((N, k_blocks), np.float64)
    lazy = max(LAZY_COLUMNS // block_size, 1) * block_size
    for i1 in range(0, K, lazy):
        i2 = min(K, i1 + lazy)
        err = np.zeros((N, i2 - i1))
        for i in range(i1, i2):
            blk = i // block_size
            if i % block_size == 0:
                for n in range(N):
                    s, z = _grid_of(w_t[n, i:min(K, i + block_size)], maxq, symmetric)
                    scale[n, blk] = s
                    zero[n, blk] = z
            d = hinv[i, i]
            for n in range(N):
                w = w_t[n, i]
                q = _code_of(w, scale[n, blk], zero[n, blk], maxq)
                codes[n, i] = np.uint8(q)
                e = (w - (q - zero[n, blk]) * scale[n, blk]) / d
                err[n, i - i1] = e
                for j in range(i + 1, i2):
                    w_t[n, j] -= e * hinv[i, j]
        if i2 < K:
            w_t[:, i2:] -= np.dot(err, np.ascontiguousarray(hinv[i1:i2, i2:]))
    return codes, scale, zero


def gptq_inverse_hessian(hessian, damp=0.01):
    """Upper Cholesky factor ``R`` of the dampened ``H^-1 = R^T R``, and the k whose inputs were always zero.

    With ``P`` the reversal of k, ``P H P = L L^T`` gives ``H^-1 = (P L^-1 P)^T (P L^-1 P)`` and
    ``P L^-1 P`` is upper triangular: one Cholesky and one triangular inverse, no full inverse.
    """
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    lower = np.linalg.cholesky(h[::-1, ::-1])
    lower_inv, info = scipy.linalg.lapack.dtrtri(lower, lower=1)
    if info:
        raise np.linalg.LinAlgError(f"triangular inverse failed (info {info})")
    return np.ascontiguousarray(lower_inv[::-1, ::-1]), dead


def gptq_quantize(w, hessian, block_size, bits, symmetric, damp=0.01, hinv=None):
    """GPTQ of a MatMul weight ``w`` ``[K, N]`` with the Hessian ``X^T X`` of its inputs (or its
    :func:`gptq_inverse_hessian` when several weights share one input)."""
    hinv, dead = gptq_inverse_hessian(hessian, damp) if hinv is None else hinv
    w_t = np.ascontiguousarray(w.T, dtype=np.float64)
    w_t[:, dead] = 0.0
    return gptq(w_t, hinv, block_size, bits, symmetric)


def hqq_quantize(w, block_size, bits):
    """HQQ of ``w`` ``[K, N]``: codes, scale and a float zero point per block."""
    K, N = w.shape
    maxq = float((1 << bits) - 1)
    k_blocks = -(-K // block_size)
    w_t = np.zeros((N, k_blocks * block_size), np.float32)
    w_t[:, :K] = w.T
    groups = w_t.reshape(-1, block_size)
    lo = groups.min(axis=1, keepdims=True)
    spread = groups.max(axis=1, keepdims=True) - lo
    spread[spread == 0] = maxq
    inv_scale = np.minimum(maxq / spread, 2e4)
    zero = np.rint(-lo * inv_scale)
    beta, best, best_zero = HQQ_BETA, np.inf, zero
    for _ in range(HQQ_ITERATIONS):
        q = np.clip(np.rint(groups * inv_scale + zero), 0, maxq)
        error = groups - (q - zero) / inv_scale
        mean_error = float(np.abs(error).mean())
        if mean_error >= best:
            break
        best, best_zero = mean_error, zero
        shrunk = np.sign(error) * np.maximum(
            np.abs(error) - (1.0 / beta) * np.power(np.abs(error) + 1e-8, HQQ_LP_NORM - 1), 0)
        zero = np.mean(q - (groups - shrunk) * inv_scale, axis=1, keepdims=True)
        beta *= HQQ_KAPPA
    zero = best_zero
    codes = np.clip(np.rint(groups * inv_scale + zero), 0, maxq).astype(np.uint8)
    return (codes.reshape(N, -1), (1.0 / inv_scale).reshape(N, k_blocks), zero.reshape(N, k_blocks))


def pack_codes(codes, bits, block_size):
    """codes ``[N, k_blocks * block_size]`` -> MatMulNBits ``B``: uint8 ``[N, k_blocks, block_size * bits / 8]``."""
    per_byte = 8 // bits
    N = codes.shape[0]
    grouped = codes.reshape(N, -1, per_byte).astype(np.uint8)
    packed = np.zeros(grouped.shape[:2], np.uint8)
    for i in range(per_byte):
        packed |= grouped[:, :, i] << np.uint8(bits * i)
    return packed.reshape(N, -1, block_size * bits // 8)


def pack_zero_points(zero, bits):
    """Integer zero points ``[N, k_blocks]`` -> MatMulNBits' packed uint8 ``[N * ceil(k_blocks * bits / 8)]``."""
    per_byte = 8 // bits
    N, k_blocks = zero.shape
    padded = np.zeros((N, -(-k_blocks // per_byte) * per_byte), np.uint8)
    padded[:, :k_blocks] = zero.astype(np.uint8)
    return pack_codes(padded, bits, padded.shape[1]).reshape(-1)


def dequantize(codes, scale, zero, block_size, K):
    """The float ``[K, N]`` weight the codes stand for (tests and reports)."""
    zero_k = np.repeat(zero, block_size, axis=1)[:, :codes.shape[1]]
    scale_k = np.repeat(scale, block_size, axis=1)[:, :codes.shape[1]]
    return ((codes.astype(np.float32) - zero_k) * scale_k)[:, :K].T
