"""Multi-node models with If and Loop, against onnxruntime.

* ``gated_head``: a dense layer whose output picks one of two heads by a condition computed in
  the graph (mean activation > 0); both heads read the layer output and weights from the outer
  graph, and the result is reshaped and concatenated after the If.
* ``unrolled_rnn``: a tanh RNN written as a Loop whose trip count comes from Shape/Gather of the
  input, which stops early when the state saturates, reads its weights from the outer graph, and
  whose scan output is transposed and sliced afterwards.

Tolerance: float32 at rtol 1e-5 with atol 1e-6. The dense products are short (8-16 terms) but
onnxruntime's MLAS and qrt's BLAS may sum them in different orders, and tanh/softmax/sigmoid differ
by an ulp or so between the two math libraries; a few ulps through a few steps stays far below 1e-5.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def compare(model, feeds):
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = qrt.InferenceSession(model).run(None, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return got


def gated_head(seed=0, width=8):
    rng = np.random.default_rng(seed)
    inits = [const("W", (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)),
             const("b", (rng.standard_normal(width) * 0.1).astype(np.float32)),
             const("scale", np.float32(1.7)), const("zero", np.float32(0.0)),
             const("flat_shape", np.array([-1], np.int64))]
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["h", "scale"], ["h_scaled"]),
         helper.make_node("Softmax", ["h_scaled"], ["then_out"], axis=-1)],
        "positive_head", [], [vi("then_out", F, ["batch", width])])
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["h", "b"], ["h_centered"]),
         helper.make_node("Sigmoid", ["h_centered"], ["else_out"])],
        "negative_head", [], [vi("else_out", F, ["batch", width])])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["head"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Reshape", ["head", "flat_shape"], ["flat"]),
        helper.make_node("Reshape", ["h", "flat_shape"], ["h_flat"]),
        helper.make_node("Concat", ["flat", "h_flat"], ["features"], axis=0),
    ]
    graph = helper.make_graph(nodes, "gated_head", [vi("x", F, ["batch", width])],
                              [vi("features", F, [None]), vi("positive", B, [])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gated_head_takes_both_branches(sign):
    model = gated_head()
    rng = np.random.default_rng(1)
    # Inputs far on one side make the mean activation's sign, hence the branch, predictable.
    x = (sign * (3.0 + rng.uniform(0, 1, (4, 8))) @ np.linalg.pinv(numpy_helper.to_array(model.graph.initializer[0]))
         ).astype(np.float32)
    features, positive = compare(model, {"x": x})
    assert bool(positive) == (sign > 0)
    assert features.shape == (2 * 4 * 8,)


def unrolled_rnn(seed=2, hidden=6, features=4, limit=0.97):
    rng = np.random.default_rng(seed)
    inits = [const("U", (rng.standard_normal((features, hidden)) * 0.8).astype(np.float32)),
             const("V", (rng.standard_normal((hidden, hidden)) * 0.6).astype(np.float32)),
             const("c", (rng.standard_normal(hidden) * 0.1).astype(np.float32)),
             const("limit", np.float32(limit)),
             const("one", np.array([1], np.int64)), const("last", np.array([-1], np.int64)),
             const("big", np.array([2 ** 62], np.int64)), const("axis1", np.array([1], np.int64)),
             const("t_axis", np.int64(1)), const("true", np.array(True))]
    body = helper.make_graph(
        [helper.make_node("Gather", ["xs", "t"], ["x_t"], axis=1),          # xs from the outer graph
         helper.make_node("MatMul", ["x_t", "U"], ["xu"]),
         helper.make_node("MatMul", ["h_in", "V"], ["hv"]),
         helper.make_node("Add", ["xu", "hv"], ["pre0"]),
         helper.make_node("Add", ["pre0", "c"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]),
         helper.make_node("Abs", ["h_out"], ["magnitude"]),
         helper.make_node("ReduceMax", ["magnitude"], ["peak"], keepdims=0),
         helper.make_node("Less", ["peak", "limit"], ["keep_going"]),
         helper.make_node("Identity", ["h_out"], ["h_scan"])],
        "step", [vi("t", I64, []), vi("cond_in", B, []), vi("h_in", F, ["batch", hidden])],
        [vi("keep_going", B, []), vi("h_out", F, ["batch", hidden]), vi("h_scan", F, ["batch", hidden])])
    nodes = [
        helper.make_node("Shape", ["xs"], ["xs_shape"]),
        helper.make_node("Gather", ["xs_shape", "t_axis"], ["steps"], axis=0),
        helper.make_node("Loop", ["steps", "true", "h0"], ["h_final", "history"], body=body),
        helper.make_node("Transpose", ["history"], ["by_batch"], perm=[1, 0, 2]),
        helper.make_node("Slice", ["by_batch", "last", "big", "axis1"], ["last_step"]),
        helper.make_node("Squeeze", ["last_step", "axis1"], ["last_state"]),
        helper.make_node("Sub", ["last_state", "h_final"], ["check"]),
    ]
    graph = helper.make_graph(nodes, "unrolled_rnn",
                              [vi("xs", F, ["batch", "time", features]), vi("h0", F, ["batch", hidden])],
                              [vi("h_final", F, ["batch", hidden]), vi("by_batch", F, ["batch", None, hidden]),
                               vi("check", F, ["batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("limit,scale", [(1.01, 0.5), (0.9, 2.0)])
def test_unrolled_rnn(limit, scale):
    """limit > 1 runs every time step; a limit of 0.9 with large inputs stops the loop early."""
    model = unrolled_rnn(limit=limit)
    rng = np.random.default_rng(5)
    feeds = {"xs": (rng.standard_normal((3, 7, 4)) * scale).astype(np.float32),
             "h0": np.zeros((3, 6), np.float32)}
    h_final, by_batch, check = compare(model, feeds)
    steps = by_batch.shape[1]
    assert (steps == 7) if limit > 1 else (1 <= steps < 7)
    np.testing.assert_array_equal(check, 0)
