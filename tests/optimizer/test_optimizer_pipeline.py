import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt.optimizer as opt
from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds
from qrt.errors import InvalidArgument, InvalidModel, QrtError


def _conv_bn_model(rng=None, opset=17):
    """Constant -> Conv -> BN -> Identity -> Dropout -> Reshape(by Shape chain) -> MatMul + Add."""
    rng = rng or np.random.default_rng(0)
    w = (rng.standard_normal([4, 3, 3, 3]) * 0.3).astype(np.float32)
    inits = {"gamma": rng.uniform(0.5, 1.5, 4).astype(np.float32), "beta": rng.standard_normal(4).astype(np.float32),
             "mean": rng.standard_normal(4).astype(np.float32), "var": rng.uniform(0.5, 1.5, 4).astype(np.float32),
             "fc": rng.standard_normal([64, 5]).astype(np.float32), "fc_b": rng.standard_normal(5).astype(np.float32),
             "zero": np.array([0], np.int64), "minus_one": np.array([-1], np.int64), "unused": np.ones(3, np.float32)}
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Shape", ["d"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"]),
        helper.make_node("Concat", ["n", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["d", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "fc_b"], ["y"]),
    ]
    return make_model(nodes, [("x", FLOAT, [2, 3, 4, 4])], [("y", FLOAT, [2, 5])], inits, opset=opset,
                      value_info=[("c", FLOAT, [2, 4, 4, 4]), ("i", FLOAT, [2, 4, 4, 4])])


def test_default_passes_reduce_the_graph_and_keep_outputs():
    model = _conv_bn_model()
    out = optimize_checked(model, None)
    assert ops(out) == {"Conv": 1, "Relu": 1, "Reshape": 1, "Gemm": 1}
    assert {t.name for t in out.graph.initializer} == {"conv_W_fused", "conv_B_fused", "fc", "fc_b", "target"}
    # value_info of tensors that are gone is dropped; the rest stays.
    assert [v.name for v in out.graph.value_info] == []
    assert [n.name for n in out.graph.node if n.op_type in ("Conv", "Gemm", "Relu")] == ["conv", "relu", "fc"]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(1)))


def test_optimizing_twice_changes_nothing_more():
    once = opt.optimize(_conv_bn_model())
    twice = opt.optimize(once)
    assert twice.SerializeToString() == once.SerializeToString()


def test_named_passes_run_alone_and_in_order():
    model = _conv_bn_model()
    out = optimize_checked(model, ["fuse_bn_into_conv", "eliminate_identity"])
    # Only these two ran: the Dropout, the shape chain and MatMul+Add are untouched.
    assert ops(out) == {"Conv": 1, "Relu": 1, "Dropout": 1, "Shape": 1, "Gather": 1, "Concat": 1, "Reshape": 1,
                        "MatMul": 1, "Add": 1}
    assert ops(optimize_checked(model, "eliminate_identity,eliminate_dropout"))["Conv"] == 1
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(2)))


def test_a_callable_pass_is_accepted():
    seen = []

    def count_nodes(graph):
        seen.append(len(graph.live_nodes()))
        return 0

    opt.optimize(_conv_bn_model(), passes=[count_nodes])
    assert seen == [12]


def test_unknown_pass_and_bad_arguments_raise_qrt_errors():
    with pytest.raises(InvalidArgument, match="fuse_bn_into_conv"):
        opt.optimize(_conv_bn_model(), passes=["fuse_everything"])
    with pytest.raises(InvalidArgument, match="ModelProto"):
        opt.optimize(42)
    with pytest.raises(InvalidModel, match="not found"):
        opt.optimize("/nonexistent/model.onnx")
    with pytest.raises(InvalidModel):
        opt.optimize(b"not a model")
    assert issubclass(InvalidArgument, QrtError)


def test_paths_and_bytes_are_accepted(tmp_path):
    model = _conv_bn_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    by_path, by_bytes = opt.optimize(path), opt.optimize(model.SerializeToString())
    assert by_path.SerializeToString() == by_bytes.SerializeToString() == opt.optimize(model).SerializeToString()


@pytest.mark.parametrize("level,expected", [
    (0, []), ("disabled", []), ("ORT_DISABLE_ALL", []), (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, []),
    (2, opt.DEFAULT_PASSES), ("extended", opt.DEFAULT_PASSES), (99, opt.DEFAULT_PASSES),
    ("all", opt.DEFAULT_PASSES), (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, opt.DEFAULT_PASSES),
    (ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT, opt.DEFAULT_PASSES),
])
def test_levels_follow_onnxruntime_names_and_values(level, expected):
    assert opt.passes_for_level(level) == list(expected)


