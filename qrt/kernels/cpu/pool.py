"""Pooling kernels on the canonical layout ``(planes, D, H, W)``, one plane per (image, channel).

``geom`` is the int64 vector ``[kD, kH, kW, sD, sH, sW, dD, dH, dW, pD, pH, pW]`` shared with the
convolution kernels (``pD..pW`` pad the start of each axis). Taps that fall in padding are skipped.

The windowed kernels are separable: for each output row they first reduce the window's input rows
into one full-width row (contiguous, vectorized), then reduce that row across the window's columns
(one shifted, possibly strided, sweep per column tap). Inner loops index slices from 0, which lets
LLVM drop Numba's negative-index checks and vectorize.
"""
import numpy as np
from numba import njit, prange

from .conv import _fill, _valid_range
from .threads import serial_twin

MODE_AVERAGE = 0
MODE_LP = 1
GLOBAL_AVERAGE = 0
GLOBAL_MAX = 1
GLOBAL_LP = 2


# Output elements x window taps below which a pool runs serially: a parallel launch costs ~4 us,
# more than the whole of a small pool (a 2x2 MaxPool of eight 4x4 planes: 4.7 us parallel).
PARALLEL_MIN_WORK = 1 << 15


@njit(cache=True, parallel=True)
def max_pool(x, geom, out):
    """Windowed maximum; a window lying wholly in padding yields -inf. One plane per task."""
    for p in prange(x.shape[0]):
        _max_pool_plane(x, geom, out, p, np.empty(x.shape[3], dtype=x.dtype))


@njit(cache=True)
def max_pool_serial(x, geom, out):
    """:func:`max_pool` in the calling thread, for pools too small to pay for a parallel launch."""
    rows_max = np.empty(x.shape[3], dtype=x.dtype)
    for p in range(x.shape[0]):
        _max_pool_plane(x, geom, out, p, rows_max)


@njit(cache=True, inline="always")
def _larger(value, current):
    """``value`` where it exceeds ``current`` (a NaN never does): a select and an unconditional store,
    which LLVM vectorizes; the compare-and-branch store it replaces ran scalar, 3-9x slower than
    onnxruntime on squeezenet's pools."""
    return value if value > current else current


@njit(cache=True)
def _max_pool_plane(x, geom, out, p, rows_max):
    """Plane ``p`` of :func:`max_pool`; ``rows_max`` is scratch of one input row."""
    depth, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_d, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    for a in range(out_d):
        for b in range(out_h):
            row = out[p, a, b]
            _fill(row, -np.inf)
            _fill(rows_max, -np.inf)
            empty = True
            for i in range(kd):
                zd = a * sd - pd + i * dd
                if zd < 0 or zd >= depth:
                    continue
                for j in range(kh):
                    zh = b * sh - ph + j * dh
                    if zh < 0 or zh >= height:
                        continue
                    empty = False
                    src = x[p, zd, zh]
                    for t in range(width):
                        rows_max[t] = _larger(src[t], rows_max[t])
            if empty:
                continue
            for l in range(kw):
                off_w = l * dw - pw
                lo, hi = _valid_range(off_w, sw, width, out_w)
                count = hi - lo
                if count <= 0:
                    continue
                dst = row[lo:hi]
                start = lo * sw + off_w
                if sw == 1:
                    src = rows_max[start:start + count]
                    for t in range(count):
                        dst[t] = _larger(src[t], dst[t])
                else:
                    strided = rows_max[start:start + (count - 1) * sw + 1:sw]
                    for t in range(count):
                        dst[t] = _larger(strided[t], dst[t])


@serial_twin
@njit(cache=True, parallel=True)
def max_pool_nhwc(x, geom, lowest, out):
    """Windowed maximum of channels-last (N, D, H, W, C) integers into (N, OD, OH, OW, C).

    One task per output row; every tap is a maximum over a run of C contiguous channels, which LLVM
    vectorizes (64 bytes a step on AVX-512). A window wholly in padding yields ``lowest``.
    """
    n_img, depth, height, width, C = x.shape
    out_d, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    for task in prange(n_img * out_d * out_h):
        img = task // (out_d * out_h)
        rest = task - img * (out_d * out_h)
        a = rest // out_h
        b = rest - a * out_h
        dst = out[img, a, b]
        for ow in range(out_w):
            pixel = dst[ow]
            for c in range(C):
                pixel[c] = lowest
        for i in range(kd):
            zd = a * sd - pd + i * dd
            if zd < 0 or zd >= depth:
                continue
            for j in range(kh):
                zh = b * sh - ph + j * dh
                if zh < 0 or zh >= height:
                    continue
                src = x[img, zd, zh]
                for ow in range(out_w):
                    pixel = dst[ow]
                    for l in range(kw):
                        zw = ow * sw - pw + l * dw
                        if zw < 0 or zw >= width:
                            continue
                        tap = src[zw]
                        for c in range(C):
                            pixel[c] = max(pixel[c], tap[c])


