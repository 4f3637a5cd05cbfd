"""quantize_static against onnxruntime's own quantize_static on the same models and calibration data.

qrt calibrates by running the float model in its own runtime (MinMax); onnxruntime's tool
calibrates the same samples in onnxruntime. Accuracy is the SQNR of the int8 model's outputs
against the float model's on held-out samples, both run in onnxruntime. The bound is onnxruntime's
SQNR minus 0.5 dB: both tools use the same scale/zero-point rules (onnxruntime's), so the only
expected difference is float rounding in the calibrated ranges (measured below 1e-6 relative);
0.5 dB leaves room for that and nothing more.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quant_models import ListReader, reference_ranges, run_ort, sqnr_db
from qrt.quantization import QuantFormat, QuantType, quantize_static

ort_quant = pytest.importorskip("onnxruntime.quantization")
logging.getLogger().setLevel(logging.ERROR)   # onnxruntime's tool warns about pre-processing

SLACK_DB = 0.5
N_CALIB, N_TEST = 12, 6


def ort_quantize(tmp_path, model, calib, fmt, per_channel, preprocess=False, **kwargs):
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process
        quant_pre_process(str(src), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
        src = tmp_path / "pre.onnx"
    dst = tmp_path / "ort_int8.onnx"
    ort_quant.quantize_static(str(src), str(dst), ListReader(calib),
                              quant_format=getattr(ort_quant.QuantFormat, fmt.name), per_channel=per_channel,
                              activation_type=ort_quant.QuantType.QUInt8, weight_type=ort_quant.QuantType.QInt8,
                              **kwargs)
    return onnx.load(dst)


def qrt_quantize(model, calib, fmt, per_channel, path=None, **kwargs):
    return quantize_static(model, path, ListReader(calib), quant_format=fmt, per_channel=per_channel,
                           activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **kwargs)


def float_initializer_bytes(model):
    """Bytes of float initializers other than quantization scales (weights or biases left in float)."""
    scales = {n.input[i] for n in model.graph.node for i in range(len(n.input)) if "scale" in _input_role(n, i)}
    return sum(t.ByteSize() for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and t.name not in scales)


def _input_role(node, index):
    """The schema name of a node input ('x_scale', 'B', ...), from onnx's or onnxruntime's schemas."""
    try:
        schema = onnx.defs.get_schema(node.op_type, domain=node.domain)
        formal = schema.inputs
    except Exception:
        from onnxruntime.capi import onnxruntime_pybind11_state as C
        formal = next(s for s in C.get_all_operator_schema()
                      if s.name == node.op_type and s.domain == node.domain).inputs
    return formal[min(index, len(formal) - 1)].name.lower()


CASES = [(fmt, pc) for fmt in (QuantFormat.QOperator, QuantFormat.QDQ) for pc in (False, True)]


@pytest.mark.parametrize("fmt,per_channel", CASES, ids=[f"{f.name}-{'pc' if p else 'pt'}" for f, p in CASES])
def test_cnn_matches_onnxruntime_tool(cnn, tmp_path, fmt, per_channel):
    model, make = cnn
    calib, test = make(N_CALIB, 0), make(N_TEST, 1)
    reference = run_ort(model, test)[0]
    out = tmp_path / "qrt_int8.onnx"
    summary = qrt_quantize(model, calib, fmt, per_channel, path=out)
    written = onnx.load(out)
    onnx.checker.check_model(written)
    ours = sqnr_db(reference, run_ort(written, test)[0])
    theirs = sqnr_db(reference, run_ort(ort_quantize(tmp_path, model, calib, fmt, per_channel), test)[0])
    assert ours >= theirs - SLACK_DB, (ours, theirs)
    assert ours > 20.0
    assert not summary.float_nodes, str(summary)
    expected = reference_ranges(model, calib)
    for name, (rmin, rmax) in summary.ranges.items():
        np.testing.assert_allclose([rmin, rmax], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert float_initializer_bytes(written) == 0        # every weight and bias stored as an integer
    if fmt == QuantFormat.QOperator:
        assert summary.size_after == out.stat().st_size
        assert summary.size_after <= 0.30 * summary.size_before, str(summary)


def test_qoperator_layout_has_qdq_only_at_borders(cnn):
    model, make = cnn
    summary = qrt_quantize(model, make(N_CALIB, 0), QuantFormat.QOperator, True)
    ops = [n.op_type for n in summary.model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    assert ops[0] == "QuantizeLinear" and ops[-1] == "DequantizeLinear"
    assert ops.count("QLinearConv") == 4 and "QGemm" in ops and "QLinearAdd" in ops
    assert "QLinearGlobalAveragePool" in ops
    assert not {"Conv", "Gemm", "Relu", "Add"} & set(ops)
    # MaxPool and Flatten run on the int8 tensor and keep its parameters.
    inits = {t.name: numpy_helper.to_array(t) for t in summary.model.graph.initializer}
    maxpool = next(n for n in summary.model.graph.node if n.op_type == "MaxPool")
    consumer = next(n for n in summary.model.graph.node if maxpool.output[0] in n.input)
    producer = next(n for n in summary.model.graph.node if maxpool.input[0] in n.output)
    assert inits[consumer.input[list(consumer.input).index(maxpool.output[0]) + 1]] == \
        inits[producer.input[6]]
    assert len(summary.fused) == 4 and all(r.op_type == "Relu" for r in summary.fused)


def test_qdq_layout(cnn):
    model, make = cnn
    summary = qrt_quantize(model, make(N_CALIB, 0), QuantFormat.QDQ, True)
    graph = summary.model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == 5
    for node in convs:
        x, w, b = (producers[name] for name in node.input)
        assert x.op_type == w.op_type == b.op_type == "DequantizeLinear"
        assert producers[x.input[0]].op_type == "QuantizeLinear"
        assert inits[w.input[0]].dtype == np.int8 and inits[b.input[0]].dtype == np.int32
        assert inits[w.input[1]].ndim == 1                             # per-channel
        consumers = [n for n in graph.node if node.output[0] in n.input]
        assert [n.op_type for n in consumers] == ["QuantizeLinear"]    # fusable by onnxruntime/TensorRT
    assert "Relu" not in [n.op_type for n in graph.node]


def test_mlp_matmul_add(mlp, tmp_path):
    model, make = mlp
    calib, test = make(N_CALIB, 0), make(N_TEST, 1)
    reference = run_ort(model, test)[0]
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        summary = qrt_quantize(model, calib, fmt, True)
        ours = sqnr_db(reference, run_ort(summary.model, test)[0])
        theirs = sqnr_db(reference, run_ort(ort_quantize(tmp_path, model, calib, fmt, True), test)[0])
        assert ours >= theirs - SLACK_DB, (fmt, ours, theirs)
        assert summary.size_after <= 0.30 * summary.size_before
    ops = [n.op_type for n in qrt_quantize(model, calib, QuantFormat.QOperator, True).model.graph.node]
    assert ops.count("QLinearMatMul") == 3 and ops.count("QLinearAdd") == 3


def test_constant_node_weights_are_quantized(cnn, cnn_constants, tmp_path):
    """Weights in Constant nodes: onnxruntime's tool fails (QOperator) or keeps them in float (QDQ)."""
    model, make = cnn_constants
    calib, test = make(N_CALIB, 0), make(N_TEST, 1)
    reference = run_ort(model, test)[0]
    same_weights_as_initializers = ort_quantize(tmp_path, cnn[0], calib, QuantFormat.QOperator, True)
    theirs = sqnr_db(reference, run_ort(same_weights_as_initializers, test)[0])
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        summary = qrt_quantize(model, calib, fmt, True)
        assert "Constant nodes folded into initializers" in summary.preprocessing
        assert "Constant" not in [n.op_type for n in summary.model.graph.node]
        assert float_initializer_bytes(summary.model) == 0
        assert sqnr_db(reference, run_ort(summary.model, test)[0]) >= theirs - SLACK_DB
        if fmt == QuantFormat.QOperator:
            assert summary.size_after <= 0.30 * summary.size_before


