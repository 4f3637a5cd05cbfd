"""Quantizing a model whose tensor types onnx shape inference cannot find.

The model opens with com.microsoft FusedConv, for which onnx has no schema: everything after it
has no element type. A Reshape of the (typed) input to a target computed from that untyped branch
has an element type but no rank. Before types were taken from a qrt run, quantize_static failed
with "the type or rank of tensor(s) ['x_flat', 'm2'] could not be inferred" and quantize_dynamic
left the Conv and one MatMul in float.

Tolerances, qrt's int8 run against onnxruntime's run of the same quantized file:
* static: every output within one output quantization step. Both runtimes compute the integer
  parts exactly, but requantization multiplies by the float scale ratio, and a value landing on a
  rounding tie can go either way (fp32 rounding of the ratio differs between kernels); one flipped
  step in an intermediate tensor moves the final output by at most about one step here. At least
  95% of outputs must match exactly.
* dynamic: DynamicQuantizeLinear and the integer products are exact in both; what remains is the
  float32 rescale (Cast, Mul, Add), so relative 1e-5 on the outputs' scale.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from calibration import collect_ranges
from calibration.tensor_types import observed_tensor_types, untyped_tensors
from qrt.errors import QuantizationError
from qrt.quantization import QuantFormat, quantize_dynamic, quantize_static
from quant_models import run_ort, sqnr_db

SEED = 11


def untyped_model():
    rng = np.random.default_rng(SEED)

    def weight(name, *shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)

    nodes = [
        helper.make_node("FusedConv", ["x", "W1", "B1"], ["a"], name="a", domain="com.microsoft",
                         activation="Relu", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "W2", "B2"], ["b"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["c"], name="c"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="p"),
        helper.make_node("Shape", ["p"], ["p_shape"], name="p_shape"),
        helper.make_node("Slice", ["p_shape", "zero", "one"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], name="flat_shape", axis=0),
        helper.make_node("Reshape", ["p", "flat_shape"], ["f"], name="f"),
        helper.make_node("Reshape", ["x", "flat_shape"], ["x_flat"], name="x_flat"),
        helper.make_node("MatMul", ["f", "W3"], ["m1"], name="m1"),
        helper.make_node("MatMul", ["x_flat", "W4"], ["m2"], name="m2"),
        helper.make_node("Add", ["m1", "m2"], ["y"], name="y"),
    ]
    inits = [weight("W1", 4, 3, 3, 3, fan_in=27), weight("B1", 4, fan_in=400), weight("W2", 6, 4, 3, 3, fan_in=36),
             weight("B2", 6, fan_in=400), weight("W3", 6, 5, fan_in=6), weight("W4", 192, 5, fan_in=192),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(nodes, "untyped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def feeds(n, seed, batch=2):
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (batch, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def run_qrt(model, batches):
    session = qrt.InferenceSession(model)
    return np.concatenate([session.run(None, feed)[0] for feed in batches])


def output_step(model):
    """Scale of the DequantizeLinear that writes the graph output (one output quantization step)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[model.graph.output[0].name]
    assert node.op_type == "DequantizeLinear"
    return float(inits[node.input[1]])


def quantized_nodes(summary):
    return {n.name for n in summary.nodes if n.status in ("quantized", "fused")}


def test_the_model_defeats_onnx_shape_inference():
    inferred = onnx.shape_inference.infer_shapes(untyped_model(), data_prop=True)
    assert set(untyped_tensors(inferred)) == {"a", "b", "c", "p", "f", "x_flat", "m1", "m2"}


