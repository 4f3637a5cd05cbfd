"""Per-shape binding: ops that keep shape work between runs (qrt.ops.base.ShapeCache) must give the
same answers as onnxruntime whatever sequence of input shapes a session sees, from several threads,
and with a cache so small that every run evicts the previous shape's entry."""
import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.ops.base import ShapeCache

# (N, C, H, W): batch and spatial sizes change, and shapes come back after others were seen.
SHAPES = [(1, 3, 4, 4), (2, 3, 6, 8), (1, 3, 4, 4), (3, 3, 2, 10), (2, 3, 6, 8)]


def _model():
    """MaxPool -> Reshape (constant shape) -> Softmax -> LayerNormalization (constant scale and bias)
    -> Add (broadcast constant) -> Transpose, on a free batch and spatial size."""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
             numpy_helper.from_array(np.array([1.5], np.float32), "gamma"),
             numpy_helper.from_array(np.array([0.25], np.float32), "beta"),
             numpy_helper.from_array(np.array([[0.5]], np.float32), "shift")]
    nodes = [n("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Reshape", ["p", "flat"], ["r"]),
             n("Softmax", ["r"], ["s"], axis=-1),
             n("LayerNormalization", ["s", "gamma", "beta"], ["l"], axis=-1, epsilon=1e-5),
             n("Add", ["l", "shift"], ["a"]),
             n("Transpose", ["a"], ["y"], perm=[1, 0])]
    graph = helper.make_graph(
        nodes, "bound", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["k", "n"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _feed(shape):
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("limit", [ShapeCache.limit, 1])
def test_changing_shapes_match_onnxruntime(monkeypatch, limit):
    monkeypatch.setattr(ShapeCache, "limit", limit)
    model = _model()
    session = qrt.InferenceSession(model)
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for shape in SHAPES:
        x = _feed(shape)
        got, = session.run(None, {"x": x})
        want, = reference.run(None, {"x": x})
        assert got.shape == want.shape
        # float32 softmax and layer norm over at most 20 values: a few ulps apart from onnxruntime.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_threads_with_different_shapes_share_one_plan():
    model = _model()
    session = qrt.InferenceSession(model)
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    expected = {shape: reference.run(None, {"x": _feed(shape)})[0] for shape in SHAPES}
    errors = []

    def work(offset):
        try:
            for i in range(20):
                shape = SHAPES[(offset + i) % len(SHAPES)]
                got, = session.run(None, {"x": _feed(shape)})
                np.testing.assert_allclose(got, expected[shape], rtol=1e-5, atol=1e-6)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_node_error_names_node_and_shapes_on_the_fast_path():
    n = helper.make_node
    graph = helper.make_graph(
        [n("Relu", ["x"], ["h"], name="relu"), n("Add", ["h", "z"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["c", "d"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["e", "f"])])
    session = qrt.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(qrt.errors.NodeExecutionError, match=r"node 'add' \(Add\) failed on inputs "
                                                            r"\(h: float32\[2, 3\], z: float32\[4, 5\]\)"):
        session.run(None, {"x": np.ones((2, 3), np.float32), "z": np.ones((4, 5), np.float32)})
