"""Depthwise Conv on the channels-last kernel (qrt.kernels.cpu.conv.conv_depthwise_channels_last)
against onnxruntime: small planes with many channels, every padding/stride/dilation form, batches,
1-D, and the activations FusedConv applies as it stores.

Tolerance as in test_conv.py: rtol=1e-5 plus 1e-5 x the largest output magnitude (a sum of kH*kW
products added in another order than onnxruntime's; sigmoid is qrt's float32 polynomial, within a
few ulps).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import qrt
from qrt.ops.conv import CHANNELS_LAST_MAX_PLANE, CHANNELS_LAST_MIN_CHANNELS, _channels_last_pays

RNG = np.random.default_rng(7)

CASES = {
    # name: (x shape, kernel, attrs)
    "3x3_same_7x7": ((1, 64, 7, 7), (3, 3), dict(pads=[1, 1, 1, 1])),
    "3x3_stride2_14x14": ((1, 32, 14, 14), (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "5x5_stride2_odd": ((1, 24, 15, 13), (5, 5), dict(strides=[2, 2], pads=[2, 2, 2, 2])),
    "3x3_asymmetric_pads_batch": ((3, 16, 9, 11), (3, 3), dict(pads=[0, 2, 1, 0])),
    "3x3_dilated": ((1, 20, 12, 12), (3, 3), dict(dilations=[2, 3], pads=[2, 3, 2, 3])),
    "3x2_stride_2x1_no_pad": ((2, 17, 10, 9), (3, 2), dict(strides=[2, 1])),
    "same_upper": ((1, 48, 13, 13), (4, 4), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "kernel_beyond_input": ((1, 16, 3, 4), (5, 5), dict(pads=[3, 3, 3, 3])),
    "1d": ((2, 32, 30), (5,), dict(pads=[2, 2])),
    "largest_plane": ((1, 16, 28, 28), (3, 3), dict(pads=[1, 1, 1, 1])),
    "stride2_from_56x56": ((1, 16, 56, 56), (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
}


def _model(x_shape, kernel, attrs, bias, activation=None):
    channels = x_shape[1]
    w = RNG.standard_normal((channels, 1) + kernel).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(onnx.numpy_helper.from_array(RNG.standard_normal(channels).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c" if activation else "y"], group=channels, **attrs)]
    if activation:
        op, act_attrs = activation
        nodes.append(helper.make_node(op, ["c"], ["y"], **act_attrs))
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


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_channels_last_matches_onnxruntime(name, threads):
    x_shape, kernel, attrs = CASES[name]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    model = _model(x_shape, kernel, attrs, bias=name != "1d")
    out_plane = int(np.prod(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                            .run(None, {"x": x})[0].shape[2:]))
    assert _channels_last_pays(x_shape[1], out_plane)     # the case exercises this kernel
    _check(model, x, threads)


@pytest.mark.parametrize("activation", [("Relu", {}), ("Clip", {}), ("LeakyRelu", dict(alpha=0.2)),
                                        ("HardSigmoid", dict(alpha=0.3, beta=0.4)), ("Sigmoid", {}), ("Tanh", {})])
def test_depthwise_channels_last_fused_activation(activation):
    x_shape, kernel, attrs = CASES["3x3_stride2_14x14"]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    if activation[0] == "Clip":     # Clip's bounds are inputs since opset 11: constants qrt folds into FusedConv
        model = _model(x_shape, kernel, attrs, bias=True)
        model.graph.node[0].output[0] = "c"
        model.graph.initializer.extend([onnx.numpy_helper.from_array(np.float32(-0.5), "lo"),
                                        onnx.numpy_helper.from_array(np.float32(0.7), "hi")])
        model.graph.node.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    else:
        model = _model(x_shape, kernel, attrs, bias=True, activation=activation)
    _check(model, x)


def test_depthwise_channels_last_nan_propagates_through_relu():
    x_shape, kernel, attrs = CASES["3x3_same_7x7"]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    x[0, 3, 2, 2] = np.nan
    model = _model(x_shape, kernel, attrs, bias=True, activation=("Relu", {}))
    got = qrt.InferenceSession(model).run(None, {"x": x})[0]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).sum() == 9


def test_channels_last_only_where_it_pays():
    assert _channels_last_pays(544, 49)
    assert not _channels_last_pays(CHANNELS_LAST_MIN_CHANNELS - 1, 49)
    assert not _channels_last_pays(16, CHANNELS_LAST_MAX_PLANE + 1)
