"""Integer convolution: QLinearConv and ConvInteger on the exact u8 x s8 GEMM of :mod:`.qgemm`.

Every spatial rank is canonicalised to three spatial dims (D, H, W), so one compiled kernel serves
1-D, 2-D and 3-D convolutions. The input is first rewritten once, channels last and per group,
into a padded byte buffer ``(N, G, Dp, Hp, Wp, Cgp)``: int8 data gets its sign bit flipped (so it is
uint8 with zero point ``zx + 128``), borders hold the zero point (a padded input contributes
``zx - zx = 0``), and the channel count of a group is rounded up to a multiple of 4 with zero
bytes whose weights are zero too.

The convolution is then an implicit GEMM: no im2col matrix is built. A GEMM row is an output
position, and the k-th group of 4 bytes of its receptive field lies at a fixed offset ``koff[k]``
from the position's first input byte (tap offset plus channel offset, the same for every position),
so the micro-kernel reads the padded input in place. A tile is up to MR positions of one output
row, ``sw * Cgp`` bytes apart. Results are written channels first, ``out[n, co, position]``.

Grouped convolutions with one input channel per group (depthwise) skip the GEMM: a direct kernel
walks the input once per output channel.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .qgemm import _MR_MAX, _epilogue, microkernel, tag_for


@njit(cache=True, parallel=True)
def qconv(tag, xp, OD, OH, OW, sd, sh, sw, koff, za, need_rowsum, bp, Kp, K, N, nr, col_sum, col_zb, col_bias,
          mode, mult, zy, qmin, qmax, fscale, fbias, out_q, out_i, out_f, lines_per_task, n_groups):
    """All images of a convolution over the padded channels-last buffer ``xp`` (module doc).

    Group g's weights are panels ``g*n_panels ...`` of ``bp``; ``col_*``, ``mult``, ``fscale``,
    ``fbias`` are (G, N); ``out_*`` are (images, G*N, P). A task is ``lines_per_task`` output rows
    of one image and group, times one of ``n_groups`` groups of weight panels.
    """
    n_img, G, Dp, Hp, Wp, Cgp = xp.shape
    n_panels = (N + nr - 1) // nr
    lines = OD * OH
    n_chunks = (lines + lines_per_task - 1) // lines_per_task
    k4 = Kp // 4
    per_group = (n_panels + n_groups - 1) // n_groups
    flat = xp.reshape(-1)
    group_stride = Dp * Hp * Wp * Cgp
    lda = sw * Cgp
    per_image = G * n_chunks * n_groups
    for task in prange(n_img * per_image):
        img = task // per_image
        rest = task - img * per_image
        g = rest // (n_chunks * n_groups)
        rest = rest - g * (n_chunks * n_groups)
        chunk = rest // n_groups
        pgroup = rest - chunk * n_groups
        line_start = chunk * lines_per_task
        line_end = min(lines, line_start + lines_per_task)
        tile = np.empty((_MR_MAX, nr), np.int32)
        stage_q = np.empty((_MR_MAX if mode == 1 else 0, nr), np.uint8)
        stage_i = np.empty((_MR_MAX if mode == 0 else 0, nr), np.int32)
        stage_f = np.empty((_MR_MAX if mode == 2 else 0, nr), np.float32)
        count = (line_end - line_start) * OW
        row_za = np.full(count, za, np.int32)
        row_t = np.zeros(count, np.int32)
        src_base = (img * G + g) * group_stride
        if need_rowsum:
            for r in range(count):
                line = line_start + r // OW
                od = line // OH
                oh = line - od * OH
                ow = r - (r // OW) * OW
                start = src_base + ((od * sd * Hp + oh * sh) * Wp + ow * sw) * Cgp
                s = 0
                for kk in range(k4):
                    at = start + koff[kk]
                    s += np.int32(flat[at]) + np.int32(flat[at + 1]) + np.int32(flat[at + 2]) + np.int32(flat[at + 3])
                row_t[r] = np.int32(s - K * za)
        oq = out_q[img] if mode == 1 else out_q[0]
        oi = out_i[img] if mode == 0 else out_i[0]
        of = out_f[img] if mode == 2 else out_f[0]
        for pn in range(pgroup * per_group, min(n_panels, (pgroup + 1) * per_group)):
            n0 = pn * nr
            n1 = min(N, n0 + nr)
            cs, czb, cb = col_sum[g, n0:n1], col_zb[g, n0:n1], col_bias[g, n0:n1]
            cm, cf, cfb = mult[g, n0:n1], fscale[g, n0:n1], fbias[g, n0:n1]
            b_off = (g * n_panels + pn) * k4 * nr * 4
            for line in range(line_start, line_end):
                od = line // OH
                oh = line - od * OH
                line_base = src_base + (od * sd * Hp + oh * sh) * Wp * Cgp
                r_line = (line - line_start) * OW
                ow = 0
                while ow < OW:
                    rows = microkernel(tag, flat, line_base + ow * lda, lda, bp, b_off, koff, k4, tile, OW - ow)
                    _epilogue(tile, rows, n1 - n0, row_za, row_t, r_line + ow, cs, czb, cb, mode, cm, zy, qmin,
                              qmax, cf, cfb, oq, oi, of, True, line * OW + ow, g * N + n0, stage_q, stage_i,
                              stage_f)
                    ow += rows


@njit(cache=True, parallel=True)
def to_padded_nhwc(x, flip, pads_begin, out):
    """(N, C, D, H, W) bytes into the interior of ``out`` (N, G, Dp, Hp, Wp, Cgp), xor ``flip``.

    ``out`` arrives with the borders filled with the zero point and the padding channels zeroed.
    One task per input row (image, group, d, h), channels innermost, so each output run is written
    once while the C input rows it reads stay in cache.
    """
    n_img, C, D, H, W = x.shape
    G = out.shape[1]
    Cg = C // G
    pd, ph, pw = pads_begin[0], pads_begin[1], pads_begin[2]
    for row in prange(n_img * G * D * H):
        img = row // (G * D * H)
        rest = row - img * (G * D * H)
        g = rest // (D * H)
        rest = rest - g * (D * H)
        d = rest // H
        h = rest - d * H
        for w in range(W):
            for cc in range(Cg):
                out[img, g, d + pd, h + ph, w + pw, cc] = x[img, g * Cg + cc, d, h, w] ^ flip


@njit(cache=True, parallel=True)
def depthwise(xp, kernel, dilations, wt, const, OD, OH, OW, sd, sh, sw, multiplier, mode, mult, zy, qmin, qmax,
              fscale, fbias, out_q, out_i, out_f):
    """Convolution with one input channel per group (any channel multiplier), vectorized over channels.

    ``xp`` is the padded channels-last input (N, Dp, Hp, Wp, C) as uint8 (borders hold the zero
    point), ``wt`` (taps, Cout) int32 weights minus their zero point and ``const`` (Cout,) the int32
    bias minus ``zx * sum(wt)``, so that ``acc[co] = sum_t x[tap t, co // multiplier] * wt[t, co] +
    const[co]`` is the exact sum of ``(x - zx)(w - zw)``. A task is one output row, accumulated as
    (OW, Cout) and written channels first, ``out[n, co, position]``. Indices in the channel loops
    are loop counters (2-D indexing), so LLVM vectorizes them with plain loads.
    """
    n_img, Dp, Hp, Wp, C = xp.shape
    taps, Cout = wt.shape
    kd, kh, kw = kernel[0], kernel[1], kernel[2]
    dd, dh, dw = dilations[0], dilations[1], dilations[2]
    lines = OD * OH
    for task in prange(n_img * lines):
        img = task // lines
        line = task - img * lines
        od = line // OH
        oh = line - od * OH
        acc = np.empty((OW, Cout), np.int32)
        if kd == 1 and kh == 3 and kw == 3 and multiplier == 1:
            # The common 3x3 case: all nine taps in one expression, so each accumulator is stored once.
            r0 = xp[img, od * sd, oh * sh]
            r1 = xp[img, od * sd, oh * sh + dh]
            r2 = xp[img, od * sd, oh * sh + 2 * dh]
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = wt[0], wt[1], wt[2], wt[3], wt[4], wt[5], wt[6], wt[7], wt[8]
            for ow in range(OW):
                iw = ow * sw
                a0, a1, a2 = r0[iw], r0[iw + dw], r0[iw + 2 * dw]
                b0, b1, b2 = r1[iw], r1[iw + dw], r1[iw + 2 * dw]
                c0, c1, c2 = r2[iw], r2[iw + dw], r2[iw + 2 * dw]
                out_row = acc[ow]
                for c in range(Cout):
                    out_row[c] = (const[c] + np.int32(a0[c]) * w0[c] + np.int32(a1[c]) * w1[c]
                                  + np.int32(a2[c]) * w2[c] + np.int32(b0[c]) * w3[c] + np.int32(b1[c]) * w4[c]
                                  + np.int32(b2[c]) * w5[c] + np.int32(c0[c]) * w6[c] + np.int32(c1[c]) * w7[c]
                                  + np.int32(c2[c]) * w8[c])
            kd_loop = 0
        else:
            for ow in range(OW):
                for c in range(Cout):
                    acc[ow, c] = const[c]
            kd_loop = kd
        for i in range(kd_loop):
            for j in range(kh):
                rows = xp[img, od * sd + i * dd, oh * sh + j * dh]          # (Wp, C)
                for l in range(kw):
                    t = (i * kh + j) * kw + l
                    for ow in range(OW):
                        iw = ow * sw + l * dw
                        if multiplier == 1:
                            for c in range(Cout):
                                acc[ow, c] += np.int32(rows[iw, c]) * wt[t, c]
                        else:
                            for c in range(Cout):
                                acc[ow, c] += np.int32(rows[iw, c // multiplier]) * wt[t, c]
        p0 = line * OW
        if mode == 1:
            stage = np.empty((OW, Cout), np.uint8)
            for ow in range(OW):
                for c in range(Cout):
                    v = np.rint(np.float64(acc[ow, c]) * mult[c]) + zy
                    v = min(max(v, qmin), qmax)
                    stage[ow, c] = np.uint8(np.int64(v) & 255)
            for c in range(Cout):
                for ow in range(OW):
                    out_q[img, c, p0 + ow] = stage[ow, c]
        elif mode == 0:
            for c in range(Cout):
                for ow in range(OW):
                    out_i[img, c, p0 + ow] = acc[ow, c]
        else:
            for c in range(Cout):
                for ow in range(OW):
                    out_f[img, c, p0 + ow] = np.float32(acc[ow, c]) * fscale[c] + fbias[c]


def _outputs3(mode, out):
    if mode == 1:
        return out, _EMPTY_I, _EMPTY_F
    if mode == 0:
        return _EMPTY_Q, out, _EMPTY_F
    return _EMPTY_Q, _EMPTY_I, out


_EMPTY_Q = np.zeros((1, 0, 0), np.uint8)
_EMPTY_I = np.zeros((1, 0, 0), np.int32)
_EMPTY_F = np.zeros((1, 0, 0), np.float32)


@functools.lru_cache(maxsize=256)
def receptive_offsets(kernel, dilations, Hp, Wp, cgp):
    """``koff``: byte offset of each 4-byte group of a receptive field from its first byte (cached:
    a convolution asks for the same offsets on every run)."""
    kd, kh, kw = kernel
    dd, dh, dw = dilations
    taps = (np.arange(kd)[:, None, None] * dd * Hp * Wp + np.arange(kh)[None, :, None] * dh * Wp
            + np.arange(kw)[None, None, :] * dw).reshape(-1) * cgp
    return (taps[:, None] + np.arange(0, cgp, 4)[None, :]).reshape(-1).astype(np.int64)


def conv(x5, x_flip, zx, packed, geometry, epi, out3):
    """Convolution of ``x5`` (N, C, D, H, W) bytes (uint8 view) with ``packed`` weights.

    ``zx`` is the input zero point in the shifted (uint8) domain; ``geometry`` is
    ``(group, (kd, kh, kw), strides, dilations, pads_begin, pads_end, (OD, OH, OW), Cgp)``;
    ``out3`` is (N, Cout, OD*OH*OW) of the epilogue's dtype (uint8 view for 8-bit outputs).
    """
    import numba
    group, kernel, strides, dilations, pads_begin, pads_end, out_spatial, cgp = geometry
    n_img, C, D, H, W = x5.shape
    Cg = C // group
    OD, OH, OW = out_spatial
    if n_img == 0 or OD * OH * OW == 0 or packed.N == 0:
        return out3
    Dp = D + pads_begin[0] + pads_end[0]
    Hp = H + pads_begin[1] + pads_end[1]
    Wp = W + pads_begin[2] + pads_end[2]
    # A stride that does not divide the padded size leaves positions no output reads; they still need bytes.
    xp = np.full((n_img, group, Dp, Hp, Wp, cgp), zx, np.uint8)
    if cgp != Cg:
        xp[..., Cg:] = 0
    to_padded_nhwc(x5, np.uint8(x_flip), np.asarray(pads_begin, np.int64), xp)
    sd, sh, sw = strides
    if tuple(kernel) == (1, 1, 1) and tuple(strides) == (1, 1, 1) and (Dp, Hp, Wp) == (OD, OH, OW):
        # A 1x1 convolution is a plain GEMM over all positions: one long "row" tiles without breaks.
        OD, OH, OW, Dp, Hp, Wp = 1, 1, OD * OH * OW, 1, 1, OD * OH * OW
        xp = xp.reshape(n_img, group, 1, 1, OW, cgp)
    koff = receptive_offsets(tuple(kernel), tuple(dilations), Hp, Wp, cgp)
    n_panels = (packed.N + packed.nr - 1) // packed.nr
    threads = numba.get_num_threads()
    lines = OD * OH
    # About 64 output positions per task, and at least two tasks per thread when there is work for them.
    lines_per_task = max(1, min(lines, -(-64 // OW)))
    tasks = n_img * group * -(-lines // lines_per_task)
    while lines_per_task > 1 and tasks < 2 * threads:
        lines_per_task = max(1, lines_per_task // 2)
        tasks = n_img * group * -(-lines // lines_per_task)
    n_groups = 1 if tasks >= threads else min(n_panels, -(-2 * threads // tasks))
    out_q, out_i, out_f = _outputs3(epi.mode, out3)
    qconv(tag_for(packed.isa), xp, OD, OH, OW, sd, sh, sw, koff, int(zx), packed.zb_nonzero, packed.data,
          packed.Kp, packed.K, packed.N, packed.nr, packed.col_sum, packed.zb, epi.bias, epi.mode, epi.mult, epi.zy,
          epi.qmin, epi.qmax, epi.fscale, epi.fbias, out_q, out_i, out_f, lines_per_task, n_groups)
    return out3


def conv_depthwise(x5, x_flip, zx, w_centered, bias, geometry, multiplier, epi, out3):
    """Depthwise convolution (one input channel per group); arguments as :func:`conv`, with
    ``w_centered`` (Cout, taps) int32 weights minus their zero point and ``bias`` (Cout,) int32."""
    group, kernel, strides, dilations, pads_begin, pads_end, out_spatial, _ = geometry
    OD, OH, OW = out_spatial
    n_img, C, D, H, W = x5.shape
    if n_img == 0 or OD * OH * OW == 0:
        return out3
    Dp, Hp, Wp = D + pads_begin[0] + pads_end[0], H + pads_begin[1] + pads_end[1], W + pads_begin[2] + pads_end[2]
    xp = np.full((n_img, 1, Dp, Hp, Wp, C), zx, np.uint8)
    to_padded_nhwc(x5, np.uint8(x_flip), np.asarray(pads_begin, np.int64), xp)
    wt = np.ascontiguousarray(w_centered.T)
    const = (bias.astype(np.int64) - np.int64(zx) * wt.sum(axis=0, dtype=np.int64)).astype(np.int32)
    out_q, out_i, out_f = _outputs3(epi.mode, out3)
    depthwise(xp.reshape(n_img, Dp, Hp, Wp, C), np.asarray(kernel, np.int64), np.asarray(dilations, np.int64), wt,
              const, OD, OH, OW, *strides, multiplier, epi.mode,
              epi.mult[0], epi.zy, epi.qmin, epi.qmax, epi.fscale[0], epi.fbias[0], out_q, out_i, out_f)
    return out3
