"""Integer convolution: QLinearConv and ConvInteger on the exact u8 x s8 GEMM of :mod:`.qgemm`.

Every spatial rank is canonicalised to three spatial dims (D, H, W), so one compiled kernel serves
1-D, 2-D and 3-D convolutions. The kernel reads a channels-last byte buffer ``(N, Dp, Hp, Wp, Cp)``
whose group g occupies bytes ``g*Cgp ...`` of a position: int8 data has its sign bit flipped (so it
is uint8 with zero point ``zx + 128``), borders hold the zero point (a padded input contributes
``zx - zx = 0``), and a group's channel count is rounded up to a multiple of 4 with zero bytes whose
weights are zero too. A channels-last uint8 input that needs none of that (no padding, groups of a
multiple of 4 channels) is that buffer already and is read in place; any other input is copied
into a reused buffer in one pass (:func:`pad_from_nhwc`, :func:`pad_from_nchw`).

The convolution is then an implicit GEMM: no im2col matrix is built. A GEMM row is an output
position, and the k-th group of 4 bytes of its receptive field lies at a fixed offset ``koff[k]``
from the position's first input byte (tap offset plus channel offset, the same for every position),
so the micro-kernel reads the buffer in place. A tile is up to MR positions of one output row,
``sw * Cp`` bytes apart. Results are written channels last, ``out[n, position, co]``, straight from
the epilogue, or channels first, ``out[n, co, position]``, through a small transposing stage.
Everything that depends on the input shape only (buffer shape, offsets, work split) is worked out
once per shape by :func:`bind`.

Where the host has AMX tiles (:mod:`.qgemm_amx`), :func:`qconv_amx` runs the same GEMM on them. A
tile row is 64 contiguous bytes of k, which a receptive field is not, so a task first gathers its
positions' receptive fields (one contiguous run of ``cgp`` bytes per tap) into rows zero-padded to
whole 64-byte blocks, then multiplies them by each panel with the same epilogue. An unstrided,
unpadded 1x1 convolution whose group depth is a multiple of 64 needs no gather: its positions are
already such rows, ``Cp`` bytes apart.

Grouped convolutions with one input channel per group (depthwise) skip the GEMM: a direct kernel
walks the input once per output channel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import qgemm_amx as amx
from .qgemm import _MR_MAX, _epilogue, microkernel, tag_for
from .threads import launcher, num_threads, serial_twin


@serial_twin
@njit(cache=True, parallel=True)
def qconv(tag, xp, OD, OH, OW, sd, sh, sw, koff, cgp, za, need_rowsum, bp, Kp, K, N, nr, col_sum, col_zb,
          col_bias, mode, mult, zy, qmin, qmax, fscale, fbias, channels_last, out_q, out_i, out_f,
          lines_per_task, seg, n_groups):
    """All images of a convolution over the padded channels-last buffer ``xp`` (module doc).

    Group g's weights are panels ``g*n_panels ...`` of ``bp`` and its channels start at byte
    ``g * cgp`` of a position; ``col_*``, ``mult``, ``fscale``, ``fbias`` are (G, N); ``out_*`` are
    (images, G*N, P), or (images, P, G*N) with ``channels_last``. A task is ``lines_per_task``
    output rows, cut into segments of ``seg`` positions, of one image and group, times one of
    ``n_groups`` groups of weight panels: the segments let one long row (a 1x1 convolution seen as
    a single row) spread over every thread.
    """
    n_img, Dp, Hp, Wp, Cp = xp.shape
    G = col_sum.shape[0]
    n_panels = (N + nr - 1) // nr
    lines = OD * OH
    n_chunks = (lines + lines_per_task - 1) // lines_per_task
    n_segs = (OW + seg - 1) // seg
    k4 = Kp // 4
    per_group = (n_panels + n_groups - 1) // n_groups
    flat = xp.reshape(-1)
    image_stride = Dp * Hp * Wp * Cp
    lda = sw * Cp
    per_image = G * n_chunks * n_segs * n_groups
    for task in prange(n_img * per_image):
        img = task // per_image
        rest = task - img * per_image
        g = rest // (n_chunks * n_segs * n_groups)
        rest = rest - g * (n_chunks * n_segs * n_groups)
        chunk = rest // (n_segs * n_groups)
        rest = rest - chunk * (n_segs * n_groups)
        segment = rest // n_groups
        pgroup = rest - segment * n_groups
        line_start = chunk * lines_per_task
        line_end = min(lines, line_start + lines_per_task)
        ow_start = segment * seg
        ow_end = min(OW, ow_start + seg)
        width = ow_end - ow_start
        tile = np.empty((_MR_MAX, nr), np.int32)
        trans = not channels_last
        stage_q = np.empty((_MR_MAX if mode == 1 and trans else 0, nr), np.uint8)
        stage_i = np.empty((_MR_MAX if mode == 0 and trans else 0, nr), np.int32)
        stage_f = np.empty((_MR_MAX if mode == 2 and trans else 0, nr), np.float32)
        count = (line_end - line_start) * width
        row_za = np.full(count, za, np.int32)
        row_t = np.zeros(count, np.int32)
        src_base = img * image_stride + g * cgp
        if need_rowsum:
            for r in range(count):
                line = line_start + r // width
                od = line // OH
                oh = line - od * OH
                ow = ow_start + r - (r // width) * width
                start = src_base + ((od * sd * Hp + oh * sh) * Wp + ow * sw) * Cp
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
                line_base = src_base + (od * sd * Hp + oh * sh) * Wp * Cp
                r_line = (line - line_start) * width - ow_start
                ow = ow_start
                while ow < ow_end:
                    rows = microkernel(tag, flat, line_base + ow * lda, lda, bp, b_off, koff, k4, tile, ow_end - ow)
                    _epilogue(tile, rows, n1 - n0, row_za, row_t, r_line + ow, cs, czb, cb, mode, cm, zy, qmin,
                              qmax, cf, cfb, oq, oi, of, trans, line * OW + ow, g * N + n0, stage_q, stage_i,
                              stage_f)
                    ow += rows


@serial_twin
@njit(cache=True, parallel=True)
def qconv_amx(xp, OD, OH, OW, sd, sh, sw, tapoff, cgp, za, need_rowsum, bp, Kp, K, N, col_sum, col_zb, col_bias,
              mode, mult, zy, qmin, qmax, fscale, fbias, channels_last, out_q, out_i, out_f, mc, n_groups, in_place):
    """:func:`qconv` on AMX tiles (module doc): ``tapoff`` holds each tap's byte offset from a
    position's first byte; a task is ``mc`` output positions (a multiple of 32) of one image and
    group times one of ``n_groups`` groups of weight panels. ``in_place``: the positions are rows of
    ``Kp`` bytes (a multiple of 64) ``Cp`` apart, read without a gather (a flat 1x1 convolution)."""
    n_img, Dp, Hp, Wp, Cp = xp.shape
    G = col_sum.shape[0]
    nr = 32
    n_panels = (N + nr - 1) // nr
    P = OD * OH * OW
    n_chunks = (P + mc - 1) // mc
    per_group = (n_panels + n_groups - 1) // n_groups
    width = (Kp + 63) // 64 * 64
    kblocks = width // 64
    taps = tapoff.shape[0]
    flat = xp.reshape(-1)
    image_stride = Dp * Hp * Wp * Cp
    per_image = G * n_chunks * n_groups
    trans = not channels_last
    for task in prange(n_img * per_image):
        img = task // per_image
        rest = task - img * per_image
        g = rest // (n_chunks * n_groups)
        rest = rest - g * (n_chunks * n_groups)
        chunk = rest // n_groups
        pgroup = rest - chunk * n_groups
        p_start = chunk * mc
        count = min(P, p_start + mc) - p_start
        src_base = img * image_stride + g * cgp
        # The last block's rows, copied once when reading them in place would run past the buffer.
        last = (count - 1) // 32 * 32
        tail = np.empty(32 * width if in_place else 0, np.uint8)
        use_tail = False
        if in_place:
            rows_a = flat
            a_base = src_base + p_start * Cp
            lda = Cp
            last_tile_rows = 32 if count - last > 16 else 16
            if a_base + (last + last_tile_rows - 1) * lda + width > flat.shape[0]:
                use_tail = True
                for r in range(count - last):
                    at = a_base + (last + r) * lda
                    tail[r * width:(r + 1) * width] = flat[at:at + width]
        else:
            lda = width + 64 if width % 1024 == 0 else width
            rows_a = np.empty((count + 31) // 32 * 32 * lda, np.uint8)
            a_base = 0
            for r in range(count):
                p = p_start + r
                od = p // (OH * OW)
                oh = (p - od * OH * OW) // OW
                ow = p - od * OH * OW - oh * OW
                start = src_base + ((od * sd * Hp + oh * sh) * Wp + ow * sw) * Cp
                dst = rows_a[r * lda:r * lda + width]
                for t in range(taps):
                    src = flat[start + tapoff[t]:start + tapoff[t] + cgp]
                    piece = dst[t * cgp:(t + 1) * cgp]
                    for c in range(cgp):
                        piece[c] = src[c]
                for c in range(taps * cgp, width):
                    dst[c] = 0
        row_za = np.full(count, za, np.int32)
        row_t = np.zeros(count, np.int32)
        if need_rowsum:
            for r in range(count):
                row = rows_a[a_base + r * lda:a_base + r * lda + Kp]
                s = 0
                for c in range(Kp):
                    s += np.int32(row[c])
                row_t[r] = np.int32(s - K * za)
        tile = np.empty((32, 32), np.int32)
        stage_q = np.empty((32 if mode == 1 and trans else 0, nr), np.uint8)
        stage_i = np.empty((32 if mode == 0 and trans else 0, nr), np.int32)
        stage_f = np.empty((32 if mode == 2 and trans else 0, nr), np.float32)
        oq = out_q[img] if mode == 1 else out_q[0]
        oi = out_i[img] if mode == 0 else out_i[0]
        of = out_f[img] if mode == 2 else out_f[0]
        amx._configure()
        for pn in range(pgroup * per_group, min(n_panels, (pgroup + 1) * per_group)):
            n0 = pn * nr
            n1 = min(N, n0 + nr)
            cs, czb, cb = col_sum[g, n0:n1], col_zb[g, n0:n1], col_bias[g, n0:n1]
            cm, cf, cfb = mult[g, n0:n1], fscale[g, n0:n1], fbias[g, n0:n1]
            b_off = (g * n_panels + pn) * Kp * nr
            r0 = 0
            while r0 < count:
                rows = min(32, count - r0)
                tile_rows = 32 if rows > 16 else 16
                a_off = a_base + r0 * lda
                if not (use_tail and r0 == last):
                    if tile_rows == 32:
                        amx._block32(rows_a, a_off, lda, bp, b_off, kblocks, tile)
                    else:
                        amx._block16(rows_a, a_off, lda, bp, b_off, kblocks, tile)
                else:
                    if tile_rows == 32:
                        amx._block32(tail, 0, width, bp, b_off, kblocks, tile)
                    else:
                        amx._block16(tail, 0, width, bp, b_off, kblocks, tile)
                _epilogue(tile, rows, n1 - n0, row_za, row_t, r0, cs, czb, cb, mode, cm, zy, qmin, qmax, cf, cfb,
                          oq, oi, of, trans, p_start + r0, g * N + n0, stage_q, stage_i, stage_f)
                r0 += rows
        amx._release()


@serial_twin
@njit(cache=True, parallel=True)
def pad_from_nchw(x, flip, zx, pads_begin, groups, cgp, out):
    """(N, C, D, H, W) bytes xor ``flip`` into every byte of ``out`` (N, Dp, Hp, Wp, groups*cgp).

    Group g's channels go to bytes ``g*cgp ...`` of a position; borders hold ``zx`` and the
    channels that round a group up to ``cgp`` hold 0, so the buffer can be reused without a fill.
    One task per output row; the input is read along its rows (contiguous) and the row written in
    L1, so the transpose costs one pass over each side.
    """
    n_img, C, D, H, W = x.shape
    Dp, Hp, Wp, Cp = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
    Cg = C // groups
    pd, ph, pw = pads_begin[0], pads_begin[1], pads_begin[2]
    for row in prange(n_img * Dp * Hp):
        img = row // (Dp * Hp)
        rest = row - img * (Dp * Hp)
        dp = rest // Hp
        hp = rest - dp * Hp
        d = dp - pd
        h = hp - ph
        dst = out[img, dp, hp]
        inside = 0 <= d < D and 0 <= h < H
        for w in range(Wp):
            iw = w - pw
            fill = zx if not inside or iw < 0 or iw >= W else 0
            for g in range(groups):
                for cc in range(cgp):
                    dst[w, g * cgp + cc] = fill if cc < Cg else 0
        if inside:
            for c in range(C):
                g = c // Cg
                at = g * cgp + c - g * Cg
                src = x[img, c, d, h]
                for w in range(W):
                    dst[w + pw, at] = src[w] ^ flip


@serial_twin
@njit(cache=True, parallel=True)
def pad_from_nhwc(x, flip, zx, pads_begin, groups, cgp, out):
    """:func:`pad_from_nchw` for a channels-last input (N, D, H, W, C): rows are copied as they are."""
    n_img, D, H, W, C = x.shape
    Dp, Hp, Wp = out.shape[1], out.shape[2], out.shape[3]
    Cg = C // groups
    pd, ph, pw = pads_begin[0], pads_begin[1], pads_begin[2]
    for row in prange(n_img * Dp * Hp):
        img = row // (Dp * Hp)
        rest = row - img * (Dp * Hp)
        dp = rest // Hp
        hp = rest - dp * Hp
        d = dp - pd
        h = hp - ph
        dst = out[img, dp, hp]
        inside = 0 <= d < D and 0 <= h < H
        for w in range(Wp):
            iw = w - pw
            pixel = dst[w]
            if not inside or iw < 0 or iw >= W:
                for g in range(groups):
                    for cc in range(cgp):
                        pixel[g * cgp + cc] = zx if cc < Cg else 0
                continue
            src = x[img, d, h, iw]
            if cgp == Cg:
                for c in range(C):
                    pixel[c] = src[c] ^ flip
            else:
                for g in range(groups):
                    for cc in range(cgp):
                        pixel[g * cgp + cc] = src[g * Cg + cc] ^ flip if cc < Cg else 0


@njit(cache=True, parallel=True)
def depthwise(xp, kernel, dilations, wt, const, OD, OH, OW, sd, sh, sw, multiplier, mode, mult, zy, qmin, qmax,
              fscale, fbias, channels_last, out_q, out_i, out_f):
    """Convolution with one input channel per group (any channel multiplier), vectorized over channels.

    ``xp`` is the padded channels-last input (N, Dp, Hp, Wp, C) as uint8 (borders hold the zero
    point), ``wt`` (taps, Cout) int32 weights minus their zero point and ``const`` (Cout,) the int32
    bias minus ``zx * sum(wt)``, so that ``acc[co] = sum_t x[tap t, co // multiplier] * wt[t, co] +
    const[co]`` is the exact sum of ``(x - zx)(w - zw)``. A task is one output row, accumulated as
    (OW, Cout) and written channels first, ``out[n, co, position]``, or with ``channels_last`` as
    it is, ``out[n, position, co]``. Indices in the channel loops
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
            stage = out_q[img, p0:p0 + OW] if channels_last else np.empty((OW, Cout), np.uint8)
            for ow in range(OW):
                for c in range(Cout):
                    v = np.rint(np.float64(acc[ow, c]) * mult[c]) + zy
                    v = min(max(v, qmin), qmax)
                    stage[ow, c] = np.uint8(np.int64(v) & 255)
            if not channels_last:
                for c in range(Cout):
                    for ow in range(OW):
                        out_q[img, c, p0 + ow] = stage[ow, c]
        elif mode == 0:
            if channels_last:
                out_i[img, p0:p0 + OW] = acc
            else:
                for c in range(Cout):
                    for ow in range(OW):
                        out_i[img, c, p0 + ow] = acc[ow, c]
        else:
            for c in range(Cout):
                for ow in range(OW):
                    if channels_last:
                        out_f[img, p0 + ow, c] = np.float32(acc[ow, c]) * fscale[c] + fbias[c]
                    else:
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


def receptive_offsets(kernel, dilations, Hp, Wp, Cp, cgp):
    """``koff``: byte offset of each 4-byte group of a receptive field from its first byte, for
    positions ``Cp`` bytes apart whose group holds ``cgp`` bytes."""
    kd, kh, kw = kernel
    dd, dh, dw = dilations
    taps = (np.arange(kd)[:, None, None] * dd * Hp * Wp + np.arange(kh)[None, :, None] * dh * Wp
            + np.arange(kw)[None, None, :] * dw).reshape(-1) * Cp
    return (taps[:, None] + np.arange(0, cgp, 4)[None, :]).reshape(-1).astype(np.int64)


class ConvBinding:
    """What one convolution needs to know about one input shape, worked out once by :func:`bind`.

    ``direct``: the input itself is the kernel's buffer (channels last, uint8, unpadded, groups of a
    multiple of 4 channels), so no copy is made; otherwise ``buffer_shape`` is the padded
    channels-last buffer the input is copied into. ``grid`` is (OD, OH, OW, sd, sh, sw) as the
    kernel walks it: an unpadded, unstrided 1x1 convolution is one long row.
    """

    __slots__ = ("x5_shape", "out3_shape", "out_shape", "channels_last", "direct", "buffer_shape", "buffer_size",
                 "groups", "gbytes", "pads_begin", "grid", "flat", "koff", "lines_per_task", "seg", "n_groups",
                 "kernel", "dilations", "empty", "tapoff", "amx_rows", "amx_groups", "runner")


def bind(x_shape, channels_last, flip, geometry, n_panels, depthwise):
    """The :class:`ConvBinding` of an input of ``x_shape`` (N, C, spatial...) or, with
    ``channels_last``, (N, spatial..., C); ``geometry`` as :func:`run_conv` takes it."""
    group, kernel, strides, dilations, pads_begin, pads_end, out_spatial, cgp = geometry
    n_img = x_shape[0]
    C = x_shape[-1] if channels_last else x_shape[1]
    spatial = x_shape[1:-1] if channels_last else x_shape[2:]
    D, H, W = [1] * (3 - len(spatial)) + list(spatial)
    M = out_spatial[3]
    OD, OH, OW = out_spatial[:3]
    P = OD * OH * OW
    b = ConvBinding()
    b.x5_shape = (n_img, D, H, W, C) if channels_last else (n_img, C, D, H, W)
    b.out3_shape = (n_img, P, M) if channels_last else (n_img, M, P)
    b.empty = n_img == 0 or P == 0 or M == 0
    groups, gbytes = (1, C) if depthwise else (group, cgp)
    Dp, Hp, Wp = D + pads_begin[0] + pads_end[0], H + pads_begin[1] + pads_end[1], W + pads_begin[2] + pads_end[2]
    b.buffer_shape = (n_img, Dp, Hp, Wp, groups * gbytes)
    b.buffer_size = n_img * Dp * Hp * Wp * groups * gbytes
    b.groups, b.gbytes, b.channels_last = groups, gbytes, channels_last
    b.direct = channels_last and not flip and (Dp, Hp, Wp) == (D, H, W) and groups * gbytes == C
    b.pads_begin = np.asarray(pads_begin, np.int64)
    b.kernel = np.asarray(kernel, np.int64)
    b.dilations = np.asarray(dilations, np.int64)
    sd, sh, sw = strides
    b.grid = (OD, OH, OW, sd, sh, sw)
    b.koff = None
    b.runner = None
    b.flat = False
    b.lines_per_task = b.seg = b.n_groups = 1
    if depthwise or b.empty:
        return b
    Cp = groups * gbytes
    if tuple(kernel) == (1, 1, 1) and tuple(strides) == (1, 1, 1) and (Dp, Hp, Wp) == (OD, OH, OW):
        OD, OH, OW, Hp, Wp = 1, 1, P, 1, P
        b.grid = (1, 1, P, 1, 1, 1)
        b.flat = True
    b.koff = receptive_offsets(tuple(kernel), tuple(dilations), Hp, Wp, Cp, cgp)
    threads = num_threads()
    lines = OD * OH
    # About 64 output positions per task and at least two tasks per thread when there is work for
    # them; a single long row is cut into segments (multiples of the 8-row micro-kernel) instead.
    lines_per_task = max(1, min(lines, -(-64 // OW)))
    tasks = n_img * group * -(-lines // lines_per_task)
    while lines_per_task > 1 and tasks < 2 * threads:
        lines_per_task = max(1, lines_per_task // 2)
        tasks = n_img * group * -(-lines // lines_per_task)
    seg = OW
    if lines_per_task == 1 and OW > 64:
        pieces = max(-(-OW // 128), -(-2 * threads // tasks))
        seg = max(8, -(-(-(-OW // pieces)) // 8) * 8)
        tasks *= -(-OW // seg)
    b.lines_per_task, b.seg = lines_per_task, seg
    b.n_groups = 1 if tasks >= threads else min(n_panels, -(-2 * threads // tasks))
    b.tapoff = b.koff[::cgp // 4].copy()
    b.amx_rows, b.amx_groups = _amx_split(n_img * group, OD * OH * OW, len(b.koff) * 4, n_panels, threads)
    return b


# Gathered rows per AMX task: a chunk of this many bytes stays in L2 while the panels stream past it.
_AMX_CHUNK_BYTES = 256 * 1024


def _amx_split(planes, positions, kp, n_panels, threads):
    """(positions per task, a multiple of 32; panel groups) for :func:`qconv_amx` over ``planes``
    (images x groups) of ``positions`` output positions each."""
    blocks = -(-positions // amx.ROWS)
    per = max(1, min(blocks, _AMX_CHUNK_BYTES // (amx.depth(kp) * amx.ROWS)))
    while per > 1 and planes * -(-blocks // per) < 2 * threads:
        per = -(-per // 2)
    tasks = planes * -(-blocks // per)
    groups = 1 if tasks >= threads else min(n_panels, -(-2 * threads // tasks))
    return per * amx.ROWS, groups


def fill_buffer(b, x5, flip, zx, buffer):
    """The kernel's input: ``x5`` itself when it can be read in place, else ``buffer`` (at least
    ``prod(b.buffer_shape)`` bytes) filled from it, padded and channels-last."""
    if b.direct:
        return x5
    xp = buffer[:b.buffer_size].reshape(b.buffer_shape)
    fill = pad_from_nhwc if b.channels_last else pad_from_nchw
    launcher(fill)(x5, np.uint8(flip), int(zx), b.pads_begin, b.groups, b.gbytes, xp)
    return xp


def run_conv(b, xp, zx, packed, need_rowsum, epi, channels_last, cgp, out3):
    """The GEMM convolution of the buffer ``xp`` (from :func:`fill_buffer`) into ``out3``
    ((N, Cout, P), or (N, P, Cout) ``channels_last``; uint8 view for 8-bit outputs); ``need_rowsum``
    when a weight zero point is not 0 (``packed.zb_nonzero``, asked once by the caller)."""
    conv_runner(b, zx, packed, need_rowsum, epi, channels_last, cgp)(xp, out3)
    return out3


def conv_runner(b, zx, packed, need_rowsum, epi, channels_last, cgp):
    """``run(xp, out3)``: :func:`run_conv` with every argument but the two buffers bound, and the
    driver chosen, once (gathered from their objects on every call they cost about a microsecond,
    a sizeable part of a small convolution's few)."""
    if b.empty:
        return _nothing
    OD, OH, OW, sd, sh, sw = b.grid
    flat = (1, 1, OW) if b.flat else None
    mode = epi.mode
    in_place = b.flat and packed.Kp % amx.DEPTH == 0 and b.buffer_shape[-1] % 1024 != 0
    # Rows read in place cost the tiles no gather: any depth of whole 64-byte blocks takes them.
    if amx.usable(packed, padded=True) or in_place and amx.usable(packed):
        head = (OD, OH, OW, sd, sh, sw, b.tapoff, cgp, int(zx), need_rowsum, packed.data, packed.Kp, packed.K,
                packed.N, packed.col_sum, packed.zb, epi.bias, mode, epi.mult, epi.zy, epi.qmin, epi.qmax,
                epi.fscale, epi.fbias, channels_last)
        tail = (b.amx_rows, b.amx_groups, in_place)

        def run(xp, out3):
            if flat is not None:
                xp = xp.reshape((xp.shape[0],) + flat + (xp.shape[-1],))
            launcher(qconv_amx)(xp, *head, *_outputs3(mode, out3), *tail)
        return run
    tag = tag_for(packed.isa)
    head = (OD, OH, OW, sd, sh, sw, b.koff, cgp, int(zx), need_rowsum, packed.data, packed.Kp, packed.K, packed.N,
            packed.nr, packed.col_sum, packed.zb, epi.bias, mode, epi.mult, epi.zy, epi.qmin, epi.qmax, epi.fscale,
            epi.fbias, channels_last)
    tail = (b.lines_per_task, b.seg, b.n_groups)

    def run(xp, out3):
        if flat is not None:
            xp = xp.reshape((xp.shape[0],) + flat + (xp.shape[-1],))
        launcher(qconv)(tag, xp, *head, *_outputs3(mode, out3), *tail)
    return run


def _nothing(xp, out3):
    return None


def run_depthwise(b, xp, wt, const, multiplier, epi, channels_last, out3):
    """Depthwise convolution (one input channel per group) of the buffer ``xp``; ``wt`` (taps, Cout)
    int32 weights minus their zero point and ``const`` (Cout,) int32 bias minus ``zx * sum(wt)``."""
    if b.empty:
        return out3
    OD, OH, OW, sd, sh, sw = b.grid
    out_q, out_i, out_f = _outputs3(epi.mode, out3)
    depthwise(xp, b.kernel, b.dilations, wt, const, OD, OH, OW, sd, sh, sw, multiplier, epi.mode, epi.mult[0],
              epi.zy, epi.qmin, epi.qmax, epi.fscale[0], epi.fbias[0], channels_last, out_q, out_i, out_f)
    return out3
