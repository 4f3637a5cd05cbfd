"""com.microsoft QuantizeLinear / DequantizeLinear (onnxruntime's ``UseQDQContribOps``) against onnxruntime.

Exact: the same float32 division, round half to even and saturation (quantize), and the same
float32 product (dequantize).
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt

TYPES = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8, np.uint16: TensorProto.UINT16,
         np.int16: TensorProto.INT16, np.int32: TensorProto.INT32}


def _run_both(op, x, scale, zero_point, axis):
    node = helper.make_node(op, ["x", "scale", "zero_point"], ["y"], domain="com.microsoft", axis=axis)
    out_type = TYPES[zero_point.dtype.type] if op == "QuantizeLinear" else TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "qdq", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
        [helper.make_tensor_value_info("y", out_type, x.shape)],
        initializer=[numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(zero_point, "zero_point")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    data = model.SerializeToString()
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    actual = qrt.InferenceSession(data).run(None, {"x": x})[0]
    return expected, actual


@pytest.mark.parametrize("qtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_linear(qtype, per_axis):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 4)) * 300).astype(np.float32)
    info = np.iinfo(qtype)
    shape = (3,) if per_axis else ()
    scale = (rng.random(shape) * 0.5 + 0.01).astype(np.float32)
    zero_point = rng.integers(info.min // 4, info.max // 4, shape).astype(qtype)
    expected, actual = _run_both("QuantizeLinear", x, scale, zero_point, axis=1)
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("qtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32])
def test_dequantize_linear(qtype):
    rng = np.random.default_rng(6)
    info = np.iinfo(qtype)
    low, high = max(info.min, -(1 << 20)), min(info.max, 1 << 20)
    x = rng.integers(low, high, (2, 3, 4)).astype(qtype)
    scale = (rng.random(4) * 0.5 + 0.01).astype(np.float32)
    zero_point = np.zeros(4, qtype) if qtype == np.int32 else rng.integers(low // 4, high // 4, 4).astype(qtype)
    expected, actual = _run_both("DequantizeLinear", x, scale, zero_point, axis=2)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual, expected)