def test_basic_level_has_no_fusions_and_all_levels_use_known_passes():
    basic = opt.passes_for_level("basic")
    assert basic == opt.passes_for_level(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC) == opt.passes_for_level(1)
    assert "constant_folding" in basic and not any(p.startswith("fuse_") and "consecutive" not in p for p in basic)
    assert set(opt.DEFAULT_PASSES) == set(opt.PASSES)
    out = optimize_checked(_conv_bn_model(), basic)
    assert {"BatchNormalization", "MatMul", "Add"} <= set(ops(out)) and "Identity" not in ops(out)
    with pytest.raises(InvalidArgument, match="level"):
        opt.passes_for_level("fastest")
    with pytest.raises(InvalidArgument):
        opt.passes_for_level(5)


def test_level_argument_of_optimize():
    model = _conv_bn_model()
    assert opt.optimize(model, level="disabled").SerializeToString() == model.SerializeToString()
    assert "BatchNormalization" in ops(opt.optimize(model, level="basic"))
    assert "BatchNormalization" not in ops(opt.optimize(model, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))


def test_count_ops_counts_the_main_graph_by_op_type():
    model = _conv_bn_model()
    counts = opt.count_ops(model)
    assert counts["Conv"] == 1 and sum(counts.values()) == 12 and list(counts) == sorted(counts)
    custom = make_model([helper.make_node("Foo", ["x"], ["y"], domain="com.example")],
                        [("x", FLOAT, [1])], [("y", FLOAT, [1])], custom_domains=["com.example"])
    assert opt.count_ops(custom) == {"com.example:Foo": 1}


def test_prepare_for_quantization_optimizes_and_records_shapes():
    model = _conv_bn_model()
    prepared = opt.prepare_for_quantization(model)
    assert "BatchNormalization" not in ops(prepared)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in prepared.graph.value_info}
    assert shapes["bn"] == [2, 4, 4, 4] and shapes["flat"] == [2, 64]


def test_external_data_weights_are_not_treated_as_constants():
    model = _conv_bn_model()
    gamma = [t for t in model.graph.initializer if t.name == "gamma"][0]
    gamma.ClearField("float_data")
    gamma.ClearField("raw_data")
    gamma.data_location = TensorProto.EXTERNAL
    gamma.external_data.add(key="location", value="weights.bin")
    out = opt.optimize(model, ["fuse_bn_into_conv"])
    assert "BatchNormalization" in ops(out)


def test_subgraph_reading_outer_tensors_stays_correct():
    """An If branch reads the BN output and a constant: names it reads survive every pass."""
    model = _conv_bn_model()
    then_branch = helper.make_graph([helper.make_node("ReduceSum", ["bn"], ["t"], keepdims=0)], "then", [],
                                    [helper.make_tensor_value_info("t", FLOAT, [])])
    else_branch = helper.make_graph([helper.make_node("ReduceMax", ["i"], ["e"], keepdims=0)], "else", [],
                                    [helper.make_tensor_value_info("e", FLOAT, [])])
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=then_branch, else_branch=else_branch))
    model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    model.graph.output.append(helper.make_tensor_value_info("z", FLOAT, []))
    out = optimize_checked(model, None)
    produced = {o for n in out.graph.node for o in n.output}
    assert {"bn", "i"} <= produced
    for cond in (True, False):
        feeds = random_feeds(model, np.random.default_rng(3))
        feeds["cond"] = np.array(cond)
        assert_same_outputs(model, out, feeds)


def test_gemm_is_only_created_where_the_opset_allows():
    model = _conv_bn_model(opset=6)
    out = opt.optimize(model)
    assert "Gemm" not in ops(out) and list(out.opset_import) == list(model.opset_import)


def test_main_graph_nodes_are_topologically_sorted_after_rewrites():
    out = opt.optimize(_conv_bn_model())
    seen = {i.name for i in out.graph.input} | {t.name for t in out.graph.initializer}
    for node in out.graph.node:
        assert all(name in seen for name in node.input if name)
        seen.update(node.output)


def test_input_model_file_and_proto_are_untouched(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_bn_model(), path)
    before, mtime = path.read_bytes(), os.path.getmtime(path)
    opt.optimize(str(path))
    assert path.read_bytes() == before and os.path.getmtime(path) == mtime
