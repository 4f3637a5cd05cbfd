import numpy as np
import pytest
from onnx import helper, numpy_helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _bn_params(rng, channels):
    return {"gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
            "beta": rng.standard_normal(channels).astype(np.float32),
            "mean": rng.standard_normal(channels).astype(np.float32),
            "var": rng.uniform(0.5, 1.5, channels).astype(np.float32)}


def _model(rng, *, transpose=False, group=1, spatial=2, cin=4, cout=6, bias=True, weights_as="initializer",
           bn_attrs=None, opset=17):
    ks = [3] * spatial
    w_shape = [cin, cout // group] + ks if transpose else [cout, cin // group] + ks
    inits = _bn_params(rng, cout)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    nodes = []
    if weights_as == "initializer":
        inits["W"] = w
    elif weights_as == "Constant":
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)))
    else:  # a ConstantOfShape fill, as the model zoo's light models store weights
        inits["W_shape"] = np.array(w_shape, np.int64)
        nodes.append(helper.make_node("ConstantOfShape", ["W_shape"], ["W"],
                                      value=numpy_helper.from_array(np.array([0.02], np.float32))))
    conv_inputs = ["x", "W"]
    if bias:
        inits["B"] = rng.standard_normal(cout).astype(np.float32)
        conv_inputs.append("B")
    op = "ConvTranspose" if transpose else "Conv"
    nodes.append(helper.make_node(op, conv_inputs, ["c"], group=group, pads=[1] * (2 * spatial), name="conv"))
    bn_outputs = ["bn", "running_mean", "running_var"] if (bn_attrs or {}).get("training_mode") else ["bn"]
    nodes.append(helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], bn_outputs,
                                  epsilon=1e-3, **(bn_attrs or {})))
    nodes.append(helper.make_node("Relu", ["bn"], ["y"]))
    return make_model(nodes, [("x", FLOAT, [2, cin] + [5] * spatial)], [("y", FLOAT, [2, cout] + [5] * spatial)],
                      inits, opset=opset)


@pytest.mark.parametrize("weights_as", ["initializer", "Constant", "ConstantOfShape"])
@pytest.mark.parametrize("transpose", [False, True])
def test_bn_folds_into_conv(weights_as, transpose):
    rng = np.random.default_rng(0)
    model = _model(rng, transpose=transpose, weights_as=weights_as, group=2)
    out = optimize_checked(model, ["fuse_bn_into_conv"])
    op = "ConvTranspose" if transpose else "Conv"
    assert ops(out) == {op: 1, "Relu": 1}
    conv = out.graph.node[0]
    assert conv.output[0] == "bn" and conv.name == "conv"
    # The BN parameters and the original weight went with their only readers.
    assert {t.name for t in out.graph.initializer} == set(conv.input[1:])
    assert_same_outputs(model, out, random_feeds(model, rng))


def test_fused_weights_match_the_formula():
    rng = np.random.default_rng(1)
    model = _model(rng, spatial=1)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = optimize_checked(model, ["fuse_bn_into_conv"])
    new = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    conv = out.graph.node[0]
    f = inits["gamma"].astype(np.float64) / np.sqrt(inits["var"].astype(np.float64) + 1e-3)
    np.testing.assert_allclose(new[conv.input[1]], inits["W"] * f[:, None, None], rtol=1e-6)
    np.testing.assert_allclose(new[conv.input[2]], (inits["B"] - inits["mean"]) * f + inits["beta"], rtol=1e-6)


def test_bn_producing_a_graph_output_keeps_the_name():
    rng = np.random.default_rng(2)
    model = _model(rng, bias=False)
    del model.graph.node[-1]
    model.graph.output[0].name = "bn"
    out = optimize_checked(model, ["fuse_bn_into_conv"])
    assert ops(out) == {"Conv": 1} and out.graph.node[0].output[0] == "bn"
    assert_same_outputs(model, out, random_feeds(model, rng))


def test_conv_output_read_elsewhere_blocks_the_fusion():
    rng = np.random.default_rng(3)
    model = _model(rng)
    model.graph.output.append(helper.make_tensor_value_info("c", FLOAT, [2, 6, 5, 5]))
    assert ops(optimize_checked(model, ["fuse_bn_into_conv"]))["BatchNormalization"] == 1


def test_training_mode_bn_is_left_alone():
    rng = np.random.default_rng(4)
    model = _model(rng, bn_attrs={"training_mode": 1})
    assert ops(optimize_checked(model, ["fuse_bn_into_conv"]))["BatchNormalization"] == 1


def test_weights_fed_at_run_time_block_the_fusion():
    rng = np.random.default_rng(5)
    model = _model(rng)
    w = [t for t in model.graph.initializer if t.name == "W"][0]
    model.graph.input.append(helper.make_tensor_value_info("W", FLOAT, list(w.dims)))  # overridable
    assert ops(optimize_checked(model, ["fuse_bn_into_conv"]))["BatchNormalization"] == 1


@pytest.mark.parametrize("seed", range(10))
def test_property_fusion_keeps_outputs(seed):
    rng = np.random.default_rng(100 + seed)
    group = int(rng.choice([1, 2]))
    model = _model(rng, transpose=bool(rng.random() < 0.4), group=group, spatial=int(rng.integers(1, 4)),
                   cin=2 * int(rng.integers(1, 3)), cout=2 * int(rng.integers(1, 4)), bias=bool(rng.random() < 0.5),
                   weights_as=str(rng.choice(["initializer", "Constant"])), opset=int(rng.choice([9, 13, 17])))
    out = optimize_checked(model, ["fuse_bn_into_conv"])
    assert "BatchNormalization" not in ops(out)
    assert_same_outputs(model, out, random_feeds(model, rng))
