"""Numba kernels for index-producing and scan ops: ArgMax/ArgMin, CumSum, TopK, NonZero.

The axis-wise kernels take the canonical (O, R, I) layout of :mod:`qrt.kernels.cpu.reduce`: ``x`` is
C-contiguous and the op's axis is the middle one.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _takes_over(v, best, want_max, select_last):
    if v == best:
        return select_last
    return v > best if want_max else v < best


@njit(cache=True)
def arg_extreme(x, out, want_max, select_last):
    """out[o, i] = index along r of the max (min) of x[o, :, i]; ties go to the first index, or the
    last with ``select_last``."""
    outer, depth, inner = x.shape
    for o in range(outer):
        if inner == 1:
            best = x[o, 0, 0]
            where = 0
            for r in range(1, depth):
                v = x[o, r, 0]
                if _takes_over(v, best, want_max, select_last):
                    best = v
                    where = r
            out[o, 0] = where
        else:
            best_row = x[o, 0].copy()
            where_row = out[o]
            for i in range(inner):
                where_row[i] = 0
            for r in range(1, depth):
                src = x[o, r]
                for i in range(inner):
                    v = src[i]
                    if _takes_over(v, best_row[i], want_max, select_last):
                        best_row[i] = v
                        where_row[i] = r


@njit(cache=True)
def cumulative_sum(x, out, exclusive, reverse):
    """Running sum along r of (O, R, I) ``x`` into ``out``; ``exclusive`` leaves out the element
    itself, ``reverse`` runs from the end."""
    outer, depth, inner = x.shape
    for o in range(outer):
        for step in range(depth):
            r = depth - 1 - step if reverse else step
            dst = out[o, r]
            if step == 0:
                if exclusive:
                    for i in range(inner):
                        dst[i] = 0
                else:
                    src = x[o, r]
                    for i in range(inner):
                        dst[i] = src[i]
            else:
                prev = r + 1 if reverse else r - 1
                before = out[o, prev]
                src = x[o, prev] if exclusive else x[o, r]
                for i in range(inner):
                    dst[i] = before[i] + src[i]


@njit(cache=True, inline="always")
def _greater(a, b):
    # NaN ranks above every number (as in numpy's sort), so the order stays total.
    if a != a:
        return b == b
    return a > b


@njit(cache=True, inline="always")
def _ranks_before(col, a, b, largest):
    """Whether element ``a`` of ``col`` comes before element ``b`` in TopK's output."""
    va = col[a]
    vb = col[b]
    if largest:
        if _greater(va, vb):
            return True
        if _greater(vb, va):
            return False
    else:
        if _greater(vb, va):
            return True
        if _greater(va, vb):
            return False
    return a < b


@njit(cache=True, inline="always")
def _sift_down(heap, size, start, col, largest):
    # ``heap`` keeps the last-ranked kept element at the root.
    parent = start
    while True:
        child = 2 * parent + 1
        if child >= size:
            return
        if child + 1 < size and _ranks_before(col, heap[child], heap[child + 1], largest):
            child += 1
        if _ranks_before(col, heap[parent], heap[child], largest):
            heap[parent], heap[child] = heap[child], heap[parent]
            parent = child
        else:
            return


@njit(cache=True)
def top_k(x, k, largest, values, indices):
    """The ``k`` first elements along r of (O, R, I) ``x`` in TopK order (largest or smallest first,
    ties by lower index) into (O, k, I) ``values`` and ``indices``; O(R log k) per column."""
    outer, depth, inner = x.shape
    heap = np.empty(k, np.int64)
    for o in range(outer):
        for i in range(inner):
            col = x[o, :, i]
            size = 0
            for r in range(depth):
                if size < k:
                    # Sift the new element up from the bottom.
                    child = size
                    heap[child] = r
                    size += 1
                    while child > 0:
                        parent = (child - 1) // 2
                        if _ranks_before(col, heap[parent], heap[child], largest):
                            heap[parent], heap[child] = heap[child], heap[parent]
                            child = parent
                        else:
                            break
                elif k > 0 and _ranks_before(col, r, heap[0], largest):
                    heap[0] = r
                    _sift_down(heap, size, 0, col, largest)
            # Pop the last-ranked element first: it fills the output from the end.
            while size > 0:
                size -= 1
                where = heap[0]
                values[o, size, i] = col[where]
                indices[o, size, i] = where
                heap[0] = heap[size]
                _sift_down(heap, size, 0, col, largest)


@njit(cache=True)
def nonzero(flat, shape):
    """(ndim, count) int64 coordinates of the non-zero elements of C-ordered ``flat`` of ``shape``."""
    count = 0
    for j in range(flat.shape[0]):
        if flat[j] != 0:
            count += 1
    ndim = shape.shape[0]
    out = np.empty((ndim, count), np.int64)
    coord = np.zeros(ndim, np.int64)
    n = 0
    for j in range(flat.shape[0]):
        if flat[j] != 0:
            for d in range(ndim):
                out[d, n] = coord[d]
            n += 1
        d = ndim - 1
        while d >= 0:
            coord[d] += 1
            if coord[d] < shape[d]:
                break
            coord[d] = 0
            d -= 1
    return out
