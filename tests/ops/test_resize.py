"""Resize, Upsample, DepthToSpace and SpaceToDepth against onnxruntime, on cases the node tests miss.

Tolerance: float32 at rtol=1e-5, atol=1e-5 (inputs are O(1); qrt interpolates in float64 and rounds
once, onnxruntime in float32, so they differ by a few float32 ulps). Nearest-neighbour results and
data movement must match exactly.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import qrt
from qrt.errors import InvalidArgument

RNG = np.random.default_rng(5)


def _model(op_type, inputs, attrs, opset, rank):
    graph = helper.make_graph(
        [helper.make_node(op_type, [n if v is not None else "" for n, v in inputs], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs if v is not None],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(inputs[0][1].dtype),
                                       [f"d{i}" for i in range(rank)])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_both(op_type, inputs, attrs, opset):
    model = _model(op_type, inputs, attrs, opset, inputs[0][1].ndim)
    feeds = {n: v for n, v in inputs if v is not None}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = qrt.InferenceSession(model).run(None, feeds)[0]
    return got, want


def assert_close(got, want, exact=False):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _f32(*values):
    return np.array(values, dtype=np.float32)


def _i64(*values):
    return np.array(values, dtype=np.int64)


COORDINATE_MODES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]
# Scales whose outputs are whole (onnxruntime and the node tests disagree on align_corners when
# length * scale is fractional; the node tests decide there and cover it).
SCALES = [_f32(1, 1, 2, 3), _f32(1, 1, 0.5, 0.25), _f32(1, 1, 1.5, 0.75)]


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("coordinate_mode", COORDINATE_MODES)
@pytest.mark.parametrize("scale_index", range(len(SCALES)))
def test_resize_scales(mode, coordinate_mode, scale_index):
    x = RNG.standard_normal((1, 2, 8, 12)).astype(np.float32)
    attrs = dict(mode=mode, coordinate_transformation_mode=coordinate_mode)
    got, want = run_both("Resize", [("x", x), ("roi", None), ("scales", SCALES[scale_index])], attrs, 19)
    assert_close(got, want, exact=mode == "nearest")


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize("sizes", [_i64(1, 1, 7, 13), _i64(1, 1, 3, 5)])
def test_resize_nearest_modes_with_sizes(nearest_mode, sizes):
    x = RNG.standard_normal((1, 1, 5, 8)).astype(np.float32)
    attrs = dict(mode="nearest", nearest_mode=nearest_mode, coordinate_transformation_mode="asymmetric")
    got, want = run_both("Resize", [("x", x), ("roi", None), ("scales", None), ("sizes", sizes)], attrs, 19)
    assert_close(got, want, exact=True)


@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("cubic_coeff_a", [-0.5, -0.75])
def test_resize_cubic_options(exclude_outside, cubic_coeff_a):
    x = RNG.standard_normal((1, 1, 6, 7)).astype(np.float32)
    attrs = dict(mode="cubic", exclude_outside=exclude_outside, cubic_coeff_a=cubic_coeff_a)
    got, want = run_both("Resize", [("x", x), ("roi", None), ("scales", None), ("sizes", _i64(1, 1, 11, 4))],
                         attrs, 19)
    assert_close(got, want)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize(mode):
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    roi = _f32(0, 0, -0.2, 0.3, 1, 1, 0.8, 1.4)
    attrs = dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-7.0)
    got, want = run_both("Resize", [("x", x), ("roi", roi), ("scales", None), ("sizes", _i64(1, 2, 5, 7))], attrs, 19)
    assert (got == -7.0).any()
    assert_close(got, want, exact=mode == "nearest")


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("sizes", [_i64(1, 1, 5, 3), _i64(1, 1, 9, 20)])
def test_resize_antialias(mode, sizes):
    x = RNG.standard_normal((1, 1, 16, 12)).astype(np.float32)
    got, want = run_both("Resize", [("x", x), ("roi", None), ("scales", None), ("sizes", sizes)],
                         dict(mode=mode, antialias=1), 19)
    assert_close(got, want)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
@pytest.mark.parametrize("axes, sizes", [([2, 3], _i64(4, 7)), ([3, 2], _i64(7, 4))])
def test_resize_axes_and_keep_aspect_ratio(policy, axes, sizes):
    x = RNG.standard_normal((2, 3, 6, 9)).astype(np.float32)
    attrs = dict(mode="linear", axes=axes, keep_aspect_ratio_policy=policy)
    got, want = run_both("Resize", [("x", x), ("roi", None), ("scales", None), ("sizes", sizes)], attrs, 19)
    assert_close(got, want)


def test_resize_negative_axes_count_from_the_back():
    # onnxruntime 1.32 mishandles negative axes and the reference rejects them, so the check is that
    # axes [-1, -2] mean [3, 2].
    x = RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)
    results = []
    for axes in ([-1, -2], [3, 2]):
        model = _model("Resize", [("x", x), ("roi", None), ("scales", _f32(0.5, 1.6))], dict(mode="linear", axes=axes),
                       19, 4)
        results.append(qrt.InferenceSession(model).run(None, {"x": x, "scales": _f32(0.5, 1.6)})[0])
    assert results[0].shape == (1, 2, 8, 3)
    np.testing.assert_array_equal(results[0], results[1])


def test_resize_5d_trilinear():
    x = RNG.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    got, want = run_both("Resize", [("x", x), ("roi", None), ("scales", _f32(1, 1, 2, 1.5, 0.6))],
                         dict(mode="linear"), 19)
    assert_close(got, want)


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_opset11_and_13(opset):
    x = RNG.standard_normal((1, 2, 4, 5)).astype(np.float32)
    # Opset 11 spells "no scales" as an empty tensor, opset 13 as an omitted input.
    no_scales = np.array([], dtype=np.float32) if opset == 11 else None
    inputs = [("x", x), ("roi", _f32()), ("scales", no_scales), ("sizes", _i64(1, 2, 7, 9))]
    got, want = run_both("Resize", inputs, dict(mode="cubic", coordinate_transformation_mode="pytorch_half_pixel"),
                         opset)
    assert_close(got, want)


def test_resize_tf_half_pixel_for_nn():
    x = RNG.standard_normal((1, 1, 5, 6)).astype(np.float32)
    got, want = run_both("Resize", [("x", x), ("roi", _f32()), ("scales", _f32(1, 1, 1.6, 0.5))],
                         dict(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn"), 11)
    assert_close(got, want, exact=True)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [_f32(1, 1, 2.5, 3), _f32(1, 1, 0.6, 0.45)])
def test_resize_opset10(mode, scales):
    x = RNG.standard_normal((1, 2, 6, 7)).astype(np.float32)
    got, want = run_both("Resize", [("x", x), ("scales", scales)], dict(mode=mode), 10)
    assert_close(got, want, exact=mode == "nearest")


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample(mode):
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    got, want = run_both("Upsample", [("x", x), ("scales", _f32(1, 1, 2.5, 3))], dict(mode=mode), 9)
    assert_close(got, want, exact=mode == "nearest")
    got7, want7 = run_both("Upsample", [("x", x)], dict(mode=mode, scales=[1.0, 1.0, 2.5, 3.0]), 7)
    assert_close(got7, want)
    assert_close(want7, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
def test_resize_integers_nearest_exact(dtype):
    x = RNG.integers(-100, 100, size=(1, 2, 5, 6)).astype(dtype) if dtype != np.uint8 else \
        RNG.integers(0, 256, size=(1, 2, 5, 6)).astype(dtype)
    got, want = run_both("Resize", [("x", x), ("roi", None), ("scales", _f32(1, 1, 1.7, 0.6))], {}, 19)
    assert_close(got, want, exact=True)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_resize_integers_linear_round_like_the_reference(dtype):
    # Interpolated integers round half to even and saturate, as onnx's reference does; onnxruntime
    # truncates toward zero instead (up to 1 lower).
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max + 1, size=(1, 1, 5, 6)).astype(dtype)
    model = _model("Resize", [("x", x), ("roi", None), ("scales", _f32(1, 1, 1.7, 0.6))], dict(mode="cubic"), 19, 4)
    feeds = {"x": x, "scales": _f32(1, 1, 1.7, 0.6)}
    got = qrt.InferenceSession(model).run(None, feeds)[0]
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_resize_needs_exactly_one_of_scales_and_sizes():
    x = RNG.standard_normal((1, 1, 4, 4)).astype(np.float32)
    model = _model("Resize", [("x", x), ("roi", None), ("scales", _f32(1, 1, 2, 2)), ("sizes", _i64(1, 1, 8, 8))],
                   {}, 19, 4)
    with pytest.raises(InvalidArgument, match="exactly one of scales and sizes"):
        qrt.InferenceSession(model).run(None, {"x": x, "scales": _f32(1, 1, 2, 2), "sizes": _i64(1, 1, 8, 8)})


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    x = RNG.standard_normal((2, 18, 3, 4)).astype(np.float32)
    got, want = run_both("DepthToSpace", [("x", x)], dict(blocksize=3, mode=mode), 13)
    assert_close(got, want, exact=True)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_inverts_depth_to_space(mode):
    x = RNG.standard_normal((1, 3, 4, 6)).astype(np.float32)
    got, want = run_both("SpaceToDepth", [("x", x)], dict(blocksize=2), 13)
    assert_close(got, want, exact=True)
    packed = qrt.InferenceSession(_model("SpaceToDepth", [("x", x)], dict(blocksize=2, mode=mode), 28, 4)).run(
        None, {"x": x})[0]
    unpacked = qrt.InferenceSession(_model("DepthToSpace", [("x", packed)], dict(blocksize=2, mode=mode), 13, 4)).run(
        None, {"x": packed})[0]
    np.testing.assert_array_equal(unpacked, x)
