"""qrt.validate_export against a numpy reference (always) and a torch module (where torch is installed).

Tolerance: the model is two small dense layers (8 -> 16 -> 4, outputs of order 1); numpy, qrt and
onnxruntime sum 8-16 float32 products in different orders, so they agree to ~1e-6; the 1e-5 default
(the conversion guide's float32 bound) holds, and the deliberate mismatches below are 1e-2 and more.
"""
import importlib.util
import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrt.errors import InvalidArgument
from qrt.export_check import validate_export

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 16)).astype(np.float32) / 3
B1 = RNG.standard_normal(16).astype(np.float32) / 10
W2 = RNG.standard_normal((16, 4)).astype(np.float32) / 4
B2 = RNG.standard_normal(4).astype(np.float32) / 10


def _exported(batch="batch"):
    """What torch's exporter writes for Linear -> ReLU -> Linear, scope names included."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["/fc1/Gemm_output_0"], name="/fc1/Gemm"),
             helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["/act/Relu_output_0"], name="/act/Relu"),
             helper.make_node("Gemm", ["/act/Relu_output_0", "w2", "b2"], ["y"], name="/fc2/Gemm")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "w1"), (B1, "b1"), (W2, "w2"), (B2, "b2"))]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reference(x):
    return np.maximum(x @ W1 + B1, 0) @ W2 + B2


def leaky_reference(x):
    """The framework model used LeakyReLU(0.1); the export (wrongly) has Relu."""
    h = x @ W1 + B1
    return np.where(h > 0, h, 0.1 * h) @ W2 + B2


def leaky_intermediates(x):
    h = x @ W1 + B1
    return {"/fc1/Gemm_output_0": h, "/act/Relu_output_0": np.where(h > 0, h, 0.1 * h)}


X = RNG.standard_normal((2, 8)).astype(np.float32)


def test_a_good_export_passes_at_every_batch_size():
    report = validate_export(reference, _exported(), X, batch_sizes=(1, 3, 5))
    assert report.passed, str(report)
    assert {(d.batch, d.runtime) for d in report.diffs} == {(b, r) for b in (1, 3, 5) for r in ("qrt", "onnxruntime")}
    assert max(d.max_abs_diff for d in report.diffs) < 1e-5
    assert "export OK" in str(report)


def test_fixed_batch_export_is_flagged_with_the_dynamic_axes_fix():
    report = validate_export(reference, _exported(batch=1), X[:1], batch_sizes=(1, 3))
    assert not report.passed
    assert report.fixed_batch == {"x": 1, "y": 1}
    assert report.dynamic_axes == {"x": {0: "batch"}, "y": {0: "batch"}}
    assert "dynamic_axes={'x': {0: 'batch'}, 'y': {0: 'batch'}}" in str(report)
    # Batch 1 still runs and agrees; batch 3 is rejected by both runtimes, and that is reported, not raised.
    assert all(d.passed and d.batch == 1 for d in report.diffs)
    assert {(r, b) for r, b, _ in report.failures} == {("qrt", 3), ("onnxruntime", 3)}


def test_numeric_mismatch_is_flagged_and_located_with_intermediates():
    report = validate_export(leaky_reference, _exported(), X, intermediates=leaky_intermediates)
    assert not report.passed and not report.fixed_batch
    assert any(not d.passed for d in report.diffs if d.runtime == "qrt")
    assert any(not d.passed for d in report.diffs if d.runtime == "onnxruntime")
    node, op, tensor, diff = report.first_divergence
    assert (node, op, tensor) == ("/act/Relu", "Relu", "/act/Relu_output_0") and diff > 1e-3
    assert "first diverging node: '/act/Relu' (Relu)" in str(report)


def test_mismatch_without_intermediates_is_flagged_but_not_located():
    report = validate_export(leaky_reference, _exported(), X)
    assert not report.passed and report.first_divergence is None


def test_dict_outputs_and_inputs_by_name():
    report = validate_export(lambda x: {"y": reference(x)}, _exported(), {"x": X})
    assert report.passed, str(report)


def test_reference_with_the_wrong_number_of_outputs_is_an_error():
    with pytest.raises(InvalidArgument, match="returned 2 output"):
        validate_export(lambda x: (reference(x), reference(x)), _exported(), X)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (CI does not install it)")
def test_torch_module_fixed_batch_then_fixed_then_located():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(8, 16)
            self.act = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 8)

    def export(**kwargs):
        buffer = io.BytesIO()
        torch.onnx.export(net, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False, **kwargs)
        return onnx.load_from_string(buffer.getvalue())

    fixed = validate_export(net, export(), x.numpy())
    assert fixed.fixed_batch == {"x": 1, "y": 1} and not fixed.passed
    good = validate_export(net, export(dynamic_axes=fixed.dynamic_axes), x.numpy())
    assert good.passed, str(good)

    broken = export(dynamic_axes=fixed.dynamic_axes)      # an exporter bug: fc2's bias lost its sign
    producer = {n.output[0]: n for n in broken.graph.node}
    bias = next(t for t in broken.graph.initializer if t.name == producer["y"].input[2])
    bias.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(bias), bias.name))
    report = validate_export(net, broken, x.numpy())
    assert not report.passed
    assert report.first_divergence[0] == "/fc2/Gemm", str(report)
    assert net.training is False
