import numpy as np
import pytest
from onnx import TensorProto, helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


@pytest.mark.parametrize("opset", [7, 11, 13, 17])
def test_inference_dropout_is_removed(opset):
    inputs = ["a"] if opset < 12 else ["a", "ratio"]
    inits = {} if opset < 12 else {"ratio": np.array(0.3, np.float32)}
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Dropout", inputs, ["d"], ratio=0.5) if opset < 12 else
         helper.make_node("Dropout", inputs, ["d"]),
         helper.make_node("Neg", ["d"], ["y"])],
        [("x", FLOAT, [2, 8])], [("y", FLOAT, [2, 8])], inits, opset=opset)
    out = optimize_checked(model, ["eliminate_dropout"])
    assert ops(out) == {"Relu": 1, "Neg": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_dropout_with_constant_false_training_mode_is_removed():
    model = make_model(
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"])],
        [("x", FLOAT, [2, 8])], [("y", FLOAT, [2, 8])],
        {"ratio": np.array(0.5, np.float32), "training": np.array(False)})
    # The graph output "y" cannot be renamed onto the graph input "x": the node stays.
    assert ops(optimize_checked(model, ["eliminate_dropout"])) == {"Dropout": 1}
    model = make_model(
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["d"]), helper.make_node("Abs", ["d"], ["y"])],
        [("x", FLOAT, [2, 8])], [("y", FLOAT, [2, 8])],
        {"ratio": np.array(0.5, np.float32), "training": np.array(False)})
    out = optimize_checked(model, ["eliminate_dropout"])
    assert ops(out) == {"Abs": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(1)), exact=True)


def test_dropout_that_may_train_stays():
    model = make_model(
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["d"]), helper.make_node("Abs", ["d"], ["y"])],
        [("x", FLOAT, [2, 8]), ("training", TensorProto.BOOL, [])], [("y", FLOAT, [2, 8])],
        {"ratio": np.array(0.5, np.float32)})
    assert ops(optimize_checked(model, ["eliminate_dropout"])) == {"Dropout": 1, "Abs": 1}


def test_dropout_whose_mask_is_read_stays():
    model = make_model(
        [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Abs", ["d"], ["y"])],
        [("x", FLOAT, [2, 8])], [("y", FLOAT, [2, 8]), ("mask", TensorProto.BOOL, [2, 8])])
    assert ops(optimize_checked(model, ["eliminate_dropout"])) == {"Dropout": 1, "Abs": 1}


def test_dropout_with_unread_mask_is_removed():
    model = make_model(
        [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Abs", ["d"], ["y"])],
        [("x", FLOAT, [2, 8])], [("y", FLOAT, [2, 8])])
    assert ops(optimize_checked(model, ["eliminate_dropout"])) == {"Abs": 1}


@pytest.mark.parametrize("seed", range(5))
def test_property_dropout_removal_keeps_outputs(seed):
    rng = np.random.default_rng(seed)
    shape = [int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, 4)))]
    opset = int(rng.choice([10, 13, 17]))
    nodes, current = [], "x"
    for k in range(int(rng.integers(2, 6))):
        if rng.random() < 0.5:
            nodes.append(helper.make_node("Dropout", [current], [f"t{k}"]))
        else:
            nodes.append(helper.make_node("Sigmoid", [current], [f"t{k}"]))
        current = f"t{k}"
    nodes.append(helper.make_node("Relu", [current], ["y"]))
    model = make_model(nodes, [("x", FLOAT, shape)], [("y", FLOAT, shape)], opset=opset)
    out = optimize_checked(model, ["eliminate_dropout"])
    assert "Dropout" not in ops(out)
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
