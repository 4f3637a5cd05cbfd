import numpy as np
import pytest
from onnx import helper

import qrt.optimizer

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(perm, shape):
    attrs = {} if perm is None else {"perm": perm}
    return make_model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Transpose", ["a"], ["t"], **attrs),
         helper.make_node("Neg", ["t"], ["y"])],
        [("x", FLOAT, shape)], [("y", FLOAT, None)])


def test_identity_permutation_is_removed():
    model = _model([0, 1, 2], [2, 3, 4])
    out = optimize_checked(model, ["eliminate_nop_transpose"])
    assert ops(out) == {"Relu": 1, "Neg": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_real_permutation_stays():
    model = _model([0, 2, 1], [2, 3, 4])
    assert ops(optimize_checked(model, ["eliminate_nop_transpose"]))["Transpose"] == 1


def test_default_permutation_is_a_nop_only_on_rank_one():
    assert "Transpose" not in ops(optimize_checked(_model(None, [5]), ["eliminate_nop_transpose"]))
    assert ops(optimize_checked(_model(None, [2, 3]), ["eliminate_nop_transpose"]))["Transpose"] == 1


def test_default_permutation_of_unknown_rank_stays():
    # The rank of a custom op's output is unknown to shape inference.
    model = make_model(
        [helper.make_node("Unknown", ["x"], ["u"], domain="com.example"),
         helper.make_node("Transpose", ["u"], ["y"])],
        [("x", FLOAT, [3])], [("y", FLOAT, [3])], custom_domains=["com.example"])
    assert ops(qrt.optimizer.optimize(model, ["eliminate_nop_transpose"]))["Transpose"] == 1


@pytest.mark.parametrize("seed", range(6))
def test_property_only_identity_permutations_go(seed):
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 5))
    shape = [int(d) for d in rng.integers(1, 4, size=rank)]
    perm = list(range(rank)) if rng.random() < 0.5 else [int(p) for p in rng.permutation(rank)]
    model = _model(perm, shape)
    out = optimize_checked(model, ["eliminate_nop_transpose"])
    assert ("Transpose" in ops(out)) == (perm != list(range(rank)))
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
