"""Calibration through qrt's own runtime (the ``calibration`` package), end to end.

The elementwise model uses only ops qrt's runtime runs today (Mul, Add, LeakyRelu, Sigmoid, Concat,
Reshape, Transpose), so these tests calibrate for real. MinMax ranges must equal onnxruntime's
min/max of the same tensors (relative 1e-6: both are float32 reductions of the same values).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qrt.errors import QuantizationError
from qrt.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from quant_models import OPSET, ListReader, reference_ranges, run_ort, sqnr_db

ort_quant = pytest.importorskip("onnxruntime.quantization")
logging.getLogger().setLevel(logging.ERROR)


def ort_tool(tmp_path, model, calib, fmt, method, per_channel=False):
    onnx.save(model, tmp_path / "float.onnx")
    ort_quant.quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "ort.onnx"), ListReader(calib),
                              quant_format=getattr(ort_quant.QuantFormat, fmt), calibrate_method=method,
                              per_channel=per_channel, activation_type=ort_quant.QuantType.QUInt8)
    return onnx.load(tmp_path / "ort.onnx")


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_minmax_calibration_matches_onnxruntime(elementwise, tmp_path, fmt):
    model, make = elementwise
    calib, test = make(12, 0), make(6, 1)
    summary = quantize_static(model, None, ListReader(calib), quant_format=fmt, activation_type=QuantType.QUInt8)
    expected = reference_ranges(model, calib)
    assert summary.ranges
    for name, (rmin, rmax) in summary.ranges.items():
        np.testing.assert_allclose([rmin, rmax], expected[name], rtol=1e-6, err_msg=name)
    assert {r.op_type for r in summary.quantized} == {"Mul", "Add", "LeakyRelu", "Sigmoid", "Concat", "Reshape",
                                                      "Transpose"}
    reference = run_ort(model, test)[0]
    ours = sqnr_db(reference, run_ort(summary.model, test)[0])
    theirs = sqnr_db(reference, run_ort(ort_tool(tmp_path, model, calib, fmt, ort_quant.CalibrationMethod.MinMax),
                                        test)[0])
    assert ours >= theirs - 0.5, (ours, theirs)


@pytest.mark.parametrize("method", ["Percentile", "Distribution", "MSE", "Entropy"])
def test_histogram_methods(elementwise, method):
    model, make = elementwise
    calib, test = make(12, 0), make(6, 1)
    summary = quantize_static(model, None, calib, quant_format=QuantFormat.QDQ,
                              calibrate_method=getattr(CalibrationMethod, method), activation_type="QUInt8")
    onnx.checker.check_model(summary.model)
    reference = run_ort(model, test)[0]
    # MinMax gives 38.8 dB on this model; a histogram method may clip outliers but not much more.
    assert sqnr_db(reference, run_ort(summary.model, test)[0]) > 30


def test_reader_forms_give_the_same_model(elementwise, tmp_path):
    model, make = elementwise
    calib = make(6, 0)
    np.savez(tmp_path / "calib.npz", **{k: np.concatenate([f[k] for f in calib]) for k in calib[0]})
    results = []
    for reader in (ListReader(calib), calib, (f for f in calib), str(tmp_path / "calib.npz")):
        summary = quantize_static(model, None, reader, quant_format=QuantFormat.QDQ)
        results.append(summary.model.SerializeToString())
    # The .npz reader yields one sample (of batch 1) per feed; min/max over the same values is the same.
    assert results[0] == results[1] == results[2] == results[3]


def test_calibration_cache(elementwise, tmp_path):
    model, make = elementwise
    cache = tmp_path / "ranges.json"
    first = quantize_static(model, None, make(6, 0), calibration_cache_path=cache)
    assert cache.exists()
    again = quantize_static(model, None, None, calibration_cache_path=cache)
    assert again.model.SerializeToString() == first.model.SerializeToString()


def test_runtime_gap_is_a_clear_quantization_error():
    """An op qrt's runtime cannot run stops calibration with a QuantizationError naming it."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Frobnicate", ["r"], ["f"], domain="test.custom"),
             helper.make_node("Add", ["f", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              value_info=[helper.make_tensor_value_info("f", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("test.custom", 1)])
    with pytest.raises(QuantizationError, match=r"(?s)qrt.s runtime.*Frobnicate"):
        quantize_static(model, None, [{"x": np.ones((2, 3), np.float32)}])