@njit(cache=True)
def max_pool_indices(x, geom, column_major, out, indices):
    """Windowed maximum and the flat input index of the first maximum of each window.

    Serial: the Indices output belongs to training graphs and MaxUnpool, not to hot inference paths,
    and a parallel kernel costs three times the compile time.

    Indices count over the whole input tensor; ``column_major`` numbers spatial positions with the
    first spatial axis fastest (ONNX ``storage_order=1``), else row-major.
    """
    planes, depth, height, width = x.shape
    out_d, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    plane_size = depth * height * width
    for p in range(planes):
        for a in range(out_d):
            for b in range(out_h):
                for o in range(out_w):
                    best = -np.inf
                    best_index = -1
                    for i in range(kd):
                        zd = a * sd - pd + i * dd
                        if zd < 0 or zd >= depth:
                            continue
                        for j in range(kh):
                            zh = b * sh - ph + j * dh
                            if zh < 0 or zh >= height:
                                continue
                            for l in range(kw):
                                zw = o * sw - pw + l * dw
                                if zw < 0 or zw >= width:
                                    continue
                                v = x[p, zd, zh, zw]
                                if best_index < 0 or v > best:
                                    best = v
                                    if column_major:
                                        best_index = zd + zh * depth + zw * depth * height
                                    else:
                                        best_index = (zd * height + zh) * width + zw
                    out[p, a, b, o] = best
                    indices[p, a, b, o] = p * plane_size + best_index if best_index >= 0 else -1


@njit(cache=True)
def _tap_counts(out_len, in_len, kernel, stride, dilation, pad_begin, pad_end, include_pad):
    """Per output position, how many taps lie in the input (or in the padded input with include_pad)."""
    counts = np.zeros(out_len, dtype=np.int64)
    lo_bound = -pad_begin if include_pad else 0
    hi_bound = in_len + pad_end if include_pad else in_len
    for o in range(out_len):
        for t in range(kernel):
            z = o * stride - pad_begin + t * dilation
            if lo_bound <= z < hi_bound:
                counts[o] += 1
    return counts


@njit(cache=True, parallel=True, fastmath=True)
def sum_pool(x, geom, pads_end, mode, p, count_include_pad, out):
    """AveragePool (``mode`` 0) or LpPool with exponent ``p`` (``mode`` 1) over each window.

    The average divides by the taps inside the input, or inside the padded input when
    ``count_include_pad``; a ceil_mode window's overhang past the end padding never counts.
    """
    planes, depth, height, width = x.shape
    out_d, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    include = count_include_pad != 0
    count_d = _tap_counts(out_d, depth, kd, sd, dd, pd, pads_end[0], include)
    count_h = _tap_counts(out_h, height, kh, sh, dh, ph, pads_end[1], include)
    count_w = _tap_counts(out_w, width, kw, sw, dw, pw, pads_end[2], include)
    inv_p = 1.0 / p
    # Divisors in the output type, so the final divide is one vectorized float sweep per row.
    divisor_w = np.empty(out_w, dtype=out.dtype)
    for t in range(out_w):
        divisor_w[t] = count_w[t]
    divisor_dh = np.empty((out_d, out_h), dtype=out.dtype)
    for a in range(out_d):
        for b in range(out_h):
            divisor_dh[a, b] = count_d[a] * count_h[b]
    for q in prange(planes):
        rows_sum = np.empty(width, dtype=x.dtype)
        for a in range(out_d):
            for b in range(out_h):
                row = out[q, a, b]
                _fill(row, 0.0)
                _fill(rows_sum, 0.0)
                for i in range(kd):
                    zd = a * sd - pd + i * dd
                    if zd < 0 or zd >= depth:
                        continue
                    for j in range(kh):
                        zh = b * sh - ph + j * dh
                        if zh < 0 or zh >= height:
                            continue
                        src = x[q, zd, zh]
                        if mode == MODE_AVERAGE:
                            for t in range(width):
                                rows_sum[t] += src[t]
                        elif p == 2:
                            for t in range(width):
                                rows_sum[t] += src[t] * src[t]
                        else:
                            for t in range(width):
                                rows_sum[t] += np.abs(src[t]) ** p
                for l in range(kw):
                    off_w = l * dw - pw
                    lo, hi = _valid_range(off_w, sw, width, out_w)
                    count = hi - lo
                    if count <= 0:
                        continue
                    dst = row[lo:hi]
                    start = lo * sw + off_w
                    if sw == 1:
                        src = rows_sum[start:start + count]
                        for t in range(count):
                            dst[t] += src[t]
                    else:
                        strided = rows_sum[start:start + (count - 1) * sw + 1:sw]
                        for t in range(count):
                            dst[t] += strided[t]
                if mode == MODE_AVERAGE:
                    for t in range(out_w):
                        row[t] = row[t] / (divisor_dh[a, b] * divisor_w[t])
                elif p == 2:
                    for t in range(out_w):
                        row[t] = np.sqrt(row[t])
                elif p != 1:
                    for t in range(out_w):
                        row[t] = row[t] ** inv_p


