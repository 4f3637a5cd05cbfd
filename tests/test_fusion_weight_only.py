"""Plan-time rewrites around the weight-only ops (qrt/fusion/weight_only.py).

* A bias Add after MatMulNBits moves into its bias input: the kernel adds the bias with the Add's one
  float32 rounding, so the fused session's output is bit-identical to the unfused one (fusions off).
* Shapes through MatMulNBits and GatherBlockQuantized, which onnx's inference does not know: with
  them, a 4-bit BERT-shaped encoder fuses its attention, skip LayerNorms and GELU like its float model.
  Against onnxruntime on the same 4-bit file: 1e-5 of the output scale (both dequantize the same
  weights and compute in float32; the fused attention and normalizations reorder float32 sums, a few
  ulps, as in test_fusion_transformer.py).
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "quantization"))
import test_nbits as op_tests  # noqa: E402
from nbits_models import bert_encoder  # noqa: E402

RNG = np.random.default_rng(1818)


def _with_bias_add(model, bias, reads=1, bias_first=False):
    """``model`` (one MatMulNBits writing Y) with Y renamed and ``Add(Y, bias)`` as the output (read
    ``reads`` times)."""
    graph = model.graph
    graph.node[0].output[0] = "mm"
    graph.initializer.append(numpy_helper.from_array(bias, "bias_vec"))
    inputs = ["bias_vec", "mm"] if bias_first else ["mm", "bias_vec"]
    graph.node.append(helper.make_node("Add", inputs, ["Y"]))
    if reads == 2:
        graph.node.append(helper.make_node("Neg", ["mm"], ["mm_neg"]))
        graph.output.append(helper.make_tensor_value_info("mm_neg", TensorProto.FLOAT, None))
    return model


def _sessions(model):
    off = qrt.SessionOptions()
    off.graph_optimization_level = qrt.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return qrt.InferenceSession(model), qrt.InferenceSession(model, off)


@pytest.mark.parametrize("accuracy_level", [0, 4])
@pytest.mark.parametrize("bias_first", [False, True])
def test_bias_add_moves_into_matmul_nbits_bit_for_bit(accuracy_level, bias_first):
    K, N = 200, 70
    model = _with_bias_add(op_tests._matmul_nbits(K, N, 4, 32, "packed", accuracy_level=accuracy_level),
                           RNG.standard_normal(N).astype(np.float32), bias_first=bias_first)
    fused, unfused = _sessions(model)
    nodes = [(n.op_type, len(n.input)) for n in fused.model.graph.node]
    assert nodes == [("MatMulNBits", 6)], nodes
    for rows in ((1, 3), (2, 9)):  # the streaming kernels and the panels
        feeds = {"A": RNG.standard_normal(rows + (K,)).astype(np.float32)}
        np.testing.assert_array_equal(fused.run(None, feeds)[0], unfused.run(None, feeds)[0])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    bound = 1e-4 if accuracy_level == 0 else 2e-6  # as in test_nbits.py / test_nbits_int8.py
    np.testing.assert_allclose(fused.run(None, feeds)[0], want, rtol=0, atol=bound * np.abs(want).max())


@pytest.mark.parametrize("case", ["read twice", "bias per row", "bias not constant", "has a bias"])
def test_bias_add_stays_where_moving_it_would_change_the_graph(case):
    K, N = 64, 40
    model = op_tests._matmul_nbits(K, N, 4, 32, "packed", bias=case == "has a bias")
    bias = RNG.standard_normal((3, 1) if case == "bias per row" else N).astype(np.float32)
    model = _with_bias_add(model, bias, reads=2 if case == "read twice" else 1)
    if case == "bias not constant":
        model.graph.initializer.pop()
        model.graph.input.append(helper.make_tensor_value_info("bias_vec", TensorProto.FLOAT, [N]))
    fused, unfused = _sessions(model)
    assert [n.op_type for n in fused.model.graph.node][:2] == ["MatMulNBits", "Add"]
    feeds = {"A": RNG.standard_normal((3, K)).astype(np.float32)}
    if case == "bias not constant":
        feeds["bias_vec"] = bias
    for got, want in zip(fused.run(None, feeds), unfused.run(None, feeds)):
        np.testing.assert_array_equal(got, want)


def test_a_4_bit_encoder_fuses_like_its_float_model():
    from qrt.quantization import quantize_weight_only
    model = bert_encoder(layers=1, hidden=64, heads=4, ffn=128, vocab=500)
    quantized = quantize_weight_only(model, None, block_size=16).model
    ops = lambda m: sorted(n.op_type for n in qrt.InferenceSession(m).model.graph.node)  # noqa: E731
    fused_float, fused_4bit = ops(model), ops(quantized)
    for op in ("MultiHeadAttention", "SkipLayerNormalization", "FusedElementwise"):
        assert fused_4bit.count(op) == fused_float.count(op) > 0, (op, fused_4bit, fused_float)
    assert "Softmax" not in fused_4bit and "Erf" not in fused_4bit
    feeds = {"input_ids": RNG.integers(0, 500, (2, 12))}
    got = qrt.InferenceSession(quantized).run(None, feeds)[0]
    want = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
