"""qrt.quantization as a drop-in for onnxruntime.quantization: every public name and every documented
``extra_options`` key, run through both tools on the same tiny models.

For each case the two quantized models must have the same node types and counts (domain included),
and their outputs must agree within one quantization step of the output tensor. The reference run
is onnxruntime's own model in onnxruntime with graph optimizations off, i.e. the QDQ graph as the
ONNX spec defines it: onnxruntime's optimized CPU kernels for 16-bit QDQ groups round differently
from the spec's float simulation (measured: up to 68 steps of a uint16 output), and qrt computes
what the spec says. qrt's model runs in qrt. Where qrt refuses a key, the error must name it.

Deliberate differences, each tested below: qrt folds MatMul + Add into Gemm while pre-processing
(the models here use Gemm so counts compare); qrt raises for float8 types (not written yet) and for
the keys it cannot honour where onnxruntime would (partly) accept them; the other differences are
listed in the README and tested below.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
import qrt.quantization as qq
from qrt.errors import QuantizationError, QuantizationWarning

oq = pytest.importorskip("onnxruntime.quantization")
logging.getLogger().setLevel(logging.ERROR)   # onnxruntime's tool logs pre-processing advice


# ---------------------------------------------------------------- tiny models and data
def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _weights(seed):
    rng = np.random.default_rng(seed)
    inits = []

    def init(name, *shape, scale=0.3):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name
    return init, inits


def cnn(opset=17):
    """Conv+Relu, MaxPool, a tensor read twice (Conv and Add), GlobalAveragePool, Flatten, Gemm."""
    init, inits = _weights(0)
    nodes = [
        helper.make_node("Conv", ["x", init("w1", 4, 3, 3, 3), init("b1", 4)], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", init("w2", 4, 4, 1, 1), init("b2", 4)], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "p1"], ["a2"], name="add2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", init("w3", 5, 4), init("b3", 5)], ["y"], name="gemm", transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits, opset)


def matmuls():
    """A MatMul with a constant B, then one whose B is a graph input."""
    init, inits = _weights(1)
    nodes = [helper.make_node("MatMul", ["x", init("w", 6, 4)], ["m"], name="mm_const"),
             helper.make_node("MatMul", ["m", "b"], ["y"], name="mm_input")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6]),
                          helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])], inits)


def pool_first():
    """MaxPool reads the graph input: quantized only with ForceQuantizeNoInputCheck."""
    init, inits = _weights(2)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", init("w", 2, 3, 1, 1)], ["y"], name="conv")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)


def large_bias():
    """Tiny weights and a large bias: input_scale * weight_scale is too small for an int32 bias."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((3, 4)) * 1e-6).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([300.0, -200.0, 100.0], np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", transB=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)


def where_argmax():
    """Where choosing between two MatMul results, then a MatMul whose output ArgMax reads."""
    init, inits = _weights(5)
    nodes = [helper.make_node("MatMul", ["x", init("wa", 6, 4)], ["a"], name="mm_a"),
             helper.make_node("MatMul", ["x", init("wb", 6, 4)], ["b"], name="mm_b"),
             helper.make_node("Greater", ["a", "b"], ["c"], name="greater"),
             helper.make_node("Where", ["c", "a", "b"], ["w"], name="where"),
             helper.make_node("MatMul", ["w", init("wy", 4, 5)], ["y"], name="mm_y"),
             helper.make_node("ArgMax", ["y"], ["k"], name="argmax", axis=1, keepdims=0)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5]),
                   helper.make_tensor_value_info("k", TensorProto.INT64, [3])], inits)


def wide_matmul():
    """A MatMul whose rank-2 weight has 40 rows: blocks of 16 leave a partial last block."""
    init, inits = _weights(7)
    nodes = [helper.make_node("MatMul", ["x", init("w", 40, 8)], ["y"], name="mm")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 40])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)


def feeds_for(model, n=4, seed=1):
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    out = []
    for _ in range(n):
        feed = {}
        for info in model.graph.input:
            if info.name not in initializers:
                shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
                feed[info.name] = rng.standard_normal(shape).astype(np.float32)
        out.append(feed)
    return out


class Reader(oq.CalibrationDataReader):
    """onnxruntime's reader protocol, with __len__ and set_range for CalibStridedMinMax."""

    def __init__(self, feeds):
        self.feeds = list(feeds)
        self.start, self.end, self.i = 0, len(self.feeds), 0

    def get_next(self):
        if self.start + self.i >= self.end:
            return None
        self.i += 1
        return self.feeds[self.start + self.i - 1]

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index, end_index):
        self.start, self.end, self.i = start_index, end_index, 0


# ---------------------------------------------------------------- running both tools
def counts(model):
    return Counter((n.domain + "::" if n.domain else "") + n.op_type for n in model.graph.node)


def run_ort(model, feed, optimized=False):
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)


