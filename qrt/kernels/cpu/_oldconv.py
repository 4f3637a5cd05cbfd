"""Convolution kernels: im2col + BLAS GEMM, a direct depthwise kernel, and GEMM + col2im for ConvTranspose.

Every kernel works on the canonical 3-D spatial layout: inputs are ``(N, C, D, H, W)`` and weights
``(M, C/group, kD, kH, kW)``, with unit dimensions standing in for the missing spatial axes of 1-D
and 2-D convolutions, so one compiled kernel per dtype serves all ranks.

``geom`` packs the window geometry as int64 ``[kD, kH, kW, sD, sH, sW, dD, dH, dW, pD, pH, pW]``
(kernel, strides, dilations, padding at the start of each axis).

The GEMM is ``np.dot`` on contiguous 2-D blocks (Numba hands it to BLAS). The column buffer is laid
out ``(C*kD*kH*kW, OD*OH*OW)`` so the product lands directly in NCHW order, with no transpose.

Inner loops run over slices with ``for t in range(n)``: an index that starts at 0 lets LLVM drop
Numba's negative-index wraparound check and vectorize; ``range(lo, hi)`` with a signed ``lo`` does
not (measured: 7x slower on a depthwise 3x3).
"""
import numpy as np
from numba import njit, prange

from .activation import bias_activate_rows


