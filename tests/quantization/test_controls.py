"""The knobs: which nodes are quantized, symmetric ranges, fixed ranges, and the summary's account."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrt import qmath
from qrt.errors import QuantizationError, QuantizationWarning
from qrt.quantization import QuantFormat, QuantType, quantize_static
from quant_models import OPSET, reference_ranges, run_ort, sqnr_db


@pytest.fixture(scope="module")
def cnn_setup(cnn):
    model, make = cnn
    calib = make(8, 0)
    return model, reference_ranges(model, calib), make(4, 1)


def quantize(setup, fmt=QuantFormat.QOperator, **kwargs):
    model, ranges, _ = setup
    kwargs.setdefault("activation_type", QuantType.QUInt8)
    return quantize_static(model, None, None, quant_format=fmt, per_channel=True, tensor_ranges=ranges, **kwargs)


def inits(summary):
    return {t.name: numpy_helper.to_array(t) for t in summary.model.graph.initializer}


def status(summary):
    return {r.name: (r.status, r.detail) for r in summary.nodes}


def test_nodes_to_exclude_keeps_a_conv_in_float(cnn_setup):
    model = cnn_setup[0]
    conv = [n.name for n in model.graph.node if n.op_type == "Conv"][1]
    summary = quantize(cnn_setup, nodes_to_exclude=[conv])
    assert status(summary)[conv] == ("float", "listed in nodes_to_exclude")
    float_convs = [n for n in summary.model.graph.node if n.op_type == "Conv"]
    assert [n.name for n in float_convs] == [conv]
    # Its Relu has no quantized producer to fold into, and the borders appear around it.
    ops = [n.op_type for n in summary.model.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2
    _, _, test = cnn_setup
    assert sqnr_db(run_ort(model, test)[0], run_ort(summary.model, test)[0]) > 20


def test_op_types_and_nodes_to_quantize(cnn_setup):
    summary = quantize(cnn_setup, op_types_to_quantize=["Conv", "Relu"])
    kinds = {r.op_type for r in summary.quantized}
    assert kinds == {"Conv"}
    assert {r.op_type for r in summary.float_nodes} >= {"Gemm", "Add", "GlobalAveragePool"}
    first = next(n.name for n in cnn_setup[0].graph.node if n.op_type == "Conv")
    only = quantize(cnn_setup, nodes_to_quantize=[first])
    assert [r.name for r in only.quantized] == [first]
    assert status(only)[next(n.name for n in cnn_setup[0].graph.node if n.op_type == "Gemm")] == \
        ("float", "not listed in nodes_to_quantize")


def test_unknown_node_names_are_reported(cnn_setup):
    summary = quantize(cnn_setup, nodes_to_exclude=["no_such_node"])
    assert any("no_such_node" in w for w in summary.warnings)


@pytest.mark.parametrize("qtype,zero", [(QuantType.QInt8, 0), (QuantType.QUInt8, 128)])
def test_activation_symmetric(cnn_setup, qtype, zero):
    summary = quantize(cnn_setup, activation_type=qtype, extra_options={"ActivationSymmetric": True})
    values = inits(summary)
    act_zero_points = [values[n.input[7]] for n in summary.model.graph.node if n.op_type == "QLinearConv"]
    assert act_zero_points and all(int(z) == zero for z in act_zero_points)
    if qtype == QuantType.QInt8:
        # A zero point of 0 represents negatives, which Relu removes: the Relu cannot fold away.
        kept = [r for r in summary.float_nodes if r.op_type == "Relu"]
        assert kept and "exceeds the clamp" in kept[0].detail


def test_tensor_ranges_fix_a_tensor_exactly(cnn_setup):
    model, ranges, _ = cnn_setup
    add = next(n.output[0] for n in model.graph.node if n.op_type == "Add")
    # The Relu after the Add folds into it: the Add then writes the Relu's output tensor.
    tensor = next(n.output[0] for n in model.graph.node if n.op_type == "Relu" and n.input[0] == add)
    for options in ({"tensor_ranges": {**ranges, tensor: (-1.0, 7.0)}},
                    {"tensor_ranges": ranges,
                     "extra_options": {"TensorQuantOverrides": {tensor: [{"rmin": -1.0, "rmax": 7.0}]}}}):
        summary = quantize_static(model, None, None, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                  **options)
        q = next(n for n in summary.model.graph.node if n.op_type == "QuantizeLinear"
                 and n.output[0] == f"{tensor}_quantized")
        scale, zero_point = qmath.compute_scale_zero_point(0.0, 7.0, np.uint8)   # the Relu clamps -1 to 0
        assert inits(summary)[q.input[1]] == scale and inits(summary)[q.input[2]] == zero_point


def test_keep_removable_activations(cnn_setup):
    summary = quantize(cnn_setup, fmt=QuantFormat.QDQ, extra_options={"QDQKeepRemovableActivations": True})
    assert [n.op_type for n in summary.model.graph.node].count("Relu") == 4
    assert not summary.fused


def test_matmul_const_b_only():
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    ranges = {"a": (-1, 1), "b": (-1, 1), "y": (-3, 3)}
    both = quantize_static(model, None, None, quant_format=QuantFormat.QOperator, tensor_ranges=ranges)
    assert [n.op_type for n in both.model.graph.node].count("QLinearMatMul") == 1
    with pytest.warns(QuantizationWarning, match="MatMulConstBOnly"):
        only_const = quantize_static(model, None, None, tensor_ranges=ranges, extra_options={"MatMulConstBOnly": True})
    assert [n.op_type for n in only_const.model.graph.node] == ["MatMul"]
    onnx.checker.check_model(both.model)


def test_summary_prints_what_happened(cnn_setup):
    model = cnn_setup[0]
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    summary = quantize(cnn_setup, nodes_to_exclude=[conv])
    text = str(summary)
    assert "static QOperator" in text and "% of the float model" in text
    assert f"Conv '{conv}': listed in nodes_to_exclude" in text
    assert len(summary.nodes) == len(model.graph.node)
    assert summary.size_before == model.ByteSize() and 0 < summary.size_after < summary.size_before
    assert "QuantizationSummary(" in repr(summary)


def test_unsupported_types_are_rejected(cnn_setup):
    """The combinations onnxruntime's quantize_static refuses, and float8, which qrt does not write."""
    with pytest.raises(QuantizationError, match="QInt16 needs quant_format=QuantFormat.QDQ"):
        quantize(cnn_setup, weight_type=QuantType.QInt16)
    with pytest.raises(QuantizationError, match="activation_type=QInt8 with weight_type=QUInt8"):
        quantize(cnn_setup, fmt=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QUInt8)
    with pytest.raises(QuantizationError, match="QFLOAT8E4M3FN"):
        quantize(cnn_setup, fmt=QuantFormat.QDQ, weight_type=QuantType.QFLOAT8E4M3FN)
    with pytest.raises(QuantizationError, match="unknown quant_format"):
        quantize(cnn_setup, fmt="QNNX")
    with pytest.raises(QuantizationError, match="range for tensor 'x'"):
        quantize_static(cnn_setup[0], None, None, tensor_ranges={"x": (1.0, float("nan"))})


def test_onnxruntime_enums_are_accepted(cnn_setup):
    ort_quant = pytest.importorskip("onnxruntime.quantization")
    summary = quantize(cnn_setup, fmt=ort_quant.QuantFormat.QDQ, activation_type=ort_quant.QuantType.QUInt8,
                       weight_type=ort_quant.QuantType.QInt8)
    assert summary.mode == "static QDQ"