def output_step(model, fallback):
    """The scale of the DequantizeLinear writing the graph output (one quantization step), else ``fallback``."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == out:
            return float(np.max(inits[node.input[1]]))
    return fallback


def static_both(tmp_path, model, *, reader_feeds=None, qrt_reader=None, **kwargs):
    """(onnxruntime's model, qrt's model) from quantize_static with the same arguments; qrt's with
    OnnxruntimeParity, which turns off the rules by which its default deliberately differs (per-channel
    Conv weights, saturating activations' ranges: tests/quantization/test_quality_rules.py)."""
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    feeds = reader_feeds or feeds_for(model)
    oq.quantize_static(str(src), str(tmp_path / "ort.onnx"), Reader(feeds), **kwargs)
    qrt_kwargs = {**kwargs, "extra_options": {**(kwargs.get("extra_options") or {}), "OnnxruntimeParity": True}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationWarning)
        summary = qq.quantize_static(src, tmp_path / "qrt.onnx", qrt_reader or Reader(feeds), **qrt_kwargs)
    return onnx.load(tmp_path / "ort.onnx"), onnx.load(tmp_path / "qrt.onnx"), summary


def assert_same(ort_model, qrt_model, float_model, steps=1.0):
    assert counts(qrt_model) == counts(ort_model)
    feed = feeds_for(float_model, 1, seed=7)[0]
    expected = run_ort(ort_model, feed)
    got = qrt.InferenceSession(qrt_model).run(None, feed)
    reference = run_ort(float_model, feed)[0]
    step = output_step(ort_model, float(np.ptp(reference)) / 255)
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=steps * step * 1.0001)
    for ours, theirs in zip(got[1:], expected[1:]):   # further outputs: indices (ArgMax)
        np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------- formats and quant types
TYPE_CASES = {
    "qdq-int8": dict(),
    "qdq-uint8-per-channel": dict(activation_type=oq.QuantType.QUInt8, per_channel=True),
    "qoperator-uint8": dict(quant_format=oq.QuantFormat.QOperator, activation_type=oq.QuantType.QUInt8),
    "qoperator-reduce-range": dict(quant_format=oq.QuantFormat.QOperator, activation_type=oq.QuantType.QUInt8,
                                   reduce_range=True, per_channel=True),
    "uint16-activations": dict(activation_type=oq.QuantType.QUInt16),
    "int16-activations-int16-weights": dict(activation_type=oq.QuantType.QInt16, weight_type=oq.QuantType.QInt16),
    "int4-weights-per-channel": dict(activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt4,
                                     per_channel=True),
    "uint4-weights": dict(activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QUInt4),
    "uint8-weights-per-channel": dict(activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QUInt8,
                                      per_channel=True),
    "uint4-weights-per-channel": dict(activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QUInt4,
                                      per_channel=True),
    "qoperator-uint8-weights-per-channel": dict(quant_format=oq.QuantFormat.QOperator,
                                                activation_type=oq.QuantType.QUInt8,
                                                weight_type=oq.QuantType.QUInt8, per_channel=True),
    "uint16-activations-int4-weights": dict(activation_type=oq.QuantType.QUInt16, weight_type=oq.QuantType.QInt4),
}


@pytest.mark.parametrize("case", sorted(TYPE_CASES))
def test_quant_types_and_formats(tmp_path, case):
    model = cnn()
    ort_model, qrt_model, _ = static_both(tmp_path, model, **TYPE_CASES[case])
    assert [o.version for o in qrt_model.opset_import if o.domain == ""] == \
        [o.version for o in ort_model.opset_import if o.domain == ""]
    assert_same(ort_model, qrt_model, model)


@pytest.mark.parametrize("activation, weight, fmt", [
    ("QInt8", "QUInt8", "QDQ"), ("QUInt16", "QInt8", "QOperator"), ("QUInt8", "QInt16", "QOperator"),
])
def test_type_combinations_onnxruntime_refuses(tmp_path, activation, weight, fmt):
    model = cnn()
    kwargs = dict(activation_type=getattr(oq.QuantType, activation), weight_type=getattr(oq.QuantType, weight),
                  quant_format=getattr(oq.QuantFormat, fmt))
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    with pytest.raises(ValueError):
        oq.quantize_static(str(src), str(tmp_path / "o.onnx"), Reader(feeds_for(model)), **kwargs)
    with pytest.raises(QuantizationError, match=f"{activation}|{weight}"):
        qq.quantize_static(src, None, feeds_for(model), **kwargs)


def test_float8_is_refused_with_a_reason():
    """Not implemented yet (onnxruntime writes it); the error says so rather than writing something else."""
    with pytest.raises(QuantizationError, match="QFLOAT8E4M3FN"):
        qq.quantize_static(cnn(), None, feeds_for(cnn()), activation_type="QFLOAT8E4M3FN",
                           weight_type="QFLOAT8E4M3FN", calibrate_method=qq.CalibrationMethod.Distribution)


def test_dynamic_refuses_wide_weight_types():
    with pytest.raises(QuantizationError, match="QInt4"):
        qq.quantize_dynamic(matmuls(), None, weight_type=qq.QuantType.QInt4)


