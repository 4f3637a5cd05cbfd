"""Conv -> HardSwish fused into com.microsoft FusedConv (activation "HardSwish"), as onnxruntime fuses it.

MobileNetV3-style nets put a HardSwish after most convolutions; run as its own op it read and wrote
every conv output once more. Every float conv path (AVX-512 implicit and pointwise micro-kernels,
both depthwise kernels, im2col + OpenBLAS) applies the epilogue through ``bias_activate_row``.
Results must match onnxruntime on the unfused model at float32 rounding (rtol 1e-5: the fused
epilogue computes v * clamp(v / 6 + 0.5) in float32 on the same sums, as onnxruntime's HardSwish
does), and the fused model must still run in onnxruntime.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.fusion import fuse_activations
from qrt.kernels.cpu.activation import ACTIVATION_CODES, bias_activate_row

# (input channels, output channels, group, kernel, stride, plane): one shape per conv kernel path.
SHAPES = {
    "implicit": (8, 16, 1, 3, 1, 12),
    "pointwise": (24, 32, 1, 1, 1, 10),
    "depthwise_channels_last": (48, 48, 48, 3, 2, 14),
    "depthwise_planes": (4, 4, 4, 3, 1, 40),
}


def _conv_model(channels, n_out, group, kernel, stride, plane, then="HardSwish"):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n_out, channels // group, kernel, kernel)).astype(np.float32) * 0.5
    b = rng.standard_normal(n_out).astype(np.float32)
    pad = kernel // 2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], name="conv", group=group, strides=[stride, stride],
                              pads=[pad] * 4),
             helper.make_node(then, ["t"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [None, channels, plane, plane])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n_out, None, None])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("path", sorted(SHAPES))
def test_conv_hardswish_fuses_and_matches_onnxruntime(path):
    channels, n_out, group, kernel, stride, plane = SHAPES[path]
    model = _conv_model(channels, n_out, group, kernel, stride, plane)
    sess = qrt.InferenceSession(model)
    fused, = sess.model.graph.node
    assert (fused.op_type, fused.domain) == ("FusedConv", "com.microsoft")
    # Values on both sides of HardSwish's -3 and +3 knees.
    x = (np.random.default_rng(1).standard_normal((2, channels, plane, plane)) * 2).astype(np.float32)
    want, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got, = sess.run(None, {"x": x})
    assert (want < 0).any() and (want > 3).any() and (want == 0).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    in_ort, = ort.InferenceSession(sess.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(in_ort, want, rtol=1e-5, atol=1e-6)


def test_gemm_hardswish_is_not_fused():
    """onnxruntime's FusedGemm has no HardSwish: a fused model saved by qrt must stay runnable there."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["t"], transB=1),
                               helper.make_node("HardSwish", ["t"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op_type for n in fuse_activations(model).graph.node] == ["Gemm", "HardSwish"]


def test_conv_hardswish_epilogue_keeps_nan_and_infinities():
    """NaN stays NaN, +inf stays +inf and -inf gives NaN (-inf * 0), as onnxruntime's HardSwish."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [1.0, 0.0, 0.0, 1.0])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("HardSwish", ["c"], ["y"])], "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 1])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -3.5, 2.9, -1e30], np.float32).reshape(1, 2, 5, 1)
    sess = qrt.InferenceSession(model)
    assert [n.op_type for n in sess.model.graph.node] == ["FusedConv"]
    got = sess.run(None, {"x": x})[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-6, atol=0)


def test_epilogue_kernel_matches_the_hardswish_formula():
    """The shared epilogue itself (every conv path, the generic OpenBLAS one included, calls it)."""
    src = np.linspace(-5, 5, 1001, dtype=np.float32)
    dst = np.empty_like(src)
    bias_activate_row(src, 0.25, dst, ACTIVATION_CODES["HardSwish"], 0.0, 0.0)
    v = src + np.float32(0.25)
    want = v * np.clip(v * np.float32(1 / 6) + np.float32(0.5), 0, 1)
    np.testing.assert_allclose(dst, want, rtol=1e-6, atol=1e-7)


def test_one_pixel_pointwise_conv_runs_on_openblas_and_matches_onnxruntime():
    """A 1x1 plane (squeeze-excitation, classifier head) would fill 1 of the micro-kernel's 32 columns."""
    model = _conv_model(64, 96, 1, 1, 1, 1)
    sess = qrt.InferenceSession(model)
    x = np.random.default_rng(2).standard_normal((1, 64, 1, 1)).astype(np.float32)
    got, = sess.run(None, {"x": x})
    want, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    conv = next(step.kernel for step in sess._plan.steps if hasattr(step.kernel, "_plans"))
    micro_kernel = next(iter(conv._plans.values()))[4]
    assert micro_kernel is False
