"""Transformer kernels: layer/RMS normalization, fused attention, rotary embedding, dropout.

Every kernel takes contiguous arrays in a canonical layout (the op classes reshape to it), so one
compiled signature per float type serves every rank:

* normalization: x is (rows, n), normalized along n; scale/bias are (1 | rows, n).
* attention: q (B, Hq, Sq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv), masks (Bm, Hm, Sm, L) with size-1
  axes broadcast by index; outputs (B, Hq, Sq, Dv) and optionally the (B, Hq, Sq, T) score matrix.
* rotary: x (B, H, S, D) and cos/sin (B, S, D_rot / 2).

Reductions use the same fast-math flags as the softmax kernels (reassociation, no ``nnan``/``ninf``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .softmax import FASTMATH, ROUND_BFLOAT16, ROUND_FLOAT16, ROUND_NONE, fast_exp, fmax, round_to

PARALLEL_MIN_ELEMENTS = 1 << 15

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


# ---------------------------------------------------------------- attention

MASK_NONE = 0
MASK_BOOL = 1
MASK_FLOAT = 2

@njit(cache=True)
def _round_span(values, first, last, rounding):
    for j in range(first, last):
        values[j] = round_to(values[j], rounding)


@njit(cache=True, fastmath=FASTMATH)
def _attention_head(q, k, v, sqrt_scale, softcap, mask_kind, bool_mask, float_mask, causal, offset,
                    left_window, right_window, valid_keys, qk_mode, qk_out, y, rounding, softmax_rounding,
                    key_t, query, scores, bias):
    """One (batch, query head): q (Sq, D), k (T, D), v (T, Dv) -> y (Sq, Dv); masks are (Sm, L) rows."""
    sq, depth = q.shape
    total = k.shape[0]
    dv = v.shape[1]
    neg_inf = y.dtype.type(-np.inf)
    zero = y.dtype.type(0.0)
    mask_rows = bool_mask.shape[0] if mask_kind == MASK_BOOL else float_mask.shape[0]
    mask_len = bool_mask.shape[1] if mask_kind == MASK_BOOL else float_mask.shape[1]
    # Keys pre-scaled by sqrt(scale) and transposed, so the score loop runs along keys (vectorized).
    for j in range(total):
        for d in range(depth):
            key_t[d, j] = k[j, d] * sqrt_scale
    if rounding != ROUND_NONE:
        for d in range(depth):
            _round_span(key_t[d], 0, total, rounding)
    every_score = qk_mode == 0 or qk_mode == 1
    for i in range(sq):
        # Keys a query can see form one interval [lo, hi) (causal frontier, window, padding);
        # a boolean mask may then remove keys inside it.
        position = i + offset
        lo = 0
        hi = min(total, valid_keys)
        if mask_kind != MASK_NONE:
            hi = min(hi, mask_len)
        if causal:
            hi = min(hi, position + 1)
        if right_window >= 0:
            hi = min(hi, position + right_window + 1)
        if left_window >= 0:
            lo = max(lo, position - left_window)
        if hi < lo:
            hi = lo
        for d in range(depth):
            query[d] = q[i, d] * sqrt_scale
        if rounding != ROUND_NONE:
            _round_span(query, 0, depth, rounding)
        first = 0 if every_score else lo
        last = total if every_score else hi
        for j in range(first, last):
            scores[j] = zero
        for d in range(depth):
            qd = query[d]
            for j in range(first, last):
                scores[j] += qd * key_t[d, j]
        if rounding != ROUND_NONE:
            _round_span(scores, first, last, rounding)
        if softcap > 0:
            for j in range(first, last):
                scores[j] = round_to(round_to(math.tanh(round_to(scores[j] / softcap, rounding)), rounding)
                                     * softcap, rounding)
        if qk_mode == 0 or qk_mode == 1:
            for j in range(total):
                qk_out[i, j] = scores[j]

        mrow = i if mask_rows > 1 else 0
        any_allowed = False
        for j in range(total):
            bias[j] = neg_inf
        for j in range(lo, hi):
            if mask_kind == MASK_BOOL:
                if bool_mask[mrow, j]:
                    bias[j] = zero
                    any_allowed = True
            elif mask_kind == MASK_FLOAT:
                bias[j] = float_mask[mrow, j]
                if bias[j] != neg_inf:
                    any_allowed = True
            else:
                bias[j] = zero
                any_allowed = True
        for j in range(lo, hi):
            scores[j] = round_to(scores[j] + bias[j], rounding)
        if qk_mode == 2:
            for j in range(total):
                qk_out[i, j] = scores[j] if lo <= j < hi else neg_inf

        if not any_allowed:
            # A query that may see no key gives a zero row (the spec's fully-masked-row rule).
            for c in range(dv):
                y[i, c] = zero
            if qk_mode == 3:
                for j in range(total):
                    qk_out[i, j] = zero
            continue
        peak = scores[lo]
        for j in range(lo + 1, hi):
            peak = fmax(peak, scores[j])
        denominator = zero
        if softmax_rounding == ROUND_NONE:
            for j in range(lo, hi):
                e = fast_exp(scores[j] - peak)
                scores[j] = e
                denominator += e
        else:
            for j in range(lo, hi):
                scores[j] = round_to(fast_exp(round_to(scores[j] - peak, softmax_rounding)), softmax_rounding)
            if softmax_rounding == ROUND_BFLOAT16:
                # bfloat16 sums accumulate in bfloat16, one rounding per addition.
                for j in range(lo, hi):
                    denominator = round_to(denominator + scores[j], softmax_rounding)
            else:
                for j in range(lo, hi):
                    denominator += scores[j]
                denominator = round_to(denominator, softmax_rounding)
        for j in range(lo, hi):
            scores[j] = round_to(round_to(scores[j] / denominator, softmax_rounding), rounding)
        if qk_mode == 3:
            for j in range(total):
                qk_out[i, j] = scores[j] if lo <= j < hi else zero
        for c in range(dv):
            y[i, c] = zero
        for j in range(lo, hi):
            p = scores[j]
            if p != zero:
                for c in range(dv):
                    y[i, c] += p * v[j, c]


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def attention(q, k, v, sqrt_scale, softcap, mask_kind, bool_mask, float_mask, causal, offsets,
              left_window, right_window, valid_keys, qk_mode, qk_out, y, rounding, softmax_rounding):
    """Scaled dot-product attention for every (batch, query head), in parallel over both.

    ``offsets[b]`` is the absolute position of batch b's first query (cached keys before it);
    ``valid_keys[b]`` how many leading keys are not padding. Query head h reads key/value head
    ``h // (Hq // Hkv)`` (grouped-query attention). ``rounding`` / ``softmax_rounding`` say to which
    narrower float type intermediate results are rounded (``ROUND_*``).
    """
    batch, q_heads, sq, depth = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    for item in prange(batch * q_heads):
        b = item // q_heads
        h = item % q_heads
        key_t = np.empty((depth, total), dtype=y.dtype)
        query = np.empty(depth, dtype=y.dtype)
        scores = np.empty(total, dtype=y.dtype)
        bias = np.empty(total, dtype=y.dtype)
        mb_bool = b if bool_mask.shape[0] > 1 else 0
        mh_bool = h if bool_mask.shape[1] > 1 else 0
        mb_float = b if float_mask.shape[0] > 1 else 0
        mh_float = h if float_mask.shape[1] > 1 else 0
        qk_b = b if qk_out.shape[0] > 1 else 0
        qk_h = h if qk_out.shape[1] > 1 else 0
        _attention_head(q[b, h], k[b, h // group], v[b, h // group], sqrt_scale, softcap, mask_kind,
                        bool_mask[mb_bool, mh_bool], float_mask[mb_float, mh_float], causal, offsets[b],
                        left_window, right_window, valid_keys[b], qk_mode, qk_out[qk_b, qk_h], y[b, h],
                        rounding, softmax_rounding, key_t, query, scores, bias)


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
