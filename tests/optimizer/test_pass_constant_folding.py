import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt.optimizer as opt
from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds

INT64 = TensorProto.INT64


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_constant_nodes_become_initializers_of_the_same_name():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = make_model(
        [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
         helper.make_node("Constant", [], ["k"], value_ints=[1, 2, 3]),
         helper.make_node("Constant", [], ["f"], value_float=0.5),
         helper.make_node("Add", ["x", "w"], ["a"]),
         helper.make_node("Mul", ["a", "f"], ["y"]),
         helper.make_node("Identity", ["k"], ["kk"])],
        [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3]), ("kk", INT64, [3])])
    out = optimize_checked(model, ["constant_folding"])
    assert ops(out) == {"Add": 1, "Mul": 1, "Identity": 1}
    inits = _inits(out)
    np.testing.assert_array_equal(inits["w"], w)
    assert inits["k"].dtype == np.int64 and inits["f"].dtype == np.float32 and inits["f"].shape == ()
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_constant_of_shape_folds_up_to_the_size_limit():
    fill = numpy_helper.from_array(np.array([2.5], np.float32))
    model = make_model(
        [helper.make_node("ConstantOfShape", ["small_shape"], ["small"], value=fill),
         helper.make_node("ConstantOfShape", ["big_shape"], ["big"], value=fill),
         helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
         helper.make_node("Add", ["x", "small"], ["a"]),
         helper.make_node("Add", ["a", "s"], ["y"])],
        [("x", FLOAT, [3, 4])], [("y", FLOAT, [3, 4])],
        {"small_shape": np.array([3, 4], np.int64), "big_shape": np.array([1025, 1024], np.int64)})
    out = optimize_checked(model, ["constant_folding"])
    # 1025 * 1024 elements is over the 1M limit: that node stays rather than bloat the model.
    assert ops(out) == {"ConstantOfShape": 1, "ReduceSum": 1, "Add": 2}
    np.testing.assert_array_equal(_inits(out)["small"], np.full((3, 4), 2.5, np.float32))
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_static_shape_chain_into_reshape_folds_completely():
    model = make_model(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
         helper.make_node("Reshape", ["x", "target"], ["y"])],
        [("x", FLOAT, [2, 3, 4])], [("y", FLOAT, None)],
        {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)})
    out = optimize_checked(model, ["constant_folding"])
    assert ops(out) == {"Reshape": 1}
    np.testing.assert_array_equal(_inits(out)["target"], [2, -1])
    assert set(_inits(out)) == {"target"}  # the chain's own constants went with it
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_shape_of_dynamic_dims_and_start_end():
    model = make_model(
        [helper.make_node("Shape", ["x"], ["full"]),
         helper.make_node("Shape", ["x"], ["tail"], start=1),
         helper.make_node("Cast", ["full"], ["y1"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["tail"], ["y2"], to=TensorProto.FLOAT)],
        [("x", FLOAT, ["N", 3, 4])], [("y1", FLOAT, [3]), ("y2", FLOAT, [2])], opset=15)
    out = optimize_checked(model, ["constant_folding"])
    assert ops(out) == {"Shape": 1, "Cast": 2}
    np.testing.assert_array_equal(_inits(out)["tail"], [3, 4])
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0), {"N": 5}), exact=True)


def test_graph_outputs_and_unsupported_ops_stay_nodes():
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"]),
         helper.make_node("Exp", ["a"], ["e"]),
         helper.make_node("Add", ["e", "x"], ["z"])],
        [("x", FLOAT, [2])], [("y", FLOAT, [2]), ("z", FLOAT, [2])],
        {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    assert ops(optimize_checked(model, ["constant_folding"])) == {"Add": 2, "Exp": 1}


def test_overridable_initializers_are_not_constants():
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["s", "x"], ["y"])],
        [("x", FLOAT, [2]), ("a", FLOAT, [2])], [("y", FLOAT, [2])],
        {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    assert ops(optimize_checked(model, ["constant_folding"])) == {"Add": 2}


def test_ir3_model_lists_folded_initializers_as_inputs():
    model = make_model(
        [helper.make_node("ConstantOfShape", ["shape"], ["w"],
                          value=numpy_helper.from_array(np.array([0.5], np.float32))),
         helper.make_node("Add", ["x", "w"], ["y"])],
        [("x", FLOAT, [2, 2]), ("shape", INT64, [2])], [("y", FLOAT, [2, 2])],
        {"shape": np.array([2, 2], np.int64)}, opset=9, ir_version=3)
    out = opt.optimize(model, ["constant_folding"])
    onnx.checker.check_model(out)
    assert ops(out) == {"Add": 1}
    assert [i.name for i in out.graph.input] == ["x", "w"]
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)), exact=True)


def test_division_by_zero_and_out_of_range_gather_are_left_for_the_runtime():
    model = make_model(
        [helper.make_node("Div", ["a", "zero"], ["q"]), helper.make_node("Add", ["q", "x"], ["y"]),
         helper.make_node("Gather", ["a", "bad"], ["g"]), helper.make_node("Add", ["g", "x"], ["z"])],
        [("x", INT64, [1])], [("y", INT64, [1]), ("z", INT64, [1])],
        {"a": np.array([4], np.int64), "zero": np.array([0], np.int64), "bad": np.array([3], np.int64)})
    assert ops(optimize_checked(model, ["constant_folding"])) == {"Div": 1, "Add": 2, "Gather": 1}


