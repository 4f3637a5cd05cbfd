import numpy as np
import pytest
from onnx import helper

import qrt.optimizer as opt
from optimizer_helpers import FLOAT, assert_same_outputs, make_model, optimize_checked, random_feeds


def _inits(model):
    return sorted(t.name for t in model.graph.initializer)


def test_unread_initializers_are_removed_and_read_ones_stay():
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"])], [("x", FLOAT, [3])], [("y", FLOAT, [3])],
                       {"b": np.ones(3, np.float32), "unused": np.zeros(5, np.float32)})
    out = optimize_checked(model, ["eliminate_unused_initializer"])
    assert _inits(out) == ["b"]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_initializer_read_only_inside_a_subgraph_stays():
    body = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", FLOAT, [3])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", FLOAT, [3])])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)],
                       [("x", FLOAT, [3]), ("c", 9, [])], [("y", FLOAT, [3])], {"w": np.ones(3, np.float32)})
    assert _inits(optimize_checked(model, ["eliminate_unused_initializer"])) == ["w"]


def test_initializer_that_is_a_graph_output_stays():
    model = make_model([helper.make_node("Neg", ["x"], ["y"])], [("x", FLOAT, [3])],
                       [("y", FLOAT, [3]), ("w", FLOAT, [2])], {"w": np.ones(2, np.float32)})
    assert _inits(optimize_checked(model, ["eliminate_unused_initializer"])) == ["w"]


def test_overridable_initializer_is_part_of_the_interface_and_stays():
    model = make_model([helper.make_node("Neg", ["x"], ["y"])], [("x", FLOAT, [3]), ("w", FLOAT, [2])],
                       [("y", FLOAT, [3])], {"w": np.ones(2, np.float32)})
    assert _inits(optimize_checked(model, ["eliminate_unused_initializer"])) == ["w"]


def test_ir3_weights_listed_as_inputs_go_with_their_input_entry():
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"])],
                       [("x", FLOAT, [3]), ("b", FLOAT, [3]), ("unused", FLOAT, [5])], [("y", FLOAT, [3])],
                       {"b": np.ones(3, np.float32), "unused": np.zeros(5, np.float32)}, opset=8, ir_version=3)
    out = opt.optimize(model, ["eliminate_unused_initializer"])
    assert _inits(out) == ["b"]
    assert [i.name for i in out.graph.input] == ["x", "b"]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


@pytest.mark.parametrize("seed", range(4))
def test_property_outputs_unchanged_and_only_unread_removed(seed):
    rng = np.random.default_rng(seed)
    names = [f"w{k}" for k in range(6)]
    read = [n for n in names if rng.random() < 0.5]
    nodes, current = [], "x"
    for k, n in enumerate(read):
        nodes.append(helper.make_node("Add", [current, n], [f"t{k}"]))
        current = f"t{k}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    model = make_model(nodes, [("x", FLOAT, [4])], [("y", FLOAT, [4])],
                       {n: rng.standard_normal(4).astype(np.float32) for n in names})
    out = optimize_checked(model, ["eliminate_unused_initializer"])
    assert _inits(out) == sorted(read)
    assert_same_outputs(model, out, random_feeds(model, rng), exact=True)
