"""Whole models through qrt, cross-checked against onnxruntime (and torch when it is installed).

Tolerances: these models chain many float32 reductions (convolutions over hundreds of terms, softmax,
layer norm) that qrt and onnxruntime sum in different orders, so results agree to accumulated
rounding, not bit for bit: max abs difference < 1e-5 on the small models (outputs of order 1) as the
issue asks, and 1e-3 relative on the model-zoo graphs, whose activations grow through 20-120 layers.
"""
import glob
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qrt
from model_builders import classic_cnn, lstm_model, mlp, transformer_block

ZOO = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")))


def _ort(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _compare(model, feeds, atol=1e-5, rtol=0.0):
    ours = qrt.InferenceSession(model).run(None, feeds)
    theirs = _ort(model).run(None, feeds)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=atol, rtol=rtol)
    return ours


@pytest.mark.parametrize("batch", [1, 8])
def test_classic_cnn_dynamic_batch(batch):
    model = classic_cnn()
    sess = qrt.InferenceSession(model)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    (got,), (want,) = sess.run(None, {"input": x}), _ort(model).run(None, {"input": x})
    assert got.shape == (batch, 10)
    assert np.abs(got - want).max() < 1e-5


def test_mlp():
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    _compare(mlp(), {"input": x})


def test_transformer_encoder_block():
    x = np.random.default_rng(0).standard_normal((2, 12, 64)).astype(np.float32)
    _compare(transformer_block(), {"x": x})


def test_bidirectional_lstm_with_sequence_lengths():
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((20, 3, 16)).astype(np.float32), "seq_lens": np.array([20, 13, 7], np.int32)}
    _compare(lstm_model(), feeds)


def _expose_softmax_inputs(model):
    """The model with each Softmax-produced graph output's logits as an extra output, and those Softmax nodes.

    Softmax amplifies logit differences: the light_* graphs' 1000 logits are all equal in onnxruntime
    (light_squeezenet: 1.05e10, where one float32 ulp is 1024), so ulp-level rounding-order noise in
    qrt's logits (5 ulp here) turns the uniform 0.001 into 0 or 1 on some machines. The logits are the quantity to compare with onnxruntime; the Softmax is
    checked on its own input: onnxruntime's Softmax of qrt's logits (onnx.reference's Softmax ignores
    the opset < 13 flatten-to-2-D semantics these graphs use).
    """
    outputs = {o.name for o in model.graph.output}
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax" and n.output[0] in outputs]
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in inferred.graph.value_info}
    for node in softmaxes:
        model.graph.output.append(types[node.input[0]])
    return model, softmaxes


def _softmax_reference(node, opset, logits):
    graph = onnx.helper.make_graph([node], "softmax", [onnx.helper.make_tensor_value_info(node.input[0], 1, None)],
                                   [onnx.helper.make_tensor_value_info(node.output[0], 1, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return _ort(model).run(None, {node.input[0]: logits})[0]


@pytest.mark.parametrize("path", ZOO, ids=[os.path.basename(p)[:-5] for p in ZOO])
def test_model_zoo_graph(path):
    model, softmaxes = _expose_softmax_inputs(onnx.load(path))
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    shape = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    feeds = {inputs[0].name: x}
    names = [o.name for o in model.graph.output]
    ours = dict(zip(names, qrt.InferenceSession(model).run(None, feeds)))
    theirs = dict(zip(names, _ort(model).run(None, feeds)))
    probabilities = {n.output[0] for n in softmaxes}
    for name in names:
        if name in probabilities:
            continue
        a, b = ours[name], theirs[name]
        scale = max(float(np.abs(b).max()), 1e-6)
        assert np.abs(a - b).max() <= 1e-3 * scale, f"{name}: max diff {np.abs(a - b).max()} at scale {scale}"
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    for node in softmaxes:
        # Probabilities lie in [0, 1] and Softmax is a few float32 operations per element: 1e-6 absolute.
        want = _softmax_reference(node, opset, ours[node.input[0]])
        np.testing.assert_allclose(ours[node.output[0]], want, atol=1e-6, rtol=0)


def _torch_cnn():
    import torch
    from torch import nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 16 * 16, 10)).eval()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_export_matches_torch(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = _torch_cnn()
    x = torch.randn(2, 3, 32, 32)
    path = str(tmp_path / "cnn.onnx")
    torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if not dynamo else None,
                      dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamo else None, dynamo=dynamo)
    sess = qrt.InferenceSession(path)
    for batch in (1, 8):
        xb = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = model(xb).numpy()
        got, = sess.run(None, {"input": xb.numpy()})
        assert np.abs(got - want).max() < 1e-5
