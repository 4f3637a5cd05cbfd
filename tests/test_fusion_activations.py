"""Plan-time activation fusion: Conv/Gemm + activation -> com.microsoft FusedConv/FusedGemm.

Fused and unfused results must agree with onnxruntime on the original model at float32 rounding
(1e-5): the fused kernel adds the bias and applies the activation to the same float32 products.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.fusion import fuse_activations

ACTIVATIONS = [
    ("Relu", {}, []), ("LeakyRelu", {"alpha": 0.2}, []), ("Sigmoid", {}, []), ("Tanh", {}, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, []), ("Clip", {}, [-0.5, 0.75]),
]


def _model(op, act, attrs, clip_bounds, consumers=1):
    rng = np.random.default_rng(0)
    inits = []
    if op == "Conv":
        inits += [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
                  numpy_helper.from_array(rng.standard_normal(6).astype(np.float32) * 0.1, "b")]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 9, 9])
        first = helper.make_node("Conv", ["x", "w", "b"], ["t"], name="producer", pads=[1, 1, 1, 1])
        out_shape = ["n", 6, 9, 9]
    else:
        inits += [numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w"),
                  numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b")]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])
        first = helper.make_node("Gemm", ["x", "w", "b"], ["t"], name="producer", transB=1, alpha=0.7)
        out_shape = ["n", 8]
    act_inputs = ["t"]
    for i, bound in enumerate(clip_bounds):
        inits.append(numpy_helper.from_array(np.array(bound, np.float32), f"bound{i}"))
        act_inputs.append(f"bound{i}")
    nodes = [first, helper.make_node(act, act_inputs, ["y"], name="act", **attrs)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    if consumers == 2:
        nodes.append(helper.make_node("Neg", ["t"], ["z"], name="other"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, out_shape))
    graph = helper.make_graph(nodes, "g", [x], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(op, batch=3):
    shape = (batch, 3, 9, 9) if op == "Conv" else (batch, 5)
    return {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 2}


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
@pytest.mark.parametrize("act, attrs, bounds", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_fused_matches_onnxruntime_and_stays_runnable_there(op, act, attrs, bounds):
    model = _model(op, act, attrs, bounds)
    sess = qrt.InferenceSession(model)
    fused = not (op == "Gemm" and act == "Clip")     # onnxruntime's FusedGemm has no Clip
    assert [n.op_type for n in sess.model.graph.node] == ([f"Fused{op}"] if fused else [op, act])
    feeds = _feeds(op)
    want, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got, = sess.run(None, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    fused_in_ort, = ort.InferenceSession(sess.model.SerializeToString(),
                                         providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(fused_in_ort, want, rtol=1e-5, atol=1e-6)


def test_no_fusion_when_the_producer_output_is_read_elsewhere():
    model = _model("Conv", "Relu", {}, [], consumers=2)
    assert fuse_activations(model) is model
    sess = qrt.InferenceSession(model)
    assert "FusedConv" not in {n.op_type for n in sess.model.graph.node}


def test_basic_level_does_not_fuse():
    options = qrt.SessionOptions()
    options.graph_optimization_level = qrt.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = qrt.InferenceSession(_model("Conv", "Relu", {}, []), options)
    assert [n.op_type for n in sess.model.graph.node] == ["Conv", "Relu"]


def test_output_read_only_inside_a_nested_subgraph_is_kept():
    # 't' is read only by an If nested inside another If's branch: fusing Gemm+Relu would delete it.
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b")]
    vi = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    def leaf(out, op, read="t"):
        return helper.make_graph([helper.make_node(op, [read], [out])], f"g_{out}", [], [vi(out)])
    inner = helper.make_node("If", ["cond"], ["inner_out"], then_branch=leaf("leaf_a", "Identity"),
                             else_branch=leaf("leaf_b", "Neg"))
    outer = helper.make_node("If", ["cond"], ["z"],
                             then_branch=helper.make_graph([inner], "then", [], [vi("inner_out")]),
                             else_branch=leaf("leaf_c", "Abs", read="x"))
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["t"], name="producer", transB=1),
             helper.make_node("Relu", ["t"], ["y"], name="act"), outer]
    graph = helper.make_graph(nodes, "nested", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5]),
                                                helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8]), vi("z")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import onnx
    typed = onnx.shape_inference.infer_shapes(model)
    assert [n.op_type for n in fuse_activations(typed).graph.node] == ["Gemm", "Relu", "If"]
    options = qrt.SessionOptions()
    options.graph_optimization_level = qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    feeds = {"x": rng.standard_normal((3, 5)).astype(np.float32), "cond": np.array(True)}
    got = qrt.InferenceSession(model, options).run(None, feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
