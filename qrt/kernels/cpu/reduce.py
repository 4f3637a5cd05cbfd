"""Numba kernels for the Reduce* family.

Every reduction arrives in one canonical layout: ``x`` is a C-contiguous (O, R, I) array whose middle
axis is reduced, and ``out`` is (O, I). The op class gets there with reshapes (and one transpose copy
when the reduced axes are not adjacent). Two loop shapes cover all cases:

* ``I == 1`` (reducing the innermost axes): each output is a reduction over a contiguous row.
* ``I > 1``: each reduced slice ``x[o, r, :]`` is added element-wise into the contiguous ``out[o, :]``,
  so the inner loop is independent across ``i`` and vectorizes without reassociation.

Float sums are compiled with ``reassoc`` so LLVM keeps several vector accumulators in the row loop
(a float32 sum of a long row is then also more accurate than a single running sum); no other fast-math
flag is set, so infinities and NaN keep IEEE behaviour. Max/min of a row keep LANES running
extremes (an element-wise max, which vectorizes) and combine them at the end; a NaN reaches the
result only where a comparison lets it (the spec leaves NaN unspecified; onnxruntime is no different).

``sum_terms``: 0 sums x, 1 sums |x|, 2 sums x*x. ``finish``: 0 none, 1 divide by R (mean), 2 sqrt,
3 natural log. Integer outputs take the truncated result, as a C cast would.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import vmath

_REASSOC = {"reassoc", "contract"}

SUM, SUM_ABS, SUM_SQUARE = 0, 1, 2
FINISH_NONE, FINISH_MEAN, FINISH_SQRT, FINISH_LOG = 0, 1, 2, 3


@njit(cache=True, inline="always")
def _term(v, term):
    if term == 1:
        return abs(v)
    if term == 2:
        return v * v
    return v


@njit(cache=True, error_model="numpy", inline="always")
def _store(out, o, i, acc, finish, n):
    if finish == 0:
        out[o, i] = acc
    elif finish == 1:
        out[o, i] = acc / n
    elif finish == 2:
        out[o, i] = math.sqrt(acc)
    else:
        out[o, i] = math.log(acc) if acc > 0 else (-math.inf if acc == 0 else math.nan)


# The row and block helpers are compiled functions shared by the serial and threaded kernels; the
# block helpers take their column range at run time (the threaded kernel splits columns).

@njit(cache=True, fastmath=_REASSOC)
def _sum_row(row, term, zero):
    acc = zero
    for r in range(row.shape[0]):
        acc += _term(row[r], term)
    return acc


@njit(cache=True, fastmath=_REASSOC, error_model="numpy")
def _sum_block(x, out, o, i0, i1, term, finish, zero, count):
    """out[o, i] for i in [i0, i1): the sum over r of term(x[o, r, i])."""
    depth = x.shape[1]
    acc = out[o]
    # Unsigned indices: LLVM must otherwise allow for Python's negative-index wraparound, which
    # blocks vectorization whenever i0 is not a compile-time constant.
    start, stop = np.uintp(i0), np.uintp(i1)
    for i in range(start, stop):
        acc[i] = zero
    for r in range(depth):
        src = x[o, r]
        for i in range(start, stop):
            acc[i] += _term(src[i], term)
    if finish != 0:
        for i in range(start, stop):
            _store(out, o, i, acc[i], finish, count)


@njit(cache=True, fastmath=_REASSOC, error_model="numpy")
def reduce_sum(x, out, term, finish, zero, count):
    """out[o, i] = finish(sum over r of term(x[o, r, i])); ``zero`` fixes the accumulator type and
    ``count`` is the mean's divisor (R, or the whole reduction's size when it runs in stages)."""
    outer, depth, inner = x.shape
    if inner == 1:
        rows = x.reshape((outer, depth))
        for o in range(outer):
            _store(out, o, 0, _sum_row(rows[o], term, zero), finish, count)
    else:
        for o in range(outer):
            _sum_block(x, out, o, 0, inner, term, finish, zero, count)


@njit(cache=True, fastmath=_REASSOC, error_model="numpy", parallel=True)
def reduce_sum_parallel(x, out, term, finish, zero, count, chunks):
    """``reduce_sum`` with threads over rows, or over ``chunks`` column blocks per row when I > 1."""
    outer, depth, inner = x.shape
    if inner == 1:
        rows = x.reshape((outer, depth))
        for o in prange(outer):
            _store(out, o, 0, _sum_row(rows[o], term, zero), finish, count)
    else:
        width = (inner + chunks - 1) // chunks
        for task in prange(outer * chunks):
            o = task // chunks
            i0 = (task - o * chunks) * width
            _sum_block(x, out, o, i0, min(i0 + width, inner), term, finish, zero, count)


@njit(cache=True, inline="always")
def _wins(v, best, want_max):
    return v > best if want_max else v < best


# Rows are scanned LANES values at a time, each lane keeping its own running extreme: an element-wise
# max over (blocks, LANES) vectorizes (compare + blend), where LLVM keeps a max *reduction* scalar.
LANES = 128


@njit(cache=True)
def _extreme_row(row, lanes, want_max, empty):
    """Max (min) of contiguous ``row``; ``lanes`` is (1, LANES) scratch."""
    n = row.shape[0]
    if n == 0:
        return empty
    best = row[0]
    full = n // LANES
    if full >= 2:
        _extreme_block(row[:full * LANES].reshape((1, full, LANES)), lanes, 0, 0, lanes.shape[1], want_max, empty)
        partial = lanes[0]
        for j in range(LANES):
            v = partial[j]
            best = v if _wins(v, best, want_max) else best
    else:
        full = 0
    for r in range(full * LANES, n):
        v = row[r]
        best = v if _wins(v, best, want_max) else best
    return best


@njit(cache=True)
def _extreme_block(x, out, o, i0, i1, want_max, empty):
    """out[o, i] for i in [i0, i1): the max (min) over r of x[o, r, i]."""
    depth = x.shape[1]
    best = out[o]
    start, stop = np.uintp(i0), np.uintp(i1)
    if depth == 0:
        for i in range(start, stop):
            best[i] = empty
        return
    first = x[o, 0]
    for i in range(start, stop):
        best[i] = first[i]
    for r in range(1, depth):
        src = x[o, r]
        for i in range(start, stop):
            v = src[i]
            b = best[i]
            best[i] = v if _wins(v, b, want_max) else b


@njit(cache=True)
def reduce_extreme(x, out, want_max, empty):
    """out[o, i] = max (or min) over r of x[o, r, i]; ``empty`` where R == 0."""
    outer, depth, inner = x.shape
    if inner == 1:
        rows = x.reshape((outer, depth))
        lanes = np.empty((1, LANES), x.dtype)
        for o in range(outer):
            out[o, 0] = _extreme_row(rows[o], lanes, want_max, empty)
    else:
        for o in range(outer):
            _extreme_block(x, out, o, 0, inner, want_max, empty)


@njit(cache=True, parallel=True)
def reduce_extreme_parallel(x, out, want_max, empty, chunks):
    outer, depth, inner = x.shape
    if inner == 1:
        rows = x.reshape((outer, depth))
        lanes = np.empty((outer, LANES), x.dtype)
        for o in prange(outer):
            out[o, 0] = _extreme_row(rows[o], lanes[o:o + 1], want_max, empty)
    else:
        width = (inner + chunks - 1) // chunks
        for task in prange(outer * chunks):
            o = task // chunks
            i0 = (task - o * chunks) * width
            _extreme_block(x, out, o, i0, min(i0 + width, inner), want_max, empty)


@njit(cache=True, fastmath=_REASSOC)
def reduce_prod(x, out, one):
    """out[o, i] = product over r of x[o, r, i]; ``one`` fixes the accumulator type (1 when R == 0)."""
    outer, depth, inner = x.shape
    if inner == 1:
        rows = x.reshape((outer, depth))
        for o in range(outer):
            row = rows[o]
            acc = one
            for r in range(depth):
                acc *= row[r]
            out[o, 0] = acc
    else:
        for o in range(outer):
            acc = out[o]
            for i in range(inner):
                acc[i] = one
            for r in range(depth):
                src = x[o, r]
                for i in range(inner):
                    acc[i] *= src[i]


@njit(cache=True, inline="always")
def _finite_max_update(v, m):
    # Infinite values do not set the shift, so exp(x - m) never evaluates inf - inf.
    if v > m and math.isfinite(v):
        return v
    return m


@njit(cache=True, fastmath=_REASSOC)
def reduce_log_sum_exp(x, out, zero):
    """out[o, i] = log(sum over r of exp(x[o, r, i])), shifted by the largest finite value for range."""
    outer, depth, inner = x.shape
    if inner == 1:
        rows = x.reshape((outer, depth))
        for o in range(outer):
            row = rows[o]
            m = -math.inf
            for r in range(depth):
                m = _finite_max_update(row[r], m)
            if m == -math.inf:
                m = zero
            acc = zero
            for r in range(depth):
                acc += vmath.exp(row[r] - m)
            out[o, 0] = math.log(acc) + m
    else:
        total = np.empty(inner, out.dtype)
        for o in range(outer):
            shift = out[o]
            for i in range(inner):
                shift[i] = -math.inf
            for r in range(depth):
                src = x[o, r]
                for i in range(inner):
                    shift[i] = _finite_max_update(src[i], shift[i])
            for i in range(inner):
                if shift[i] == -math.inf:
                    shift[i] = zero
                total[i] = zero
            for r in range(depth):
                src = x[o, r]
                for i in range(inner):
                    total[i] += vmath.exp(src[i] - shift[i])
            for i in range(inner):
                shift[i] = math.log(total[i]) + shift[i]
