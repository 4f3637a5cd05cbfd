"""Quantized convolution on the device: the CUDA twin of :mod:`qrt.kernels.cpu.qconv`.

The implicit GEMM of :mod:`.conv` with int32 accumulation: A is the weights centered once per
output channel (``w - zw[m]`` as int16), B the im2col of ``x - zx`` generated in the loader (the
padding is the real zero ``zx``, i.e. 0 once centered). The epilogue adds the int32 bias and
requantizes per output channel, or writes int32 (ConvInteger). Depthwise convolutions use a
direct kernel with the same arithmetic.

The dp4a path (:mod:`.qgemm`) packs the weights (within int8) and the raw input bytes (the padding
is ``zx`` itself) four per word; the bias carries ``-zx * rowsum(w - zw)`` instead of centering x.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import config
from . import device as dev
from .conv import conv_geometry, group_offsets, im2col_value
from .gemm import build_dp4a, build_tiled, byte_word, device_constant, launch_tiled, tile_config
from .qgemm import requantize


@cuda.jit(device=True)
def _load_weight(w, ga, base, m, k, zero):
    return np.int32(w[base + m * ga[0] + k])


@cuda.jit(device=True)
def _load_im2col_centered(x, gb, base, k, p, zero):
    index = im2col_value(x, gb, base, k, p)
    if index < 0:
        return zero
    return np.int32(x[index]) - np.int32(gb[18])


@cuda.jit(device=True)
def _store_conv_q(out, go, e0, e1, fe, z, m, n, acc):
    # go: (M/G, P, G); e0 bias, e1 multiplier per output channel; fe: (zy, qmin, qmax)
    channel = (z % go[2]) * go[0] + m
    out[(z * go[0] + m) * go[1] + n] = requantize(acc, e0[channel], e1[channel], fe[0], fe[1], fe[2])


@cuda.jit(device=True)
def _store_conv_i32(out, go, e0, e1, fe, z, m, n, acc):
    out[(z * go[0] + m) * go[1] + n] = acc


@cuda.jit(device=True)
def _load_weight4(w, ga, base, m, k, K):
    at = base + m * ga[0] + k
    return byte_word(w[at], w[at + 1] if k + 1 < K else 0, w[at + 2] if k + 2 < K else 0,
                     w[at + 3] if k + 3 < K else 0)


@cuda.jit(device=True)
def _raw_input(x, gb, base, k, p, K):
    # the input byte as stored; padding reads the zero point; past K, 0
    if k >= K:
        return 0
    index = im2col_value(x, gb, base, k, p)
    if index < 0:
        return gb[18]
    return x[index]


@cuda.jit(device=True)
def _load_im2col4(x, gb, base, k, p, K):
    return byte_word(_raw_input(x, gb, base, k, p, K), _raw_input(x, gb, base, k + 1, p, K),
                     _raw_input(x, gb, base, k + 2, p, K), _raw_input(x, gb, base, k + 3, p, K))


@dev.kernel_factory
def _qconv_dp4a(x_signed, bm, bn, bk, tm, tn):
    return build_dp4a(_load_weight4, _load_im2col4, _store_conv_q, True, bool(x_signed), bm, bn, bk, tm, tn)


@dev.kernel_factory
def _qconv(requantized, bm, bn, bk, tm, tn):
    store = _store_conv_q if requantized else _store_conv_i32
    return build_tiled(_load_weight, _load_im2col_centered, store, "int32", bm, bn, bk, tm, tn)


def conv(x5, zx, w_centered, geom, group, out, bias=None, mult=None, zy=0, qmin=0, qmax=255, dp4a=False):
    """``out (N, M, OD, OH, OW)``: int32 sums, or requantized when ``out`` is 8-bit.

    ``w_centered`` is (M, C/G * taps) int16; ``bias`` int32 and ``mult`` float64 per output channel.
    With ``dp4a`` (8-bit ``out``), ``bias`` is :func:`.qgemm.dp4a_bias` of the real one by ``zx`` and
    the weights' row sums, and ``w_centered`` is within int8.
    """
    n_images, channels = x5.shape[0], x5.shape[1]
    n_out, K = w_centered.shape
    mg = n_out // group
    spatial = x5.shape[2] * x5.shape[3] * x5.shape[4]
    P = out.shape[2] * out.shape[3] * out.shape[4]
    a_off, b_off = group_offsets(n_images, group, mg * K, channels * spatial, (channels // group) * spatial)
    gb = list(conv_geometry(x5.shape, geom, out.shape))
    gb[18] = int(zx)
    requantized = np.dtype(out.dtype) != np.int32
    e0 = bias if bias is not None else device_constant(np.zeros(n_out, np.int32), np.int32)
    e1 = mult if mult is not None else device_constant([0.0], np.float64)
    if dp4a and requantized:
        kernel = _qconv_dp4a(int(np.dtype(x5.dtype) == np.int8), *tile_config())
    else:
        kernel = _qconv(int(requantized), *tile_config())
    launch_tiled(kernel, n_images * group, mg, P, K, dev.flat(w_centered), (K, 0, 0, 0, 0, 0, 0, 0), a_off,
                 dev.flat(x5), tuple(gb), b_off, dev.flat(out), (mg, P, group, 0, 0, 0, 0, 0), e0, e1,
                 (float(zy), float(qmin), float(qmax)))
    return out


@dev.kernel_factory
def _qdepthwise(requantized):
    @cuda.jit
    def kernel(x, w, bias, mult, out, n, channels, multiplier, gb, fe):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        taps = gb[0] * gb[1] * gb[2]
        P = gb[17]
        zx = np.int32(gb[18])
        spatial = gb[12] * gb[13] * gb[14]
        n_out = channels * multiplier
        while i < n:
            p = i % P
            rest = i // P
            m = rest % n_out
            image = rest // n_out
            base = (image * channels + m // multiplier) * spatial
            acc = np.int32(0)
            for tap in range(taps):
                index = im2col_value(x, gb, base, tap, p)
                if index >= 0:
                    acc += np.int32(w[m * taps + tap]) * (np.int32(x[index]) - zx)
            if requantized != 0:
                out[i] = requantize(acc, bias[m], mult[m], fe[0], fe[1], fe[2])
            else:
                out[i] = acc
            i += step

    return kernel


def conv_depthwise(x5, zx, w_centered, geom, out, bias=None, mult=None, zy=0, qmin=0, qmax=255):
    channels = x5.shape[1]
    n_out = w_centered.shape[0]
    P = out.shape[2] * out.shape[3] * out.shape[4]
    gb = list(conv_geometry(x5.shape, geom, out.shape))
    gb[17], gb[18] = P, int(zx)
    requantized = np.dtype(out.dtype) != np.int32
    e0 = bias if bias is not None else device_constant(np.zeros(n_out, np.int32), np.int32)
    e1 = mult if mult is not None else device_constant([0.0], np.float64)
    n = out.size
    if n:
        dev.launch(_qdepthwise(int(requantized)), dev.blocks_for(n), config.THREADS, dev.flat(x5),
                   dev.flat(w_centered), e0, e1, dev.flat(out), n, channels, n_out // channels, tuple(gb),
                   (float(zy), float(qmin), float(qmax)))
    return out