def test_observed_types_follow_the_feed_or_the_given_shapes():
    model = untyped_model()
    observed = observed_tensor_types(model, feeds(1, 0)[0])
    assert observed["x_flat"] == (TensorProto.FLOAT, (2, 192))
    assert observed["p_shape"] == (TensorProto.INT64, (4,))
    assert observed_tensor_types(model)["a"] == (TensorProto.FLOAT, (1, 4, 8, 8))      # generated: batch 1
    assert observed_tensor_types(model, input_shapes={"x": [3, 3, 8, 8]})["m2"] == (TensorProto.FLOAT, (3, 5))


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_static_quantizes_what_inference_left_untyped(tmp_path, fmt):
    model = untyped_model()
    test = feeds(4, 99)
    summary = quantize_static(model, tmp_path / "int8.onnx", feeds(8, 1, batch=16), quant_format=QuantFormat[fmt],
                              per_channel=True)
    assert {"b", "c", "m1", "m2", "y"} <= quantized_nodes(summary), str(summary)
    assert any("first calibration sample" in note for note in summary.preprocessing)
    written = onnx.load(tmp_path / "int8.onnx")
    onnx.checker.check_model(written)

    reference = run_ort(model, test)[0]
    ort_int8 = run_ort(written, test)[0]
    qrt_int8 = run_qrt(written, test)
    step = output_step(written)
    assert np.max(np.abs(qrt_int8 - ort_int8)) <= step * 1.001
    assert np.mean(qrt_int8 == ort_int8) >= 0.95
    # Calibrated on 128 samples of the test distribution, 8-bit activations keep ~41 dB here.
    assert sqnr_db(reference, ort_int8) >= 35.0


def test_dynamic_quantizes_what_inference_left_untyped(tmp_path):
    model = untyped_model()
    test = feeds(4, 99)
    summary = quantize_dynamic(model, tmp_path / "int8.onnx")
    assert {"b", "m1", "m2"} <= quantized_nodes(summary), str(summary)
    assert any("generated feed" in note for note in summary.preprocessing)
    written = onnx.load(tmp_path / "int8.onnx")
    onnx.checker.check_model(written)

    reference = run_ort(model, test)[0]
    ort_int8 = run_ort(written, test)[0]
    qrt_int8 = run_qrt(written, test)
    np.testing.assert_allclose(qrt_int8, ort_int8, rtol=1e-5, atol=1e-5 * np.max(np.abs(ort_int8)))
    # Per-batch activation ranges from DynamicQuantizeLinear: ~43 dB here.
    assert sqnr_db(reference, ort_int8) >= 35.0


def test_static_without_data_types_from_a_generated_feed():
    model = untyped_model()
    calibrated = quantize_static(model, None, feeds(4, 1), quant_format=QuantFormat.QOperator)
    by_hand = quantize_static(model, None, None, quant_format=QuantFormat.QOperator, tensor_ranges=calibrated.ranges)
    assert any("generated feed" in note for note in by_hand.preprocessing)
    assert quantized_nodes(by_hand) == quantized_nodes(calibrated)
    test = feeds(2, 99)
    np.testing.assert_array_equal(run_qrt(by_hand.model, test), run_qrt(calibrated.model, test))


def test_input_shapes_option_is_checked():
    with pytest.raises(QuantizationError, match="InputShapes"):
        quantize_dynamic(untyped_model(), None, extra_options={"InputShapes": {"x": [1, "three", 8, 8]}})
    with pytest.raises(QuantizationError, match=r"InputShapes gives input 'x' the shape \[1, 3, 8, 9\], "
                                                r"the model declares \['N', 3, 8, 8\]"):
        quantize_dynamic(untyped_model(), None, extra_options={"InputShapes": {"x": [1, 3, 8, 9]}})
    with pytest.raises(QuantizationError, match=r"InputShapes names input\(s\) \['X'\]"):
        quantize_dynamic(untyped_model(), None, extra_options={"InputShapes": {"X": [1, 3, 8, 8]}})


def test_a_model_inference_can_follow_is_not_run(mlp):
    model, _ = mlp
    summary = quantize_dynamic(model, None)
    assert not any("qrt run" in note for note in summary.preprocessing)


def test_collect_ranges_of_untyped_tensors():
    model = untyped_model()
    batches = feeds(3, 5)
    ranges = collect_ranges(model, batches, tensor_names=["x_flat", "m2"], progress=False)
    w4 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W4"))
    x_flat = np.concatenate([b["x"].reshape(2, -1) for b in batches])
    m2 = x_flat.astype(np.float64) @ w4
    np.testing.assert_allclose(ranges["x_flat"], (x_flat.min(), x_flat.max()), rtol=0)
    np.testing.assert_allclose(ranges["m2"], (m2.min(), m2.max()), rtol=1e-5)
