"""qrt.fusion.fuse_qdq_groups: QDQ groups become integer ops, and the fused model computes the same
thing as the float simulation to within one quantization step.

Oracle for "the same thing": the QDQ model run by onnxruntime with every graph optimization off,
which executes DequantizeLinear -> float op -> QuantizeLinear literally. Tolerance: one step of
the output's quantization (its scale), on every element; at most a few percent of elements off by
that one step (a rounding tie decided differently by float and integer arithmetic), or one element
of a small output.
"""
import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from int8_helpers import run_ort, run_qrt
from qrt.fusion import fuse_qdq_groups
from quantized_models import eval_input, float_model, ort_quantized, output_step

FLOAT_COMPUTE = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Sigmoid", "LeakyRelu", "Relu", "Softmax", "AveragePool",
                 "GlobalAveragePool", "Concat"}


def _assert_close_in_steps(got, want, step, max_fraction=0.05):
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)) / step
    assert diff.max() <= 1.0 + 1e-3, f"{diff.max():.3f} steps apart"
    off = int((diff > 0.5).sum())
    assert off <= max(1, max_fraction * diff.size), f"{off} of {diff.size} elements a step apart"


@pytest.mark.parametrize("name, activation, per_channel", [("zoo", "QUInt8", False), ("zoo", "QInt8", True),
                                                          ("cnn", "QInt8", True), ("mlp", "QUInt8", False)])
def test_onnxruntime_qdq_models_fuse_completely_and_agree(name, activation, per_channel):
    qdq = ort_quantized(name, "QDQ", activation, per_channel=per_channel)
    fused = fuse_qdq_groups(qdq)
    onnx.checker.check_model(fused)
    ops = collections.Counter(n.op_type for n in fused.graph.node)
    assert not FLOAT_COMPUTE & set(ops), f"float compute left: {ops}"
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops   # the model's float boundaries
    x = {"input": eval_input(name)}
    simulated = run_ort(qdq, x, optimize=False)[0]
    step = output_step(qdq)
    _assert_close_in_steps(run_qrt(fused, x)[0], simulated, step)
    if name == "zoo":
        # qrt running the unfused QDQ model in float must agree too (both simulate the same arithmetic).
        _assert_close_in_steps(run_qrt(qdq, x, enable_qdq_integer_execution=False)[0], simulated, step)
    # The rewritten model is ordinary ONNX + com.microsoft ops: onnxruntime runs it as well.
    _assert_close_in_steps(run_ort(fused, x)[0], simulated, step)


def test_fusion_keeps_the_input_model_untouched():
    qdq = ort_quantized("cnn", "QDQ", "QUInt8")
    before = qdq.SerializeToString()
    fuse_qdq_groups(qdq)
    assert qdq.SerializeToString() == before


# --------------------------------------------------------------------------- hand-built groups


def _qdq_conv(y_zero=0, activation=None, bias="int32", x_scale=0.02, w_scale=0.01, y_scale=0.05, extra_use=False):
    """input -Q-> DQ -> Conv(DQ(w), bias) [-> Relu] -Q-> DQ -> output."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array(w_scale, np.float32), "ws"),
             numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zero, np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "xs", "xz"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w_dq"])]
    conv_inputs = ["x_dq", "w_dq"]
    if bias == "int32":
        inits += [numpy_helper.from_array(rng.integers(-300, 300, 4).astype(np.int32), "b_q"),
                  numpy_helper.from_array(np.array(x_scale * w_scale, np.float32), "bs")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "bs"], ["b_dq"]))
        conv_inputs.append("b_dq")
    elif bias == "float":
        inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b_f"))
        conv_inputs.append("b_f")
    nodes.append(helper.make_node("Conv", conv_inputs, ["conv"], pads=[1, 1, 1, 1]))
    last = "conv"
    if activation:
        nodes.append(helper.make_node(activation, ["conv"], ["act"]))
        last = "act"
    nodes += [helper.make_node("QuantizeLinear", [last, "ys", "yz"], ["y_q"]),
              helper.make_node("DequantizeLinear", ["y_q", "ys", "yz"], ["output"])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 6, 6])]
    if extra_use:
        outputs.append(helper.make_tensor_value_info("conv", TensorProto.FLOAT, [1, 4, 6, 6]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 6])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def _check_fused_agrees(model, step=0.05):
    x = {"input": np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)}
    fused = fuse_qdq_groups(model)
    want = run_ort(model, x, optimize=False)
    got = run_qrt(fused, x)
    for g, w in zip(got, want):
        _assert_close_in_steps(g, w, step)
    return fused


@pytest.mark.parametrize("bias", ["int32", "float", None])
def test_conv_group_becomes_qlinearconv(bias):
    fused = _check_fused_agrees(_qdq_conv(bias=bias))
    assert _ops(fused)["QLinearConv"] == 1 and "Conv" not in _ops(fused)


def test_relu_dropped_when_quantization_already_clamps_at_zero():
    fused = _check_fused_agrees(_qdq_conv(y_zero=0, activation="Relu"))
    assert "Relu" not in _ops(fused) and _ops(fused)["QLinearConv"] == 1


def test_relu_kept_when_it_changes_the_result():
    """With the zero point mid-range, Relu clips values the quantization would keep: no fusion."""
    fused = _check_fused_agrees(_qdq_conv(y_zero=100, activation="Relu"))
    assert "Conv" in _ops(fused) and "Relu" in _ops(fused)


def test_float_bias_too_coarse_to_round_is_not_fused():
    """x_scale * w_scale > y_scale: rounding the bias to int32 could move the output by over half a step."""
    fused = _check_fused_agrees(_qdq_conv(bias="float", x_scale=0.5, w_scale=0.5, y_scale=0.05))
    assert "Conv" in _ops(fused) and "QLinearConv" not in _ops(fused)


def test_float_output_used_elsewhere_is_not_fused():
    model = _qdq_conv(extra_use=True)
    fused = fuse_qdq_groups(model)
    assert "Conv" in _ops(fused) and "QLinearConv" not in _ops(fused)


def test_movement_op_fused_only_when_scales_agree():
    def model(out_scale):
        inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                 numpy_helper.from_array(np.array(3, np.int8), "z"),
                 numpy_helper.from_array(np.array(out_scale, np.float32), "s2"),
                 numpy_helper.from_array(np.array([1, 0, 3, 2], np.int64), "perm_unused")]
        nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
                 helper.make_node("MaxPool", ["dq"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("QuantizeLinear", ["mp", "s2", "z"], ["q2"]),
                 helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["output"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 6])],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 3, 3])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    same = _check_fused_agrees(model(0.1), step=0.1)
    assert _ops(same)["QuantizeLinear"] == 1 and _ops(same)["MaxPool"] == 1      # MaxPool on int8 directly
    differ = fuse_qdq_groups(model(0.2))
    assert _ops(differ)["QuantizeLinear"] == 2                                  # left as it was
