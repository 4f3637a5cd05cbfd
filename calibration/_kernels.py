"""Numba kernels behind the calibration observers.

Histograms have a fixed number of equal-width bins over ``[lo, lo + n_bins * width)``. A value's
bin is ``floor((x - lo) * inv_width)`` computed in the input's float type, clamped to the first and
last bin (the observers keep the range wide enough that clamping only absorbs rounding at the ends).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def histogram_add(x, counts, lo, inv_width):
    """Adds the values of the 1-D array ``x`` to ``counts``; ``lo`` and ``inv_width`` share x's type."""
    last = counts.size - 1
    for i in range(x.size):
        j = int((x[i] - lo) * inv_width)
        if j > last:
            j = last
        elif j < 0:
            j = 0
        counts[j] += 1


@njit(cache=True)
def histogram_add_abs(x, counts, inv_width):
    """Adds ``|x|`` to a histogram that starts at 0."""
    last = counts.size - 1
    for i in range(x.size):
        j = int(abs(x[i]) * inv_width)
        if j > last:
            j = last
        counts[j] += 1


@njit(cache=True)
def histogram_add_nonzero(x, counts, lo, inv_width):
    """Like :func:`histogram_add` but leaves exact zeros out; returns how many it left out."""
    last = counts.size - 1
    zeros = 0
    for i in range(x.size):
        if x[i] == 0:
            zeros += 1
            continue
        j = int((x[i] - lo) * inv_width)
        if j > last:
            j = last
        elif j < 0:
            j = 0
        counts[j] += 1
    return zeros


@njit(cache=True)
def rebin(counts, shift, factor):
    """Merges old bins into a histogram ``factor`` times wider whose first edge lies ``shift`` old
    bins below the old first edge: old bin ``j`` falls wholly inside new bin ``(j + shift) // factor``.

    ``shift`` and ``factor`` are integer-valued floats (they can exceed int64 when a tiny first range
    is followed by a huge one); float division of integers below 2**53 floors exactly.
    """
    merged = np.zeros_like(counts)
    # Only empty bins can fall outside [0, last]; clamping guards against rounding at the ends.
    last = counts.size - 1
    for j in range(counts.size):
        if counts[j]:
            k = int(min(max(np.floor((j + shift) / factor), 0.0), last))
            merged[k] += counts[j]
    return merged


@njit(cache=True)
def resample(counts, lo, width, new_lo, new_width, n_out):
    """``counts`` (bins ``[lo + j*width, lo + (j+1)*width)``) moved onto ``n_out`` bins of
    ``new_width`` from ``new_lo``, as float64 counts.

    A bin that straddles new edges is split in proportion to its overlap (values spread evenly
    inside it), so the result only depends on the new edges up to a fraction of an old bin; a bin
    wholly inside a new bin moves whole. Positions within 1e-9 of a new edge snap to it, so old edges
    that coincide with new ones (up to rounding) split nothing. Mass outside the new range goes to
    the end bins.
    """
    out = np.zeros(n_out)
    ratio = width / new_width
    for j in range(counts.size):
        mass = float(counts[j])
        if mass == 0.0:
            continue
        u0 = (lo - new_lo) / new_width + j * ratio
        u1 = u0 + ratio
        r0 = np.floor(u0 + 0.5)
        if abs(u0 - r0) < 1e-9:
            u0 = r0
        r1 = np.floor(u1 + 0.5)
        if abs(u1 - r1) < 1e-9:
            u1 = r1
        if u1 <= 0.0:
            out[0] += mass
            continue
        if u0 >= n_out:
            out[n_out - 1] += mass
            continue
        span = u1 - u0
        k = int(np.floor(u0))
        if k < 0:
            out[0] += mass * (0.0 - u0) / span
            k = 0
            u0 = 0.0
        while u0 < u1:
            if k >= n_out:
                out[n_out - 1] += mass * (u1 - u0) / span
                break
            end = min(u1, k + 1.0)
            out[k] += mass * (end - u0) / span
            u0 = end
            k += 1
    return out


@njit(cache=True, fastmath={"reassoc", "contract"})
def sum_and_sum_of_squares(x):
    """Float64 sum and sum of squares (reassociation lets the loop vectorize)."""
    s = 0.0
    s2 = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v
        s2 += v * v
    return s, s2