# ---------------------------------------------------------------- extra_options, key by key
OPTION_CASES = {
    "ActivationSymmetric": (cnn, dict(activation_type=oq.QuantType.QUInt8), {"ActivationSymmetric": True}),
    "ActivationRestrictedAsymmetric": (cnn, dict(activation_type=oq.QuantType.QUInt8),
                                       {"ActivationRestrictedAsymmetric": True}),
    "WeightSymmetric": (cnn, dict(), {"WeightSymmetric": False}),
    "EnableSubgraph": (cnn, dict(), {"EnableSubgraph": False}),
    "ForceQuantizeNoInputCheck": (pool_first, dict(), {"ForceQuantizeNoInputCheck": True}),
    "ForceQuantizeNoInputCheck-off": (pool_first, dict(), {"ForceQuantizeNoInputCheck": False}),
    "DedicatedQDQPair-uint16": (cnn, dict(activation_type=oq.QuantType.QUInt16), {"DedicatedQDQPair": True}),
    "AddQDQPairToWeight-per-channel": (cnn, dict(per_channel=True), {"AddQDQPairToWeight": True}),
    "MatMulConstBOnly": (matmuls, dict(quant_format=oq.QuantFormat.QOperator, activation_type=oq.QuantType.QUInt8),
                         {"MatMulConstBOnly": True}),
    "MatMulConstBOnly-off": (matmuls, dict(), {"MatMulConstBOnly": False}),
    "AddQDQPairToWeight": (cnn, dict(), {"AddQDQPairToWeight": True}),
    "OpTypesToExcludeOutputQuantization": (cnn, dict(), {"OpTypesToExcludeOutputQuantization": ["Add"]}),
    "DedicatedQDQPair": (cnn, dict(), {"DedicatedQDQPair": True}),
    "QDQOpTypePerChannelSupportToAxis": (matmuls, dict(per_channel=True),
                                         {"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}),
    "CalibTensorRangeSymmetric": (matmuls, dict(), {"CalibTensorRangeSymmetric": True}),
    "CalibMovingAverage": (cnn, dict(), {"CalibMovingAverage": True, "CalibMovingAverageConstant": 0.5}),
    "CalibStridedMinMax": (cnn, dict(), {"CalibStridedMinMax": 2, "CalibMovingAverage": True,
                                         "CalibMovingAverageConstant": 0.5}),
    "CalibMaxIntermediateOutputs": (cnn, dict(), {"CalibMaxIntermediateOutputs": 5}),
    "CalibPercentile": (cnn, dict(calibrate_method=oq.CalibrationMethod.Percentile), {"CalibPercentile": 99.9}),
    "QuantizeBias": (cnn, dict(), {"QuantizeBias": False}),
    "SmoothQuant-off": (cnn, dict(), {"SmoothQuant": False, "SmoothQuantAlpha": 0.7, "SmoothQuantFolding": True}),
    "UseQDQContribOps": (cnn, dict(), {"UseQDQContribOps": True}),
    "UseQDQContribOps-uint16": (cnn, dict(activation_type=oq.QuantType.QUInt16), {"UseQDQContribOps": True}),
    "MinimumRealRange": (cnn, dict(), {"MinimumRealRange": 20.0}),
    "QDQKeepRemovableActivations": (cnn, dict(), {"QDQKeepRemovableActivations": True}),
    "QDQDisableWeightAdjustForInt32Bias": (cnn, dict(), {"QDQDisableWeightAdjustForInt32Bias": True}),
    "weight-adjust-for-int32-bias": (large_bias, dict(), {}),
    "Where-ArgMax-QOperator": (where_argmax, dict(quant_format=oq.QuantFormat.QOperator,
                                                  activation_type=oq.QuantType.QUInt8),
                               {"ForceQuantizeNoInputCheck": True}),
    "Where-ArgMax-QOperator-int8": (where_argmax, dict(quant_format=oq.QuantFormat.QOperator),
                                    {"ForceQuantizeNoInputCheck": True}),
    "Where-ArgMax-QDQ": (where_argmax, dict(), {"ForceQuantizeNoInputCheck": True}),
    "Where-not-forced": (where_argmax, dict(quant_format=oq.QuantFormat.QOperator,
                                            activation_type=oq.QuantType.QUInt8), {}),
    "BlockSize-int4": (wide_matmul, dict(activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt4),
                       {"BlockSize": 16}),
    "BlockSize-uint4-per-channel": (wide_matmul, dict(activation_type=oq.QuantType.QUInt8,
                                                      weight_type=oq.QuantType.QUInt4, per_channel=True),
                                    {"BlockSize": 16}),
    "BlockSize-uint8": (wide_matmul, dict(activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QUInt8),
                        {"BlockSize": 16}),
    "TensorQuantOverrides-range": (cnn, dict(), {"TensorQuantOverrides": {"x": [{"rmin": np.float32(-4.0), "rmax": np.float32(4.0)}]}}),
    "TensorQuantOverrides-scale": (cnn, dict(activation_type=oq.QuantType.QUInt8),
                                   {"TensorQuantOverrides": {"c2": [{"scale": np.array(0.05, np.float32),
                                                                           "zero_point": np.array(100, np.uint8)}]}}),
    "TensorQuantOverrides-symmetric": (cnn, dict(activation_type=oq.QuantType.QUInt8),
                                       {"TensorQuantOverrides": {"x": [{"symmetric": True}],
                                                                 "w2": [{"symmetric": False}]}}),
    "TensorQuantOverrides-weight-axis": (cnn, dict(), {"TensorQuantOverrides": {"w1": [{"axis": 0}]}}),
    "TensorQuantOverrides-quant-type": (cnn, dict(activation_type=oq.QuantType.QUInt8),
                                        {"TensorQuantOverrides": {"w3": [{"quant_type": oq.QuantType.QUInt8}]}}),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_extra_option_matches_onnxruntime(tmp_path, case):
    build, kwargs, extra = OPTION_CASES[case]
    model = build()
    ort_model, qrt_model, _ = static_both(tmp_path, model, extra_options=extra, **kwargs)
    assert_same(ort_model, qrt_model, model)


def test_weight_adjust_for_int32_bias_keeps_the_bias(tmp_path):
    """Without the adjustment the int32 bias saturates; with it (the default) the output is right.

    Deliberate difference: with QDQDisableWeightAdjustForInt32Bias onnxruntime casts the
    out-of-range bias to int32 without saturating (x86 gives INT32_MIN, so the sign flips); qrt
    saturates, as QuantizeLinear would, and warns in the summary."""
    model = large_bias()
    feed = feeds_for(model, 1, seed=7)[0]
    reference = run_ort(model, feed)[0]
    _, adjusted, _ = static_both(tmp_path, model)
    _, clipped, _ = static_both(tmp_path, model, extra_options={"QDQDisableWeightAdjustForInt32Bias": True})
    assert np.abs(qrt.InferenceSession(adjusted).run(None, feed)[0] - reference).max() < 1.0
    assert np.abs(qrt.InferenceSession(clipped).run(None, feed)[0] - reference).max() > 50.0


@pytest.mark.parametrize("extra, fmt, match", [
    ({"EnableSubgraph": True}, "QDQ", "EnableSubgraph"),
    ({"extra.Sigmoid.nnapi": True}, "QOperator", "extra.Sigmoid.nnapi"),
    ({"BlockSize": 0.5}, "QDQ", "BlockSize"),
    ({"AddQDQPairToWeight": True}, "QOperator", "AddQDQPairToWeight.*QDQ only"),
    ({"NoSuchOption": 1}, "QDQ", "NoSuchOption"),
    ({"DefaultTensorType": TensorProto.FLOAT}, "QDQ", "DefaultTensorType"),
    ({"TensorQuantOverrides": {"x": [{"convert": {"quant_type": "QUInt16"}}]}}, "QDQ", "convert"),
    ({"TensorQuantOverrides": {"x": [{"scale": 0.1}]}}, "QDQ", "scale.*zero_point.*together"),
    ({"CalibStridedMinMax": 3}, "QDQ", "CalibStridedMinMax=3 does not divide the 4"),
])
def test_keys_qrt_cannot_honour_are_refused_by_name(extra, fmt, match):
    model = cnn()
    with pytest.raises(QuantizationError, match=match):
        qq.quantize_static(model, None, Reader(feeds_for(model)), quant_format=getattr(qq.QuantFormat, fmt),
                           extra_options=extra)


def test_matmul_const_b_only_in_qdq():
    """Deliberate difference: onnxruntime's QDQ quantizer ignores MatMulConstBOnly (only its
    QOperator quantizer reads it); qrt honours the documented meaning in both formats."""
    model = matmuls()
    summary = qq.quantize_static(model, None, Reader(feeds_for(model)), extra_options={"MatMulConstBOnly": True})
    by_name = {r.name: r for r in summary.nodes}
    assert by_name["mm_const"].status == "quantized"
    assert by_name["mm_input"].status == "float" and "MatMulConstBOnly" in by_name["mm_input"].detail


def test_force_quantize_no_input_check_in_qoperator(tmp_path):
    """Deliberate difference: onnxruntime's QOperator quantizer forces a pass-through op only when its
    input is a float initializer (it checks ``is_valid_quantize_weight``), so a MaxPool on the graph
    input stays float there; qrt does what the option documents and runs the MaxPool on int8."""
    model = pool_first()
    kwargs = dict(quant_format=oq.QuantFormat.QOperator, activation_type=oq.QuantType.QUInt8,
                  extra_options={"ForceQuantizeNoInputCheck": True})
    ort_model, qrt_model, _ = static_both(tmp_path, model, **kwargs)
    reads = {n.op_type: list(n.input) for n in qrt_model.graph.node}
    assert reads["MaxPool"] == ["x_quantized"]
    assert {n.op_type: list(n.input) for n in ort_model.graph.node}["MaxPool"] == ["x"]
    feed = feeds_for(model, 1, seed=7)[0]
    got = qrt.InferenceSession(qrt_model).run(None, feed)[0]
    np.testing.assert_array_equal(got, run_ort(qrt_model, feed)[0])
    # Both are within a few output steps of the float model; qrt's int8 MaxPool uses x's (wider) range.
    step = output_step(qrt_model, 0.0)
    assert np.abs(got - run_ort(model, feed)[0]).max() < 4 * step


def test_block_size_leaves_other_weights_float(tmp_path):
    """Deliberate difference: onnxruntime raises NotImplementedError on a rank-4 (Conv) weight with
    BlockSize; qrt keeps such nodes, and those with a bias, in float and says why."""
    model = cnn()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    with pytest.raises(NotImplementedError):
        oq.quantize_static(str(src), str(tmp_path / "o.onnx"), Reader(feeds_for(model)),
                           weight_type=oq.QuantType.QInt4, extra_options={"BlockSize": 16})
    summary = qq.quantize_static(src, None, Reader(feeds_for(model)), weight_type=qq.QuantType.QInt4,
                                 extra_options={"BlockSize": 16})
    by_name = {r.name: r for r in summary.nodes}
    assert by_name["conv1"].status == "float" and "rank-2" in by_name["conv1"].detail
    assert by_name["gemm"].status == "float" and "bias" in by_name["gemm"].detail


def test_folded_relu_range_is_narrowed_to_the_clamp(tmp_path):
    """Deliberate difference: when a Relu folds into the producer's output, qrt quantizes the
    producer's output over [max(rmin, 0), rmax]; onnxruntime keeps the Relu output's calibrated
    range, which CalibTensorRangeSymmetric makes (-a, a), wasting half the int8 levels."""
    model = cnn()
    ort_model, qrt_model, _ = static_both(tmp_path, model, extra_options={"CalibTensorRangeSymmetric": True})
    assert counts(qrt_model) == counts(ort_model)

    def param(m, name):
        return float(numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == name)))
    assert param(qrt_model, "r1_zero_point") == -128 and param(ort_model, "r1_zero_point") == 0
    assert param(qrt_model, "r1_scale") == pytest.approx(param(ort_model, "r1_scale") / 2, rel=1e-6)


def test_dynamic_extra_options():
    with pytest.raises(QuantizationError, match="CalibMovingAverage.*quantize_static only"):
        qq.quantize_dynamic(matmuls(), None, extra_options={"CalibMovingAverage": True})
    with pytest.raises(QuantizationError, match="MatMulConstBOnly"):
        qq.quantize_dynamic(matmuls(), None, extra_options={"MatMulConstBOnly": False})
    summary = qq.quantize_dynamic(matmuls(), None, extra_options={"WeightSymmetric": False, "MatMulConstBOnly": True})
    zero_points = [numpy_helper.to_array(t) for t in summary.model.graph.initializer if t.name == "w_zero_point"]
    assert zero_points and zero_points[0].dtype == np.int8


# ---------------------------------------------------------------- public names
def test_public_names_cover_onnxruntime():
    """Every public name of onnxruntime.quantization except its quantizer classes and submodules."""
    internal = {"QDQQuantizer", "CudaQuantizer"}   # quantizer classes; their options are extra_options keys
    names = {n for n in dir(oq) if not n.startswith("_") and not isinstance(getattr(oq, n), type(os))}
    assert sorted(names - internal - set(qq.__all__)) == []
    for enum_name in ("QuantType", "QuantFormat", "CalibrationMethod", "QuantizationMode"):
        ours, theirs = getattr(qq, enum_name), getattr(oq, enum_name)
        assert {m.name: m.value for m in theirs}.items() <= {m.name: m.value for m in ours}.items()


def test_quantize_with_static_config(tmp_path):
    model = cnn()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    oq.quantize(str(src), str(tmp_path / "ort.onnx"),
                oq.StaticQuantConfig(Reader(feeds_for(model)), activation_type=oq.QuantType.QUInt8, per_channel=True))
    summary = qq.quantize(src, tmp_path / "qrt.onnx",
                          qq.StaticQuantConfig(Reader(feeds_for(model)), activation_type=qq.QuantType.QUInt8,
                                               per_channel=True))
    assert summary.quantized
    assert_same(onnx.load(tmp_path / "ort.onnx"), onnx.load(tmp_path / "qrt.onnx"), model)


def test_quantize_with_dynamic_config(tmp_path):
    model = matmuls()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    oq.quantize(str(src), str(tmp_path / "ort.onnx"), oq.DynamicQuantConfig())
    qq.quantize(src, tmp_path / "qrt.onnx", qq.DynamicQuantConfig())
    ort_model, qrt_model = onnx.load(tmp_path / "ort.onnx"), onnx.load(tmp_path / "qrt.onnx")
    # onnxruntime writes its fused com.microsoft DynamicQuantizeMatMul-ready chain; qrt writes the same
    # standard ops (see qrt.quantization.dynamic), so the quantized op is counted, not the chain.
    assert counts(qrt_model)["MatMulInteger"] == counts(ort_model)["MatMulInteger"] == 1
    feed = feeds_for(model, 1, seed=7)[0]
    np.testing.assert_allclose(qrt.InferenceSession(qrt_model).run(None, feed)[0], run_ort(ort_model, feed)[0],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(QuantizationError, match="StaticQuantConfig or DynamicQuantConfig"):
        qq.quantize(src, None, object())


def test_get_qdq_config(tmp_path):
    model = cnn()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)

    def exclude(_model, node):
        return node.name == "conv2"

    kwargs = dict(activation_type="QUInt16", weight_type="QInt4", per_channel=True, nodes_to_exclude=exclude,
                  calibrate_args={"symmetric": True}, keep_removable_activations=True)
    ort_config = oq.get_qdq_config(str(src), Reader(feeds_for(model)),
                                   **{k: getattr(oq.QuantType, v) if k.endswith("_type") else v
                                      for k, v in kwargs.items()})
    qrt_config = qq.get_qdq_config(src, Reader(feeds_for(model)), **kwargs)
    assert sorted(qrt_config.op_types_to_quantize) == sorted(ort_config.op_types_to_quantize)
    assert qrt_config.nodes_to_exclude == ort_config.nodes_to_exclude == ["conv2"]
    assert set(qrt_config.extra_options) == set(ort_config.extra_options)
    oq.quantize(str(src), str(tmp_path / "ort.onnx"), ort_config)
    qq.quantize(src, tmp_path / "qrt.onnx", qrt_config)
    assert_same(onnx.load(tmp_path / "ort.onnx"), onnx.load(tmp_path / "qrt.onnx"), model)


def test_calibrator_objects_and_calibration_table(tmp_path):
    model = cnn()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    feeds = feeds_for(model, 6)
    options = {"moving_average": True, "averaging_constant": 0.5}
    results = []
    for module, folder in ((oq, tmp_path / "ort"), (qq, tmp_path / "qrt")):
        folder.mkdir()
        calibrator = module.create_calibrator(src, ["Conv", "Gemm"], augmented_model_path=str(folder / "aug.onnx"),
                                              extra_options=options)
        assert isinstance(calibrator, module.CalibraterBase)
        calibrator.collect_data(Reader(feeds[:3]))
        calibrator.collect_data(Reader(feeds[3:]))
        data = calibrator.compute_data()
        module.write_calibration_table(data, dir=str(folder))
        results.append(data)
    ort_data, qrt_data = results
    assert sorted(qrt_data.keys()) == sorted(ort_data.keys())
    for name in ort_data:
        np.testing.assert_allclose(np.array(qrt_data[name].range_value, np.float32).ravel(),
                                   np.array(ort_data[name].range_value, np.float32).ravel(), rtol=1e-6)
    for file in ("calibration.cache", "calibration.flatbuffers"):
        ort_bytes, qrt_bytes = (tmp_path / "ort" / file).read_bytes(), (tmp_path / "qrt" / file).read_bytes()
        assert len(qrt_bytes) == len(ort_bytes)
    assert set(json.loads((tmp_path / "qrt" / "calibration.json").read_text())["data"]) == set(ort_data.keys())
    ranges = qrt_data.ranges()
    summary = qq.quantize_static(src, None, Reader(feeds), tensor_ranges=ranges)
    assert summary.ranges["x"] == pytest.approx(ranges["x"])


def test_quant_pre_process(tmp_path):
    model = cnn()
    src, out = tmp_path / "float.onnx", tmp_path / "pre.onnx"
    onnx.save(model, src)
    assert qq.quant_pre_process(str(src), str(out)) is None
    processed = onnx.load(out)
    assert {p.key: p.value for p in processed.metadata_props}["onnx.quant.pre_process"] == "onnxruntime.quant"
    assert processed.graph.value_info, "shape inference filled value_info"
    feed = feeds_for(model, 1)[0]
    np.testing.assert_allclose(run_ort(processed, feed)[0], run_ort(model, feed)[0], rtol=1e-5, atol=1e-6)
    qq.quant_pre_process(str(src), str(tmp_path / "plain.onnx"), skip_optimization=True)
    assert counts(onnx.load(tmp_path / "plain.onnx")) == counts(model)


# ---------------------------------------------------------------- edges onnxruntime's users hit
def test_nothing_to_quantize_writes_the_model_as_onnxruntime_does(tmp_path):
    nodes = [helper.make_node("Tanh", ["x"], ["y"], name="tanh")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [])
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    oq.quantize_static(str(src), str(tmp_path / "ort.onnx"), Reader(feeds_for(model)))
    with pytest.warns(QuantizationWarning, match="nothing to quantize"):
        summary = qq.quantize_static(src, tmp_path / "qrt.onnx", Reader(feeds_for(model)))
    assert counts(onnx.load(tmp_path / "qrt.onnx")) == counts(onnx.load(tmp_path / "ort.onnx"))
    assert "nothing to quantize" in str(summary)


def test_pad_value_from_a_graph_input(tmp_path):
    """The pad value is a graph input: quantized at run time with the padded tensor's parameters."""
    init, inits = _weights(4)
    nodes = [helper.make_node("Conv", ["x", init("w", 2, 3, 3, 3)], ["c"], name="conv"),
             helper.make_node("Pad", ["c", "pads", "v"], ["y"], name="pad", mode="constant")]
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
                           helper.make_tensor_value_info("v", TensorProto.FLOAT, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], inits)
    feeds = [{"x": f["x"], "v": np.array(0.25, np.float32)} for f in feeds_for(model)]
    summary = qq.quantize_static(model, None, feeds, quant_format=qq.QuantFormat.QOperator,
                                 activation_type=qq.QuantType.QUInt8)
    assert counts(summary.model)["Pad"] == 1 and counts(summary.model)["QLinearConv"] == 1
    feed = feeds[0]
    got = qrt.InferenceSession(summary.model).run(None, feed)[0]
    np.testing.assert_array_equal(got, run_ort(summary.model, feed)[0])
    reference = run_ort(model, feed)[0]
    assert np.allclose(got[..., 0, :], 0.25, atol=0.05) and np.abs(got - reference).max() < 0.1


