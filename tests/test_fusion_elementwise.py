"""Plan-time element-wise fusion: float32 node groups -> one generated kernel (qrt FusedElementwise).

The fused kernel calls the unfused ufuncs' own scalar functions on float32 operands and rounds after
every op, so it must equal qrt's unfused result bit for bit (ORT_ENABLE_EXTENDED does not fuse
element-wise groups). Against onnxruntime on the original model: 1e-5 relative (its Sigmoid, Tanh,
Erf and Exp are vectorized approximations a few float32 ulps from the libm results), 1e-6 absolute.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.fusion import fuse_elementwise
from qrt.plan import build_plan


def _options(level=qrt.GraphOptimizationLevel.ORT_ENABLE_ALL, profile=False):
    options = qrt.SessionOptions()
    options.graph_optimization_level = level
    options.enable_profiling = profile
    return options


def _check(model, feeds, fused_names):
    sess = qrt.InferenceSession(model, _options())
    fused = [n for n in sess.model.graph.node if n.op_type == "FusedElementwise"]
    assert [n.name for n in fused] == fused_names
    assert all(n.domain == "qrt" for n in fused)
    got = sess.run(None, feeds)
    unfused = qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)).run(None, feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, u, w in zip(got, unfused, want):
        np.testing.assert_array_equal(g, u)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return sess


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _x(shape, seed=0, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def test_silu_after_conv_is_one_pass_and_one_profile_event(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("Mul", ["c", "s"], ["y"], name="mul")]
    model = _model(nodes, [_vi("x", ["n", 3, 16, 16])], [_vi("y", ["n", 8, 16, 16])], inits)
    feeds = {"x": _x((2, 3, 16, 16))}
    _check(model, feeds, ["sig+mul"])

    options = _options(profile=True)
    options.profile_file_prefix = str(tmp_path / "p")
    sess = qrt.InferenceSession(model, options)
    sess.run(None, feeds)
    events = json.load(open(sess.end_profiling()))
    nodes_run = [(e["name"], e["args"]["op_name"]) for e in events if e.get("cat") == "Node"]
    assert nodes_run == [("conv", "Conv"), ("sig+mul", "FusedElementwise")]


def test_per_channel_scale_and_bias_then_relu():
    inits = [_const("scale", np.linspace(0.5, 2, 6).reshape(6, 1, 1)),
             _const("bias", np.linspace(-1, 1, 6).reshape(6, 1, 1))]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["a"], name="mul"),
             helper.make_node("Add", ["a", "bias"], ["b"], name="add"),
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    model = _model(nodes, [_vi("x", ["n", 6, 5, 7])], [_vi("y", ["n", 6, 5, 7])], inits)
    _check(model, {"x": _x((3, 6, 5, 7))}, ["mul+add+relu"])


def test_erf_gelu_with_its_bias_over_the_last_axis():
    inits = [_const("b", np.linspace(-0.5, 0.5, 24)), _const("sqrt2", np.sqrt(2.0)), _const("one", 1.0),
             _const("half", 0.5)]
    n = helper.make_node
    nodes = [n("Add", ["x", "b"], ["h"], name="bias"), n("Div", ["h", "sqrt2"], ["s"], name="div"),
             n("Erf", ["s"], ["e"], name="erf"), n("Add", ["e", "one"], ["e1"], name="add1"),
             n("Mul", ["h", "e1"], ["g"], name="mul"), n("Mul", ["g", "half"], ["y"], name="half")]
    model = _model(nodes, [_vi("x", ["b", "s", 24])], [_vi("y", ["b", "s", 24])], inits)
    # 2*40*24 elements: large enough for the parallel variant when two threads are set.
    _check(model, {"x": _x((2, 40, 24))}, ["bias+div+erf+add1+mul+half"])
    big = {"x": _x((4, 512, 24))}
    np.testing.assert_array_equal(
        qrt.InferenceSession(model).run(None, big)[0],
        qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)).run(None, big)[0])


UNARY = [("Sigmoid", {}), ("Tanh", {}), ("Exp", {}), ("Softplus", {}), ("LeakyRelu", {"alpha": 0.1}),
         ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Abs", {}), ("Neg", {})]


@pytest.mark.parametrize("op, attrs", UNARY, ids=[u[0] for u in UNARY])
def test_unary_ops_inside_a_chain_match_unfused_bit_for_bit(op, attrs):
    inits = [_const("k", 0.7), _const("c", 0.25), _const("lo", -0.5), _const("hi", 3.0)]
    n = helper.make_node
    nodes = [n("Mul", ["x", "k"], ["a"], name="scale"), n(op, ["a"], ["b"], name="op", **attrs),
             n("Sub", ["b", "c"], ["d"], name="shift"), n("Clip", ["d", "lo", "hi"], ["y"], name="clip")]
    model = _model(nodes, [_vi("x", [4, 33])], [_vi("y", [4, 33])], inits)
    _check(model, {"x": _x((4, 33), seed=3)}, ["scale+op+shift+clip"])


def test_two_tensor_inputs_and_a_runtime_broadcast_falls_back_to_the_unfused_ops():
    n = helper.make_node
    nodes = [n("Mul", ["x", "z"], ["a"], name="mul"), n("Tanh", ["a"], ["b"], name="tanh"),
             n("Max", ["b", "x"], ["y"], name="max")]
    # The shapes say x and z are alike, so the group fuses; a feed where z broadcasts after all (a symbolic
    # dim bound to 1) takes the body's plan, the unfused kernels.
    model = _model(nodes, [_vi("x", ["a", "b"]), _vi("z", ["a", "b"])], [_vi("y", ["a", "b"])])
    _check(model, {"x": _x((3, 10)), "z": _x((3, 10), seed=1)}, ["mul+tanh+max"])
    _check(model, {"x": _x((3, 10)), "z": _x((1, 10), seed=1)}, ["mul+tanh+max"])


def test_intermediate_read_elsewhere_or_broadcast_input_is_not_fused():
    n = helper.make_node
    nodes = [n("Sigmoid", ["x"], ["s"], name="sig"), n("Mul", ["x", "s"], ["y"], name="mul")]
    model = _model(nodes, [_vi("x", ["n", 8])], [_vi("y", ["n", 8]), _vi("s", ["n", 8])])
    assert fuse_elementwise(model) is model
    # A second tensor input known to broadcast ((n, 1) against (n, 8)) keeps Add out of the group.
    nodes = [n("Add", ["x", "m"], ["a"], name="add"), n("Sigmoid", ["a"], ["s"], name="sig"),
             n("Mul", ["a", "s"], ["y"], name="mul")]
    model = _model(nodes, [_vi("x", ["n", 8]), _vi("m", ["n", 1])], [_vi("y", ["n", 8])])
    _check(model, {"x": _x((2, 8)), "m": _x((2, 1), seed=2)}, ["sig+mul"])


def test_extended_level_keeps_the_model_runnable_in_onnxruntime():
    n = helper.make_node
    nodes = [n("Sigmoid", ["x"], ["s"], name="sig"), n("Mul", ["x", "s"], ["y"], name="mul")]
    model = _model(nodes, [_vi("x", ["n", 8])], [_vi("y", ["n", 8])])
    sess = qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    assert [n.op_type for n in sess.model.graph.node] == ["Sigmoid", "Mul"]


def test_generated_source_lives_in_the_cache_directory():
    from qrt.kernels.cpu import fused_elementwise as fe
    n = helper.make_node
    nodes = [n("Neg", ["x"], ["a"], name="neg"), n("Exp", ["a"], ["y"], name="exp")]
    model = _model(nodes, [_vi("x", ["n", 8])], [_vi("y", ["n", 8])])
    sess = qrt.InferenceSession(model)
    kernel = sess.plan.steps[0].kernel
    path = kernel.module.__file__
    assert os.path.dirname(path) == fe.cache_dir() and os.path.basename(path).startswith("fused_")
    assert "scalar_Neg" in open(path).read()


def test_a_constant_of_higher_rank_than_the_input_widens_the_output_as_numpy_does():
    n = helper.make_node
    inits = [_const("b", np.linspace(-1, 1, 8).reshape(1, 1, 8)), _const("k", np.full((1, 1, 1), 0.5))]
    nodes = [n("Add", ["x", "b"], ["a"], name="add"), n("Mul", ["a", "k"], ["y"], name="mul")]
    # No shapes known when fusing: the kernel finds at run time that (4, 8) broadcasts to (1, 4, 8).
    model = _model(nodes, [_vi("x", ["n", 8])], [_vi("y", None)], inits)
    model.graph.value_info.append(_vi("a", None))
    fused = fuse_elementwise(model)
    assert [n.op_type for n in fused.graph.node] == ["FusedElementwise"]
    # (Planned directly: onnx's checker wants every graph output's shape, which is the point here.)
    plan = build_plan(fused.graph, {"": 17, "qrt": 1})
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": _x((4, 8))})[0]
    got = plan.run({"x": _x((4, 8))})[0]
    assert got.shape == want.shape == (1, 4, 8)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_an_unwritable_cache_directory_still_builds_the_session(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("QRT_CACHE_DIR", str(blocked))
    n = helper.make_node
    # A group no other test builds, so the kernel is generated (not found in this process's table).
    nodes = [n("Abs", ["x"], ["a"], name="abs"), n("Sqrt", ["a"], ["y"], name="sqrt")]
    model = _model(nodes, [_vi("x", ["n", 5])], [_vi("y", ["n", 5])])
    _check(model, {"x": _x((2, 5))}, ["abs+sqrt"])
