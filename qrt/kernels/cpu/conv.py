"""Convolution kernels: im2col + BLAS GEMM, a direct depthwise kernel, and GEMM + col2im for ConvTranspose.

Every kernel works on the canonical 3-D spatial layout: inputs are ``(N, C, D, H, W)`` and weights
``(M, C/group, kD, kH, kW)``, with unit dimensions standing in for the missing spatial axes of 1-D
and 2-D convolutions, so one compiled kernel per dtype serves all ranks.

``geom`` packs the window geometry as int64 ``[kD, kH, kW, sD, sH, sW, dD, dH, dW, pD, pH, pW]``
(kernel, strides, dilations, padding at the start of each axis).

Conv runs as GEMMs over output tiles: the column matrix ``(C/group*kD*kH*kW, OD*OH*OW)`` is built
one column tile at a time, and each tile times an output-channel block of the weight is one
``np.dot`` on contiguous 2-D blocks (Numba hands it to BLAS, kept single-threaded); the tiles are
the parallel tasks, so Numba's thread pool owns the cores and BLAS never competes for them.

Inner loops run over slices with ``for t in range(n)``: an index that starts at 0 lets LLVM drop
Numba's negative-index wraparound check and vectorize; ``range(lo, hi)`` with a signed ``lo`` does
not (measured: 7x slower on a depthwise 3x3).
"""
import numpy as np
from numba import njit, prange

from .activation import bias_activate_row
from .movement import transpose_block

# Output rows narrower than this build column tiles through a gather table (see _im2col_tile_gather).
GATHER_BELOW_WIDTH = 24


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
def _copy_every_other(dst, src):
    # A constant stride LLVM turns into vector loads and shuffles; a strided slice of the row stayed
    # scalar, and the stride-2 phase fill was most of a stride-2 depthwise conv's time.
    for q in range(dst.shape[0]):
        dst[q] = src[2 * q]


@njit(cache=True)
def _fill(dst, value):
    # Inside prange bodies an explicit loop, not ``dst[:] = value``: Numba turns slice assignments
    # there into nested parfors, which tripled the compile time of the parallel kernels.
    for q in range(dst.shape[0]):
        dst[q] = value