def test_parameters_are_stored_as_onnxruntime_stores_them(tmp_path):
    """Zero points in int32_data and scales in float_data, not raw_data: readers of either field agree."""
    ort_model, qrt_model, _ = static_both(tmp_path, cnn(), activation_type=oq.QuantType.QUInt8)
    for model in (ort_model, qrt_model):
        x_zero = next(t for t in model.graph.initializer if t.name == "x_zero_point")
        x_scale = next(t for t in model.graph.initializer if t.name == "x_scale")
        assert not x_zero.raw_data and not x_scale.raw_data
    ort_zero = next(t for t in ort_model.graph.initializer if t.name == "x_zero_point")
    qrt_zero = next(t for t in qrt_model.graph.initializer if t.name == "x_zero_point")
    assert qrt_zero.int32_data[0] == ort_zero.int32_data[0]


# ---------------------------------------------------------------- 16-bit and 4-bit on bigger models
def _squeezenet():
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_squeezenet.onnx")
    if not os.path.exists(path):
        pytest.skip("onnx's light model zoo is not installed")
    model = onnx.load(path)
    initializers = {t.name for t in model.graph.initializer}
    data = next(i for i in model.graph.input if i.name not in initializers)
    shape = [d.dim_value for d in data.type.tensor_type.shape.dim]

    def make(n, seed):
        rng = np.random.default_rng(seed)
        return [{data.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]
    return model, make


def _builder(name):
    import quant_models

    return {"cnn": quant_models.build_cnn, "cnn_bn": quant_models.build_cnn_bn, "mlp": quant_models.build_mlp,
            "zoo": quant_models.build_zoo, "squeezenet": _squeezenet}[name]()


WIDE_CASES = {"uint16-activations": dict(activation_type=oq.QuantType.QUInt16),
              "int4-weights-per-channel": dict(activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt4,
                                               per_channel=True)}


def check_wide_types(tmp_path, model, make, **kwargs):
    """Both tools on ``model`` (pre-processed once by quant_pre_process, so both quantize the same
    graph: qrt folds BatchNormalization into Conv, onnxruntime's quantizer alone would not).

    qrt's model runs in qrt as in onnxruntime (rtol 1e-5, atol 1e-6: float32 accumulation order) and
    matches onnxruntime's model within one output step, plus float rounding where an op re-quantizes
    a value lying on a rounding boundary (2 steps). Usable for any model with a ``make(n, seed)``
    feed maker (the real-model corpus)."""
    src, prepared = tmp_path / "float.onnx", tmp_path / "prepared.onnx"
    onnx.save(model, src)
    qq.quant_pre_process(str(src), str(prepared))
    model = onnx.load(prepared)
    calibration, feed = make(4, 0), make(1, 99)[0]
    ort_model, qrt_model, summary = static_both(tmp_path, model, reader_feeds=calibration, **kwargs)
    assert summary.quantized
    got = qrt.InferenceSession(qrt_model).run(None, feed)[0]
    np.testing.assert_allclose(got, run_ort(qrt_model, feed)[0], rtol=1e-5, atol=1e-6)
    step = output_step(ort_model, float(np.ptp(run_ort(model, feed)[0])) / 255)
    np.testing.assert_allclose(got, run_ort(ort_model, feed)[0], rtol=0, atol=2 * step * 1.0001)


@pytest.mark.parametrize("case", sorted(WIDE_CASES))
@pytest.mark.parametrize("name", ["cnn", "cnn_bn", "mlp", "zoo", "squeezenet"])
def test_wide_types_end_to_end(tmp_path, name, case):
    """16-bit activations and 4-bit weights through both tools on the quantizer test models and
    onnx's light squeezenet."""
    model, make = _builder(name)
    check_wide_types(tmp_path, model, make, **WIDE_CASES[case])


# ---------------------------------------------------------------- float16 models
def half_cnn(opset):
    """A float16 model: float16 weights, inputs and outputs."""
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float16), name)
             for name, shape in (("w", (4, 3, 3, 3)), ("b", (4,)), ("w2", (4, 5)))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="mm")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 5])], inits, opset)


