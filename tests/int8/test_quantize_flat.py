"""QuantizeLinear / DequantizeLinear with constant per-tensor float32 parameters take a flat kernel.

It must equal the general path (qrt.qmath, the arithmetic of the spec) bit for bit, NaN, infinities
and rounding ties included, at serial and parallel sizes; onnxruntime agrees exactly (the spec's
division and round half to even; NaN to the lowest value as onnxruntime does on x86).
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt import qmath


def _model(dtype, zero_point, opset=13):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    q_inputs = ["x", "s"] + (["z"] if zero_point is not None else [])
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s2"] + q_inputs[2:], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.0371, np.float32), "s"),
             numpy_helper.from_array(np.array([0.0417], np.float32), "s2")]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(np.array(zero_point, dtype), "z"))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h"])],
                              [helper.make_tensor_value_info("q", elem, ["n", "c", "h"]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("dtype, zero_point", [(np.uint8, 131), (np.int8, -7), (np.uint8, None), (np.int16, 300)])
@pytest.mark.parametrize("shape", [(1, 3, 5), (2, 16, 9000)])
def test_flat_path_equals_general_path_and_onnxruntime(dtype, zero_point, shape):
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    flat = x.reshape(-1)
    flat[:7] = [np.nan, np.inf, -np.inf, 0.5 * 0.0371, 1.5 * 0.0371, -2.5 * 0.0371, 1e30]
    model = _model(dtype, zero_point)
    sess = qrt.InferenceSession(model.SerializeToString())
    assert sess._plan.steps[0].kernel._flat is not None and sess._plan.steps[1].kernel._flat is not None
    q, y = sess.run(None, {"x": x})
    zp = None if zero_point is None else np.array(zero_point, dtype)
    want_q = qmath.quantize(x, np.array(0.0371, np.float32), zp, qtype=dtype)
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(y, qmath.dequantize(want_q, np.array([0.0417], np.float32), zp))
    if dtype != np.int16:   # onnxruntime's opset-13 QuantizeLinear has no 16-bit types
        ort_q, ort_y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})
        np.testing.assert_array_equal(q, ort_q)
        np.testing.assert_array_equal(y, ort_y)


def test_non_constant_parameters_take_the_checked_path():
    model = _model(np.uint8, 131)
    graph = model.graph
    scale = graph.initializer[0]
    del graph.initializer[0]
    graph.input.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    sess = qrt.InferenceSession(model.SerializeToString())
    x = np.linspace(-3, 3, 30, dtype=np.float32).reshape(1, 3, 10)
    q, _ = sess.run(None, {"x": x, "s": numpy_helper.to_array(scale)})
    np.testing.assert_array_equal(q, qmath.quantize(x, np.array(0.0371, np.float32), np.array(131, np.uint8)))
    with pytest.raises(qrt.errors.QrtError, match="y_scale must be finite and > 0"):
        sess.run(None, {"x": x, "s": np.array(-1.0, np.float32)})