@njit(cache=True)
def _tile_row_shifted(plane, zd_ok, row_shift, off_w, out_h, out_w, s, dst):
    """Columns ``s .. s + len(dst)`` of one depth slice of a column-matrix row, when strides are 1
    and the output is as wide as the input: output (b, o) reads input (b + row_shift, o + off_w), so
    the segment is one shifted copy of the flattened input plane, after which the few columns that
    wrapped into a neighbouring row are zeroed. One copy per row instead of one per output row
    matters on small planes (7x7, 14x14), where per-row bookkeeping cost as much as the GEMM."""
    count = dst.shape[0]
    if not zd_ok:
        _fill(dst, 0.0)
        return
    height, width = plane.shape
    flat = plane.reshape(height * width)
    b_lo, b_hi = _valid_range(row_shift, 1, height, out_h)
    shift = row_shift * width + off_w
    k_lo = max(b_lo * out_w, -shift, s)
    k_hi = min(b_hi * out_w, height * width - shift, s + count)
    if k_hi < k_lo:
        k_hi = k_lo
    _fill(dst[:k_lo - s], 0.0)
    _fill(dst[k_hi - s:], 0.0)
    _copy(dst[k_lo - s:k_hi - s], flat[k_lo + shift:k_hi + shift])
    lo, hi = _valid_range(off_w, 1, width, out_w)
    if lo > 0 or hi < out_w:
        for b in range(max(b_lo, s // out_w), min(b_hi, (s + count - 1) // out_w + 1)):
            base = b * out_w - s
            for o in range(max(-base, 0), min(lo, count - base)):
                dst[base + o] = 0
            for o in range(max(hi, -base), min(out_w, count - base)):
                dst[base + o] = 0


@njit(cache=True)
def _im2col_tile_gather(x, c0, geom, out_h, out_w, p0, cols):
    """``im2col_tile`` through a table: for each tap and column, the flat input position it reads, or
    a trailing zero slot where it reads padding. Used for narrow outputs (7x7, 14x14 planes), where
    the row-segment version spent more time on per-segment bookkeeping than on copying."""
    rows, count = cols.shape
    depth, height, width = x.shape[1], x.shape[2], x.shape[3]
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    taps = kd * kh * kw
    volume = depth * height * width
    plane_out = out_h * out_w
    table = np.empty((taps, count), dtype=np.int32)
    for tap in range(taps):
        i = tap // (kh * kw)
        j = (tap // kw) % kh
        l = tap % kw
        for q in range(count):
            p = p0 + q
            a = p // plane_out
            b = (p - a * plane_out) // out_w
            o = p - a * plane_out - b * out_w
            zd = a * sd - pd + i * dd
            zh = b * sh - ph + j * dh
            zw = o * sw - pw + l * dw
            inside = 0 <= zd < depth and 0 <= zh < height and 0 <= zw < width
            table[tap, q] = (zd * height + zh) * width + zw if inside else volume
    padded = np.empty(volume + 1, dtype=x.dtype)
    padded[volume] = 0
    for cc in range(rows // taps):
        _copy(padded[:volume], x[c0 + cc].reshape(volume))
        for tap in range(taps):
            dst = cols[cc * taps + tap]
            index = table[tap]
            for q in range(count):
                dst[q] = padded[index[q]]


@njit(cache=True)
def im2col_tile(x, c0, geom, out_d, out_h, out_w, p0, cols):
    """Fill ``cols[(c, i, j, l), q]`` with the input value under tap (i, j, l) of output position
    ``p0 + q`` (flat over (a, b, o)), for channels ``c0 ..`` of one image ``x`` (C, D, H, W);
    padding positions become 0. ``cols`` is one tile of the column matrix, (C_tile * taps, count)."""
    rows, count = cols.shape
    depth, height, width = x.shape[1], x.shape[2], x.shape[3]
    kd, kh, kw = geom[0], geom[1], geom[2]
    sd, sh, sw = geom[3], geom[4], geom[5]
    dd, dh, dw = geom[6], geom[7], geom[8]
    pd, ph, pw = geom[9], geom[10], geom[11]
    taps = kd * kh * kw
    if out_w < GATHER_BELOW_WIDTH:
        _im2col_tile_gather(x, c0, geom, out_h, out_w, p0, cols)
        return
    plane_out = out_h * out_w
    shifted = sh == 1 and sw == 1 and out_w == width
    for row in range(rows):
        c = c0 + row // taps
        tap = row % taps
        i = tap // (kh * kw)
        j = (tap // kw) % kh
        l = tap % kw
        dst = cols[row]
        off_w = l * dw - pw
        lo, hi = _valid_range(off_w, sw, width, out_w)
        q = 0
        while q < count:
            p = p0 + q
            a = p // plane_out
            zd = a * sd - pd + i * dd
            zd_ok = zd >= 0 and zd < depth
            if shifted:
                s = p - a * plane_out
                seg = min(plane_out - s, count - q)
                _tile_row_shifted(x[c, zd if zd_ok else 0], zd_ok, j * dh - ph, off_w, out_h, out_w, s,
                                  dst[q:q + seg])
                q += seg
                continue
            rem = p - a * plane_out
            b = rem // out_w
            o = rem - b * out_w
            seg = min(out_w - o, count - q)
            segment = dst[q:q + seg]
            zh = b * sh - ph + j * dh
            if not zd_ok or zh < 0 or zh >= height:
                _fill(segment, 0.0)
            else:
                first = max(lo, o) - o
                last = max(min(hi, o + seg) - o, first)
                _fill(segment[:first], 0.0)
                _fill(segment[last:], 0.0)
                start = (o + first) * sw + off_w
                n_valid = last - first
                if sw == 1:
                    _copy(segment[first:last], x[c, zd, zh, start:start + n_valid])
                elif n_valid > 0:
                    _copy(segment[first:last], x[c, zd, zh, start:start + (n_valid - 1) * sw + 1:sw])
            q += seg


@njit(cache=True, error_model="numpy")
def _store_tile(result, out3, n, m0, p0, bias, act, alpha, beta):
    """Epilogue: out3[n, m0 + r, p0 + q] = activation(result[r, q] + bias), while the tile is in cache
    (``result`` may be that part of ``out3`` itself)."""
    rows, count = result.shape
    has_bias = bias.shape[0] > 0
    for r in range(rows):
        bias_activate_row(result[r], bias[m0 + r] if has_bias else 0.0, out3[n, m0 + r, p0:p0 + count],
                          act, alpha, beta)


@njit(cache=True, parallel=True)
def conv_gemm(x, w3, bias, geom, out, tile_p, block_m, buffers, act, alpha, beta):
    """Grouped convolution as GEMMs over output tiles, in parallel: tasks are (image, group, column
    tile, output-channel block); each builds its tile of the column matrix (im2col) in its worker's
    scratch, multiplies it by the weight block with single-threaded BLAS, and stores the result
    with bias and activation applied. ``bias`` may be empty.

    ``w3`` is the weight as ``(group, M/group, C/group * kD*kH*kW)``; ``out`` is ``(N, M, OD, OH, OW)``;
    ``buffers`` is ``(workers, C/group * taps * tile_p + block_m * tile_p)`` of scratch (no column
    part for a pointwise conv), one row per worker (reused across calls: fresh megabytes per call
    pay their page faults every time; no result part when the plane is one tile, as the GEMM then
    writes the output in place). Tasks are split in equal contiguous runs over the workers, and the
    channel blocks of one tile run back to back, so a worker builds each column tile once. A 1x1
    kernel with unit strides and no padding covering the whole plane in one tile reads the image
    itself as the column matrix. GEMM operands are whole C-contiguous arrays: Numba types strided
    slices as layout 'A', and ``np.dot`` on those was 3.5x slower.
    """
    n_images, channels, depth, height, width = x.shape
    group, m_group, k_group = w3.shape
    out_d, out_h, out_w = out.shape[2], out.shape[3], out.shape[4]
    plane = out_d * out_h * out_w
    taps = geom[0] * geom[1] * geom[2]
    c_group = channels // group
    n_tiles = (plane + tile_p - 1) // tile_p
    n_blocks = (m_group + block_m - 1) // block_m
    n_tasks = n_images * group * n_tiles * n_blocks
    workers = buffers.shape[0]
    pointwise = taps == 1 and geom[3] == 1 and geom[4] == 1 and geom[5] == 1 and \
        geom[9] == 0 and geom[10] == 0 and geom[11] == 0 and plane == depth * height * width and n_tiles == 1
    col_size = 0 if pointwise else k_group * tile_p
    out3 = out.reshape(n_images, group * m_group, plane)
    for worker in prange(workers):
        buffer = buffers[worker]
        built = -1
        for task in range(worker * n_tasks // workers, (worker + 1) * n_tasks // workers):
            tile_key = task // n_blocks
            block = task - tile_key * n_blocks
            t = tile_key % n_tiles
            g = (tile_key // n_tiles) % group
            n = tile_key // (n_tiles * group)
            p0 = t * tile_p
            count = min(tile_p, plane - p0)
            if pointwise:
                cols = x[n].reshape(group, k_group, plane)[g]
            else:
                cols = buffer[:k_group * count].reshape(k_group, count)
                if tile_key != built:
                    im2col_tile(x[n], g * c_group, geom, out_d, out_h, out_w, p0, cols)
                    built = tile_key
            m0 = block * block_m
            rows = min(block_m, m_group - m0)
            if n_tiles == 1:
                # The block's rows of the output are contiguous: BLAS writes them in place.
                result = out3[n][g * m_group + m0:g * m_group + m0 + rows]
            else:
                result = buffer[col_size:col_size + rows * count].reshape(rows, count)
            np.dot(w3[g][m0:m0 + rows], cols, result)
            if n_tiles > 1 or act != 0 or bias.shape[0] > 0:
                _store_tile(result, out3, n, g * m_group + m0, p0, bias, act, alpha, beta)


@njit(cache=True, inline="always")
def _tap_source(phases, w, m, i, tap, kw, dh, dw, sh, sw, cols_q, wide_len):
    """Tap ``tap`` (row-major over kH x kW) of conv_depthwise: its weight and the phase-plane slice it reads."""
    j = tap // kw
    l = tap % kw
    shift = ((j * dh) // sh) * cols_q + (l * dw) // sw
    return phases[(j * dh) % sh, (l * dw) % sw, shift:shift + wide_len], w[m, 0, i, j, l]


@njit(cache=True, parallel=True, fastmath=True)
def conv_depthwise(x, w, bias, geom, out, act, alpha, beta):
    """Direct convolution where every group has one input channel (depthwise, with any multiplier).

    ``w`` is ``(M, 1, kD, kH, kW)`` with M a multiple of C; output channel m reads input channel
    m // (M / C). ``act`` (with ``alpha``/``beta``) is a fused activation applied as the result is stored.

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
                            elif sw == 2:
                                _copy_every_other(dst[lo:hi], x[n, c, zd, y, start:start + 2 * (hi - lo) - 1])
                            else:
                                _copy(dst[lo:hi], x[n, c, zd, y, start:start + (hi - lo - 1) * sw + 1:sw])
                # Four taps per sweep: each pass over ``wide`` loads and stores it once, so 3x3 takes
                # three passes instead of nine (the sweep is bound by those loads and stores).
                taps = kh * kw
                for t0 in range(0, taps, 4):
                    group = min(4, taps - t0)
                    s0, w0 = _tap_source(phases, w, m, i, t0, kw, dh, dw, sh, sw, cols_q, wide_len)
                    if group == 1:
                        for q in range(wide_len):
                            wide[q] += w0 * s0[q]
                        continue
                    s1, w1 = _tap_source(phases, w, m, i, t0 + 1, kw, dh, dw, sh, sw, cols_q, wide_len)
                    if group == 2:
                        for q in range(wide_len):
                            wide[q] += w0 * s0[q] + w1 * s1[q]
                        continue
                    s2, w2 = _tap_source(phases, w, m, i, t0 + 2, kw, dh, dw, sh, sw, cols_q, wide_len)
                    if group == 3:
                        for q in range(wide_len):
                            wide[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q]
                        continue
                    s3, w3 = _tap_source(phases, w, m, i, t0 + 3, kw, dh, dw, sh, sw, cols_q, wide_len)
                    for q in range(wide_len):
                        wide[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q] + w3 * s3[q]
            for b in range(out_h):
                bias_activate_row(wide[b * cols_q:b * cols_q + out_w], 0.0, out[n, m, a, b], act, alpha, beta)


@njit(cache=True, parallel=True, fastmath={"contract"})
def conv_depthwise_channels_last(x, w, bias, geom, out, xt, act, alpha, beta, vector):
    """2-D depthwise convolution (one input channel per output channel) computed channels-last.

    ``x`` is ``(N, C, 1, H, W)``, ``w`` ``(C, 1, 1, kH, kW)``, ``out`` ``(N, C, 1, OH, OW)``; ``xt`` is
    ``H * W * C`` elements of scratch. The image is transposed to (H, W, C) once; then every tap of
    every output position is one multiply-add over a contiguous vector of all channels, and each
    output row is transposed back with bias and activation applied. Planes of 7x7 to 28x28 (the
    late layers of mobile nets) are too small to vectorize along a row: per-channel sweeps spent
    their time on loop overhead, 5-12x slower than onnxruntime's channel-blocked kernel.
    Both transposes move 16x16 blocks as vector shuffles when ``vector`` (AVX-512 hosts, see
    :func:`qrt.kernels.cpu.movement.transpose_block`).
    """
    n_images, channels, _, height, width = x.shape
    out_h, out_w = out.shape[3], out.shape[4]
    kh, kw = geom[1], geom[2]
    sh, sw = geom[4], geom[5]
    dh, dw = geom[7], geom[8]
    ph, pw = geom[10], geom[11]
    has_bias = bias.shape[0] > 0
    wt = np.empty((kh * kw, channels), dtype=out.dtype)
    initial = np.zeros(channels, dtype=out.dtype)
    for c in range(channels):
        for j in range(kh):     # no tap // kW, tap % kW: two integer divisions per weight cost ~10% on 7x7 planes
            for l in range(kw):
                wt[j * kw + l, c] = w[c, 0, 0, j, l]
        if has_bias:
            initial[c] = bias[c]
    image = xt[:height * width * channels].reshape(height, width, channels)
    flat_x = x.reshape(x.size)
    flat_image = xt[:height * width * channels]
    flat_out = out.reshape(out.size)
    plane_in = height * width
    plane_out = out_h * out_w
    # Output rows per task: a multiple of 16 pixels where the plane allows, so that the store's
    # blocks run along the flattened (row, column) axis even where a row is shorter than 16.
    chunk_rows = min(out_h, 16 // _gcd16(out_w))
    chunks = (out_h + chunk_rows - 1) // chunk_rows
    for n in range(n_images):
        # image[p, c] = x[n, c, 0, p] over the flattened plane p = h * W + v
        for p0 in prange((plane_in + 15) // 16):
            for c0 in range(0, channels, 16):
                transpose_block(flat_x, (n * channels + c0) * plane_in + 16 * p0, plane_in,
                                flat_image, 16 * p0 * channels + c0, channels,
                                min(16, channels - c0), min(16, plane_in - 16 * p0), vector)
        for chunk in prange(chunks):
            b0 = chunk * chunk_rows
            rows = min(chunk_rows, out_h - b0)
            acc = np.empty((rows * out_w, channels), dtype=out.dtype)
            for o in range(rows * out_w):
                target = acc[o]
                for c in range(channels):
                    target[c] = initial[c]
            for b in range(b0, b0 + rows):
                row_acc = acc[(b - b0) * out_w:(b - b0 + 1) * out_w]
                flat = row_acc.reshape(out_w * channels)
                for j in range(kh):
                    y = b * sh - ph + j * dh
                    if y < 0 or y >= height:
                        continue
                    row_in = image[y]
                    for l in range(kw):
                        off_w = l * dw - pw
                        lo, hi = _valid_range(off_w, sw, width, out_w)
                        if hi <= lo:
                            continue
                        weights = wt[j * kw + l]
                        if sw == 1:
                            # Output columns lo..hi read one contiguous run of input pixels: one sweep.
                            src = row_in[lo + off_w:hi + off_w].reshape((hi - lo) * channels)
                            dst = flat[lo * channels:hi * channels]
                            for o in range(hi - lo):
                                base = o * channels
                                for c in range(channels):
                                    dst[base + c] += weights[c] * src[base + c]
                        else:
                            for o in range(lo, hi):
                                src = row_in[o * sw + off_w]
                                target = row_acc[o]
                                for c in range(channels):
                                    target[c] += weights[c] * src[c]
            pixels = rows * out_w
            flat = acc.reshape(pixels * channels)
            if act != 0:
                bias_activate_row(flat, 0.0, flat, act, alpha, beta)
            # out[n, c, 0, p] = acc[p - b0 * OW, c] over the chunk's flattened pixels
            for q0 in range(0, pixels, 16):
                for c0 in range(0, channels, 16):
                    transpose_block(flat, q0 * channels + c0, channels,
                                    flat_out, (n * channels + c0) * plane_out + b0 * out_w + q0, plane_out,
                                    min(16, pixels - q0), min(16, channels - c0), vector)


@njit(cache=True, inline="always")
def _gcd16(value):
    """gcd(value, 16)."""
    g = 16
    while value % g:
        g //= 2
    return g


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