def _half_feeds(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float16)} for _ in range(n)]


def test_float16_model_in_qdq(tmp_path):
    """float16 tensors quantized with float16 scales (opset 19 QuantizeLinear), as onnxruntime does.

    Tolerance: one output step; qrt's float16 QuantizeLinear divides in float16 as the ONNX reference
    does, onnxruntime in float32, so a value on a rounding boundary can land one step apart."""
    model = half_cnn(19)
    ort_model, qrt_model, summary = static_both(tmp_path, model, reader_feeds=_half_feeds(4, 0))
    assert counts(qrt_model) == counts(ort_model)
    scales = {t.name: t.data_type for t in qrt_model.graph.initializer if t.name.endswith("scale")}
    assert set(scales.values()) == {TensorProto.FLOAT16}
    feed = _half_feeds(1, 9)[0]
    got = qrt.InferenceSession(qrt_model).run(None, feed)[0]
    expected = run_ort(ort_model, feed)[0]
    assert got.dtype == np.float16
    # rtol 2**-10: both dequantized outputs are rounded to float16 (11-bit significand).
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=2 ** -10,
                               atol=output_step(ort_model, 0.0) * 1.001)


def test_float16_model_below_opset_19_and_in_qoperator(tmp_path):
    """Deliberate differences: below opset 19 onnxruntime writes float16 scales that its own checker
    rejects; qrt raises the opset to 19. QLinear ops take float32 scales only, so QOperator leaves a
    float16 model unchanged (with the warning) where onnxruntime writes an invalid model."""
    summary = qq.quantize_static(half_cnn(17), None, _half_feeds(4, 0))
    assert [o.version for o in summary.model.opset_import if o.domain == ""] == [19]
    feed = _half_feeds(1, 9)[0]
    np.testing.assert_allclose(qrt.InferenceSession(summary.model).run(None, feed)[0].astype(np.float32),
                               run_ort(summary.model, feed)[0].astype(np.float32), rtol=2 ** -10,
                               atol=output_step(summary.model, 0.0) * 1.001)
    with pytest.warns(QuantizationWarning, match="float16, which only QuantFormat.QDQ quantizes"):
        unchanged = qq.quantize_static(half_cnn(17), None, _half_feeds(4, 0), quant_format=qq.QuantFormat.QOperator)
    assert counts(unchanged.model) == counts(half_cnn(17))


