import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _chain(perms, shape, extra_reader=False):
    nodes, current = [helper.make_node("Relu", ["x"], ["a"])], "a"
    for k, perm in enumerate(perms):
        attrs = {} if perm is None else {"perm": perm}
        nodes.append(helper.make_node("Transpose", [current], [f"t{k}"], **attrs))
        current = f"t{k}"
    nodes.append(helper.make_node("Neg", [current], ["y"]))
    outputs = [("y", FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Abs", ["t0"], ["z"]))
        outputs.append(("z", FLOAT, None))
    return make_model(nodes, [("x", FLOAT, shape)], outputs)


def test_two_transposes_become_one():
    model = _chain([[1, 2, 0], [0, 2, 1]], [2, 3, 4])
    out = optimize_checked(model, ["fuse_consecutive_transposes"])
    assert ops(out) == {"Relu": 1, "Transpose": 1, "Neg": 1}
    (t,) = [n for n in out.graph.node if n.op_type == "Transpose"]
    assert list(t.attribute[0].ints) == [1, 0, 2] and t.input[0] == "a"
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_inverse_transposes_cancel():
    model = _chain([[2, 0, 1], [1, 2, 0]], [2, 3, 4])
    out = optimize_checked(model, ["fuse_consecutive_transposes"])
    assert ops(out) == {"Relu": 1, "Neg": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_default_perms_reverse_and_cancel():
    model = _chain([None, None], [2, 3, 4])
    assert ops(optimize_checked(model, ["fuse_consecutive_transposes"])) == {"Relu": 1, "Neg": 1}


def test_first_transpose_with_another_reader_stays_for_it():
    model = _chain([[1, 0], [1, 0]], [2, 3], extra_reader=True)
    out = optimize_checked(model, ["fuse_consecutive_transposes"])
    assert ops(out) == {"Relu": 1, "Transpose": 1, "Neg": 1, "Abs": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


@pytest.mark.parametrize("seed", range(8))
def test_property_chains_collapse_to_at_most_one_transpose(seed):
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(2, 5))
    shape = [int(d) for d in rng.integers(1, 5, size=rank)]
    perms = [[int(p) for p in rng.permutation(rank)] for _ in range(int(rng.integers(2, 5)))]
    model = _chain(perms, shape, extra_reader=bool(rng.random() < 0.3))
    out = optimize_checked(model, ["fuse_consecutive_transposes"])
    composed = list(range(rank))
    for perm in perms:
        composed = [composed[p] for p in perm]
    transposes = [n for n in out.graph.node if n.op_type == "Transpose" and n.output[0] != "t0"]
    assert len(transposes) == (0 if composed == list(range(rank)) else 1)
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
