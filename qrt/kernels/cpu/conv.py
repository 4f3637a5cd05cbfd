"""Convolution kernels: im2col + BLAS GEMM, a direct depthwise kernel, and GEMM + col2im for ConvTranspose.

Every kernel works on the canonical 3-D spatial layout: inputs are ``(N, C, D, H, W)`` and weights
``(M, C/group, kD, kH, kW)``, with unit dimensions standing in for the missing spatial axes of 1-D
and 2-D convolutions, so one compiled kernel per dtype serves all ranks.

``geom`` packs the window geometry as int64 ``[kD, kH, kW, sD, sH, sW, dD, dH, dW, pD, pH, pW]``
(kernel, strides, dilations, padding at the start of each axis).

The GEMM is ``np.dot`` on contiguous 2-D blocks (Numba hands it to BLAS). The column buffer is laid
out ``(C*kD*kH*kW, OD*OH*OW)`` so the product lands directly in NCHW order, with no transpose.
"""
import numpy as np
from numba import njit, prange


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


@njit(cache=True, parallel=True)
def im2col(x, geom, out_d, out_h, out_w, col):
    """Fill ``col[(c, i, j, l), (a, b, o)]`` with the input value under tap (i, j, l) of output (a, b, o).

    ``x`` is one image ``(C, D, H, W)``; padding positions become 0.
    """
    channels, depth, height, width = x.shape
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    taps = kd * kh * kw
    for row in prange(channels * taps):
        c = row // taps
        tap = row % taps
        i = tap // (kh * kw)
        j = (tap // kw) % kh
        l = tap % kw
        dst = col[row]
        off_w = l * dw - pw
        lo, hi = _valid_range(off_w, sw, width, out_w)
        for a in range(out_d):
            zd = a * sd - pd + i * dd
            for b in range(out_h):
                zh = b * sh - ph + j * dh
                base = (a * out_h + b) * out_w
                if zd < 0 or zd >= depth or zh < 0 or zh >= height:
                    for o in range(out_w):
                        dst[base + o] = 0
                    continue
                src = x[c, zd, zh]
                for o in range(lo):
                    dst[base + o] = 0
                if sw == 1:
                    for o in range(lo, hi):
                        dst[base + o] = src[o + off_w]
                else:
                    for o in range(lo, hi):
                        dst[base + o] = src[o * sw + off_w]
                for o in range(hi, out_w):
                    dst[base + o] = 0


@njit(cache=True, parallel=True)
def _add_bias(out3, bias):
    """out3 (N, M, P) += bias[m] per channel."""
    n_images, channels, plane = out3.shape
    for t in prange(n_images * channels):
        n = t // channels
        m = t % channels
        b = bias[m]
        row = out3[n, m]
        for p in range(plane):
            row[p] += b


@njit(cache=True)
def conv_gemm(x, w2, bias, geom, group, out):
    """Grouped convolution: per image, im2col then one GEMM per group; ``bias`` may be empty.

    ``w2`` is the weight reshaped to ``(M, C/group * kD*kH*kW)``; ``out`` is ``(N, M, OD, OH, OW)``.
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
    col = np.empty((0 if pointwise else channels * taps, plane), dtype=x.dtype)
    out3 = out.reshape(n_images, n_out, plane)
    for n in range(n_images):
        if pointwise:
            cols = x[n].reshape(channels, plane)
        else:
            im2col(x[n], geom, out_d, out_h, out_w, col)
            cols = col
        for g in range(group):
            np.dot(w2[g * m_group:(g + 1) * m_group], cols[g * k_group:(g + 1) * k_group],
                   out3[n, g * m_group:(g + 1) * m_group])
    if bias.shape[0] > 0:
        _add_bias(out3, bias)


@njit(cache=True, parallel=True, fastmath=True)
def conv_depthwise(x, w, bias, geom, out):
    """Direct convolution where every group has one input channel (depthwise, with any multiplier).

    ``w`` is ``(M, 1, kD, kH, kW)`` with M a multiple of C; output channel m reads input channel
    m // (M / C). Each tap adds a shifted input row into an output row, a loop LLVM vectorizes.
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
    for t in prange(n_images * n_out):
        n = t // n_out
        m = t % n_out
        c = m // multiplier
        start = bias[m] if has_bias else 0.0
        for a in range(out_d):
            for b in range(out_h):
                row = out[n, m, a, b]
                for o in range(out_w):
                    row[o] = start
                for i in range(kd):
                    zd = a * sd - pd + i * dd
                    if zd < 0 or zd >= depth:
                        continue
                    for j in range(kh):
                        zh = b * sh - ph + j * dh
                        if zh < 0 or zh >= height:
                            continue
                        src = x[n, c, zd, zh]
                        for l in range(kw):
                            wv = w[m, 0, i, j, l]
                            off_w = l * dw - pw
                            lo, hi = _valid_range(off_w, sw, width, out_w)
                            if sw == 1:
                                for o in range(lo, hi):
                                    row[o] += wv * src[o + off_w]
                            else:
                                for o in range(lo, hi):
                                    row[o] += wv * src[o * sw + off_w]


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
                    dst = out3[m, zd, zh]
                    base = (a * in_h + b) * in_w
                    for c in range(lo, hi):
                        dst[c * sw + off_w] += src[base + c]


@njit(cache=True)
def conv_transpose_gemm(x, wt, bias, geom, group, out):
    """Transposed convolution: per image and group one GEMM ``W_g^T @ X_g``, then col2im.

    ``x`` is ``(N, C, D, H, W)``; ``wt`` is the weight regrouped as ``(group, M/group * kD*kH*kW, C/group)``;
    ``out`` is ``(N, M, OD, OH, OW)`` and is overwritten.
    """
    n_images, channels, in_d, in_h, in_w = x.shape
    n_out = out.shape[1]
    taps = geom[0] * geom[1] * geom[2]
    c_group = channels // group
    rows_group = wt.shape[1]
    plane = in_d * in_h * in_w
    cols = np.empty((n_out * taps, plane), dtype=x.dtype)
    has_bias = bias.shape[0] > 0
    for n in range(n_images):
        x2 = x[n].reshape(channels, plane)
        for g in range(group):
            np.dot(wt[g], x2[g * c_group:(g + 1) * c_group], cols[g * rows_group:(g + 1) * rows_group])
        image = out[n]
        for m in range(n_out):
            image[m] = bias[m] if has_bias else 0
        col2im(cols, geom, in_d, in_h, in_w, image)