def test_batchnorm_folded_before_quantization(cnn_bn, tmp_path):
    model, make = cnn_bn
    calib, test = make(N_CALIB, 0), make(N_TEST, 1)
    reference = run_ort(model, test)[0]
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        summary = qrt_quantize(model, calib, fmt, True)
        ops = [n.op_type for n in summary.model.graph.node]
        assert "BatchNormalization" not in ops and "BatchNormalization folded into Conv" in summary.preprocessing
        assert not summary.float_nodes
        ours = sqnr_db(reference, run_ort(summary.model, test)[0])
        # onnxruntime's documented flow: its own pre-processing (which folds BN), then quantize.
        theirs = sqnr_db(reference, run_ort(ort_quantize(tmp_path, model, calib, fmt, True, preprocess=True),
                                            test)[0])
        assert ours >= theirs - SLACK_DB, (fmt, ours, theirs)


def test_every_qoperator_op_family(zoo, tmp_path):
    model, make = zoo
    calib, test = make(N_CALIB, 0), make(N_TEST, 1)
    reference = run_ort(model, test)[0]
    summary = qrt_quantize(model, calib, QuantFormat.QOperator, True)
    onnx.checker.check_model(summary.model)
    ops = {(n.domain, n.op_type) for n in summary.model.graph.node}
    for op in ("QLinearLeakyRelu", "QLinearSigmoid", "QLinearMul", "QLinearAveragePool", "QLinearConcat",
               "QLinearAdd", "QLinearGlobalAveragePool", "QLinearSoftmax"):
        assert ("com.microsoft", op) in ops, op
    for op in ("QLinearConv", "QLinearMatMul", "Pad", "Slice", "Split", "MaxPool", "Resize", "Reshape",
               "Unsqueeze", "Transpose", "Squeeze"):
        assert ("", op) in ops, op
    assert "Clip" in [r.op_type for r in summary.fused]
    # ConvTranspose has no QLinear kernel: float compute on int8 weights, per-channel on axis 1.
    deconv = next(n for n in summary.model.graph.node if n.op_type == "ConvTranspose")
    dq = next(n for n in summary.model.graph.node if deconv.input[1] in n.output)
    assert dq.op_type == "DequantizeLinear" and next(a.i for a in dq.attribute if a.name == "axis") == 1
    float_kept = {r.op_type: r.detail for r in summary.float_nodes}
    assert set(float_kept) == {"Relu"} and "ConvTranspose" in float_kept["Relu"]
    # Pad runs on uint8: its pad value must be the zero point, not 0.
    pad = next(n for n in summary.model.graph.node if n.op_type == "Pad")
    inits = {t.name: numpy_helper.to_array(t) for t in summary.model.graph.initializer}
    producer = next(n for n in summary.model.graph.node if pad.input[0] in n.output)
    assert inits[pad.input[2]] == inits[producer.input[-1]]
    ours = sqnr_db(reference, run_ort(summary.model, test)[0])
    theirs = sqnr_db(reference, run_ort(ort_quantize(tmp_path, model, calib, QuantFormat.QOperator, True),
                                        test)[0])
    assert ours >= theirs - SLACK_DB, (ours, theirs)
    qdq = qrt_quantize(model, calib, QuantFormat.QDQ, True)
    assert sqnr_db(reference, run_ort(qdq.model, test)[0]) >= theirs - SLACK_DB


