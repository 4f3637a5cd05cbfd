"""Small problems on fewer threads, and the short-axis transpose.

An int8 convolution or GEMM with less than 64K multiply-adds per thread runs on fewer of the
caller's threads (waking the pool cost more than the work). These tests pin what must not change
with that: the caller's thread count after a run, exact agreement with onnxruntime on both sides of
the threshold, and a Transpose kernel that moves a short axis to the end equal to numpy's copy.
"""
import os
import sys

import numba
import numpy as np
import pytest

import qrt
from qrt.kernels.cpu import threads
from qrt.ops.shape import Transpose

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "int8"))
from int8_helpers import node_model, random_q, run_ort  # noqa: E402

TWO_THREADS = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")


@TWO_THREADS
def test_call_with_threads_lowers_the_count_and_restores_it_even_on_error():
    numba.set_num_threads(2)
    try:
        assert threads.call_with_threads(1, numba.get_num_threads) == 1
        assert numba.get_num_threads() == 2

        def fail():
            raise ValueError("kernel failed")
        with pytest.raises(ValueError):
            threads.call_with_threads(1, fail)
        assert numba.get_num_threads() == 2
        # Never raised above the caller's count.
        assert threads.call_with_threads(8, numba.get_num_threads) == 2
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@TWO_THREADS
def test_threads_for_gives_one_thread_per_64k_multiply_adds():
    numba.set_num_threads(2)
    try:
        assert threads.threads_for(0) == 1
        assert threads.threads_for(threads.WORK_PER_THREAD - 1) == 1
        assert threads.threads_for(threads.WORK_PER_THREAD) == 2
        assert threads.threads_for(100 * threads.WORK_PER_THREAD) == 2
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def _qlinear_conv(spatial, channels, out_channels, seed):
    """QLinearConv 3x3 (pad 1) on a uint8 (1, channels, spatial, spatial) input, int8 per-channel weights."""
    rng = np.random.default_rng(seed)
    x = random_q(rng, (1, channels, spatial, spatial), np.uint8)
    consts = dict(x_scale=np.float32(0.02), x_zero_point=np.uint8(120),
                  w=random_q(rng, (out_channels, channels, 3, 3), np.int8),
                  w_scale=(rng.random(out_channels) * 0.01 + 0.001).astype(np.float32),
                  w_zero_point=np.zeros(out_channels, np.int8),
                  y_scale=np.float32(0.5), y_zero_point=np.uint8(128),
                  B=rng.integers(-500, 500, out_channels).astype(np.int32))
    model = node_model("QLinearConv", dict(x=x), consts, [("y", np.uint8)], attrs=dict(pads=[1, 1, 1, 1]),
                       opset=10, input_order=["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point",
                                              "y_scale", "y_zero_point", "B"])
    return model, dict(x=x)


def _qlinear_matmul(rows, depth, cols, seed):
    rng = np.random.default_rng(seed)
    a = random_q(rng, (rows, depth), np.uint8)
    consts = dict(a_scale=np.float32(0.03), a_zero_point=np.uint8(100), b=random_q(rng, (depth, cols), np.int8),
                  b_scale=np.float32(0.004), b_zero_point=np.int8(0), y_scale=np.float32(0.8),
                  y_zero_point=np.uint8(130))
    model = node_model("QLinearMatMul", dict(a=a), consts, [("y", np.uint8)], opset=10,
                       input_order=["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale",
                                    "y_zero_point"])
    return model, dict(a=a)


# Work in multiply-adds: 8x8x8x9x8 = 36,864 runs on one thread, 32x32x32x9x32 = 9.4M on two.
CASES = [("conv below the threshold", _qlinear_conv, (8, 8, 8)),
         ("conv above it", _qlinear_conv, (32, 32, 32)),
         ("matmul below", _qlinear_matmul, (1, 256, 32)),
         ("matmul above", _qlinear_matmul, (64, 256, 96))]


@TWO_THREADS
@pytest.mark.parametrize("label, build, dims", CASES, ids=[c[0] for c in CASES])
def test_int8_results_match_onnxruntime_exactly_at_two_threads_and_leave_the_callers_count(label, build, dims):
    model, feeds = build(*dims, seed=len(label))
    options = qrt.SessionOptions()
    options.intra_op_num_threads = 2
    session = qrt.InferenceSession(model.SerializeToString(), options)
    numba.set_num_threads(1)
    try:
        (got,) = session.run(None, feeds)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (two,) = session.run(None, feeds)
    (want,) = run_ort(model, feeds)
    # int8 arithmetic is exact: bit-identical to onnxruntime whatever the thread count.
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(two, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float16, np.int64, np.bool_])
@pytest.mark.parametrize("shape, perm", [((1, 3, 64, 64), (0, 2, 3, 1)),      # NCHW -> NHWC, 3 channels
                                         ((2, 4, 8, 200), (0, 3, 1, 2)),      # NHWC -> NCHW: numpy's path
                                         ((2, 5, 6, 300), (0, 2, 3, 1)),
                                         ((3, 8, 2000), (0, 2, 1)),           # the longest group moved
                                         ((2, 9, 2000), (0, 2, 1)),           # one past it: numpy's path
                                         ((2, 2, 3, 1000), (2, 3, 0, 1)),     # a leading group of two axes
                                         ((7, 5000), (1, 0))])
def test_transpose_equals_numpy(shape, perm, dtype):
    x = (np.random.default_rng(5).standard_normal(shape) * 60).astype(dtype)
    y = Transpose(perm=list(perm)).run(x)
    assert y.dtype == x.dtype and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x.transpose(perm))
    # A strided view as input (a slice), which the kernel reads through a contiguous copy.
    view = x[..., ::2]
    np.testing.assert_array_equal(Transpose(perm=list(perm)).run(view), view.transpose(perm))
