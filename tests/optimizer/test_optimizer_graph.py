"""The graph-editing helper every pass is built on."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer_helpers import FLOAT, make_model
from qrt.optimizer.graph import Graph


def _graph(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return Graph(copy)


def _chain_model(**kwargs):
    return make_model(
        [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Neg", ["a"], ["b"], name="neg"),
         helper.make_node("Abs", ["b"], ["y"], name="abs")],
        [("x", FLOAT, [2])], [("y", FLOAT, [2])], **kwargs)


def test_producers_consumers_and_shapes():
    g = _graph(_chain_model())
    assert g.producer("a").name == "relu" and [n.name for n in g.consumers("a")] == ["neg"]
    assert g.producer("x") is None and g.sole_consumer("b").name == "abs"
    assert g.sole_consumer("y") is None  # graph outputs are protected
    assert g.static_shape("b") == (2,) and g.elem_type("b") == TensorProto.FLOAT


def test_sweep_removes_what_a_rewrite_left_unread_transitively():
    g = _graph(_chain_model())
    abs_node = g.producer("y")
    g.set_input(abs_node, 0, "x")  # now nothing reads b, and so nothing reads a
    assert g.sweep() == 2
    assert [n.name for n in g.live_nodes()] == ["abs"]


def test_sweep_leaves_nodes_that_were_dead_before_the_rewrite():
    model = _chain_model()
    model.graph.node.append(helper.make_node("Sigmoid", ["x"], ["dead"], name="dead"))
    g = _graph(model)
    g.sweep()
    assert "dead" in [n.name for n in g.live_nodes()]


def test_constants_see_through_constant_and_constant_of_shape_nodes():
    model = make_model(
        [helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
         helper.make_node("ConstantOfShape", ["shape"], ["f"], value=numpy_helper.from_array(np.array([7], np.int32))),
         helper.make_node("Sum", ["x", "c"], ["y"])],
        [("x", FLOAT, [2]), ("over", FLOAT, [1])], [("y", FLOAT, [2]), ("f", TensorProto.INT32, [2, 3])],
        {"shape": np.array([2, 3], np.int64), "over": np.ones(1, np.float32)})
    g = _graph(model)
    np.testing.assert_array_equal(g.constant("c"), [1.0, 2.0])
    assert g.constant_size("f") == 6
    assert g.constant("f", max_elements=5) is None  # too big to materialize for this caller
    assert g.constant("f").dtype == np.int32 and g.constant("f").shape == (2, 3)
    assert g.constant("over") is None  # an overridable initializer is an input with a default
    assert g.constant("x") is None


def test_fresh_names_avoid_every_name_in_the_model_including_subgraphs():
    body = helper.make_graph([helper.make_node("Neg", ["x"], ["inner"])], "b", [],
                             [helper.make_tensor_value_info("inner", FLOAT, [2])])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)],
                       [("x", FLOAT, [2]), ("c", TensorProto.BOOL, [])], [("y", FLOAT, [2])])
    g = _graph(model)
    assert g.fresh_name("inner") == "inner_1" and g.fresh_name("inner") == "inner_2"
    assert g.is_protected("x") and g.consumers("x")[0].op_type == "If"


def test_written_back_nodes_are_topologically_sorted_and_stable():
    g = _graph(_chain_model())
    relu = g.producer("a")
    g.remove_node(relu)
    g.add_node(helper.make_node("Relu", ["x"], ["a"], name="relu_again"))  # appended at the end
    model = g.to_model()
    assert [n.name for n in model.graph.node] == ["relu_again", "neg", "abs"]
    onnx.checker.check_model(model)


def test_ir3_initializer_listing_follows_added_and_removed_initializers():
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", FLOAT, [2]), ("w", FLOAT, [2])],
                       [("y", FLOAT, [2])], {"w": np.ones(2, np.float32)}, opset=8, ir_version=3)
    g = _graph(model)
    assert g.constant("w") is not None  # below IR 4, initializers listed as inputs are weights
    add = g.producer("y")
    g.set_input(add, 1, g.add_initializer(np.full(2, 3.0, np.float32), "w2"))
    out = g.to_model()
    assert [i.name for i in out.graph.input] == ["x", "w2"] and [t.name for t in out.graph.initializer] == ["w2"]
    onnx.checker.check_model(out)