@njit(cache=True)
def entropy_divergences(counts, num_quantized_bins):
    """TensorRT's KL-divergence calibration on a histogram symmetric around zero, with clipping
    charged for the values it drops.

    ``counts`` has an even number of bins and its middle edge is 0. For each candidate half width
    ``h`` (in bins, from ``num_quantized_bins // 2`` to all of it) the reference distribution P is
    the slice ``[-h, h)`` with the mass outside folded into its end bins, and the candidate Q merges
    the slice (without the folded mass) into ``num_quantized_bins`` groups and spreads each group's
    mass evenly over the bins where P is non-zero. Returns KL(P || Q) indexed by ``h``, ``inf`` where
    ``h`` is not tried or the slice holds no values.

    Q is normalized by the whole histogram, not by its own total: it is the share of all values
    that the candidate grid represents, so the divergence equals TensorRT's (Q normalized on its
    own) plus ``log(total / kept)``, the information lost with the clipped values. TensorRT's form
    only sees clipping through the folded end bins, and it scores a slice holding the data's edge
    in a single bin as a perfect match (P and Q both one spike): on data far from zero, e.g. a
    Sigmoid output in [0.25, 0.98], its minimum is a threshold that clips nearly everything.
    """
    n = counts.size
    center = n // 2
    prefix = np.zeros(n + 1)
    for j in range(n):
        prefix[j + 1] = prefix[j] + counts[j]
    total = prefix[n]
    divergences = np.full(center + 1, np.inf)
    p = np.empty(n)
    q = np.empty(n)
    for h in range(max(num_quantized_bins // 2, 1), center + 1):
        start = center - h
        length = 2 * h
        if prefix[start + length] - prefix[start] <= 0.0:
            continue    # nothing inside: Q is empty and the divergence infinite
        for j in range(length):
            p[j] = counts[start + j]
        p[0] += prefix[start]
        p[length - 1] += total - prefix[start + length]
        for g in range(num_quantized_bins):
            g0 = g * length // num_quantized_bins
            g1 = (g + 1) * length // num_quantized_bins
            mass = 0.0
            nonzero = 0
            for j in range(g0, g1):
                mass += counts[start + j]
                if p[j] != 0:
                    nonzero += 1
            share = mass / nonzero if nonzero else 0.0
            for j in range(g0, g1):
                q[j] = share if p[j] != 0 else 0.0
        kl = 0.0
        for j in range(length):
            if p[j] != 0:
                pj = p[j] / total
                # A bin P needs but Q cannot represent (an end bin holding only folded values)
                # costs as if Q held a tiny share there.
                qj = q[j] / total if q[j] != 0 else 1e-12
                kl += pj * np.log(pj / qj)
        divergences[h] = kl
    return divergences


@njit(cache=True)
def entropy_best_half_width(counts, num_quantized_bins):
    """The half width (in bins) with the least divergence of :func:`entropy_divergences`; the
    smallest such one on ties, the whole histogram when nothing can be tried."""
    divergences = entropy_divergences(counts, num_quantized_bins)
    best_h = counts.size // 2
    best_kl = np.inf
    for h in range(divergences.size):
        if divergences[h] < best_kl:
            best_kl = divergences[h]
            best_h = h
    return best_h


@njit(cache=True)
def _moments_prefix(counts, lo, width):
    n = counts.size
    c0 = np.zeros(n + 1)
    c1 = np.zeros(n + 1)
    c2 = np.zeros(n + 1)
    for j in range(n):
        center = lo + (j + 0.5) * width
        c0[j + 1] = c0[j] + counts[j]
        c1[j + 1] = c1[j] + counts[j] * center
        c2[j + 1] = c2[j] + counts[j] * center * center
    return c0, c1, c2


@njit(cache=True)
def _first_center_at_or_above(value, lo, width, n):
    k = int(np.ceil((value - lo) / width - 0.5))
    return min(max(k, 0), n)


@njit(cache=True)
def mse_best_range(counts, lo, width, num_levels):
    """Clipping range ``[a, b]`` (bin edges) with the least estimated L2 quantization error.

    The error of a range is the clipping error of the bins (mass at bin centres) outside it plus
    ``scale**2 / 12`` per value inside, with ``scale = (b' - a') / (num_levels - 1)`` where
    ``[a', b']`` is the range widened to contain 0, as the quantizer will widen it. Every pair of
    edges is tried, each in O(1) from prefix sums.
    """
    n = counts.size
    c0, c1, c2 = _moments_prefix(counts, lo, width)
    steps = float(num_levels - 1)
    # Upper ends depend only on their edge: precompute each one's clipping error and cut index.
    upper = np.empty(n + 1)
    upper_cut = np.empty(n + 1, dtype=np.int64)
    upper_err = np.empty(n + 1)
    for e in range(n + 1):
        b = max(lo + e * width, 0.0)
        ib = _first_center_at_or_above(b, lo, width, n)
        while ib < n and lo + (ib + 0.5) * width <= b:   # centres exactly at b are inside
            ib += 1
        upper[e] = b
        upper_cut[e] = ib
        upper_err[e] = (c2[n] - c2[ib]) - 2.0 * b * (c1[n] - c1[ib]) + b * b * (c0[n] - c0[ib])
    best = np.inf
    best_a = lo
    best_b = lo + n * width
    for s in range(n):
        a = min(lo + s * width, 0.0)
        ia = _first_center_at_or_above(a, lo, width, n)
        below = a * a * c0[ia] - 2.0 * a * c1[ia] + c2[ia]
        for e in range(s + 1, n + 1):
            b = upper[e]
            scale = (b - a) / steps
            err = below + upper_err[e] + (c0[upper_cut[e]] - c0[ia]) * scale * scale / 12.0
            if err < best:
                best = err
                best_a = a
                best_b = b
    return best_a, best_b


@njit(cache=True)
def mse_best_threshold(counts, width, num_levels):
    """Symmetric variant on a histogram of ``|x|`` from 0: the ``t`` minimizing the error of [-t, t]."""
    n = counts.size
    c0, c1, c2 = _moments_prefix(counts, 0.0, width)
    steps = float(num_levels - 1)
    best = np.inf
    best_t = n * width
    for e in range(1, n + 1):
        t = e * width
        # Centres of bins below e are inside [0, t].
        above = (c2[n] - c2[e]) - 2.0 * t * (c1[n] - c1[e]) + t * t * (c0[n] - c0[e])
        scale = 2.0 * t / steps
        err = above + c0[e] * scale * scale / 12.0
        if err < best:
            best = err
            best_t = t
    return best_t