def test_calibration_cache_is_shared_with_onnxruntime(tmp_path):
    """quantize_static's calibration_cache_path and save/load_tensors_data use onnxruntime's file layout:
    a cache either tool writes, the other reads, and the same ranges give the same model."""
    model = cnn()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    ort_cache, qrt_cache = tmp_path / "ort.json", tmp_path / "qrt.json"
    oq.quantize_static(str(src), str(tmp_path / "ort.onnx"), Reader(feeds_for(model)), calibration_cache_path=ort_cache)
    qq.quantize_static(src, tmp_path / "qrt.onnx", Reader(feeds_for(model)), calibration_cache_path=qrt_cache)
    from_ort = qq.quantize_static(src, None, None, calibration_cache_path=ort_cache)
    assert_same(onnx.load(tmp_path / "ort.onnx"), from_ort.model, model)
    oq.quantize_static(str(src), str(tmp_path / "ort_from_qrt.onnx"), None, calibration_cache_path=qrt_cache)
    assert_same(onnx.load(tmp_path / "ort_from_qrt.onnx"), onnx.load(tmp_path / "qrt.onnx"), model)
    ranges = qq.load_tensors_data(ort_cache)
    assert isinstance(ranges, qq.TensorsData) and ranges.calibration_method == qq.CalibrationMethod.MinMax
    qq.save_tensors_data(ranges, tmp_path / "again.json")
    assert oq.load_tensors_data(tmp_path / "again.json").keys() == oq.load_tensors_data(ort_cache).keys()
    with pytest.raises(QuantizationError, match="made with MinMax"):
        qq.quantize_static(src, None, None, calibration_cache_path=ort_cache, calibrate_method="Entropy")


