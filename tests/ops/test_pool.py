"""MaxPool, AveragePool, LpPool and the Global pools against onnxruntime, on cases the node tests miss.

Tolerance: float32 at rtol=1e-5, atol=1e-6 (a window sums at most a few dozen values); float64 at
rtol=1e-12. MaxPool values and indices, and every integer output, must match exactly.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import qrt
from qrt.errors import InvalidModel

RNG = np.random.default_rng(7)


def run_both(op_type, x, attrs, opset, n_outputs=1, out_types=None):
    outs = [f"y{i}" for i in range(n_outputs)]
    types = out_types or [x.dtype] + [np.int64] * (n_outputs - 1)
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x"], outs, **attrs)], "g",
        [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
        [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(t)), [f"{o}{d}" for d in
                                                                                        range(x.ndim)])
         for o, t in zip(outs, types)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = qrt.InferenceSession(model).run(None, {"x": x})
    return got, want, model


def assert_same(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype.kind == "f":
        rtol, atol = (1e-12, 1e-12) if want.dtype == np.float64 else (1e-5, 1e-6)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, want)


WINDOWS = {
    # name: (x shape, attrs)
    "1d_pads_strides": ((2, 3, 15), dict(kernel_shape=[3], strides=[2], pads=[1, 2])),
    "2d_resnet_maxpool": ((1, 4, 16, 16), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d_ceil": ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 3], ceil_mode=1)),
    "2d_ceil_pads": ((1, 2, 9, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)),
    "2d_dilations": ((1, 2, 10, 9), dict(kernel_shape=[2, 3], dilations=[3, 2], strides=[1, 2])),
    "2d_same_upper": ((1, 3, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_UPPER")),
    "2d_same_lower": ((1, 3, 7, 8), dict(kernel_shape=[4, 2], strides=[2, 3], auto_pad="SAME_LOWER")),
    "2d_valid": ((1, 3, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
    "3d": ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 2], strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1])),
}


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_max_pool(name):
    shape, attrs = WINDOWS[name]
    got, want, _ = run_both("MaxPool", RNG.standard_normal(shape).astype(np.float32), attrs, 12)
    assert_same(got[0], want[0])


@pytest.mark.parametrize("name", ["2d_resnet_maxpool", "2d_ceil_pads", "2d_dilations", "3d", "1d_pads_strides"])
@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(name, storage_order):
    shape, attrs = WINDOWS[name]
    x = RNG.standard_normal(shape).astype(np.float32)
    got, want, _ = run_both("MaxPool", x, dict(attrs, storage_order=storage_order), 12, n_outputs=2)
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_max_pool_small_ints_pass_values_through(dtype):
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max + 1, size=(2, 3, 9, 8)).astype(dtype)
    got, want, _ = run_both("MaxPool", x, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 12)
    assert_same(got[0], want[0])


@pytest.mark.parametrize("name", sorted(WINDOWS))
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(name, count_include_pad):
    shape, attrs = WINDOWS[name]
    x = RNG.standard_normal(shape).astype(np.float32)
    got, want, _ = run_both("AveragePool", x, dict(attrs, count_include_pad=count_include_pad), 19)
    assert_same(got[0], want[0])


def test_average_pool_float64():
    # onnxruntime has no float64 AveragePool; its float32 result on the same (float32-exact) values is the
    # oracle, good to float32 precision.
    x = RNG.standard_normal((1, 2, 9, 9)).astype(np.float32)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    _, want, model = run_both("AveragePool", x, attrs, 19)
    graph = helper.make_graph(model.graph.node, "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, x.shape)],
                              [helper.make_tensor_value_info("y0", onnx.TensorProto.DOUBLE, list("nchw"))])
    got = qrt.InferenceSession(helper.make_model(graph, opset_imports=model.opset_import)).run(
        None, {"x": x.astype(np.float64)})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["2d_resnet_maxpool", "2d_ceil_pads", "2d_dilations", "2d_same_upper", "3d"])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool(name, p):
    shape, attrs = WINDOWS[name]
    got, want, _ = run_both("LpPool", RNG.standard_normal(shape).astype(np.float32), dict(attrs, p=p), 18)
    assert_same(got[0], want[0])


@pytest.mark.parametrize("op_type, attrs, opset", [("GlobalAveragePool", {}, 1), ("GlobalMaxPool", {}, 1),
                                                   ("GlobalLpPool", dict(p=2), 2), ("GlobalLpPool", dict(p=3), 2)])
@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 8, 7, 7), (1, 2, 3, 4, 5)])
def test_global_pools(op_type, attrs, opset, shape):
    got, want, _ = run_both(op_type, RNG.standard_normal(shape).astype(np.float32), attrs, opset)
    assert_same(got[0], want[0])


def test_global_average_pool_resnet_head():
    # The last pooling of ResNet-50: 2048 channels of 7x7.
    got, want, _ = run_both("GlobalAveragePool", RNG.standard_normal((1, 2048, 7, 7)).astype(np.float32), {}, 1)
    assert_same(got[0], want[0])


def test_pool_without_kernel_shape_is_invalid_model():
    graph = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    with pytest.raises(InvalidModel, match="kernel_shape"):
        qrt.InferenceSession(model).run(None, {"x": np.zeros((1, 1, 4, 4), np.float32)})
