"""NaN, infinities and signed zeros through the float activations, against onnxruntime.

A NaN that reaches an activation must come out NaN (the ONNX reference computes these with numpy,
which propagates it; onnxruntime does too): a Relu written ``x if x > 0 else 0`` silently turned
NaN into 0. Sizes cover the serial kernels and the split across threads; the comparison is exact
for NaN positions and infinities, and rtol 1e-6 elsewhere (the transcendental activations use
qrt's own vector math, within 2 ulp of onnxruntime's).
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import qrt

SPECIAL = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -1.5, 1e-30, -1e30], np.float32)

UNARY = [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}), ("HardSigmoid", {}),
         ("HardSwish", {}), ("Elu", {}), ("Selu", {}), ("Softplus", {}), ("Abs", {}), ("Neg", {})]


def _model(nodes, n):
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _feed(n):
    return np.resize(SPECIAL, n).astype(np.float32)


def _check(model, x, threads):
    options = qrt.SessionOptions()
    options.intra_op_num_threads = threads
    got = qrt.InferenceSession(model, options).run(None, {"x": x})[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [10, 1 << 18])
@pytest.mark.parametrize("op_type, attrs", UNARY, ids=[u[0] for u in UNARY])
def test_unary_activation_keeps_nan(op_type, attrs, n):
    _check(_model([helper.make_node(op_type, ["x"], ["y"], **attrs)], n), _feed(n), threads=2)


@pytest.mark.parametrize("n", [10, 1 << 18])
def test_fused_chain_keeps_nan(n):
    """Add -> Relu -> Mul: qrt runs it as one generated kernel."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Constant", [], ["c"], value=one), helper.make_node("Add", ["x", "c"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Mul", ["r", "r"], ["y"])]
    _check(_model(nodes, n), _feed(n), threads=2)


@pytest.mark.parametrize("activation", ["Relu", "HardSigmoid"])
def test_conv_epilogue_keeps_nan_and_clamps_infinities(activation):
    """Conv -> activation runs as FusedConv with the activation in the GEMM epilogue: -inf must give
    0 there (a ``0 * v`` NaN trick once made it NaN) and NaN must stay NaN."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [1.0, 0.0, 0.0, 1.0])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node(activation, ["c"], ["y"])], "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 1])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = SPECIAL.reshape(1, 2, 5, 1)
    got = qrt.InferenceSession(model).run(None, {"x": x})[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-6, atol=0)