def _build(nodes, inits, opset):
    """op(constant inputs) -> Identity -> output: folding must reproduce onnxruntime bit for bit."""
    graph = helper.make_graph(nodes, "g", [], [], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    y = [v for v in inferred.graph.value_info if v.name == "y"][0]
    model.graph.output.append(y)
    onnx.checker.check_model(model)
    return model


FOLDED_OPS = ["Add", "Sub", "Mul", "Div", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
              "Concat", "Gather", "Slice", "Range", "Expand", "Min", "Max", "Neg", "Abs", "Sqrt", "Equal", "Where",
              "Not"]


def _random_case(op, rng):
    """Random constant inputs, attributes and opset for one folded ``op``."""
    f32, i64 = np.float32, np.int64
    shape = [int(d) for d in rng.integers(1, 4, size=int(rng.integers(1, 4)))]
    x = rng.standard_normal(shape).astype(f32)
    xi = rng.integers(-20, 20, size=shape).astype(i64)
    if op in ("Add", "Sub", "Mul", "Div"):
        if rng.random() < 0.5:
            return [x, rng.standard_normal(shape[-1:]).astype(f32) + 3], {}, 17
        # Signed integer division truncates toward zero in ONNX.
        return [xi, rng.integers(1, 7, size=shape).astype(i64) * rng.choice([-1, 1], size=shape)], {}, 17
    if op == "Cast":
        to = int(rng.choice([TensorProto.INT32, TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE,
                             TensorProto.BOOL, TensorProto.UINT8]))
        return [np.abs(x * 10) if to == TensorProto.UINT8 else x * 10], {"to": to}, 17
    if op == "Reshape":
        return [x, np.array([0, -1] if len(shape) > 1 else [-1, 1], i64)], {}, 17
    if op == "Flatten":
        return [x], {"axis": int(rng.integers(-len(shape), len(shape) + 1))}, 17
    if op == "Squeeze":
        y = x.reshape([1] + shape)
        return ([y, np.array([0], i64)], {}, 13) if rng.random() < 0.5 else ([y], {"axes": [0]}, 11)
    if op == "Unsqueeze":
        out_rank = len(shape) + 2
        axes = [int(a) for a in rng.choice(np.arange(-out_rank, out_rank), size=2, replace=False)]
        if len({a % out_rank for a in axes}) != 2:
            axes = [0, -1]
        return ([x, np.array(axes, i64)], {}, 13) if rng.random() < 0.5 else ([x], {"axes": axes}, 11)
    if op == "Transpose":
        return [x], {"perm": [int(p) for p in rng.permutation(len(shape))]}, 17
    if op == "Concat":
        return [x, x * 2], {"axis": int(rng.integers(-len(shape), len(shape)))}, 17
    if op == "Gather":
        axis = int(rng.integers(len(shape)))
        idx = rng.integers(-shape[axis], shape[axis], size=int(rng.integers(1, 4))).astype(i64)
        return [x, idx if rng.random() < 0.5 else idx[:1].reshape(())], {"axis": axis}, 17
    if op == "Slice":
        v = np.arange(12, dtype=i64).reshape(6, 2)
        start, end = (int(s) for s in rng.integers(-9, 9, size=2))
        step = int(rng.choice([-2, -1, 1, 2, 3]))
        return [v, np.array([start], i64), np.array([end], i64), np.array([0], i64), np.array([step], i64)], {}, 17
    if op == "Range":
        start, limit = (int(s) for s in rng.integers(-10, 10, size=2))
        return [np.array(start, i64), np.array(limit, i64), np.array(int(rng.choice([-3, -1, 1, 2])), i64)], {}, 17
    if op == "Expand":
        return [x[..., :1], np.array([2] + shape, i64)], {}, 17
    if op in ("Min", "Max"):
        return [x, x[..., :1], np.zeros(1, f32)], {}, 17
    if op in ("Neg", "Abs", "Sqrt"):
        return [np.abs(x) if op == "Sqrt" else x], {}, 17
    if op == "Equal":
        return [xi, np.zeros(shape[-1:], i64)], {}, 17
    if op == "Not":
        return [xi > 0], {}, 17
    return [xi > 0, x, np.zeros(shape[-1:], f32)], {}, 17  # Where


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("op", FOLDED_OPS)
def test_property_folding_matches_onnxruntime_bit_for_bit(op, seed):
    inputs, attrs, opset = _random_case(op, np.random.default_rng(seed))
    model = _build([helper.make_node(op, [f"i{k}" for k in range(len(inputs))], ["r"], **attrs),
                    helper.make_node("Identity", ["r"], ["y"])],
                   {f"i{k}": v for k, v in enumerate(inputs)}, opset)
    out = optimize_checked(model, ["constant_folding"])
    assert ops(out) == {"Identity": 1}, op
    assert_same_outputs(model, out, {}, exact=True)


def test_every_folded_op_has_a_property_case():
    from qrt.optimizer.numpy_ops import EVALUATORS
    assert set(EVALUATORS) == set(FOLDED_OPS) | {"Identity"}
