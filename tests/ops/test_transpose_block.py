"""The 16x16 block transpose (qrt.kernels.cpu.movement.transpose_block) and the channels-last
depthwise convolution that moves its image and output with it, against their scalar paths.

The vector path (AVX-512 hosts) and the scalar one (other CPUs, and partial blocks everywhere) move
the same float32 values, so they must agree exactly; the convolution itself is checked against
onnxruntime by test_conv_depthwise.py.
"""
import numpy as np
import pytest
from numba import njit

from qrt.kernels.cpu import conv as k
from qrt.kernels.cpu.movement import transpose_block
from qrt.ops.conv import pack_geometry


@njit(cache=True)
def _transpose(src, src_off, src_stride, dst, dst_off, dst_stride, rows, cols, vector):
    transpose_block(src, src_off, src_stride, dst, dst_off, dst_stride, rows, cols, vector)


@pytest.mark.parametrize("rows, cols", [(16, 16), (16, 5), (3, 16), (1, 1)])
@pytest.mark.parametrize("vector", [True, False])
def test_block_lands_transposed_and_nothing_else_is_written(rows, cols, vector):
    src = np.random.default_rng(0).standard_normal(40 * 20).astype(np.float32)
    src[7] = np.nan
    dst = np.full(30 * 20, -7.0, np.float32)
    _transpose(src, 3, 40, dst, 5, 30, rows, cols, vector)
    want = np.full_like(dst, -7.0)
    for i in range(rows):
        for j in range(cols):
            want[5 + j * 30 + i] = src[3 + i * 40 + j]
    np.testing.assert_array_equal(dst, want)


# (channels, plane, stride, kernel): full and partial channel blocks, rows shorter than 16, planes
# that are not a multiple of 16 pixels.
SHAPES = [(32, 14, 1, 3), (48, 7, 1, 5), (20, 9, 2, 3), (17, 28, 2, 3), (64, 16, 1, 3)]


@pytest.mark.parametrize("channels, plane, stride, kernel", SHAPES)
@pytest.mark.parametrize("act", [0, 1, 7])
def test_depthwise_channels_last_vector_and_scalar_moves_agree(channels, plane, stride, kernel, act):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, channels, 1, plane, plane)).astype(np.float32)
    x[0, 0, 0, 0, 0] = np.nan
    w = rng.standard_normal((channels, 1, 1, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    pad = kernel // 2
    out_plane = (plane + 2 * pad - kernel) // stride + 1
    geom = pack_geometry([1, kernel, kernel], [1, stride, stride], [1, 1, 1], [0, pad, pad])
    outs = []
    for vector in (True, False):
        out = np.empty((2, channels, 1, out_plane, out_plane), np.float32)
        k.conv_depthwise_channels_last(x, w, bias, geom, out, np.empty(x[0].size, np.float32), act, 0.0, 0.0, vector)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.isnan(outs[0][0, 0, 0, 0, 0]) and not np.isnan(outs[0][1]).any()


@pytest.mark.parametrize("vector", [True, False])
def test_block_transpose_of_float64(vector):
    """float64 convolutions reach the channels-last kernel too: the shuffles are per element."""
    src = np.arange(16 * 16, dtype=np.float64) + 0.5
    dst = np.zeros(16 * 16)
    _transpose(src, 0, 16, dst, 0, 16, 16, 16, vector)
    np.testing.assert_array_equal(dst.reshape(16, 16), src.reshape(16, 16).T)


def test_depthwise_channels_last_in_float64_matches_the_plane_kernel():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 32, 1, 14, 14))
    w = rng.standard_normal((32, 1, 1, 3, 3))
    bias = rng.standard_normal(32)
    geom = pack_geometry([1, 3, 3], [1, 1, 1], [1, 1, 1], [0, 1, 1])
    got = np.empty((1, 32, 1, 14, 14))
    k.conv_depthwise_channels_last(x, w, bias, geom, got, np.empty(x.size), 0, 0.0, 0.0, True)
    want = np.empty_like(got)
    k.conv_depthwise(x, w, bias, geom, want, 0, 0.0, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
