"""Weight and bias quantization, checked against the definitions rather than against another tool.

Symmetric int8 per-channel: scale[c] = max|W[c]| / 127 along the op's output-channel axis, zero
point 0, W_q = round_half_even(W / scale). Bias: int32, scale = input_scale * weight_scale[c],
zero point 0. Ranges are fixed with ``tensor_ranges`` so no calibration runs. Scales are compared
with a relative tolerance of 1e-6 (the quantizer divides in float64 and stores float32);
quantized values must match exactly.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant_models import OPSET, run_ort, sqnr_db
from qrt.quantization import QuantFormat, QuantType, quantize_static

RNG = np.random.default_rng(11)


def single_op_model(op_type, x_shape, weight, bias=None, **attrs):
    inits = [numpy_helper.from_array(weight, "W")]
    inputs = ["x", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
        inputs.append("B")
    graph = helper.make_graph([helper.make_node(op_type, inputs, ["y"], name="op", **attrs)], op_type,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def weights(shape, scale_per_channel_axis=None):
    w = RNG.standard_normal(shape).astype(np.float32)
    if scale_per_channel_axis is not None:
        # Very different magnitudes per output channel: what per-channel scales are for.
        spread = np.logspace(-2, 0, shape[scale_per_channel_axis]).astype(np.float32)
        dims = [1] * len(shape)
        dims[scale_per_channel_axis] = -1
        w = w * spread.reshape(dims)
    return w


def initializer_map(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def expected_symmetric(w, axis):
    other = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.max(np.abs(w.astype(np.float64)), axis=other)
    return (absmax / 127.0).astype(np.float32)


CASES = {
    # op, x shape, weight shape, channel axis, attributes
    "Conv": ("Conv", [1, 3, 6, 6], (4, 3, 3, 3), 0, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "ConvTranspose": ("ConvTranspose", [1, 3, 4, 4], (3, 5, 2, 2), 1, dict(kernel_shape=[2, 2], strides=[2, 2])),
    "MatMul": ("MatMul", [2, 6], (6, 7), 1, {}),
    "Gemm-transB": ("Gemm", [2, 6], (7, 6), 0, dict(transB=1)),
    "Gemm": ("Gemm", [2, 6], (6, 7), 1, dict(transB=0)),
}


def quantize_case(name, fmt, per_channel=True, **kwargs):
    op, x_shape, w_shape, axis, attrs = CASES[name]
    w = weights(w_shape, axis)
    n_out = w_shape[axis]
    bias = None if op == "MatMul" else (RNG.standard_normal(n_out) * 0.3).astype(np.float32)
    model = single_op_model(op, x_shape, w, bias, **attrs)
    y = run_ort(model, [{"x": sample_input(name)}])[0]
    summary = quantize_static(model, None, None, quant_format=fmt, per_channel=per_channel,
                              activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                              tensor_ranges={"x": (-2.0, 3.0), "y": (float(y.min()), float(y.max()))}, **kwargs)
    return model, w, bias, axis, summary


def sample_input(name):
    shape = [d if isinstance(d, int) else 1 for d in CASES[name][1]]
    return np.random.default_rng(5).uniform(-2, 3, shape).astype(np.float32)


def weight_dq(model, weight_name="W"):
    """The DequantizeLinear reading the quantized weight, in a QDQ model."""
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].startswith(weight_name + "_quantized"):
            return node
    raise AssertionError(f"no DequantizeLinear for {weight_name}")


@pytest.mark.parametrize("case", list(CASES))
def test_per_channel_axis_and_bias_qdq(case):
    model, w, bias, axis, summary = quantize_case(case, QuantFormat.QDQ)
    q = summary.model
    inits = initializer_map(q)
    dq = weight_dq(q)
    w_q, w_scale, w_zp = (inits[n] for n in dq.input)
    assert next(a.i for a in dq.attribute if a.name == "axis") == axis
    np.testing.assert_allclose(w_scale, expected_symmetric(w, axis), rtol=1e-6)
    assert w_q.dtype == np.int8 and not w_zp.any() and w_q.min() >= -127
    shape = [1] * w.ndim
    shape[axis] = -1
    np.testing.assert_array_equal(w_q, np.rint(w / w_scale.reshape(shape)).astype(np.int8))
    if bias is not None:
        bias_dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("B_"))
        b_q, b_scale = inits[bias_dq.input[0]], inits[bias_dq.input[1]]
        x_scale = np.float32(5.0 / 255)  # range (-2, 3) on uint8
        assert b_q.dtype == np.int32 and len(bias_dq.input) == 2   # zero point omitted: 0
        np.testing.assert_allclose(b_scale, x_scale * w_scale, rtol=1e-6)
        np.testing.assert_array_equal(b_q, np.rint(bias.astype(np.float64) / b_scale.astype(np.float64)))
    x = sample_input(case)
    assert sqnr_db(run_ort(model, [{"x": x}])[0], run_ort(q, [{"x": x}])[0]) > 30


@pytest.mark.parametrize("case", ["Conv", "MatMul", "Gemm-transB", "Gemm"])
def test_per_channel_qoperator_weights(case):
    model, w, bias, axis, summary = quantize_case(case, QuantFormat.QOperator)
    node = next(n for n in summary.model.graph.node if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm"))
    inits = initializer_map(summary.model)
    w_scale = inits[node.input[4]]
    np.testing.assert_allclose(w_scale, expected_symmetric(w, axis), rtol=1e-6)
    assert inits[node.input[5]].shape == w_scale.shape
    bias_index = {"QLinearConv": 8, "QGemm": 6}.get(node.op_type)
    if bias_index is not None:
        expected = np.rint(bias.astype(np.float64) / (np.float32(5.0 / 255) * w_scale).astype(np.float64))
        np.testing.assert_array_equal(inits[node.input[bias_index]], expected)
    x = sample_input(case)
    reference = run_ort(model, [{"x": x}])[0]
    assert sqnr_db(reference, run_ort(summary.model, [{"x": x}])[0]) > 30


def test_per_channel_beats_per_tensor_on_uneven_channels():
    *_, per_tensor = quantize_case("Conv", QuantFormat.QOperator, per_channel=False)
    model, *_, per_channel = quantize_case("Conv", QuantFormat.QOperator, per_channel=True)
    x = sample_input("Conv")
    reference = run_ort(model, [{"x": x}])[0]
    assert sqnr_db(reference, run_ort(per_channel.model, [{"x": x}])[0]) > \
        sqnr_db(reference, run_ort(per_tensor.model, [{"x": x}])[0]) + 3


def test_reduce_range_gives_7_bit_weights():
    *_, summary = quantize_case("Conv", QuantFormat.QDQ, reduce_range=True)
    w_q = initializer_map(summary.model)[weight_dq(summary.model).input[0]]
    assert w_q.min() >= -64 and w_q.max() <= 64 and np.abs(w_q).max() == 64


def test_asymmetric_weights_use_the_full_range():
    _, w, _, axis, summary = quantize_case("Conv", QuantFormat.QDQ, extra_options={"WeightSymmetric": False})
    inits = initializer_map(summary.model)
    w_q, w_scale, w_zp = (inits[n] for n in weight_dq(summary.model).input)
    assert w_zp.shape == (4,)
    for c in range(4):
        assert w_q[c].min() == -128 and w_q[c].max() == 127
    dequantized = (w_q.astype(np.float32) - w_zp.reshape(-1, 1, 1, 1)) * w_scale.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(dequantized - w) <= w_scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)


def test_uint8_weights_default_to_asymmetric():
    op, x_shape, w_shape, axis, attrs = CASES["MatMul"]
    model = single_op_model(op, x_shape, weights(w_shape))
    summary = quantize_static(model, None, None, quant_format=QuantFormat.QOperator, weight_type=QuantType.QUInt8,
                              activation_type=QuantType.QUInt8, tensor_ranges={"x": (-2, 3), "y": (-8, 8)})
    node = next(n for n in summary.model.graph.node if n.op_type == "QLinearMatMul")
    inits = initializer_map(summary.model)
    assert inits[node.input[3]].dtype == np.uint8 and inits[node.input[5]] not in (0, 128)


def test_gemm_alpha_beta_fold_into_bias():
    w = weights((5, 4))
    bias = RNG.standard_normal(5).astype(np.float32)
    model = single_op_model("Gemm", [3, 4], w, bias, transB=1, alpha=0.5, beta=2.0)
    x = RNG.uniform(-2, 3, (3, 4)).astype(np.float32)
    reference = run_ort(model, [{"x": x}])[0]
    ranges = {"x": (-2.0, 3.0), "y": (float(reference.min()), float(reference.max()))}
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        summary = quantize_static(model, None, None, quant_format=fmt, per_channel=True,
                                  activation_type=QuantType.QUInt8, tensor_ranges=ranges)
        assert sqnr_db(reference, run_ort(summary.model, [{"x": x}])[0]) > 30, fmt
