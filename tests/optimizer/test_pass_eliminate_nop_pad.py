import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(pads, shape, opset=17, mode="constant"):
    if opset < 11:
        pad = helper.make_node("Pad", ["a"], ["p"], pads=pads, mode=mode)
        inits = {}
    else:
        pad = helper.make_node("Pad", ["a", "pads"], ["p"], mode=mode)
        inits = {"pads": np.array(pads, np.int64)}
    return make_model([helper.make_node("Relu", ["x"], ["a"]), pad, helper.make_node("Neg", ["p"], ["y"])],
                      [("x", FLOAT, shape)], [("y", FLOAT, None)], inits, opset=opset)


@pytest.mark.parametrize("opset", [9, 13, 18])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_zero_pads_are_removed(opset, mode):
    model = _model([0, 0, 0, 0], [3, 4], opset, mode)
    out = optimize_checked(model, ["eliminate_nop_pad"])
    assert ops(out) == {"Relu": 1, "Neg": 1}
    assert not out.graph.initializer  # the pads tensor went with its only reader
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


@pytest.mark.parametrize("opset", [9, 17])
def test_nonzero_pads_stay(opset):
    assert ops(optimize_checked(_model([0, 1, 0, 0], [3, 4], opset), ["eliminate_nop_pad"]))["Pad"] == 1


def test_pads_fed_at_run_time_stay():
    model = make_model([helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Neg", ["p"], ["y"])],
                       [("x", FLOAT, [3, 4]), ("pads", 7, [4])], [("y", FLOAT, None)])
    assert ops(optimize_checked(model, ["eliminate_nop_pad"]))["Pad"] == 1


@pytest.mark.parametrize("seed", range(6))
def test_property_only_all_zero_pads_go(seed):
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 4))
    shape = [int(d) for d in rng.integers(1, 4, size=rank)]
    pads = [0] * (2 * rank) if rng.random() < 0.5 else [int(p) for p in rng.integers(0, 2, size=2 * rank)]
    model = _model(pads, shape, int(rng.choice([9, 13, 18])))
    out = optimize_checked(model, ["eliminate_nop_pad"])
    assert ("Pad" in ops(out)) == any(pads)
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
