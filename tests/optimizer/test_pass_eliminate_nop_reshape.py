import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(target, shape, allowzero=None, out_shape=None):
    attrs = {} if allowzero is None else {"allowzero": allowzero}
    return make_model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["r"], **attrs),
         helper.make_node("Neg", ["r"], ["y"])],
        [("x", FLOAT, shape)], [("y", FLOAT, out_shape)], {"s": np.array(target, np.int64)})


@pytest.mark.parametrize("target", [[2, 3, 4], [0, 3, 4], [2, -1, 4], [0, 0, -1], [0, 3, -1]])
def test_reshape_to_the_same_shape_is_removed(target):
    model = _model(target, [2, 3, 4])
    out = optimize_checked(model, ["eliminate_nop_reshape"])
    assert ops(out) == {"Relu": 1, "Neg": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_symbolic_dims_copied_with_zero_are_a_nop():
    model = _model([0, 0, 4], ["N", "C", 4])
    out = optimize_checked(model, ["eliminate_nop_reshape"])
    assert "Reshape" not in ops(out)
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0), {"N": 3, "C": 5}), exact=True)
    # -1 stands for the one dim not matched exactly.
    assert "Reshape" not in ops(optimize_checked(_model([0, -1, 4], ["N", "C", 4]), ["eliminate_nop_reshape"]))


@pytest.mark.parametrize("target,shape", [
    ([3, 2, 4], [2, 3, 4]),          # a real reshape
    ([2, 12], [2, 3, 4]),            # rank changes
    ([5, 0, 4], ["N", 3, 4]),        # 5 vs an unknown dim
    ([0, -1, 4], ["N", "C", "L"]),   # two dims not matched exactly
])
def test_reshapes_that_may_change_the_shape_stay(target, shape):
    model = _model(target, shape, out_shape=["?"] * len(target))
    assert ops(optimize_checked(model, ["eliminate_nop_reshape"]))["Reshape"] == 1


def test_allowzero_zero_is_literal_and_stays():
    model = _model([0, 3, 4], [2, 3, 4], allowzero=1)
    assert ops(optimize_checked(model, ["eliminate_nop_reshape"]))["Reshape"] == 1


@pytest.mark.parametrize("seed", range(6))
def test_property_nop_reshape_removal_keeps_outputs(seed):
    rng = np.random.default_rng(seed)
    shape = [int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, 4)))]
    target = [0 if rng.random() < 0.3 else d for d in shape]
    if rng.random() < 0.5:
        target[int(rng.integers(len(target)))] = -1
    if rng.random() < 0.3:
        target = [int(np.prod(shape))]  # a real reshape (unless already rank 1)
    model = _model(target, shape)
    out = optimize_checked(model, ["eliminate_nop_reshape"])
    assert ("Reshape" in ops(out)) == (len(target) != len(shape))
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
