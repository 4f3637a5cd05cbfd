"""Model shapes that break naive quantizers: other conv ranks, old opsets/IR, shared weights, subgraphs.

Ranges come from ``reference_ranges`` (onnxruntime min/max over the same samples) so these tests
check the rewrite alone; the quantized models run in onnxruntime and must stay within a few dB
of what 8 bits allow on these random models (> 30 dB SQNR; measured 37-41 dB).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrt.quantization import QuantFormat, QuantType, quantize_static
from quant_models import reference_ranges, run_ort, sqnr_db

RNG = np.random.default_rng(21)


def make_model(nodes, inputs, outputs, inits, opset=17, ir=8):
    graph = helper.make_graph(nodes, "edge", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def quantize_both(model, feeds):
    reference = run_ort(model, feeds)[0]
    ranges = reference_ranges(model, feeds)
    results = {}
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        summary = quantize_static(model, None, None, quant_format=fmt, per_channel=True, tensor_ranges=ranges)
        onnx.checker.check_model(summary.model)
        assert sqnr_db(reference, run_ort(summary.model, feeds)[0]) > 30, fmt
        results[fmt] = summary
    return results


@pytest.mark.parametrize("rank", [1, 3])
def test_conv_1d_and_3d(rank):
    spatial = [10] if rank == 1 else [5, 5, 5]
    w = RNG.standard_normal((4, 2) + (3,) * rank).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1] * (2 * rank))],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2] + spatial)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4] + spatial)], {"W": w})
    feeds = [{"x": RNG.standard_normal([1, 2] + spatial).astype(np.float32)} for _ in range(4)]
    results = quantize_both(model, feeds)
    assert "QLinearConv" in [n.op_type for n in results[QuantFormat.QOperator].model.graph.node]


def test_opset_11_ir_3_model_with_weights_as_inputs():
    """Old exports: opset 11 (Clip bounds as inputs, Softmax coercing to 2-D), initializers listed as inputs."""
    w = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1] * 4),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5]),
              helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 2, 3, 3]),
              helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
              helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])]
    model = make_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
                       {"W": w, "lo": np.float32(0), "hi": np.float32(6)}, opset=11, ir=3)
    onnx.checker.check_model(model)
    feeds = [{"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)} for _ in range(4)]
    results = quantize_both(model, feeds)
    summary = results[QuantFormat.QOperator]
    assert "opset 11 converted to 13" in summary.preprocessing
    assert [i.name for i in summary.model.graph.input] == ["x"]
    assert "QLinearConv" in [n.op_type for n in summary.model.graph.node]


def test_shared_weight_is_stored_once():
    b = RNG.standard_normal((6, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "B"], ["a"]), helper.make_node("MatMul", ["a", "B"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])], {"B": b})
    feeds = [{"x": RNG.standard_normal((3, 6)).astype(np.float32)} for _ in range(4)]
    for summary in quantize_both(model, feeds).values():
        names = [t.name for t in summary.model.graph.initializer]
        assert names.count("B_quantized") == 1 and "B" not in names


def test_subgraph_reading_a_quantized_tensor():
    """An If branch reads the Conv output from the outer scope: it must get the float (dequantized) tensor."""
    w = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    then = helper.make_graph([helper.make_node("Identity", ["c"], ["o"])], "then", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["c"], ["o2"])], "else", [],
                              [helper.make_tensor_value_info("o2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1] * 4),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], {"W": w})
    for flag in (True, False):
        feeds = [{"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32), "cond": np.array(flag)}
                 for _ in range(3)]
        summary = quantize_both(model, feeds)[QuantFormat.QOperator]
        producers = {o: n.op_type for n in summary.model.graph.node for o in n.output}
        assert producers["c"] == "DequantizeLinear"


def test_stale_declared_output_rank_is_restated():
    """ddddocr's common.onnx declares its rank-3 output as [1, seqlen]; once its opset is raised to 21 for
    16-bit activations, inference sees the real rank and onnx's full check rejected the quantized model."""
    w = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1] * 4),
             helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 4, -1]))),
             helper.make_node("Reshape", ["c", "shape"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen"])], {"W": w}, opset=12)
    feeds = [{"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)} for _ in range(4)]
    summary = quantize_static(model, None, None, activation_type=QuantType.QUInt16,
                              tensor_ranges=reference_ranges(model, feeds))
    onnx.checker.check_model(summary.model, full_check=True)
    assert "declared shape of output(s) 'y' replaced by the inferred one" in " ".join(summary.preprocessing)
    assert [d.dim_value for d in summary.model.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 25]
    assert sqnr_db(run_ort(model, feeds)[0], run_ort(summary.model, feeds)[0]) > 30
