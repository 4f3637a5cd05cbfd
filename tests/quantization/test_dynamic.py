"""quantize_dynamic against onnxruntime's quantize_dynamic on the same models.

Both tools use onnxruntime's weight scale rules and the same run-time activation quantization
(DynamicQuantizeLinear), so SQNR must match within 0.5 dB; the models are run in onnxruntime.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qrt.quantization import QuantType, quantize_dynamic
from quant_models import run_ort, sqnr_db

ort_quant = pytest.importorskip("onnxruntime.quantization")
logging.getLogger().setLevel(logging.ERROR)

SLACK_DB = 0.5


def ort_dynamic(tmp_path, model, **kwargs):
    onnx.save(model, tmp_path / "float.onnx")
    ort_quant.quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "ort.onnx"), **kwargs)
    return onnx.load(tmp_path / "ort.onnx")


@pytest.mark.parametrize("weight_type", ["QInt8", "QUInt8"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("name", ["mlp", "encoder"])
def test_matches_onnxruntime(request, tmp_path, name, per_channel, weight_type):
    model, make = request.getfixturevalue(name)
    test = make(6, 1)
    reference = run_ort(model, test)[0]
    summary = quantize_dynamic(model, tmp_path / "int8.onnx", per_channel=per_channel,
                               weight_type=getattr(QuantType, weight_type))
    written = onnx.load(tmp_path / "int8.onnx")
    onnx.checker.check_model(written)
    assert {n.domain for n in written.graph.node} == {""}      # standard ONNX only
    ours = sqnr_db(reference, run_ort(written, test)[0])
    theirs = sqnr_db(reference, run_ort(ort_dynamic(tmp_path, model, per_channel=per_channel,
                                                    weight_type=getattr(ort_quant.QuantType, weight_type)), test)[0])
    assert ours >= theirs - SLACK_DB, (ours, theirs)
    assert summary.size_after <= 0.30 * summary.size_before, str(summary)
    inits = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    matmuls = [n for n in written.graph.node if n.op_type == "MatMulInteger"]
    assert len(matmuls) == (3 if name == "mlp" else 2)
    for node in matmuls:
        b = inits[node.input[1]]
        assert b.dtype == (np.int8 if weight_type == "QInt8" else np.uint8)
        assert inits[node.input[3]].shape == ((b.shape[1],) if per_channel else ())


def test_defaults_follow_onnxruntime(mlp):
    model, _ = mlp
    summary = quantize_dynamic(model, None)
    inits = {t.name: numpy_helper.to_array(t) for t in summary.model.graph.initializer}
    node = next(n for n in summary.model.graph.node if n.op_type == "MatMulInteger")
    assert inits[node.input[1]].dtype == np.int8 and inits[node.input[3]] == 0    # QInt8, symmetric


def test_constant_node_cnn(cnn, cnn_constants, tmp_path):
    """onnxruntime's tool rejects Conv weights held in Constant nodes; qrt folds them first."""
    model, make = cnn_constants
    test = make(6, 1)
    reference = run_ort(model, test)[0]
    summary = quantize_dynamic(model, None, per_channel=True)
    assert {r.op_type for r in summary.quantized} == {"Conv", "Gemm"}
    assert summary.size_after <= 0.31 * summary.size_before, str(summary)
    ours = sqnr_db(reference, run_ort(summary.model, test)[0])
    # Same weights as initializers, which onnxruntime's tool accepts.
    theirs = sqnr_db(reference, run_ort(ort_dynamic(tmp_path, cnn[0], per_channel=True), test)[0])
    assert ours >= theirs - SLACK_DB, (ours, theirs)


def test_gemm_trans_b_alpha_beta(tmp_path):
    from onnx import TensorProto, helper
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    c = rng.standard_normal(6).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["a", "W", "C"], ["y"], transB=1, alpha=0.7, beta=1.5)],
                              "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])],
                              initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"a": rng.standard_normal((4, 5)).astype(np.float32)}]
    summary = quantize_dynamic(model, None, per_channel=True)
    assert sqnr_db(run_ort(model, feeds)[0], run_ort(summary.model, feeds)[0]) > 30


def test_excluded_and_filtered(mlp):
    model, _ = mlp
    first = next(n.name for n in model.graph.node if n.op_type == "MatMul")
    summary = quantize_dynamic(model, None, nodes_to_exclude=[first])
    assert {r.name: r.detail for r in summary.float_nodes}[first] == "listed in nodes_to_exclude"
    assert [n.op_type for n in summary.model.graph.node].count("MatMulInteger") == 2