@njit(cache=True, inline="always")
def _valid_range(offset, stride, in_len, out_len):
    """The output positions o in [lo, hi) whose input position o*stride + offset lies in [0, in_len)."""
    lo = -(offset // stride)
    if lo < 0:
        lo = 0
    hi = (in_len - 1 - offset) // stride + 1
    if hi > out_len:
        hi = out_len
    if hi < lo:
        hi = lo
    return lo, hi


@njit(cache=True)
def _copy(dst, src):
    for q in range(dst.shape[0]):
        dst[q] = src[q]


@njit(cache=True)
def _fill(dst, value):
    # Inside prange bodies an explicit loop, not ``dst[:] = value``: Numba turns slice assignments
    # there into nested parfors, which tripled the compile time of the parallel kernels.
    for q in range(dst.shape[0]):
        dst[q] = value


@njit(cache=True)
def _im2col_row_shifted(plane, j, off_w, geom, out_h, out_w, dst):
    """One column-matrix row for one depth slice when strides are 1 and the output is as wide as the
    input: output row b reads input row b + j*dH - pH, so the whole slice is one shifted copy of the
    input plane, after which the few columns that wrapped into a neighbouring row are zeroed."""
    height, width = plane.shape
    flat = plane.reshape(height * width)
    row_shift = j * geom[7] - geom[10]
    b_lo, b_hi = _valid_range(row_shift, 1, height, out_h)
    shift = row_shift * width + off_w
    k_lo, k_hi = b_lo * out_w, b_hi * out_w
    k_start = max(k_lo, -shift)
    k_end = max(min(k_hi, height * width - shift), k_start)
    dst[:k_start] = 0
    dst[k_end:] = 0
    _copy(dst[k_start:k_end], flat[k_start + shift:k_end + shift])
    lo, hi = _valid_range(off_w, 1, width, out_w)
    if lo > 0 or hi < out_w:
        for b in range(b_lo, b_hi):
            dst[b * out_w:b * out_w + lo] = 0
            dst[b * out_w + hi:(b + 1) * out_w] = 0


@njit(cache=True)
def im2col(x, geom, out_d, out_h, out_w, col):
    """Fill ``col[(c, i, j, l), (a, b, o)]`` with the input value under tap (i, j, l) of output (a, b, o).

    ``x`` is one image ``(C, D, H, W)``; padding positions become 0. Serial on purpose: it runs at
    copy speed, and the GEMM that follows owns the threads (BLAS); handing the cores back and forth
    between Numba's and BLAS's thread pools inside one op costs more than it saves.
    """
    channels, depth, height, width = x.shape
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    taps = kd * kh * kw
    plane_out = out_h * out_w
    shifted = sh == 1 and sw == 1 and out_w == width
    for row in range(channels * taps):
        c = row // taps
        tap = row % taps
        i = tap // (kh * kw)
        j = (tap // kw) % kh
        l = tap % kw
        dst = col[row]
        off_w = l * dw - pw
        lo, hi = _valid_range(off_w, sw, width, out_w)
        count = hi - lo
        for a in range(out_d):
            zd = a * sd - pd + i * dd
            if zd < 0 or zd >= depth:
                dst[a * plane_out:(a + 1) * plane_out] = 0
                continue
            if shifted:
                _im2col_row_shifted(x[c, zd], j, off_w, geom, out_h, out_w, dst[a * plane_out:(a + 1) * plane_out])
                continue
            for b in range(out_h):
                zh = b * sh - ph + j * dh
                base = (a * out_h + b) * out_w
                segment = dst[base:base + out_w]
                if zh < 0 or zh >= height:
                    segment[:] = 0
                    continue
                segment[:lo] = 0
                segment[hi:] = 0
                start = lo * sw + off_w
                if sw == 1:
                    _copy(segment[lo:hi], x[c, zd, zh, start:start + count])
                else:
                    _copy(segment[lo:hi], x[c, zd, zh, start:start + (count - 1) * sw + 1:sw])


@njit(cache=True)
def _add_bias(out3, bias):
    """out3 (N, M, P) += bias[m] per channel. Serial, like im2col: it sits between BLAS calls."""
    n_images, channels, plane = out3.shape
    for n in range(n_images):
        for m in range(channels):
            b = bias[m]
            row = out3[n, m]
            for p in range(plane):
                row[p] += b


@njit(cache=True)
def conv_gemm(x, w2, bias, geom, group, col, out, act=0, alpha=0.0, beta=0.0):
    """Grouped convolution: per image, im2col then one GEMM per group; ``bias`` may be empty.

    ``w2`` is the weight reshaped to ``(M, C/group * kD*kH*kW)``; ``col`` is a scratch buffer of at
    least ``C*kD*kH*kW * OD*OH*OW`` elements (reused across calls: a fresh 7 MB buffer per call costs
    page faults); ``out`` is ``(N, M, OD, OH, OW)``. ``act`` (with ``alpha``/``beta``) is a fused
    activation from :mod:`qrt.kernels.cpu.activation`, applied with the bias in one pass. GEMM operands are whole C-contiguous arrays
    (``a[g]`` of a reshaped stack, never ``a[lo:hi]``): Numba types a slice as layout 'A', and
    ``np.dot`` on those was 3.5x slower than on the same data typed 'C'.
    """
    n_images, channels, depth, height, width = x.shape
    n_out = w2.shape[0]
    out_d, out_h, out_w = out.shape[2], out.shape[3], out.shape[4]
    plane = out_d * out_h * out_w
    taps = geom[0] * geom[1] * geom[2]
    c_group = channels // group
    m_group = n_out // group
    k_group = c_group * taps
    # A 1x1 kernel with unit strides and no padding reads the image itself as the column matrix.
    pointwise = taps == 1 and geom[3] == 1 and geom[4] == 1 and geom[5] == 1 and \
        geom[9] == 0 and geom[10] == 0 and geom[11] == 0 and plane == depth * height * width
    weights = w2.reshape(group, m_group, k_group)
    columns = col[:channels * taps * plane].reshape(channels * taps, plane)
    out4 = out.reshape(n_images, group, m_group, plane)
    for n in range(n_images):
        if pointwise:
            stacked = x[n].reshape(group, k_group, plane)
        else:
            im2col(x[n], geom, out_d, out_h, out_w, columns)
            stacked = columns.reshape(group, k_group, plane)
        for g in range(group):
            np.dot(weights[g], stacked[g], out4[n, g])
    if act != 0:
        bias_activate_rows(out.reshape(n_images, n_out, plane), bias, act, alpha, beta)
    elif bias.shape[0] > 0:
        _add_bias(out.reshape(n_images, n_out, plane), bias)


@njit(cache=True, parallel=True, fastmath=True)
def conv_depthwise(x, w, bias, geom, out):
    """Direct convolution where every group has one input channel (depthwise, with any multiplier).

    ``w`` is ``(M, 1, kD, kH, kW)`` with M a multiple of C; output channel m reads input channel
    m // (M / C).

    Each (image, channel) plane is first split into zero-padded phase planes: phase (rh, rw) holds
    the padded input at rows u*sH + rh and columns v*sW + rw. In that layout every tap (j, l) of
    every output position is the same flat shift of one phase plane, so a tap is one long
    contiguous multiply-add sweep over a "wide" output plane whose rows are a few columns longer
    than the output's; the extra columns are dropped at the end. Short per-row sweeps (the obvious
    loop) spent most of their time on loop overhead: this is 2-4x faster on MobileNet shapes.
    """
    n_images, channels, depth, height, width = x.shape
    n_out = w.shape[0]
    multiplier = n_out // channels
    out_d, out_h, out_w = out.shape[2], out.shape[3], out.shape[4]
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    has_bias = bias.shape[0] > 0
    cols_q = out_w + ((kw - 1) * dw) // sw
    rows_q = out_h + ((kh - 1) * dh) // sh + 1
    wide_len = out_h * cols_q
    for task in prange(n_images * n_out):
        n = task // n_out
        m = task % n_out
        c = m // multiplier
        initial = bias[m] if has_bias else 0.0
        phases = np.empty((sh, sw, rows_q * cols_q), dtype=x.dtype)
        wide = np.empty(wide_len, dtype=out.dtype)
        for a in range(out_d):
            _fill(wide, initial)
            for i in range(kd):
                zd = a * sd - pd + i * dd
                if zd < 0 or zd >= depth:
                    continue
                for rh in range(sh):
                    for rw in range(sw):
                        phase = phases[rh, rw]
                        off_w = rw - pw
                        lo, hi = _valid_range(off_w, sw, width, cols_q)
                        for u in range(rows_q):
                            dst = phase[u * cols_q:(u + 1) * cols_q]
                            y = u * sh + rh - ph
                            if y < 0 or y >= height or hi <= lo:
                                _fill(dst, 0.0)
                                continue
                            _fill(dst[:lo], 0.0)
                            _fill(dst[hi:], 0.0)
                            start = lo * sw + off_w
                            if sw == 1:
                                _copy(dst[lo:hi], x[n, c, zd, y, start:start + hi - lo])
                            else:
                                _copy(dst[lo:hi], x[n, c, zd, y, start:start + (hi - lo - 1) * sw + 1:sw])
                for j in range(kh):
                    for l in range(kw):
                        wv = w[m, 0, i, j, l]
                        shift = ((j * dh) // sh) * cols_q + (l * dw) // sw
                        src = phases[(j * dh) % sh, (l * dw) % sw, shift:shift + wide_len]
                        for q in range(wide_len):
                            wide[q] += wv * src[q]
            for b in range(out_h):
                _copy(out[n, m, a, b], wide[b * cols_q:b * cols_q + out_w])


@njit(cache=True, parallel=True)
def col2im(cols, geom, in_d, in_h, in_w, out3):
    """Scatter-add the transposed-convolution columns into one image ``out3`` (M, OD, OH, OW).

    ``cols[(m, i, j, l), (a, b, c)]`` is the contribution of input position (a, b, c) through tap
    (i, j, l) to output channel m; it lands at output position (a*s - p + i*d, ...). Output channels
    are independent, so they run in parallel without write conflicts.
    """
    n_out, out_d, out_h, out_w = out3.shape
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    taps = kd * kh * kw
    for m in prange(n_out):
        for tap in range(taps):
            i = tap // (kh * kw)
            j = (tap // kw) % kh
            l = tap % kw
            src = cols[m * taps + tap]
            off_w = l * dw - pw
            lo, hi = _valid_range(off_w, sw, out_w, in_w)
            for a in range(in_d):
                zd = a * sd - pd + i * dd
                if zd < 0 or zd >= out_d:
                    continue
                for b in range(in_h):
                    zh = b * sh - ph + j * dh
                    if zh < 0 or zh >= out_h:
                        continue
                    base = (a * in_h + b) * in_w
                    count = hi - lo
                    if count <= 0:
                        continue
                    values = src[base + lo:base + hi]
                    start = lo * sw + off_w
                    if sw == 1:
                        dst = out3[m, zd, zh, start:start + count]
                        for q in range(count):
                            dst[q] += values[q]
                    else:
                        strided = out3[m, zd, zh, start:start + (count - 1) * sw + 1:sw]
                        for q in range(count):
                            strided[q] += values[q]


@njit(cache=True)
def conv_transpose_gemm(x, wt, bias, geom, group, cols, out):
    """Transposed convolution: per image and group one GEMM ``W_g^T @ X_g``, then col2im.

    ``x`` is ``(N, C, D, H, W)``; ``wt`` is the weight regrouped as ``(group, M/group * kD*kH*kW, C/group)``;
    ``cols`` is a scratch buffer of at least ``M*kD*kH*kW * D*H*W`` elements; ``out`` is
    ``(N, M, OD, OH, OW)`` and is overwritten.
    """
    n_images, channels, in_d, in_h, in_w = x.shape
    n_out = out.shape[1]
    c_group = channels // group
    rows_group = wt.shape[1]
    plane = in_d * in_h * in_w
    stacked_cols = cols[:group * rows_group * plane].reshape(group, rows_group, plane)
    has_bias = bias.shape[0] > 0
    for n in range(n_images):
        stacked_x = x[n].reshape(group, c_group, plane)
        for g in range(group):
            np.dot(wt[g], stacked_x[g], stacked_cols[g])
        image = out[n]
        for m in range(n_out):
            image[m] = bias[m] if has_bias else 0
        col2im(stacked_cols.reshape(group * rows_group, plane), geom, in_d, in_h, in_w, image)
