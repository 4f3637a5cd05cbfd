import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def test_nodes_that_reach_no_output_are_removed():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("Neg", ["a"], ["dead1"]),
         helper.make_node("Abs", ["dead1"], ["dead2"]),
         helper.make_node("Sigmoid", ["a"], ["y"])],
        [("x", FLOAT, [3])], [("y", FLOAT, [3])])
    out = optimize_checked(model, ["eliminate_deadend"])
    assert ops(out) == {"Relu": 1, "Sigmoid": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_node_with_one_live_output_stays_and_value_info_of_removed_tensors_goes():
    model = make_model(
        [helper.make_node("Split", ["x", "split"], ["a", "b"], axis=0),
         helper.make_node("Neg", ["b"], ["dead"]),
         helper.make_node("Relu", ["a"], ["y"])],
        [("x", FLOAT, [4])], [("y", FLOAT, [2])], {"split": np.array([2, 2], np.int64)},
        value_info=[("dead", FLOAT, [2]), ("a", FLOAT, [2])])
    out = optimize_checked(model, ["eliminate_deadend"])
    assert ops(out) == {"Split": 1, "Relu": 1}
    assert [v.name for v in out.graph.value_info] == ["a"]


def test_producer_of_a_tensor_read_by_a_subgraph_stays():
    then_branch = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", FLOAT, [3])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", FLOAT, [3])])
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [("x", FLOAT, [3]), ("c", 9, [])], [("y", FLOAT, [3])])
    assert ops(optimize_checked(model, ["eliminate_deadend"])) == {"Relu": 1, "If": 1}


@pytest.mark.parametrize("seed", range(5))
def test_property_random_dags_keep_outputs(seed):
    """Random DAGs; every node not an ancestor of an output must go, every ancestor must stay."""
    rng = np.random.default_rng(seed)
    names, nodes = ["x"], []
    for k in range(12):
        a, b = (names[int(i)] for i in rng.integers(len(names), size=2))
        nodes.append(helper.make_node(str(rng.choice(["Add", "Mul", "Sub"])), [a, b], [f"t{k}"]))
        names.append(f"t{k}")
    outputs = sorted({str(n) for n in rng.choice(names[1:], size=2)})
    model = make_model(nodes, [("x", FLOAT, [3])], [(o, FLOAT, [3]) for o in outputs])
    needed, live = set(outputs), 0
    for node in reversed(nodes):
        if node.output[0] in needed:
            needed.update(node.input)
            live += 1
    out = optimize_checked(model, ["eliminate_deadend"])
    assert len(out.graph.node) == live
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
