import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def test_identity_chain_between_ops_is_removed():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Identity", ["a"], ["b"]),
         helper.make_node("Identity", ["b"], ["c"]),
         helper.make_node("Neg", ["c"], ["y"])],
        [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3])])
    out = optimize_checked(model, ["eliminate_identity"])
    assert ops(out) == {"Relu": 1, "Neg": 1}
    assert out.graph.node[1].input[0] == "a"
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_identity_producing_a_graph_output_keeps_the_output_name():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Identity", ["a"], ["y"]),
         helper.make_node("Neg", ["a"], ["z"])],
        [("x", FLOAT, [4])], [("y", FLOAT, [4]), ("z", FLOAT, [4])])
    out = optimize_checked(model, ["eliminate_identity"])
    assert ops(out) == {"Relu": 1, "Neg": 1}
    relu, neg = out.graph.node
    assert relu.output[0] == "y" and neg.input[0] == "y"
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_identity_from_graph_input_to_graph_output_stays():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])],
                       [("x", FLOAT, [4])], [("y", FLOAT, [4])])
    out = optimize_checked(model, ["eliminate_identity"])
    assert ops(out) == {"Identity": 1}


def test_identity_between_two_graph_outputs_stays():
    model = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["b"])],
                       [("x", FLOAT, [4])], [("a", FLOAT, [4]), ("b", FLOAT, [4])])
    out = optimize_checked(model, ["eliminate_identity"])
    assert ops(out) == {"Relu": 1, "Identity": 1}


def test_identity_read_inside_a_subgraph_keeps_its_name():
    then_branch = helper.make_graph([helper.make_node("Neg", ["b"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", FLOAT, [4])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["b"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", FLOAT, [4])])
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Identity", ["a"], ["b"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [("x", FLOAT, [4]), ("cond", 9, [])], [("y", FLOAT, [4])])
    out = optimize_checked(model, ["eliminate_identity"])
    # "b" is read by both branches: the Relu is renamed to produce it instead.
    assert ops(out) == {"Relu": 1, "If": 1}
    assert out.graph.node[0].output[0] == "b"
    for cond in (True, False):
        feeds = {"x": np.array([-1, 2, -3, 4], np.float32), "cond": np.array(cond)}
        assert_same_outputs(model, out, feeds, exact=True)


@pytest.mark.parametrize("seed", range(6))
def test_property_identity_removal_keeps_outputs(seed):
    """Random chains with Identity nodes sprinkled in, some feeding graph outputs."""
    rng = np.random.default_rng(seed)
    nodes, outputs, current = [], [], "x"
    for k in range(int(rng.integers(3, 8))):
        op = rng.choice(["Identity", "Relu", "Neg", "Identity"])
        nodes.append(helper.make_node(str(op), [current], [f"t{k}"]))
        current = f"t{k}"
        if rng.random() < 0.3:
            outputs.append((current, FLOAT, [3, 2]))
    if not outputs or outputs[-1][0] != current:
        outputs.append((current, FLOAT, [3, 2]))
    model = make_model(nodes, [("x", FLOAT, [3, 2])], outputs)
    out = optimize_checked(model, ["eliminate_identity"])
    produced_outputs = {o.name for o in model.graph.output}
    remaining = [n for n in out.graph.node if n.op_type == "Identity"]
    # An Identity may only survive where both of its ends are names that must be kept.
    for node in remaining:
        assert node.output[0] in produced_outputs
        assert node.input[0] in produced_outputs or node.input[0] == "x"
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