def test_calibration_table_files_match_onnxruntime_byte_for_byte(tmp_path):
    ranges = {"b": (np.float32(-0.5), np.float32(2.25)), "a": (np.float32(-3.0), np.float32(1.0)),
              "c": (np.float32(0.0), np.float32(0.0078125))}
    theirs = oq.TensorsData(oq.CalibrationMethod.MinMax,
                            {k: oq.TensorData(lowest=lo, highest=hi) for k, (lo, hi) in ranges.items()})
    ours = qq.TensorsData(qq.CalibrationMethod.MinMax,
                          {k: qq.TensorData(lowest=lo, highest=hi) for k, (lo, hi) in ranges.items()})
    (tmp_path / "ort").mkdir()
    (tmp_path / "qrt").mkdir()
    oq.write_calibration_table(theirs, dir=str(tmp_path / "ort"))
    qq.write_calibration_table(ours, dir=str(tmp_path / "qrt"))
    for file in ("calibration.cache", "calibration.flatbuffers"):
        assert (tmp_path / "qrt" / file).read_bytes() == (tmp_path / "ort" / file).read_bytes(), file
    assert json.loads((tmp_path / "qrt" / "calibration.json").read_text()) == \
        json.loads((tmp_path / "ort" / "calibration.json").read_text())
