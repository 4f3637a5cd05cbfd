"""Integer convolution: QLinearConv and ConvInteger on the exact u8 x s8 GEMM of :mod:`.qgemm`.

Every spatial rank is canonicalised to three spatial dims (D, H, W), so one compiled kernel serves
1-D, 2-D and 3-D convolutions. The input is first rewritten once, channels last and per group,
into a padded byte buffer ``(N, G, Dp, Hp, Wp, Cgp)``: int8 data gets its sign bit flipped (so it is
uint8 with zero point ``zx + 128``), borders hold the zero point (a padded input contributes
``zx - zx = 0``), and the channel count of a group is rounded up to a multiple of 4 with zero
bytes whose weights are zero too. A receptive field is then ``kd*kh*kw`` runs of ``Cgp`` contiguous
bytes: the im2col rows are plain copies, built inside each GEMM task for the rows it multiplies
(while they are in cache), and 1x1 stride-1 convolutions use the buffer as the GEMM operand
directly. Results are written channels first, ``out[n, co, position]``.

Grouped convolutions with one input channel per group (depthwise) skip the GEMM: a direct kernel
walks the input once per output channel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .qgemm import (_EMPTY_F32, _EMPTY_I32, _EMPTY_U8, _MR_MAX, _epilogue, microkernel, split_work,
                    tag_for)


@njit(cache=True, parallel=True)
def qconv(tag, xp, OD, OH, OW, kd, kh, kw, sd, sh, sw, dd, dh, dw, za, need_rowsum,
          bp, Kp, K, N, nr, col_sum, col_zb, col_bias, mode, mult, zy, qmin, qmax, fscale, fbias,
          out_q, out_i, out_f, mc, n_groups):
    """All images of a convolution; ``xp`` is the padded channels-last buffer (module doc).

    Row ``p`` of image ``img``'s GEMM is output position p; its ``Kp = kd*kh*kw*Cgp`` bytes are the
    receptive field in (tap, channel) order. Group g's weights are panels ``g*n_panels ...`` of
    ``bp``; ``col_*``, ``mult``, ``fscale``, ``fbias`` are (G, N); ``out_*`` are (images, G*N, P).
    """
    n_img, G, Dp, Hp, Wp, Cgp = xp.shape
    P = OD * OH * OW
    n_panels = (N + nr - 1) // nr
    n_chunks = (P + mc - 1) // mc
    k4 = Kp // 4
    per_group = (n_panels + n_groups - 1) // n_groups
    direct = (kd == 1 and kh == 1 and kw == 1 and sd == 1 and sh == 1 and sw == 1 and Dp == OD
              and Hp == OH and Wp == OW)
    flat = xp.reshape(-1)
    group_stride = Dp * Hp * Wp * Cgp
    per_image = G * n_chunks * n_groups
    for task in prange(n_img * per_image):
        img = task // per_image
        rest = task - img * per_image
        g = rest // (n_chunks * n_groups)
        rest = rest - g * (n_chunks * n_groups)
        chunk = rest // n_groups
        pgroup = rest - chunk * n_groups
        m_start = chunk * mc
        m_end = min(P, m_start + mc)
        rows_here = m_end - m_start
        tile = np.empty(_MR_MAX * nr, np.int32)
        row_za = np.full(rows_here, za, np.int32)
        row_t = np.zeros(rows_here, np.int32)
        src_base = (img * G + g) * group_stride
        if direct:
            a = flat
            a_base = src_base + m_start * Cgp
            lda = Cgp
            if need_rowsum:
                for r in range(rows_here):
                    s = 0
                    off = a_base + r * lda
                    for c in range(Cgp):
                        s += np.int32(flat[off + c])
                    row_t[r] = np.int32(s - K * za)
        else:
            a = np.empty(rows_here * Kp, np.uint8)
            a_base = 0
            lda = Kp
            for r in range(rows_here):
                p = m_start + r
                od = p // (OH * OW)
                rem = p - od * (OH * OW)
                oh = rem // OW
                ow = rem - oh * OW
                dst = r * Kp
                for i in range(kd):
                    for j in range(kh):
                        src_row = src_base + (((od * sd + i * dd) * Hp + oh * sh + j * dh) * Wp
                                              + ow * sw) * Cgp
                        for l in range(kw):
                            src = src_row + l * dw * Cgp
                            for c in range(Cgp):
                                a[dst + c] = flat[src + c]
                            dst += Cgp
                for c in range(dst, (r + 1) * Kp):
                    a[c] = 0
                if need_rowsum:
                    s = 0
                    for c in range(r * Kp, (r + 1) * Kp):
                        s += np.int32(a[c])
                    row_t[r] = np.int32(s - K * za)
        oq = out_q[img] if mode == 1 else out_q[0]
        oi = out_i[img] if mode == 0 else out_i[0]
        of = out_f[img] if mode == 2 else out_f[0]
        for pn in range(pgroup * per_group, min(n_panels, (pgroup + 1) * per_group)):
            n0 = pn * nr
            cols = min(nr, N - n0)
            m0 = m_start
            while m0 < m_end:
                rows = microkernel(tag, a, a_base + (m0 - m_start) * lda, lda, bp,
                                   (g * n_panels + pn) * k4 * nr * 4, k4, tile, m_end - m0)
                _epilogue(tile, nr, rows, cols, row_za, row_t, m0 - m_start, n0, col_sum[g],
                          col_zb[g], col_bias[g], mode, mult[g], zy, qmin, qmax, fscale[g], fbias[g],
                          oq, oi, of, True, m0, g * N)
                m0 += rows


@njit(cache=True, parallel=True)
def to_padded_nhwc(x, flip, pads_begin, out):
    """(N, C, D, H, W) bytes into the interior of ``out`` (N, G, Dp, Hp, Wp, Cgp), xor ``flip``.

    ``out`` arrives with the borders filled with the zero point and the padding channels zeroed.
    """
    n_img, C, D, H, W = x.shape
    G = out.shape[1]
    Cg = C // G
    pd, ph, pw = pads_begin[0], pads_begin[1], pads_begin[2]
    for row in prange(n_img * C * D * H):
        img = row // (C * D * H)
        rest = row - img * (C * D * H)
        c = rest // (D * H)
        rest = rest - c * (D * H)
        d = rest // H
        h = rest - d * H
        g = c // Cg
        cc = c - g * Cg
        for w in range(W):
            out[img, g, d + pd, h + ph, w + pw, cc] = x[img, c, d, h, w] ^ flip


@njit(cache=True, parallel=True)
def depthwise(x, flip, za, w, bias, OD, OH, OW, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw,
              multiplier, mode, mult, zy, qmin, qmax, fscale, fbias, out_q, out_i, out_f):
    """Convolution with one input channel per group; any channel multiplier.

    ``x`` is (N, C, D, H, W) bytes (xor ``flip`` makes them uint8, ``za`` their zero point),
    ``w`` (Cout, kd*kh*kw) int32 with the weight zero point already subtracted, ``bias`` (Cout,)
    int32, ``out_*`` (N, Cout, P). Output channel co reads input channel ``co // multiplier``.
    Padding contributes ``zx - zx = 0``, so padded taps are skipped.
    """
    n_img, C, D, H, W = x.shape
    Cout = w.shape[0]
    for task in prange(n_img * Cout * OD):
        img = task // (Cout * OD)
        rest = task - img * (Cout * OD)
        co = rest // OD
        od = rest - co * OD
        ci = co // multiplier
        acc = np.empty(OW, np.int32)
        for oh in range(OH):
            for ow in range(OW):
                acc[ow] = 0
            for i in range(kd):
                d = od * sd - pd + i * dd
                if d < 0 or d >= D:
                    continue
                for j in range(kh):
                    h = oh * sh - ph + j * dh
                    if h < 0 or h >= H:
                        continue
                    for l in range(kw):
                        wv = w[co, (i * kh + j) * kw + l]
                        off = l * dw - pw
                        # Only output columns whose input column lies inside the row.
                        lo = 0
                        if off < 0:
                            lo = (-off + sw - 1) // sw
                        hi = 0
                        if W - 1 - off >= 0:
                            hi = min(OW, (W - 1 - off) // sw + 1)
                        for ow in range(lo, hi):
                            acc[ow] += wv * (np.int32(x[img, ci, d, h, ow * sw + off] ^ flip) - za)
            base = (od * OH + oh) * OW
            for ow in range(OW):
                v32 = np.int32(acc[ow] + bias[co])
                p = base + ow
                if mode == 1:
                    v = np.rint(np.float64(v32) * mult[co]) + zy
                    if v < qmin:
                        v = qmin
                    elif v > qmax:
                        v = qmax
                    out_q[img, co, p] = np.uint8(np.int64(v) & 255)
                elif mode == 0:
                    out_i[img, co, p] = v32
                else:
                    out_f[img, co, p] = np.float32(v32) * fscale[co] + fbias[co]


_EMPTY3 = {np.dtype(np.uint8): np.zeros((1, 0, 0), np.uint8), np.dtype(np.int32): np.zeros((1, 0, 0), np.int32),
           np.dtype(np.float32): np.zeros((1, 0, 0), np.float32)}


def _outputs3(mode, out):
    if mode == 1:
        return out, _EMPTY3[np.dtype(np.int32)], _EMPTY3[np.dtype(np.float32)]
    if mode == 0:
        return _EMPTY3[np.dtype(np.uint8)], out, _EMPTY3[np.dtype(np.float32)]
    return _EMPTY3[np.dtype(np.uint8)], _EMPTY3[np.dtype(np.int32)], out


def conv(x5, x_flip, zx, packed, geometry, epi, out3):
    """Convolution of ``x5`` (N, C, D, H, W) bytes (uint8 view) with ``packed`` weights.

    ``zx`` is the input zero point in the shifted (uint8) domain; ``geometry`` is
    ``(group, (kd, kh, kw), strides, dilations, pads_begin, pads_end, (OD, OH, OW), Cgp)``;
    ``out3`` is (N, Cout, OD*OH*OW) of the epilogue's dtype (uint8 view for 8-bit outputs).
    """
    group, kernel, strides, dilations, pads_begin, pads_end, out_spatial, cgp = geometry
    n_img, C, D, H, W = x5.shape
    Cg = C // group
    Dp = D + pads_begin[0] + pads_end[0]
    Hp = H + pads_begin[1] + pads_end[1]
    Wp = W + pads_begin[2] + pads_end[2]
    # Positions no output reads (a stride that does not divide the padded size) still need bytes.
    xp = np.full((n_img, group, Dp, Hp, Wp, cgp), zx, np.uint8)
    if cgp != Cg:
        xp[..., Cg:] = 0
    if x5.size:
        to_padded_nhwc(x5, np.uint8(x_flip), np.asarray(pads_begin, np.int64), xp)
    OD, OH, OW = out_spatial
    P = OD * OH * OW
    if n_img == 0 or P == 0 or packed.N == 0:
        return out3
    n_panels = (packed.N + packed.nr - 1) // packed.nr
    mc, n_groups = split_work(P, n_panels, packed.Kp)
    # Images and groups are tasks too: split panels only if they are not enough.
    if n_img * group > 1:
        n_groups = 1
    out_q, out_i, out_f = _outputs3(epi.mode, out3)
    qconv(tag_for(packed.isa), xp, OD, OH, OW, *kernel, *strides, *dilations, int(zx),
          packed.zb_nonzero, packed.data, packed.Kp, packed.K, packed.N, packed.nr, packed.col_sum,
          packed.zb, epi.bias, epi.mode, epi.mult, epi.zy, epi.qmin, epi.qmax, epi.fscale, epi.fbias,
          out_q, out_i, out_f, mc, n_groups)
    return out3


def conv_depthwise(x5, x_flip, zx, w_centered, bias, geometry, multiplier, epi, out3):
    """Depthwise convolution (one input channel per group); arguments as :func:`conv`."""
    group, kernel, strides, dilations, pads_begin, pads_end, out_spatial, _ = geometry
    OD, OH, OW = out_spatial
    if x5.shape[0] == 0 or OD * OH * OW == 0:
        return out3
    out_q, out_i, out_f = _outputs3(epi.mode, out3)
    depthwise(x5, np.uint8(x_flip), np.int32(zx), w_centered, bias, OD, OH, OW, *kernel, *strides,
              *dilations, *pads_begin, multiplier, epi.mode, epi.mult[0], epi.zy, epi.qmin, epi.qmax,
              epi.fscale[0], epi.fbias[0], out_q, out_i, out_f)
    return out3
