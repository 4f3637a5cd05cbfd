"""Depthwise Conv on the NCHW phase-plane kernel (qrt.kernels.cpu.conv.conv_depthwise) against
onnxruntime. The kernel sums up to four taps per sweep over the output plane, so the cases cover
every remainder of kH*kW mod 4 (1, 2, 3, 4, 6, 7, 9, 25 taps), strides, dilations, asymmetric pads,
channel multipliers > 1, 1-D and 3-D, with and without bias, and fused activations. Also the
channels-last kernel's clamped transposed store (no activation, Relu, Clip) on NaN and infinities.

Tolerance as in test_conv.py: rtol=1e-5 plus 1e-5 x the largest output magnitude (a sum of taps in
another order than onnxruntime's).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import qrt
from qrt.ops.conv import _channels_last_pays

RNG = np.random.default_rng(11)

CASES = {
    # name: (x shape, weight shape, attrs); few channels or big planes, so the phase-plane kernel runs
    "1x1_tap": ((1, 4, 9, 10), (4, 1, 1, 1), dict(pads=[1, 0, 0, 1])),
    "1x2_taps": ((2, 3, 8, 9), (3, 1, 1, 2), dict(pads=[0, 1, 0, 0])),
    "3x1_taps_stride2": ((1, 4, 11, 7), (4, 1, 3, 1), dict(strides=[2, 1], pads=[1, 0, 1, 0])),
    "2x2_taps": ((1, 5, 9, 9), (5, 1, 2, 2), dict(pads=[1, 1, 0, 0])),
    "2x3_taps_dilated": ((1, 4, 12, 13), (4, 1, 2, 3), dict(dilations=[2, 2], pads=[1, 2, 1, 2])),
    "7x1_taps": ((1, 3, 15, 6), (3, 1, 7, 1), dict(pads=[3, 0, 3, 0])),
    "3x3_same_big_plane": ((1, 16, 40, 37), (16, 1, 3, 3), dict(pads=[1, 1, 1, 1])),
    "3x3_stride2_asymmetric": ((1, 8, 33, 30), (8, 1, 3, 3), dict(strides=[2, 2], pads=[0, 1, 1, 0])),
    "3x3_stride_2x3_dilated": ((2, 6, 20, 23), (6, 1, 3, 3), dict(strides=[2, 3], dilations=[2, 1],
                                                                   pads=[2, 1, 1, 2])),
    "5x5_same": ((1, 8, 17, 19), (8, 1, 5, 5), dict(pads=[2, 2, 2, 2])),
    "3x3_multiplier_3": ((1, 4, 12, 12), (12, 1, 3, 3), dict(pads=[1, 1, 1, 1])),
    "5x5_multiplier_2_stride2": ((1, 20, 9, 9), (40, 1, 5, 5), dict(strides=[2, 2], pads=[2, 2, 2, 2])),
    "1d_5_taps": ((2, 6, 31), (6, 1, 5), dict(pads=[2, 1])),
    "3d_3x3x3": ((1, 4, 5, 7, 6), (4, 1, 3, 3, 3), dict(pads=[1, 1, 0, 1, 1, 1])),
}


def _model(x_shape, w_shape, attrs, bias, activation=None):
    channels, n_out = x_shape[1], w_shape[0]
    inits = [onnx.numpy_helper.from_array(RNG.standard_normal(w_shape).astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(onnx.numpy_helper.from_array(RNG.standard_normal(n_out).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c" if activation else "y"], group=channels, **attrs)]
    if activation == "Clip":     # bounds are inputs since opset 11: constants qrt folds into FusedConv
        inits += [onnx.numpy_helper.from_array(np.float32(-0.5), "lo"),
                  onnx.numpy_helper.from_array(np.float32(0.7), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif activation:
        nodes.append(helper.make_node(activation, ["c"], ["y"]))
    rank = len(x_shape)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [f"d{i}" for i in range(rank)])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _check(model, x, threads=1):
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    options = qrt.SessionOptions()
    options.intra_op_num_threads = threads
    got = qrt.InferenceSession(model, options).run(None, {"x": x})[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    return want


@pytest.mark.parametrize("name", sorted(CASES))
def test_depthwise_planes_matches_onnxruntime(name):
    x_shape, w_shape, attrs = CASES[name]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    want = _check(_model(x_shape, w_shape, attrs, bias=name.startswith("3x3")), x, threads=1 + len(name) % 2)
    # the case exercises the phase-plane kernel, not the channels-last one
    assert w_shape[0] != x_shape[1] or len(x_shape) > 4 or not _channels_last_pays(x_shape[1], want[0, 0].size)


@pytest.mark.parametrize("activation", ["Relu", "Clip", "HardSwish"])
def test_depthwise_planes_fused_activation(activation):
    x_shape, w_shape, attrs = CASES["3x3_stride2_asymmetric"]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    _check(_model(x_shape, w_shape, attrs, bias=True, activation=activation), x)


@pytest.mark.parametrize("activation", [None, "Relu", "Clip"])
def test_depthwise_channels_last_clamped_store_keeps_nan_and_inf(activation):
    # The channels-last kernel applies no activation, Relu and Clip as a clamp in its transposed
    # store; NaN and infinities must come out as onnxruntime's.
    x_shape, w_shape = (1, 32, 7, 7), (32, 1, 3, 3)
    assert _channels_last_pays(32, 49)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    x[0, 3, 2, 2] = np.nan
    x[0, 5, 0, 0] = np.inf
    x[0, 7, 6, 6] = -np.inf
    model = _model(x_shape, w_shape, dict(pads=[1, 1, 1, 1]), bias=True, activation=activation)
    got = qrt.InferenceSession(model).run(None, {"x": x})[0]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5 * float(np.abs(want[finite]).max()))
    assert np.isnan(want).sum() >= 9


@pytest.mark.parametrize("x_shape, w_shape, threads", [
    ((1, 4, 8, 8), (4, 1, 3, 3), 1),            # 2.3K multiply-adds: not worth a second thread
    ((1, 32, 7, 7), (32, 1, 3, 3), 1),          # channels-last kernel, 14K
    ((1, 16, 64, 64), (16, 1, 3, 3), 2),        # 590K: both threads
])
def test_depthwise_threads_follow_the_work(x_shape, w_shape, threads, monkeypatch):
    from qrt.ops import conv as conv_op
    counts = []
    call = conv_op.call_with_threads
    monkeypatch.setattr(conv_op, "call_with_threads", lambda count, *a: (counts.append(count), call(count, *a))[1])
    x = RNG.standard_normal(x_shape).astype(np.float32)
    _check(_model(x_shape, w_shape, dict(pads=[1, 1, 1, 1]), bias=True), x, threads=2)
    assert counts == [threads]
