"""Bad input fails with a QuantizationError that says what is wrong, and leaves no file behind."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qrt.errors import QuantizationError, QuantizationWarning
from qrt.quantization import quantize_dynamic, quantize_static
from quant_models import OPSET, ListReader


@pytest.fixture
def saved(elementwise, tmp_path):
    model, make = elementwise
    path = tmp_path / "float.onnx"
    onnx.save(model, path)
    return path, make


def good_feed(rng=np.random.default_rng(0)):
    return {"x": rng.standard_normal((2, 16)).astype(np.float32), "y": rng.standard_normal((2, 8)).astype(np.float32)}


BAD_READERS = {
    "unknown name": ([{**good_feed(), "z": np.zeros(3, np.float32)}], r"input\(s\) \['z'\] the model does not have"),
    "missing name": ([{"x": good_feed()["x"]}], r"lacks input\(s\) \['y'\]"),
    "wrong dtype": ([{**good_feed(), "x": good_feed()["x"].astype(np.float64)}], "dtype float64"),
    "wrong rank": ([{**good_feed(), "x": np.zeros((2, 16, 1), np.float32)}], "rank 2"),
    "wrong dim": ([{**good_feed(), "x": np.zeros((2, 15), np.float32)}], r"expects \(\?, 16\)"),
    "nan": ([good_feed(), {**good_feed(), "y": np.full((2, 8), np.nan, np.float32)}], "sample 2.*16 NaN"),
    "inf": ([{**good_feed(), "x": np.full((2, 16), np.inf, np.float32)}], "32 Inf"),
    "empty": ([], "no samples"),
    "not a dict": ([[np.zeros(3)]], "expected a dict"),
}


@pytest.mark.parametrize("case", list(BAD_READERS))
def test_bad_calibration_data(saved, tmp_path, case):
    path, _ = saved
    feeds, message = BAD_READERS[case]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizationError, match=message):
        quantize_static(path, out, ListReader(feeds))
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["float.onnx"]     # no temporary files left
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_failure_keeps_an_existing_output(saved, tmp_path):
    path, _ = saved
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous result")
    with pytest.raises(QuantizationError):
        quantize_static(path, out, [])
    assert out.read_bytes() == b"previous result"


def test_nan_inside_the_model():
    """NaN produced by the float model itself (Sqrt of negatives) is caught during calibration."""
    nodes = [helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])]
    graph = helper.make_graph(nodes, "sqrt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(QuantizationError, match="(?i)nan"):
        quantize_static(model, None, [{"x": np.array([1, -1, 2, 3], np.float32)}])


def test_nothing_to_quantize_writes_the_model_unchanged(tmp_path):
    """As onnxruntime's tool does: scripts looping over many models rely on a written model."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Sqrt", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    for mode, call in (("static", lambda out: quantize_static(model, out, [{"x": np.ones(4, np.float32)}])),
                       ("dynamic", lambda out: quantize_dynamic(model, out))):
        out = tmp_path / f"{mode}.onnx"
        with pytest.warns(QuantizationWarning, match="(?s)nothing to quantize.*Tanh"):
            summary = call(out)
        assert onnx.load(out).SerializeToString() == model.SerializeToString()
        assert not summary.quantized and "nothing to quantize" in str(summary)


def test_output_must_not_be_the_input(saved):
    path, make = saved
    before = path.read_bytes()
    with pytest.raises(QuantizationError, match="is the input model"):
        quantize_static(path, path, make(2, 0))
    with pytest.raises(QuantizationError, match="is the input model"):
        quantize_dynamic(str(path), str(path))
    assert path.read_bytes() == before


def test_missing_model_and_directory(saved, tmp_path):
    path, make = saved
    with pytest.raises(QuantizationError, match="no such file"):
        quantize_static(tmp_path / "absent.onnx", tmp_path / "out.onnx", make(2, 0))
    with pytest.raises(QuantizationError, match="does not exist"):
        quantize_static(path, tmp_path / "no_dir" / "out.onnx", make(2, 0))


def test_no_reader_and_no_ranges(saved):
    path, _ = saved
    with pytest.raises(QuantizationError, match="no calibration data reader"):
        quantize_static(path, None, None)


def test_model_proto_input_is_not_modified(elementwise, tmp_path):
    model, make = elementwise
    before = model.SerializeToString()
    summary = quantize_static(model, tmp_path / "int8.onnx", make(3, 0))
    assert model.SerializeToString() == before
    assert summary.size_after == (tmp_path / "int8.onnx").stat().st_size
    assert sorted(os.listdir(tmp_path)) == ["int8.onnx"]


def test_external_data_output(mlp, tmp_path):
    model, _ = mlp
    out = tmp_path / "int8.onnx"
    summary = quantize_dynamic(model, out, use_external_data_format=True)
    assert (tmp_path / "int8.onnx.data").exists()
    assert summary.size_after == out.stat().st_size + (tmp_path / "int8.onnx.data").stat().st_size
    reloaded = onnx.load(out)
    onnx.checker.check_model(reloaded)
    assert sorted(os.listdir(tmp_path)) == ["int8.onnx", "int8.onnx.data"]