def test_embedding_gather_and_matmul(encoder, tmp_path):
    model, make = encoder
    calib, test = make(N_CALIB, 0), make(N_TEST, 1)
    reference = run_ort(model, test)[0]
    summary = qrt_quantize(model, calib, QuantFormat.QOperator, True)
    gather = next(n for n in summary.model.graph.node if n.op_type == "Gather")
    inits = {t.name: numpy_helper.to_array(t) for t in summary.model.graph.initializer}
    assert inits[gather.input[0]].dtype == np.uint8
    assert summary.size_after <= 0.30 * summary.size_before
    ours = sqnr_db(reference, run_ort(summary.model, test)[0])
    theirs = sqnr_db(reference, run_ort(ort_quantize(tmp_path, model, calib, QuantFormat.QOperator, True),
                                        test)[0])
    assert ours >= theirs - SLACK_DB


def test_onnxruntime_defaults_qdq_int8(cnn, tmp_path):
    """The defaults (QDQ, QInt8 activations and weights) against onnxruntime's defaults."""
    model, make = cnn
    calib, test = make(N_CALIB, 0), make(N_TEST, 1)
    reference = run_ort(model, test)[0]
    summary = quantize_static(model, None, ListReader(calib))
    assert summary.mode == "static QDQ"
    onnx.save(model, tmp_path / "float.onnx")
    ort_quant.quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "ort.onnx"), ListReader(calib))
    ours = sqnr_db(reference, run_ort(summary.model, test)[0])
    theirs = sqnr_db(reference, run_ort(onnx.load(tmp_path / "ort.onnx"), test)[0])
    assert ours >= theirs - SLACK_DB, (ours, theirs)
    zero_points = [numpy_helper.to_array(t) for t in summary.model.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(z.dtype == np.int8 for z in zero_points)
