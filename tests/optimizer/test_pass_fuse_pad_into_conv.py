import numpy as np
import pytest
from onnx import helper

import qrt.optimizer as opt
from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(rng, pads, *, opset=17, conv_pads=None, mode="constant", value=None, axes=None, spatial=2):
    rank = spatial + 2
    inits = {"W": (rng.standard_normal([4, 3] + [3] * spatial) * 0.3).astype(np.float32)}
    if opset < 11:
        pad = helper.make_node("Pad", ["x"], ["p"], pads=pads, mode=mode, value=value or 0.0)
    else:
        inits["pads"] = np.array(pads, np.int64)
        pad_inputs = ["x", "pads"]
        if value is not None or axes is not None:
            inits["value"] = np.array(value or 0.0, np.float32)
            pad_inputs.append("value")
        if axes is not None:
            inits["axes"] = np.array(axes, np.int64)
            pad_inputs.append("axes")
        pad = helper.make_node("Pad", pad_inputs, ["p"], mode=mode)
    conv_attrs = {} if conv_pads is None else {"pads": conv_pads}
    nodes = [pad, helper.make_node("Conv", ["p", "W"], ["y"], name="conv", **conv_attrs)]
    return make_model(nodes, [("x", FLOAT, [1, 3] + [6] * spatial)], [("y", FLOAT, None)], inits, opset=opset)


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_zero_pad_merges_into_conv_pads(opset):
    rng = np.random.default_rng(0)
    model = _model(rng, [0, 0, 1, 2, 0, 0, 3, 0], opset=opset, conv_pads=[1, 1, 1, 1])
    out = optimize_checked(model, ["fuse_pad_into_conv"])
    assert ops(out) == {"Conv": 1}
    conv = out.graph.node[0]
    assert conv.input[0] == "x"
    assert list([a for a in conv.attribute if a.name == "pads"][0].ints) == [2, 3, 4, 1]
    assert_same_outputs(model, out, random_feeds(model, rng))


def test_pad_with_axes_input_merges():
    rng = np.random.default_rng(1)
    model = _model(rng, [1, 2, 0, 1], opset=18, axes=[-1, 2])
    out = optimize_checked(model, ["fuse_pad_into_conv"])
    assert ops(out) == {"Conv": 1}
    assert_same_outputs(model, out, random_feeds(model, rng))


@pytest.mark.parametrize("kwargs,why", [
    ({"pads": [0, 1, 1, 1, 0, 0, 1, 1]}, "pads the channel axis"),
    ({"pads": [0, 0, 1, 1, 0, 0, -1, 1]}, "crops"),
    ({"pads": [0, 0, 1, 1, 0, 0, 1, 1], "mode": "reflect"}, "reflect padding"),
    ({"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 1.5}, "pads with 1.5"),
])
def test_pads_conv_cannot_express_stay(kwargs, why):
    rng = np.random.default_rng(2)
    model = _model(rng, **kwargs)
    assert ops(optimize_checked(model, ["fuse_pad_into_conv"])) == {"Pad": 1, "Conv": 1}, why


def test_conv_with_auto_pad_stays():
    rng = np.random.default_rng(3)
    model = _model(rng, [0, 0, 1, 1, 0, 0, 1, 1])
    model.graph.node[1].attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    assert ops(opt.optimize(model, ["fuse_pad_into_conv"])) == {"Pad": 1, "Conv": 1}


@pytest.mark.parametrize("seed", range(8))
def test_property_fusion_keeps_outputs(seed):
    rng = np.random.default_rng(seed)
    spatial = int(rng.integers(1, 4))
    begins = [0, 0] + [int(p) for p in rng.integers(0, 3, size=spatial)]
    ends = [0, 0] + [int(p) for p in rng.integers(0, 3, size=spatial)]
    conv_pads = [int(p) for p in rng.integers(0, 2, size=2 * spatial)] if rng.random() < 0.5 else None
    model = _model(rng, begins + ends, opset=int(rng.choice([9, 13, 18])), conv_pads=conv_pads, spatial=spatial,
                   value=0.0 if rng.random() < 0.5 else None)
    out = optimize_checked(model, ["fuse_pad_into_conv"])
    assert ops(out) == {"Conv": 1}
    assert_same_outputs(model, out, random_feeds(model, rng))
