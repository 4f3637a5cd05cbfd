"""Transformer kernels: layer/RMS normalization, fused attention, rotary embedding, dropout.

Every kernel takes contiguous arrays in a canonical layout (the op classes reshape to it), so one
compiled signature per float type serves every rank:

* normalization: x is (rows, n), normalized along n; scale/bias are (1 | rows, n).
* attention: q (B, Hq, Sq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv), masks (Bm, Hm, Sm, L) with size-1
  axes broadcast by index; outputs (B, Hq, Sq, Dv) and optionally the (B, Hq, Sq, T) score matrix.
  The two products go to BLAS; masking and softmax are fused in one Numba pass per score row.
* rotary: x (B, H, S, D) and cos/sin (B, S, D_rot / 2).

Reductions use the same fast-math flags as the softmax kernels (reassociation, no ``nnan``/``ninf``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import vmath
from .softmax import FASTMATH, ROUND_BFLOAT16, ROUND_NONE, round_to
from .vmath import fmax


# ---------------------------------------------------------------- layer / RMS normalization


@njit(cache=True, fastmath=FASTMATH)
def _normalize_row(x, scale, bias, has_bias, epsilon, rms, y):
    n = x.shape[0]
    zero = x.dtype.type(0.0)
    mean = zero
    if not rms:
        total = zero
        for i in range(n):
            total += x[i]
        mean = total / n
    squares = zero
    for i in range(n):
        d = x[i] - mean
        squares += d * d
    inv = x.dtype.type(1.0) / math.sqrt(squares / n + epsilon)
    if has_bias:
        for i in range(n):
            y[i] = (x[i] - mean) * inv * scale[i] + bias[i]
    else:
        for i in range(n):
            y[i] = (x[i] - mean) * inv * scale[i]
    return mean, inv


@njit(cache=True, fastmath=FASTMATH)
def normalize_rows(x, scale, bias, has_bias, epsilon, rms, y, mean, inv_std):
    """Layer (``rms`` False) or RMS normalization of each row; mean and 1/std land in (rows,) arrays."""
    rows = x.shape[0]
    for r in range(rows):
        s = scale[r] if scale.shape[0] > 1 else scale[0]
        b = bias[r] if bias.shape[0] > 1 else bias[0]
        mean[r], inv_std[r] = _normalize_row(x[r], s, b, has_bias, epsilon, rms, y[r])


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def normalize_rows_parallel(x, scale, bias, has_bias, epsilon, rms, y, mean, inv_std):
    rows = x.shape[0]
    for r in prange(rows):
        s = scale[r] if scale.shape[0] > 1 else scale[0]
        b = bias[r] if bias.shape[0] > 1 else bias[0]
        mean[r], inv_std[r] = _normalize_row(x[r], s, b, has_bias, epsilon, rms, y[r])


@njit(cache=True)
def _skip_sum_row(x, skip, bias, has_bias, total):
    # No fast-math: the sum rounds exactly as the Add nodes it replaces, bias first.
    if has_bias:
        for i in range(x.shape[0]):
            total[i] = (x[i] + bias[i]) + skip[i]
    else:
        for i in range(x.shape[0]):
            total[i] = x[i] + skip[i]


@njit(cache=True, fastmath=FASTMATH)
def skip_normalize_rows(x, skip, bias, has_bias, scale, beta, has_beta, epsilon, total, y, mean, inv_std):
    """SkipLayerNormalization of (rows, n) arrays: ``total`` = x (+ bias) + skip, then layer-normalized
    into ``y`` while the row is still in cache (``total`` may be ``y`` itself)."""
    for r in range(x.shape[0]):
        _skip_sum_row(x[r], skip[r], bias, has_bias, total[r])
        mean[r], inv_std[r] = _normalize_row(total[r], scale, beta, has_beta, epsilon, False, y[r])


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def skip_normalize_rows_parallel(x, skip, bias, has_bias, scale, beta, has_beta, epsilon, total, y, mean,
                                 inv_std):
    for r in prange(x.shape[0]):
        _skip_sum_row(x[r], skip[r], bias, has_bias, total[r])
        mean[r], inv_std[r] = _normalize_row(total[r], scale, beta, has_beta, epsilon, False, y[r])


# ---------------------------------------------------------------- attention

MASK_NONE = 0
MASK_BOOL = 1
MASK_FLOAT = 2

# Score rows held at once per head: bounds the (rows, keys) scratch to 4 MiB of float32.
SCORE_BLOCK_ELEMENTS = 1 << 20


@njit(cache=True)
def _round_span(values, rounding):
    for j in range(values.shape[0]):
        values[j] = round_to(values[j], rounding)


@njit(cache=True, fastmath=FASTMATH)
def _attention_row(row, position, softcap, mask_kind, bool_row, float_row, causal, left_window, right_window,
                   valid_keys, qk_mode, qk_row, rounding, softmax_rounding):
    """Turn one row of raw scores into attention probabilities, in place (0 for keys not attended).

    Keys a query can see form one interval [lo, hi) (causal frontier, window, padding, mask
    length); a boolean or additive mask then applies inside it. Loops run over views starting at
    index 0, so Numba emits no negative-index wraparound and LLVM vectorizes them.
    """
    total = row.shape[0]
    neg_inf = row.dtype.type(-np.inf)
    zero = row.dtype.type(0.0)
    if rounding != ROUND_NONE:
        _round_span(row, rounding)
    if softcap > 0:
        for j in range(total):
            row[j] = round_to(round_to(vmath.tanh(round_to(row[j] / softcap, rounding)), rounding) * softcap,
                              rounding)
    if qk_mode == 0 or qk_mode == 1:
        for j in range(total):
            qk_row[j] = row[j]

    lo = 0
    hi = min(total, valid_keys)
    if mask_kind == MASK_BOOL:
        hi = min(hi, bool_row.shape[0])
    elif mask_kind == MASK_FLOAT:
        hi = min(hi, float_row.shape[0])
    if causal:
        hi = min(hi, position + 1)
    if right_window >= 0:
        hi = min(hi, position + right_window + 1)
    if left_window >= 0:
        lo = max(lo, position - left_window)
    hi = max(hi, lo)
    visible = row[lo:hi]
    count = visible.shape[0]
    any_allowed = count > 0
    if mask_kind == MASK_BOOL:
        allowed = bool_row[lo:hi]
        any_allowed = False
        for t in range(count):
            if allowed[t]:
                any_allowed = True
            else:
                visible[t] = neg_inf
    elif mask_kind == MASK_FLOAT:
        added = float_row[lo:hi]
        any_allowed = False
        for t in range(count):
            any_allowed |= added[t] != neg_inf
            visible[t] = round_to(visible[t] + added[t], rounding)
    if qk_mode == 2:
        for j in range(total):
            qk_row[j] = neg_inf
        for t in range(count):
            qk_row[lo + t] = visible[t]
    for j in range(lo):
        row[j] = zero
    for j in range(hi, total):
        row[j] = zero
    if not any_allowed:
        # A query that may see no key gives a zero row (the spec's fully-masked-row rule).
        for t in range(count):
            visible[t] = zero
    else:
        peak = visible[0]
        for t in range(1, count):
            peak = fmax(peak, visible[t])
        denominator = zero
        if softmax_rounding == ROUND_NONE:
            for t in range(count):
                e = vmath.exp(visible[t] - peak)
                visible[t] = e
                denominator += e
        else:
            for t in range(count):
                visible[t] = round_to(vmath.exp(round_to(visible[t] - peak, softmax_rounding)), softmax_rounding)
            if softmax_rounding == ROUND_BFLOAT16:
                # bfloat16 sums accumulate in bfloat16, one rounding per addition.
                for t in range(count):
                    denominator = round_to(denominator + visible[t], softmax_rounding)
            else:
                for t in range(count):
                    denominator += visible[t]
                denominator = round_to(denominator, softmax_rounding)
        if softmax_rounding == ROUND_NONE and rounding == ROUND_NONE:
            inv_denominator = row.dtype.type(1.0) / denominator
            for t in range(count):
                visible[t] = visible[t] * inv_denominator
        else:
            for t in range(count):
                visible[t] = round_to(round_to(visible[t] / denominator, softmax_rounding), rounding)
    if qk_mode == 3:
        for j in range(total):
            qk_row[j] = row[j]


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def attention(q, k, v, sqrt_scale, softcap, mask_kind, bool_mask, float_mask, causal, offsets,
              left_window, right_window, valid_keys, qk_mode, qk_out, y, rounding, softmax_rounding, min_tasks):
    """Scaled dot-product attention: q (B, Hq, Sq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) -> y.

    Query head h reads key/value head ``h // (Hq // Hkv)`` (grouped-query attention). For each key
    head, the queries of all heads sharing it are stacked into one (group * Sq, D) matrix, so
    scores = Q K^T and Y = P V are BLAS products that read K and V once per group (a decode step
    is then one matrix product instead of ``group`` vector products); masking and the softmax run
    row by row in between. The (batch, key head, block of stacked rows) tasks run in parallel,
    with at least ``min_tasks`` of them when the rows allow; BLAS itself is single-threaded.

    ``offsets[b]`` is the absolute position of batch b's first query (keys cached before it),
    ``valid_keys[b]`` how many leading keys are not padding. ``rounding`` / ``softmax_rounding``
    name the narrower float type intermediate results are rounded to (``ROUND_*``); rounded data
    scales Q and K by sqrt(scale) each, as the spec writes it, others fold the whole scale into Q.
    """
    batch, q_heads, sq, depth = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    dv = v.shape[3]
    group = q_heads // kv_heads
    group_rows = group * sq
    heads = batch * kv_heads
    block = max(1, min(group_rows, SCORE_BLOCK_ELEMENTS // max(total, 1)))
    if heads < min_tasks:
        split = -(-min_tasks // heads)
        block = max(1, min(block, -(-group_rows // split)))
    blocks = -(-group_rows // block)
    keys_all = k
    if rounding != ROUND_NONE:
        keys_all = np.empty(k.shape, dtype=k.dtype)
        for item in prange(heads):
            b = item // kv_heads
            kh = item % kv_heads
            for j in range(total):
                for d in range(depth):
                    keys_all[b, kh, j, d] = round_to(k[b, kh, j, d] * sqrt_scale, rounding)
    q_factor = sqrt_scale if rounding != ROUND_NONE else sqrt_scale * sqrt_scale
    for task in prange(heads * blocks):
        b = task // (kv_heads * blocks)
        kh = (task // blocks) % kv_heads
        start = (task % blocks) * block
        rows = min(block, group_rows - start)
        keys = keys_all[b, kh]
        values = v[b, kh]
        first_head = kh * group
        block_queries = np.empty((rows, depth), dtype=y.dtype)
        block_scores = np.empty((rows, total), dtype=y.dtype)
        block_outputs = np.empty((rows, dv), dtype=y.dtype)
        for r in range(rows):
            h = first_head + (start + r) // sq
            i = (start + r) % sq
            for d in range(depth):
                block_queries[r, d] = round_to(q[b, h, i, d] * q_factor, rounding)
        if depth > 0 and total > 0:
            np.dot(block_queries, keys.T, block_scores)
        else:
            block_scores[:, :] = 0
        mb_bool = b if bool_mask.shape[0] > 1 else 0
        mb_float = b if float_mask.shape[0] > 1 else 0
        qk_b = b if qk_out.shape[0] > 1 else 0
        for r in range(rows):
            h = first_head + (start + r) // sq
            i = (start + r) % sq
            bool_head = bool_mask[mb_bool, h if bool_mask.shape[1] > 1 else 0]
            float_head = float_mask[mb_float, h if float_mask.shape[1] > 1 else 0]
            qk_head = qk_out[qk_b, h if qk_out.shape[1] > 1 else 0]
            _attention_row(block_scores[r], i + offsets[b], softcap, mask_kind,
                           bool_head[i if bool_head.shape[0] > 1 else 0],
                           float_head[i if float_head.shape[0] > 1 else 0], causal, left_window,
                           right_window, valid_keys[b], qk_mode, qk_head[i if qk_mode >= 0 else 0],
                           rounding, softmax_rounding)
        if total > 0 and dv > 0:
            np.dot(block_scores, values, block_outputs)
        else:
            block_outputs[:, :] = 0
        for r in range(rows):
            h = first_head + (start + r) // sq
            i = (start + r) % sq
            y[b, h, i, :] = block_outputs[r]


# ---------------------------------------------------------------- rotary embedding

@njit(cache=True)
def rotary(x, cos, sin, rotary_dim, interleaved, out):
    """Rotate the first ``rotary_dim`` features of each (b, h, s) vector; copy the rest."""
    batch, heads, seq, depth = x.shape
    half = rotary_dim // 2
    for b in range(batch):
        for h in range(heads):
            for s in range(seq):
                if interleaved:
                    for i in range(half):
                        c = cos[b, s, i]
                        n = sin[b, s, i]
                        x1 = x[b, h, s, 2 * i]
                        x2 = x[b, h, s, 2 * i + 1]
                        out[b, h, s, 2 * i] = c * x1 - n * x2
                        out[b, h, s, 2 * i + 1] = n * x1 + c * x2
                else:
                    for i in range(half):
                        c = cos[b, s, i]
                        n = sin[b, s, i]
                        x1 = x[b, h, s, i]
                        x2 = x[b, h, s, i + half]
                        out[b, h, s, i] = c * x1 - n * x2
                        out[b, h, s, i + half] = n * x1 + c * x2
                for d in range(rotary_dim, depth):
                    out[b, h, s, d] = x[b, h, s, d]


# ---------------------------------------------------------------- dropout

@njit(cache=True)
def dropout(x, keep, scale, out):
    """out = x * scale where ``keep``, else 0 (flat arrays)."""
    zero = out.dtype.type(0.0)
    for i in range(x.shape[0]):
        out[i] = x[i] * scale if keep[i] else zero
