import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(rng, factor_shape, *, bias=True, transpose=False, mul_first=False, spatial=2, cout=4):
    cin = 2
    w_shape = [cin, cout] + [3] * spatial if transpose else [cout, cin] + [3] * spatial
    inits = {"W": (rng.standard_normal(w_shape) * 0.3).astype(np.float32),
             "s": rng.uniform(-2, 2, factor_shape).astype(np.float32)}
    conv_inputs = ["x", "W"]
    if bias:
        inits["B"] = rng.standard_normal(cout).astype(np.float32)
        conv_inputs.append("B")
    op = "ConvTranspose" if transpose else "Conv"
    nodes = [helper.make_node(op, conv_inputs, ["conv"], pads=[1] * (2 * spatial)),
             helper.make_node("Mul", ["s", "conv"] if mul_first else ["conv", "s"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    return make_model(nodes, [("x", FLOAT, [2, cin] + [5] * spatial)], [("y", FLOAT, None)], inits)


def test_per_channel_scale_folds_into_weights_and_bias():
    rng = np.random.default_rng(0)
    model = _model(rng, [4, 1, 1])
    out = optimize_checked(model, ["fuse_mul_into_conv"])
    assert ops(out) == {"Conv": 1, "Relu": 1}
    assert out.graph.node[0].output[0] == "m"
    assert_same_outputs(model, out, random_feeds(model, rng))


def test_scale_varying_over_space_stays():
    rng = np.random.default_rng(1)
    model = _model(rng, [4, 5, 5])
    assert ops(optimize_checked(model, ["fuse_mul_into_conv"]))["Mul"] == 1


@pytest.mark.parametrize("seed", range(8))
def test_property_fusion_keeps_outputs(seed):
    rng = np.random.default_rng(seed)
    spatial, cout = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    factor_shape = [[cout] + [1] * spatial, [1, cout] + [1] * spatial, [1], []][int(rng.integers(4))]
    model = _model(rng, factor_shape, bias=bool(rng.random() < 0.5), transpose=bool(rng.random() < 0.3),
                   mul_first=bool(rng.random() < 0.5), spatial=spatial, cout=cout)
    out = optimize_checked(model, ["fuse_mul_into_conv"])
    assert "Mul" not in ops(out)
    assert_same_outputs(model, out, random_feeds(model, rng))
