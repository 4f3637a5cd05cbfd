"""Convolution on the device: the CUDA twin of :mod:`qrt.kernels.cpu.conv`.

``conv_gemm`` is an implicit GEMM on the shared tiled skeleton (:func:`.gemm.build_tiled`): for
image ``n`` and group ``g`` (batch ``z = n * G + g``), A is the group's weights ``(M/G, K)`` with
``K = C/G * kD * kH * kW`` and B is the im2col matrix ``(K, P)`` of the image, generated element
by element in the loader (zeros for padding), so no column buffer is ever written. The epilogue
adds the bias and writes NCDHW. ``conv_depthwise`` (one input channel per group) is direct: one
thread per output, looping over the taps.

Inputs use the CPU kernels' canonical layout: ``x`` (N, C, D, H, W), ``w`` (M, C/G, kD, kH, kW)
flattened to (M, K), ``geom`` the int64 ``[kD, kH, kW, sD, sH, sW, dD, dH, dW, pD, pH, pW]``.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import config
from . import device as dev
from .gemm import _load_strided_a, build_tiled, device_constant, launch_tiled, tile_config

# B-loader geometry tuple: kD kH kW sD sH sW dD dH dW pD pH pW D H W OH OW, then P (slot 17, the
# depthwise kernels) and the input zero point (slot 18, the integer kernels).
_GEOM_LEN = 20


@cuda.jit(device=True)
def im2col_value(x, gb, base, k, p):
    """Element (k, p) of the im2col matrix of one image/group: the input under tap k of output p."""
    kd = gb[0]
    kh = gb[1]
    kw = gb[2]
    taps = kd * kh * kw
    c = k // taps
    tap = k - c * taps
    i = tap // (kh * kw)
    rest = tap - i * (kh * kw)
    j = rest // kw
    l = rest - j * kw
    oh_ow = gb[15] * gb[16]
    od = p // oh_ow
    rest = p - od * oh_ow
    oh = rest // gb[16]
    ow = rest - oh * gb[16]
    zd = od * gb[3] - gb[9] + i * gb[6]
    zh = oh * gb[4] - gb[10] + j * gb[7]
    zw = ow * gb[5] - gb[11] + l * gb[8]
    if zd < 0 or zd >= gb[12] or zh < 0 or zh >= gb[13] or zw < 0 or zw >= gb[14]:
        return -1
    return base + ((c * gb[12] + zd) * gb[13] + zh) * gb[14] + zw


@cuda.jit(device=True)
def _load_im2col(x, gb, base, k, p, zero):
    index = im2col_value(x, gb, base, k, p)
    if index < 0:
        return zero
    return x[index]


@cuda.jit(device=True)
def _store_conv(out, go, e0, e1, fe, z, m, n, acc):
    # go: (M/G, P, G, has_bias); e0: bias (M,)
    v = acc
    if go[3] != 0:
        v += e0[(z % go[2]) * go[0] + m]
    out[(z * go[0] + m) * go[1] + n] = v


@dev.kernel_factory
def _conv_gemm(acc_name, bm, bn, bk, tm, tn):
    return build_tiled(_load_strided_a, _load_im2col, _store_conv, acc_name, bm, bn, bk, tm, tn)


def conv_geometry(x_shape, geom, out_shape):
    """The B-loader tuple for canonical shapes: geom (12 values), input D H W, output OH OW."""
    g = [int(v) for v in geom]
    values = g + [int(x_shape[2]), int(x_shape[3]), int(x_shape[4]), int(out_shape[3]), int(out_shape[4])]
    return tuple(values + [0] * (_GEOM_LEN - len(values)))


def group_offsets(n_images, groups, a_group_size, b_image_size, b_group_size):
    z = np.arange(n_images * groups, dtype=np.int64)
    a_off = (z % groups) * a_group_size
    b_off = (z // groups) * b_image_size + (z % groups) * b_group_size
    return device_constant(a_off), device_constant(b_off)


def conv_gemm(x5, w2, bias, geom, group, out):
    """``out (N, M, OD, OH, OW) = conv(x5, w) + bias`` with ``w2`` the (M, C/G * taps) weights."""
    dtype = np.dtype(out.dtype)
    if dtype.name not in ("float32", "float64"):
        raise dev.Unsupported(f"device Conv of {dtype}")
    n_images, channels = x5.shape[0], x5.shape[1]
    n_out, K = w2.shape
    mg = n_out // group
    spatial = x5.shape[2] * x5.shape[3] * x5.shape[4]
    P = out.shape[2] * out.shape[3] * out.shape[4]
    a_off, b_off = group_offsets(n_images, group, mg * K, channels * spatial, (channels // group) * spatial)
    has_bias = bias is not None and bias.size > 0
    e0 = dev.flat(bias) if has_bias else device_constant([0], dtype)
    kernel = _conv_gemm(dtype.name, *tile_config())
    launch_tiled(kernel, n_images * group, mg, P, K, dev.flat(w2), (K, 1, 0, 0, 0, 0, 0, 0), a_off, dev.flat(x5),
                 conv_geometry(x5.shape, geom, out.shape), b_off, dev.flat(out), (mg, P, group, int(has_bias), 0, 0,
                                                                                    0, 0), e0, e0, (dtype.type(0),))
    return out


@dev.kernel_factory
def _depthwise():
    @cuda.jit
    def kernel(x, w, bias, has_bias, out, n, channels, multiplier, gb, zero):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        taps = gb[0] * gb[1] * gb[2]
        P = gb[17]
        spatial = gb[12] * gb[13] * gb[14]
        n_out = channels * multiplier
        while i < n:
            p = i % P
            rest = i // P
            m = rest % n_out
            image = rest // n_out
            base = (image * channels + m // multiplier) * spatial
            acc = zero
            for tap in range(taps):
                index = im2col_value(x, gb, base, tap, p)
                if index >= 0:
                    acc += w[m * taps + tap] * x[index]
            if has_bias != 0:
                acc += bias[m]
            out[i] = acc
            i += step

    return kernel


def conv_depthwise(x5, w5, bias, geom, out):
    """Depthwise convolution (group = C, one input channel per group): ``w5`` (M, 1, kD, kH, kW)."""
    dtype = np.dtype(out.dtype)
    if dtype.name not in ("float32", "float64"):
        raise dev.Unsupported(f"device Conv of {dtype}")
    channels = x5.shape[1]
    n_out = w5.shape[0]
    P = out.shape[2] * out.shape[3] * out.shape[4]
    gb = list(conv_geometry(x5.shape, geom, out.shape))
    gb[17] = P
    has_bias = bias is not None and bias.size > 0
    b = dev.flat(bias) if has_bias else device_constant([0], dtype)
    n = out.size
    if n:
        dev.launch(_depthwise(), dev.blocks_for(n), config.THREADS, dev.flat(x5), dev.flat(w5), b, int(has_bias),
                   dev.flat(out), n, channels, n_out // channels, tuple(gb), dtype.type(0))
    return out
