import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds

INT64 = TensorProto.INT64
CONSTS = {"i0": np.array(0, np.int64), "i1": np.array(1, np.int64), "i2": np.array(2, np.int64),
          "axes0": np.array([0], np.int64), "m1": np.array([-1], np.int64), "c12": np.array([12], np.int64),
          "c3": np.array([3], np.int64), "k4": np.array(4, np.int64),
          "starts": np.array([0], np.int64), "ends": np.array([1], np.int64)}


def _dim(k, index):
    """Nodes computing Unsqueeze(Gather(Shape(x), index)) as d{k}."""
    return [helper.make_node("Gather", ["shape", f"i{index}"], [f"g{k}"], axis=0),
            helper.make_node("Unsqueeze", [f"g{k}", "axes0"], [f"d{k}"])]


def _model(parts, x_shape, nodes_extra=(), allowzero=None, data="x", out_shape=None):
    nodes = [helper.make_node("Shape", ["x"], ["shape"])] + list(nodes_extra)
    nodes.append(helper.make_node("Concat", parts, ["target"], axis=0))
    attrs = {} if allowzero is None else {"allowzero": allowzero}
    nodes.append(helper.make_node("Reshape", [data, "target"], ["r"], **attrs))
    nodes.append(helper.make_node("Relu", ["r"], ["y"]))
    inputs = [("x", FLOAT, x_shape)] + ([("z", FLOAT, x_shape)] if data == "z" else [])
    used = {n for node in nodes for n in node.input}
    return make_model(nodes, inputs, [("y", FLOAT, out_shape or ["?"] * len(parts))],
                      {k: v for k, v in CONSTS.items() if k in used})


def _target(model):
    reshape = [n for n in model.graph.node if n.op_type == "Reshape"][0]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return None if reshape.input[1] not in inits else list(inits[reshape.input[1]])


def test_dynamic_batch_dim_becomes_copy_zero():
    model = _model(["d0", "c12"], ["N", 3, 4], _dim(0, 0))
    out = optimize_checked(model, ["fold_shape_ops"])
    assert ops(out) == {"Reshape": 1, "Relu": 1}
    assert _target(out) == [0, 12]
    for n in (1, 5):
        assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(n), {"N": n}), exact=True)


def test_one_unknown_entry_becomes_minus_one():
    # [3, N * 4] for an (N, 3, 4) input: the second entry is unknown, the rest fixes it.
    extra = [helper.make_node("Gather", ["shape", "i0"], ["g0"], axis=0),
             helper.make_node("Mul", ["g0", "k4"], ["n4"]),
             helper.make_node("Unsqueeze", ["n4", "axes0"], ["d1"])]
    model = _model(["c3", "d1"], ["N", 3, 4], extra)
    out = optimize_checked(model, ["fold_shape_ops"])
    assert ops(out) == {"Reshape": 1, "Relu": 1}
    assert _target(out) == [3, -1]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0), {"N": 2}), exact=True)


def test_static_dims_of_a_partly_dynamic_shape_fold():
    model = _model(["d0", "d1", "d2"], ["N", 3, 4], _dim(0, 0) + _dim(1, 1) + _dim(2, 2))
    out = optimize_checked(model, ["fold_shape_ops"])
    assert _target(out) == [0, 3, 4]
    assert ops(out) == {"Reshape": 1, "Relu": 1}


def test_two_unknown_entries_stay():
    # Reshaping another tensor z by x's dims: copy-zero refers to z, so N and C stay unknown.
    model = _model(["d0", "d1"], ["N", "C"], _dim(0, 0) + _dim(1, 1), data="z")
    out = optimize_checked(model, ["fold_shape_ops"])
    assert _target(out) is None and ops(out)["Shape"] == 1


def test_allowzero_reshape_does_not_use_copy_zero():
    model = _model(["d0", "c12"], ["N", 3, 4], _dim(0, 0), allowzero=1)
    out = optimize_checked(model, ["fold_shape_ops"])
    # 12 is a positive literal, so the single unknown may still be written as -1.
    assert _target(out) == [-1, 12]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0), {"N": 3}), exact=True)


def test_slice_of_shape_feeding_reshape():
    extra = [helper.make_node("Slice", ["shape", "starts", "ends"], ["d0"])]
    model = _model(["d0", "m1"], ["N", "C", 4], extra)
    out = optimize_checked(model, ["fold_shape_ops"])
    assert _target(out) == [0, -1]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0), {"N": 2, "C": 5}), exact=True)


@pytest.mark.parametrize("seed", range(8))
def test_property_targets_fold_and_outputs_match(seed):
    rng = np.random.default_rng(seed)
    static = [2, 3, 4]
    x_shape = [("N" if k == 0 else f"D{k}") if rng.random() < 0.5 else d for k, d in enumerate(static)]
    # Keep a prefix of x's dims (by Gather) and flatten the rest with -1.
    keep = int(rng.integers(1, 3))
    extra, parts = [], []
    for k in range(keep):
        extra += _dim(k, k)
        parts.append(f"d{k}")
    parts.append("m1")
    model = _model(parts, x_shape, extra)
    out = optimize_checked(model, ["fold_shape_ops"])
    assert _target(out) is not None and "Shape" not in ops(out)
    sizes = {"N": 2, "D1": 3, "D2": 4}
    assert_same_outputs(model, out, random_feeds(model, rng, sizes), exact=True)
