"""Bad quantization parameters are rejected when the session is created, never run into a wrong answer.

Every case builds a model whose parameters are constants (initializers), so the kernels' plan-time
``prepare`` sees them; the error must be a QrtError naming the node and the parameter at fault.
"""
import numpy as np
import pytest

import qrt
from int8_helpers import node_model
from qrt.errors import QrtError

F32 = np.float32


def _conv(**over):
    consts = dict(xs=np.array(0.02, F32), xz=np.array(3, np.uint8), w=np.ones((4, 2, 3, 3), np.int8),
                  ws=np.full(4, 0.01, F32), wz=np.zeros(4, np.int8), ys=np.array(0.5, F32), yz=np.array(0, np.uint8))
    consts.update(over)
    x = np.zeros((1, 2, 5, 5), np.uint8)
    return node_model("QLinearConv", dict(x=x), consts, [("y", np.uint8)], opset=10,
                      input_order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"])


def _create(model):
    return qrt.InferenceSession(model.SerializeToString())


@pytest.mark.parametrize("override, words", [
    (dict(ws=np.full(5, 0.01, F32)), ["w_scale", "5", "4"]),                       # wrong per-channel length
    (dict(ws=np.full((2, 2), 0.01, F32)), ["w_scale"]),                             # wrong rank
    (dict(xs=np.array(0.0, F32)), ["x_scale", "> 0"]),                              # zero scale
    (dict(ys=np.array(-0.5, F32)), ["y_scale", "> 0"]),                             # negative scale
    (dict(xs=np.array(np.nan, F32)), ["x_scale", "finite"]),                        # NaN scale
    (dict(ws=np.array([0.1, np.inf, 0.1, 0.1], F32)), ["w_scale", "finite"]),       # infinite channel
    (dict(xs=np.array(2, np.int32)), ["x_scale", "float"]),                         # integer scale
    (dict(wz=np.zeros(3, np.int8)), ["w_zero_point", "3"]),                         # zero point per channel, wrong length
    (dict(yz=np.zeros(2, np.uint8)), ["y_zero_point", "scalar"]),                   # vector where a scalar is required
])
def test_qlinearconv_bad_parameters_fail_at_session_creation(override, words):
    with pytest.raises(QrtError) as info:
        _create(_conv(**override))
    message = str(info.value)
    assert "QLinearConv" in message
    for word in words:
        assert word in message, message


def test_qlinearconv_bad_bias_type_fails_at_creation():
    model = _conv(b=np.zeros(4, np.float32))
    model.graph.node[0].input.append("b")
    with pytest.raises(QrtError, match="B must be int32"):
        _create(model)


def test_qlinearmatmul_zero_point_type_mismatch_fails_at_creation():
    a = np.zeros((2, 3), np.uint8)
    consts = dict(a_s=np.array(0.1, F32), a_z=np.array(0, np.uint8), b=np.ones((3, 4), np.int8),
                  b_s=np.array(0.1, F32), b_z=np.array(0, np.uint8), y_s=np.array(0.1, F32), y_z=np.array(0, np.uint8))
    model = node_model("QLinearMatMul", dict(a=a), consts, [("y", np.uint8)], opset=10,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"])
    with pytest.raises(QrtError) as info:
        _create(model)
    assert "b_zero_point" in str(info.value) or "zero" in str(info.value)


def test_qlinearmatmul_per_column_scale_length_fails_at_creation():
    a = np.zeros((2, 3), np.uint8)
    consts = dict(a_s=np.array(0.1, F32), a_z=np.array(0, np.uint8), b=np.ones((3, 4), np.int8),
                  b_s=np.full(5, 0.1, F32), b_z=np.zeros(5, np.int8), y_s=np.array(0.1, F32), y_z=np.array(0, np.uint8))
    model = node_model("QLinearMatMul", dict(a=a), consts, [("y", np.uint8)], opset=10,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"])
    with pytest.raises(QrtError, match="b_scale"):
        _create(model)


@pytest.mark.parametrize("scale, axis, words", [
    (np.full(3, 0.1, F32), 2, ["axis=2", "rank 2"]),                  # axis out of range for the constant input
    (np.full(3, 0.1, F32), 0, ["3 values", "axis 0", "4"]),          # per-axis length differs from the axis
    (np.array(-1.0, F32), 1, ["x_scale", "> 0"]),
])
def test_dequantize_constant_weights_bad_layout_fails_at_creation(scale, axis, words):
    w = np.ones((4, 3), np.int8)
    zp = np.zeros(scale.shape, np.int8)
    model = node_model("DequantizeLinear", {}, dict(w=w, s=scale, z=zp), [("y", F32, 2)], attrs=dict(axis=axis),
                       opset=13, input_order=["w", "s", "z"])
    with pytest.raises(QrtError) as info:
        _create(model)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_quantize_zero_point_shape_differs_from_scale_fails_at_creation():
    x = np.zeros((2, 3), F32)
    model = node_model("QuantizeLinear", dict(x=x), dict(s=np.full(3, 0.1, F32), z=np.zeros(2, np.uint8)),
                       [("y", np.uint8)], attrs=dict(axis=1), opset=13, input_order=["x", "s", "z"])
    with pytest.raises(QrtError, match="y_zero_point"):
        _create(model)


def test_quantize_run_time_axis_out_of_range_is_a_qrt_error():
    """The input is not a constant, so the axis can only be checked when it arrives: still a QrtError."""
    x = np.zeros((2, 3), F32)
    model = node_model("QuantizeLinear", dict(x=x), dict(s=np.full(3, 0.1, F32), z=np.zeros(3, np.uint8)),
                       [("y", np.uint8)], attrs=dict(axis=5), opset=13, input_order=["x", "s", "z"])
    try:
        session = _create(model)
    except QrtError as exc:
        assert "axis" in str(exc)
        return
    with pytest.raises(QrtError, match="axis"):
        session.run(None, dict(x=x))


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_contrib_binary_bad_scale_fails_at_creation(op):
    a = np.zeros((2, 3), np.uint8)
    consts = dict(a_s=np.array(0.1, F32), a_z=np.array(0, np.uint8), b=np.ones((3,), np.uint8),
                  b_s=np.array(0.0, F32), b_z=np.array(0, np.uint8), c_s=np.array(0.1, F32), c_z=np.array(0, np.uint8))
    model = node_model(op, dict(a=a), consts, [("c", np.uint8)], domain="com.microsoft",
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"])
    with pytest.raises(QrtError, match="B_scale"):
        _create(model)


def test_qgemm_per_column_scale_of_wrong_length_fails_at_creation():
    a = np.zeros((2, 3), np.uint8)
    consts = dict(a_s=np.array(0.1, F32), a_z=np.array(0, np.uint8), b=np.ones((4, 3), np.int8),
                  b_s=np.full(3, 0.1, F32), b_z=np.zeros(3, np.int8), y_s=np.array(0.2, F32), y_z=np.array(0, np.uint8))
    model = node_model("QGemm", dict(a=a), consts, [("y", np.uint8)], attrs=dict(transB=1), domain="com.microsoft",
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "", "y_s", "y_z"])
    with pytest.raises(QrtError, match="b_scale"):
        _create(model)


def test_run_time_scale_is_checked_when_it_arrives():
    """A scale fed at run time is validated on arrival: a QrtError, not a tensor of garbage."""
    x = np.ones((1, 2, 5, 5), np.uint8)
    consts = dict(xz=np.array(3, np.uint8), w=np.ones((4, 2, 3, 3), np.int8), ws=np.full(4, 0.01, F32),
                  wz=np.zeros(4, np.int8), ys=np.array(0.5, F32), yz=np.array(0, np.uint8))
    model = node_model("QLinearConv", dict(x=x, xs=np.array(0.1, F32)), consts, [("y", np.uint8)], opset=10,
                       input_order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"])
    session = _create(model)
    assert session.run(None, dict(x=x, xs=np.array(0.1, F32)))[0].shape == (1, 4, 3, 3)
    with pytest.raises(QrtError, match="x_scale"):
        session.run(None, dict(x=x, xs=np.array(-0.1, F32)))
