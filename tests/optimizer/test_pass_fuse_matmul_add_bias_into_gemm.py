import numpy as np
import pytest
from onnx import TensorProto, helper

import qrt.optimizer as opt
from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(a_shape, b_shape, c_shape, *, c_first=False, opset=17, dtype=FLOAT, b_const=True, rng=None):
    rng = rng or np.random.default_rng(0)
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    inits = {"C": rng.standard_normal(c_shape).astype(np_type)}
    inputs = [("A", dtype, a_shape)]
    if b_const:
        inits["B"] = rng.standard_normal(b_shape).astype(np_type)
    else:
        inputs.append(("B", dtype, b_shape))
    add_inputs = ["C", "mm"] if c_first else ["mm", "C"]
    nodes = [helper.make_node("MatMul", ["A", "B"], ["mm"], name="matmul"),
             helper.make_node("Add", add_inputs, ["y"])]
    return make_model(nodes, inputs, [("y", dtype, None)], inits, opset=opset)


@pytest.mark.parametrize("c_shape", [[5], [1, 5], [3, 5], [3, 1], [1], []])
def test_matmul_add_becomes_gemm(c_shape):
    model = _model([3, 4], [4, 5], c_shape)
    out = optimize_checked(model, ["fuse_matmul_add_bias_into_gemm"])
    assert ops(out) == {"Gemm": 1}
    gemm = out.graph.node[0]
    assert list(gemm.input) == ["A", "B", "C"] and list(gemm.output) == ["y"] and gemm.name == "matmul"
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(1)))


def test_bias_on_the_left_and_runtime_weights_fuse_too():
    model = _model(["M", 4], [4, 5], [5], c_first=True, b_const=False)
    out = optimize_checked(model, ["fuse_matmul_add_bias_into_gemm"])
    assert ops(out) == {"Gemm": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(1), {"M": 7}))


@pytest.mark.parametrize("a_shape,b_shape,c_shape,why", [
    ([2, 3, 4], [4, 5], [5], "A is 3-D"),
    ([3, 4], [4, 5], [2, 3, 5], "the Add broadcasts the result to 3-D"),
    ([1, 4], [4, 5], [3, 5], "the Add widens M from 1 to 3"),
    (["M", 4], [4, 5], [3, 5], "C's 3 may not be M"),
])
def test_shapes_gemm_cannot_take_stay(a_shape, b_shape, c_shape, why):
    model = _model(a_shape, b_shape, c_shape)
    assert ops(optimize_checked(model, ["fuse_matmul_add_bias_into_gemm"])) == {"MatMul": 1, "Add": 1}, why


def test_opset_6_and_integer_types_stay():
    # Gemm before opset 7 broadcasts C by attribute; integer Gemm is not everywhere.
    model = _model([3, 4], [4, 5], [5], opset=6)
    assert ops(opt.optimize(model, ["fuse_matmul_add_bias_into_gemm"])) == {"MatMul": 1, "Add": 1}
    model = _model([3, 4], [4, 5], [5], dtype=TensorProto.INT32)
    assert ops(optimize_checked(model, ["fuse_matmul_add_bias_into_gemm"])) == {"MatMul": 1, "Add": 1}


def test_matmul_output_read_elsewhere_stays():
    model = _model([3, 4], [4, 5], [5])
    model.graph.output.append(helper.make_tensor_value_info("mm", FLOAT, [3, 5]))
    assert ops(optimize_checked(model, ["fuse_matmul_add_bias_into_gemm"])) == {"MatMul": 1, "Add": 1}


@pytest.mark.parametrize("seed", range(10))
def test_property_fusion_keeps_outputs(seed):
    rng = np.random.default_rng(seed)
    m, k, n = (int(d) for d in rng.integers(1, 9, size=3))
    c_shape = [[n], [1, n], [m, n], [m, 1], [1, 1], [1]][int(rng.integers(6))]
    dtype = FLOAT if rng.random() < 0.7 else TensorProto.DOUBLE
    model = _model([m, k], [k, n], c_shape, c_first=bool(rng.random() < 0.5), dtype=dtype,
                   b_const=bool(rng.random() < 0.5), rng=rng)
    out = optimize_checked(model, ["fuse_matmul_add_bias_into_gemm"])
    assert ops(out) == {"Gemm": 1}
    assert_same_outputs(model, out, random_feeds(model, rng))