@njit(cache=True, fastmath={"reassoc"}, inline="always")
def _global_plane(src, mode, p):
    """Mean, maximum or Lp norm of one plane; sums in float64, reassociated so they vectorize (the
    callers carry the flag too: inlined at Numba's level, this body compiles with theirs)."""
    size = src.shape[0]
    if mode == GLOBAL_MAX:
        best = src[0]
        for s in range(1, size):
            if src[s] > best:
                best = src[s]
        return best
    total = 0.0
    if mode == GLOBAL_AVERAGE:
        for s in range(size):
            total += src[s]
        return total / size
    for s in range(size):
        total += np.abs(src[s]) ** p
    return total ** (1.0 / p)


@njit(cache=True, fastmath={"reassoc"})
def global_pool(x, mode, p, out):
    """One value per row of ``x`` (planes, positions): mean, maximum or Lp norm."""
    for q in range(x.shape[0]):
        out[q] = _global_plane(x[q], mode, p)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def global_pool_parallel(x, mode, p, out):
    for q in prange(x.shape[0]):
        out[q] = _global_plane(x[q], mode, p)


@njit(cache=True, fastmath=True)
def _average_plane_2d(plane, geom, out_h, out_w, wp, divisor, xp, hw, wide, out):
    """AveragePool of one small 2-D plane by whole-plane sweeps (see :func:`average_pool_small`)."""
    height, width = plane.shape
    kh, kw, sh, sw, dh, dw, ph, pw = geom[1], geom[2], geom[4], geom[5], geom[7], geom[8], geom[10], geom[11]
    _fill(xp, 0.0)
    for y in range(height):
        start = (ph + y) * wp + pw
        row = plane[y]
        dst = xp[start:start + width]
        for w in range(width):
            dst[w] = row[w]
    # Horizontal taps over every row at once: hw[i] = sum_l xp[i * sw + l * dw], i = row * L + column.
    n_hw = hw.shape[0]
    _fill(hw, 0.0)
    for l in range(kw):
        src = xp[l * dw:]
        if sw == 1:
            for i in range(n_hw):
                hw[i] += src[i]
        elif sw == 2:
            for i in range(n_hw):
                hw[i] += src[2 * i]
        else:
            for i in range(n_hw):
                hw[i] += src[i * sw]
    # Vertical taps: wide rows are sh * L long, so output row b starts at b * sh * L and tap j is a
    # plain shift by j * dh * L; the columns past out_w in each wide row are dropped.
    span = wp // sw
    n_wide = wide.shape[0]
    _fill(wide, 0.0)
    for j in range(kh):
        src = hw[j * dh * span:]
        for i in range(n_wide):
            wide[i] += src[i]
    for b in range(out_h):
        first = b * sh * span
        row = out[b]
        div = divisor[b]
        src = wide[first:first + out_w]
        for t in range(out_w):
            row[t] = src[t] / div[t]


@njit(cache=True, parallel=True, fastmath=True)
def average_pool_small(x, geom, pads_end, count_include_pad, out):
    """2-D AveragePool for small planes: ``x`` (planes, 1, H, W), ``out`` (planes, 1, OH, OW).

    The row-by-row kernel (:func:`sum_pool`) pays a dozen short loops per output row, which is most
    of its time on 7-28 wide planes. Here each plane is copied once into a zero-padded buffer whose
    row length is a multiple of the column stride; then every tap is one sweep over the whole
    plane: the column taps read it with the stride (constant 1 or 2 where LLVM vectorizes), the row
    taps are shifts by whole rows. Padding reads zeros, and the divisor counts the taps inside the
    input (or the padded input with ``count_include_pad``), as :func:`sum_pool` does.
    """
    planes, height, width = x.shape[0], x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    kh, kw, sh, sw, dh, dw, ph, pw = geom[1], geom[2], geom[4], geom[5], geom[7], geom[8], geom[10], geom[11]
    include = count_include_pad != 0
    count_h = _tap_counts(out_h, height, kh, sh, dh, ph, pads_end[1], include)
    count_w = _tap_counts(out_w, width, kw, sw, dw, pw, pads_end[2], include)
    divisor = np.empty((out_h, out_w), dtype=out.dtype)
    for b in range(out_h):
        for t in range(out_w):
            divisor[b, t] = count_h[b] * count_w[t]
    # Padded row length: holds the start padding, the row and every window of the row, rounded up
    # to whole strides; rows: every row any tap of any wide output row reads.
    wp = max(pw + width, (out_w - 1) * sw + (kw - 1) * dw + 1)
    wp = (wp + sw - 1) // sw * sw
    rows = max(ph + height, out_h * sh + (kh - 1) * dh)
    span = wp // sw
    n_wide = out_h * sh * span
    n_hw = rows * span
    blocks = min(planes, 16)
    step = (planes + blocks - 1) // blocks
    for block in prange(blocks):
        xp = np.empty(rows * wp + (kw - 1) * dw + sw, dtype=out.dtype)
        hw = np.empty(n_hw, dtype=out.dtype)
        wide = np.empty(n_wide, dtype=out.dtype)
        for q in range(block * step, min(planes, block * step + step)):
            _average_plane_2d(x[q, 0], geom, out_h, out_w, wp, divisor, xp, hw, wide, out[q, 0])
