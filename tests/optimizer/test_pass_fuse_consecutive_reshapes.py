import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _chain(targets, shape):
    nodes, inits, current = [helper.make_node("Relu", ["x"], ["a"])], {}, "a"
    for k, target in enumerate(targets):
        inits[f"s{k}"] = np.array(target, np.int64)
        nodes.append(helper.make_node("Reshape", [current, f"s{k}"], [f"r{k}"]))
        current = f"r{k}"
    nodes.append(helper.make_node("Neg", [current], ["y"]))
    return make_model(nodes, [("x", FLOAT, shape)], [("y", FLOAT, None)], inits)


def test_two_reshapes_become_one():
    model = _chain([[6, 4], [3, -1]], [2, 3, 4])
    out = optimize_checked(model, ["fuse_consecutive_reshapes"])
    assert ops(out) == {"Relu": 1, "Reshape": 1, "Neg": 1}
    assert [t.name for t in out.graph.initializer] == ["s1"]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_copy_zero_in_the_second_target_is_resolved_from_the_first():
    model = _chain([[6, 4], [0, 2, 2]], [2, 3, 4])
    out = optimize_checked(model, ["fuse_consecutive_reshapes"])
    (reshape,) = [n for n in out.graph.node if n.op_type == "Reshape"]
    target = [t for t in out.graph.initializer if t.name == reshape.input[1]][0]
    assert list(np.frombuffer(target.raw_data, np.int64)) == [6, 2, 2]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_copy_zero_of_an_unknown_dim_stays():
    model = _chain([[0, -1], [0, 2, -1]], ["N", 3, 4])
    out = optimize_checked(model, ["fuse_consecutive_reshapes"])
    assert ops(out)["Reshape"] == 2


@pytest.mark.parametrize("seed", range(8))
def test_property_chains_collapse(seed):
    rng = np.random.default_rng(seed)
    shape = [2, 3, 4]
    targets = []
    for _ in range(int(rng.integers(2, 5))):
        choice = [[24], [6, 4], [2, 12], [4, 3, 2], [2, -1], [-1, 6], [1, 24, 1]][int(rng.integers(7))]
        targets.append(choice)
    model = _chain(targets, shape)
    out = optimize_checked(model, ["fuse_consecutive_reshapes"])
    assert ops(out)["Reshape"] == 1
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
