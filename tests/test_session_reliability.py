"""A session's results are the caller's own, and its options are honoured or refused, never ignored."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import qrt
from qrt.errors import InvalidArgument


def _aliasing_model():
    """Outputs that a plan hands back without a kernel writing a fresh buffer: the feed itself, an
    Identity of it, an initializer, an Identity of the initializer, a Reshape (a view) of it, and
    the same tensor twice; ``sig`` is an ordinary kernel result."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
            [("x", [2, 3]), ("x_id", [2, 3]), ("c", [2, 3]), ("c_id", [2, 3]), ("c_flat", [6]),
             ("c_id2", [2, 3]), ("sig", [2, 3])]]
    c = helper.make_tensor("c", TensorProto.FLOAT, [2, 3], [1, 2, 3, 4, 5, 6])
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [6])
    nodes = [helper.make_node("Identity", ["x"], ["x_id"]),
             helper.make_node("Identity", ["c"], ["c_id"]),
             helper.make_node("Identity", ["c_id"], ["c_id2"]),
             helper.make_node("Reshape", ["c", "flat"], ["c_flat"]),
             helper.make_node("Sigmoid", ["x"], ["sig"])]
    graph = helper.make_graph(nodes, "aliasing", [x], outs, [c, flat])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("level", [qrt.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   qrt.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_writing_into_results_never_changes_feeds_or_later_runs(level):
    model = _aliasing_model()
    options = qrt.SessionOptions()
    options.graph_optimization_level = level
    sess = qrt.InferenceSession(model.SerializeToString(), options)
    feed = np.arange(6, dtype=np.float32).reshape(2, 3)
    pristine = feed.copy()
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": pristine.copy()})
    first = sess.run(None, {"x": feed})
    for i, out in enumerate(first):
        assert not np.shares_memory(out, feed)
        assert all(not np.shares_memory(out, other) for other in first[i + 1:])
        out += 100.0        # the caller owns its results
    np.testing.assert_array_equal(feed, pristine)
    second = sess.run(None, {"x": feed})
    for got, want in zip(second, expected):
        # 1e-6 relative: the copies are exact, the sigmoid may differ from onnxruntime's by an ulp
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    named = sess.run(["c_flat", "c"], {"x": feed})
    assert not np.shares_memory(named[0], named[1])
