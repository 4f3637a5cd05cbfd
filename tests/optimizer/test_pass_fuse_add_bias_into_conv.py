import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(rng, addend_shape, *, bias=False, transpose=False, add_first=False, spatial=2, cout=4):
    cin = 3
    w_shape = [cin, cout] + [3] * spatial if transpose else [cout, cin] + [3] * spatial
    inits = {"W": (rng.standard_normal(w_shape) * 0.3).astype(np.float32),
             "c": rng.standard_normal(addend_shape).astype(np.float32)}
    conv_inputs = ["x", "W"]
    if bias:
        inits["B"] = rng.standard_normal(cout).astype(np.float32)
        conv_inputs.append("B")
    op = "ConvTranspose" if transpose else "Conv"
    nodes = [helper.make_node(op, conv_inputs, ["conv"], pads=[1] * (2 * spatial)),
             helper.make_node("Add", ["c", "conv"] if add_first else ["conv", "c"], ["y"])]
    return make_model(nodes, [("x", FLOAT, [2, cin] + [5] * spatial)], [("y", FLOAT, None)], inits)


@pytest.mark.parametrize("addend_shape", [[4, 1, 1], [1, 4, 1, 1], [1], [], [1, 1, 1]])
@pytest.mark.parametrize("bias", [False, True])
def test_per_channel_add_becomes_the_conv_bias(addend_shape, bias):
    rng = np.random.default_rng(0)
    model = _model(rng, addend_shape, bias=bias)
    out = optimize_checked(model, ["fuse_add_bias_into_conv"])
    assert ops(out) == {"Conv": 1}
    assert out.graph.node[0].output[0] == "y" and len(out.graph.node[0].input) == 3
    assert_same_outputs(model, out, random_feeds(model, rng))


def test_conv_transpose_and_addend_on_the_left():
    rng = np.random.default_rng(1)
    model = _model(rng, [4, 1, 1], transpose=True, add_first=True)
    out = optimize_checked(model, ["fuse_add_bias_into_conv"])
    assert ops(out) == {"ConvTranspose": 1}
    assert_same_outputs(model, out, random_feeds(model, rng))


# [5] broadcasts along the last spatial axis; the others vary along space, batch, or add an axis.
@pytest.mark.parametrize("addend_shape", [[5], [4, 5, 5], [2, 4, 1, 1], [1, 1, 4, 1, 1]])
def test_addends_that_vary_beyond_channels_stay(addend_shape):
    rng = np.random.default_rng(2)
    model = _model(rng, addend_shape)
    assert ops(optimize_checked(model, ["fuse_add_bias_into_conv"])) == {"Conv": 1, "Add": 1}


def test_addend_fed_at_run_time_stays():
    rng = np.random.default_rng(3)
    model = make_model([helper.make_node("Conv", ["x", "W"], ["conv"]), helper.make_node("Add", ["conv", "c"], ["y"])],
                       [("x", FLOAT, [1, 3, 4, 4]), ("c", FLOAT, [4, 1, 1])], [("y", FLOAT, None)],
                       {"W": rng.standard_normal([4, 3, 1, 1]).astype(np.float32)})
    assert ops(optimize_checked(model, ["fuse_add_bias_into_conv"])) == {"Conv": 1, "Add": 1}


@pytest.mark.parametrize("seed", range(8))
def test_property_fusion_keeps_outputs(seed):
    rng = np.random.default_rng(seed)
    spatial = int(rng.integers(1, 4))
    cout = int(rng.integers(1, 6))
    rank = spatial + 2
    shape = [cout if rng.random() < 0.7 else 1] + [1] * spatial
    addend_shape = ([1] * int(rng.integers(0, 2)) + shape)[: rank] if rng.random() < 0.8 else [1]
    model = _model(rng, addend_shape, bias=bool(rng.random() < 0.5), transpose=bool(rng.random() < 0.3),
                   add_first=bool(rng.random() < 0.5), spatial=spatial, cout=cout)
    out = optimize_checked(model, ["fuse_add_bias_into_conv"])
    assert "Add" not in ops(out)
    assert_same_outputs(model, out, random_feeds(model, rng))
