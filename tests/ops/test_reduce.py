"""Reduce*, ArgMax/ArgMin, CumSum, TopK and NonZero against onnxruntime, beyond onnx's node tests.

Cases the node tests miss: axes that are not adjacent (the transposing path), every dtype the spec
allows, empty reductions, noop_with_empty_axes for the element-map reductions, the threaded kernels
(inputs above PARALLEL_MIN_ELEMENTS), TopK ties and k at its bounds, and error reporting.

Tolerance: float32 results at rtol 1e-5, atol 1e-6 (sums of at most a few thousand terms, whose
order differs from onnxruntime's: a few float32 ulps); integers and indices exactly.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.ops.reduce import PARALLEL_MIN_ELEMENTS

RTOL, ATOL = 1e-5, 1e-6
rng = np.random.default_rng(1234)


def _model(op, feeds, constants=(), outputs=1, out_types=None, opset=18, out_shapes=None, **attrs):
    """One-node model: ``feeds`` (name, array) are graph inputs, ``constants`` initializers; outputs
    have unknown shapes unless ``out_shapes`` lists them (onnxruntime needs none, qrt's checker does)."""
    names = [n for n, _ in feeds] + [n for n, _ in constants]
    node = helper.make_node(op, names, [f"out{i}" for i in range(outputs)], **attrs)
    inputs = [helper.make_tensor_value_info(n, numpy_helper.helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
              for n, a in feeds]
    first = numpy_helper.helper.np_dtype_to_tensor_dtype(feeds[0][1].dtype)
    out_types = out_types or [first] * outputs
    outs = [helper.make_tensor_value_info(f"out{i}", t, None if out_shapes is None else list(out_shapes[i]))
            for i, t in enumerate(out_types)]
    graph = helper.make_graph([node], "g", inputs, outs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in constants])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _both(model, feeds):
    """(qrt's outputs, onnxruntime's outputs); qrt's model declares the shapes onnxruntime produced."""
    feeds = dict(feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    for output, value in zip(shaped.graph.output, want):
        output.CopyFrom(helper.make_tensor_value_info(output.name, output.type.tensor_type.elem_type, value.shape))
    got = qrt.InferenceSession(shaped.SerializeToString()).run(None, feeds)
    return got, want


def _qrt(model, feeds):
    return qrt.InferenceSession(model.SerializeToString()).run(None, dict(feeds))


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_array_equal(g, w)


def _reduce(op, x, axes, opset=18, **attrs):
    if axes is None:
        return _model(op, [("x", x)], opset=opset, **attrs)
    if (op == "ReduceSum" and opset >= 13) or opset >= 18:
        return _model(op, [("x", x)], [("axes", np.array(axes, np.int64))], opset=opset, **attrs)
    return _model(op, [("x", x)], opset=opset, axes=list(axes), **attrs)


REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
AXES = [(1,), (0, 2), (1, 3), (-1,), (0, 1, 2, 3), (2, 3), (0, 3)]


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_float32_axes_patterns(op):
    # (0, 2), (1, 3) and (0, 3) are not adjacent: the kernel reads a transposed copy.
    x = rng.uniform(0.5, 1.5, (3, 4, 5, 6)).astype(np.float32)
    for axes in AXES:
        for keepdims in (0, 1):
            _assert_same(*_both(_reduce(op, x, axes, keepdims=keepdims), {"x": x}))
    _assert_same(*_both(_reduce(op, x, None), {"x": x}))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceLogSumExp"])
def test_reduce_axes_attribute_versions(op):
    # Before opset 18 (13 for ReduceSum) axes is an attribute; negative axes from opset 11.
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    for axes in [(0,), (-1, 0), (1, 2)]:
        _assert_same(*_both(_reduce(op, x, axes, opset=11, keepdims=0), {"x": x}))


@pytest.mark.parametrize("dtype,ops", [
    (np.int32, ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceSumSquare"]),
    (np.int64, ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"]),
    (np.int8, ["ReduceMax", "ReduceMin"]),
    (np.uint8, ["ReduceMax", "ReduceMin"]),
    (np.float64, ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceLogSumExp"]),
])
def test_reduce_dtypes(dtype, ops):
    if np.dtype(dtype).kind == "f":
        x = rng.standard_normal((3, 5, 4)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -9), min(info.max, 9), (3, 5, 4)).astype(dtype)
    for op in ops:
        for axes in [(1,), (0, 2), (2,)]:
            _assert_same(*_both(_reduce(op, x, axes), {"x": x}))


def test_reduce_integer_results_truncate_like_onnxruntime():
    # (ReduceLogSumExp on integers, which opset 28 removed, is left out: onnxruntime rounds each
    # exp term to an integer, qrt computes in float64 and truncates the result.)
    x = np.array([[1, 2], [-3, -4], [3, 4]], np.int32)
    for op in ["ReduceMean", "ReduceL2"]:
        _assert_same(*_both(_reduce(op, x, (1,)), {"x": x}))


@pytest.mark.parametrize("op,expected", [
    ("ReduceSum", 0.0), ("ReduceProd", 1.0), ("ReduceMax", -np.inf), ("ReduceMin", np.inf), ("ReduceL1", 0.0),
    ("ReduceL2", 0.0), ("ReduceSumSquare", 0.0), ("ReduceLogSumExp", -np.inf), ("ReduceLogSum", -np.inf),
])
def test_reduce_empty_set(op, expected):
    x = np.zeros((2, 0, 3), np.float32)
    got = _qrt(_reduce(op, x, (1,), out_shapes=[(2, 1, 3)]), {"x": x})[0]
    assert got.shape == (2, 1, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((2, 1, 3), expected, np.float32))


def test_reduce_empty_set_integer_extremes_and_empty_output():
    x = np.zeros((2, 0), np.int32)
    assert _qrt(_reduce("ReduceMin", x, (1,), out_shapes=[(2, 1)]), {"x": x})[0].tolist() == \
        [[np.iinfo(np.int32).max]] * 2
    assert _qrt(_reduce("ReduceMax", x, (1,), out_shapes=[(2, 1)]), {"x": x})[0].tolist() == \
        [[np.iinfo(np.int32).min]] * 2
    # A kept axis of size 0: the output is empty, nothing is reduced.
    y = np.zeros((0, 4), np.float32)
    _assert_same(*_both(_reduce("ReduceSum", y, (1,), keepdims=0), {"x": y}))
    # Two reduced runs (two stages), one of them empty.
    z = np.zeros((2, 0, 3, 4), np.float32)
    got = _qrt(_reduce("ReduceMax", z, (1, 3), keepdims=0, out_shapes=[(2, 3)]), {"x": z})[0]
    np.testing.assert_array_equal(got, np.full((2, 3), -np.inf, np.float32))


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceMean",
                                "ReduceMax"])
def test_noop_with_empty_axes_is_the_elementwise_reduction(op):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    model = _model(op, [("x", x)], [("axes", np.zeros(0, np.int64))], noop_with_empty_axes=1)
    _assert_same(*_both(model, {"x": x}))
    # Without noop, empty axes reduce everything.
    model = _model(op, [("x", x)], [("axes", np.zeros(0, np.int64))], keepdims=0)
    _assert_same(*_both(model, {"x": x}))


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceSumSquare"])
def test_reduce_threaded_kernels(op):
    # Above PARALLEL_MIN_ELEMENTS: rows across threads (last axis), column blocks (first axis, few rows).
    # Rows of 2100 are scanned 128 lanes at a time and leave a tail.
    x = rng.standard_normal((PARALLEL_MIN_ELEMENTS // 2048, 2100)).astype(np.float32)
    assert x.size >= PARALLEL_MIN_ELEMENTS
    for axes in [(1,), (0,)]:
        _assert_same(*_both(_reduce(op, x, axes), {"x": x}))
    few_rows = rng.standard_normal((1, 8, PARALLEL_MIN_ELEMENTS // 4)).astype(np.float32)
    _assert_same(*_both(_reduce(op, few_rows, (1,)), {"x": few_rows}))


def test_reduce_bool_max_min():
    x = np.array([[True, False, False], [False, False, False]])
    for op, want in [("ReduceMax", [True, False]), ("ReduceMin", [False, False])]:
        got = _qrt(_reduce(op, x, (1,), opset=20, keepdims=0, out_shapes=[(2,)]), {"x": x})
        assert got[0].dtype == np.bool_ and got[0].tolist() == want


def test_reduce_float16_computes_in_float32():
    x = rng.standard_normal((4, 50)).astype(np.float16)
    got = _qrt(_reduce("ReduceSum", x, (1,), out_shapes=[(4, 1)]), {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, x.astype(np.float32).sum(1, keepdims=True).astype(np.float16), rtol=1e-3)


def test_reduce_bad_axes_name_the_node():
    x = np.zeros((2, 3), np.float32)
    for axes in [(2,), (0, -2)]:
        session = qrt.InferenceSession(_reduce("ReduceSum", x, axes, out_shapes=[(1, 1)]).SerializeToString())
        with pytest.raises(qrt.QrtError, match="ReduceSum"):
            session.run(None, {"x": x})


# ------------------------------------------------------------------ ArgMax / ArgMin

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.int64])
def test_arg_extreme_ties_and_axes(op, dtype):
    # Few distinct values: many ties, which select_last_index resolves.
    x = rng.integers(-2, 3, (3, 4, 5)).astype(dtype)
    for axis in (0, 1, -1):
        for keepdims in (0, 1):
            for select_last_index in (0, 1):
                model = _model(op, [("x", x)], opset=13, out_types=[TensorProto.INT64], axis=axis,
                               keepdims=keepdims, select_last_index=select_last_index)
                _assert_same(*_both(model, {"x": x}))


def test_arg_extreme_empty_axis_is_an_error():
    x = np.zeros((2, 0), np.float32)
    session = qrt.InferenceSession(_model("ArgMax", [("x", x)], opset=13, out_types=[TensorProto.INT64],
                                          out_shapes=[(2, 1)], axis=1).SerializeToString())
    with pytest.raises(qrt.QrtError, match="ArgMax"):
        session.run(None, {"x": x})


# ------------------------------------------------------------------ CumSum

@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float64])
def test_cumsum_flags_and_axes(dtype):
    x = rng.integers(-5, 6, (3, 4, 5)).astype(dtype)
    for axis in (0, 1, -1):
        for exclusive in (0, 1):
            for reverse in (0, 1):
                model = _model("CumSum", [("x", x)], [("axis", np.array(axis, np.int32))], opset=14,
                               exclusive=exclusive, reverse=reverse)
                _assert_same(*_both(model, {"x": x}))


# ------------------------------------------------------------------ TopK

def _top_k(x, k, opset=11, out_shapes=None, **attrs):
    return _model("TopK", [("x", x)], [("k", np.array([k], np.int64))], outputs=2, opset=opset, out_shapes=out_shapes,
                  out_types=[numpy_helper.helper.np_dtype_to_tensor_dtype(x.dtype), TensorProto.INT64], **attrs)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8])
def test_top_k_ties_break_on_lower_index(dtype):
    x = rng.integers(0, 4, (3, 12, 4)).astype(dtype)
    for axis in (1, -1, 0):
        n = x.shape[axis]
        for k in (1, n // 2, n):
            for largest in (0, 1):
                _assert_same(*_both(_top_k(x, k, axis=axis, largest=largest), {"x": x}))


def test_top_k_k_zero_and_versions():
    x = rng.standard_normal((2, 7)).astype(np.float32)
    got, want = _both(_top_k(x, 0), {"x": x})
    _assert_same(got, want)
    _assert_same(*_both(_top_k(x, 3, opset=10), {"x": x}))          # K input, always largest
    model = _model("TopK", [("x", x)], outputs=2, opset=9, k=3,
                   out_types=[TensorProto.FLOAT, TensorProto.INT64])  # k attribute
    _assert_same(*_both(model, {"x": x}))


def test_top_k_too_large_k_names_the_node():
    x = np.zeros((2, 3), np.float32)
    session = qrt.InferenceSession(_top_k(x, 4, out_shapes=[(2, 4), (2, 4)]).SerializeToString())
    with pytest.raises(qrt.QrtError, match="TopK"):
        session.run(None, {"x": x})


# ------------------------------------------------------------------ NonZero

@pytest.mark.parametrize("x", [
    rng.integers(-1, 2, (3, 4, 5)).astype(np.float32),
    rng.integers(0, 2, (6, 7)).astype(bool),
    rng.integers(-2, 2, (9,)).astype(np.int64),
    np.zeros((2, 3), np.int32),
    np.array(3.0, np.float32),
], ids=["float32-3d", "bool-2d", "int64-1d", "all-zero", "scalar"])
def test_nonzero(x):
    _assert_same(*_both(_model("NonZero", [("x", x)], opset=13, out_types=[TensorProto.INT64]), {"x": x}))
