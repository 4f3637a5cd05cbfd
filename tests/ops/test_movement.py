"""Shape, data-movement and cast ops against onnxruntime on cases the onnx node tests miss.

Opset variants (attribute vs input signatures), negative axes, clamping, duplicate scatter indices
with every reduction, uneven splits, every Pad mode, real-model shapes and non-float dtypes.
Tolerance: these ops move values or compute them exactly, so every comparison is exact (dtype,
shape and values), except Range on floats, whose elements onnxruntime and qrt may round through
different intermediate precisions (rtol 1e-6, i.e. a few float32 ulps).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import qrt
from qrt.errors import QrtError

RNG = np.random.default_rng(7)


def _tensor_type(dtype):
    return TensorProto.STRING if np.dtype(dtype) == object else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def one_node(op_type, inputs, attrs=None, opset=17, n_out=1, out_dtypes=None):
    """A one-node model; ``inputs`` is [(name, array or None)], arrays are fed as graph inputs."""
    names = [name if value is not None else "" for name, value in inputs]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, name=f"the_{op_type.lower()}", **(attrs or {}))
    graph_inputs = [helper.make_tensor_value_info(n, _tensor_type(v.dtype), list(v.shape))
                    for n, v in inputs if v is not None]
    dtypes = out_dtypes or [inputs[0][1].dtype] * n_out
    graph_outputs = [helper.make_tensor_value_info(o, _tensor_type(t), None) for o, t in zip(outs, dtypes)]
    graph = helper.make_graph([node], "g", graph_inputs, graph_outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def check(op_type, inputs, attrs=None, opset=17, n_out=1, out_dtypes=None, rtol=0.0, atol=0.0):
    """Run the one-node model through qrt and onnxruntime; assert equal dtype, shape and values."""
    model = one_node(op_type, inputs, attrs, opset, n_out, out_dtypes)
    feeds = {n: v for n, v in inputs if v is not None}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = qrt.InferenceSession(with_output_ranks(model, want)).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if w.dtype.kind in "US":
            w = w.astype(object)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        assert g.shape == w.shape, (g.shape, w.shape)
        if rtol and w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, w)
    return got


def with_output_ranks(model, outputs):
    """``model`` with graph outputs typed by rank (symbolic dims), which onnx's checker requires."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for info, value in zip(model.graph.output, outputs):
        shape = info.type.tensor_type.shape
        shape.Clear()
        for d in range(np.ndim(value)):
            shape.dim.add().dim_param = f"{info.name}_{d}"
    return model


def qrt_run(op_type, inputs, attrs=None, opset=17, n_out=1, out_dtypes=None, out_rank=1):
    model = one_node(op_type, inputs, attrs, opset, n_out, out_dtypes)
    ranks = [np.zeros((0,) * out_rank) for _ in range(n_out)]
    return qrt.InferenceSession(with_output_ranks(model, ranks)).run(None, {n: v for n, v in inputs if v is not None})


def i64(*values):
    return np.array(values, dtype=np.int64)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# --- shape ops --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start,end", [(None, None), (1, None), (-2, None), (0, -1), (-10, 10), (3, 1)])
def test_shape_start_end(start, end):
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    check("Shape", [("x", f32(2, 3, 4, 5))], attrs, opset=15, out_dtypes=[np.int64])


def test_size_and_shape_of_scalar():
    check("Size", [("x", f32(2, 0, 3))], out_dtypes=[np.int64])
    check("Shape", [("x", np.array(1.5, np.float32))], out_dtypes=[np.int64])


@pytest.mark.parametrize("opset", [5, 13, 14])
@pytest.mark.parametrize("shape", [(0, -1), (-1,), (2, 0, 2, 2), (6, -1, 2)])
def test_reshape(opset, shape):
    check("Reshape", [("x", f32(2, 3, 4)), ("shape", i64(*shape))], opset=opset)


def test_reshape_allowzero_keeps_zero_dims():
    check("Reshape", [("x", np.zeros((0, 3), np.float32)), ("shape", i64(3, 0))], {"allowzero": 1}, opset=14)


def test_reshape_bad_shape_names_the_node():
    with pytest.raises(QrtError, match="the_reshape"):
        qrt_run("Reshape", [("x", f32(2, 3)), ("shape", i64(4, -1))])
    with pytest.raises(QrtError, match="more than one -1"):
        qrt_run("Reshape", [("x", f32(2, 3)), ("shape", i64(-1, -1))])


@pytest.mark.parametrize("axis", [0, 2, -1, 4])
def test_flatten_int8(axis):
    check("Flatten", [("x", RNG.integers(-128, 128, (2, 3, 4, 5), dtype=np.int8))], {"axis": axis}, opset=13)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_attribute_and_input_forms(opset):
    x = f32(1, 3, 1, 4)
    if opset < 13:
        check("Squeeze", [("x", x)], {"axes": [-2, 0]}, opset=opset)
        check("Unsqueeze", [("x", f32(3, 4))], {"axes": [-1, 0, 3]}, opset=opset)
    else:
        check("Squeeze", [("x", x), ("axes", i64(-2, 0))], opset=opset)
        check("Unsqueeze", [("x", f32(3, 4)), ("axes", i64(-1, 0, 3))], opset=opset)
    check("Squeeze", [("x", x)], opset=opset)   # no axes: every size-1 axis goes


def test_squeeze_non_unit_axis_fails():
    with pytest.raises(QrtError, match="size is not 1"):
        qrt_run("Squeeze", [("x", f32(1, 3)), ("axes", i64(1))], opset=13)


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [0, 3, 1, 2]])
def test_transpose_nchw_nhwc(perm):
    attrs = {} if perm is None else {"perm": perm}
    (y,) = check("Transpose", [("x", f32(1, 8, 7, 5))], attrs)
    assert y.flags.c_contiguous


def test_transpose_int64():
    check("Transpose", [("x", RNG.integers(-9, 9, (2, 3, 4)))], {"perm": [1, 2, 0]})


# --- concat / split / slice -------------------------------------------------------------------------------


def test_concat_int8_with_an_empty_input():
    a = RNG.integers(-5, 5, (2, 3, 4), dtype=np.int8)
    check("Concat", [("a", a), ("b", np.zeros((2, 0, 4), np.int8)), ("c", a[:, :2])], {"axis": -2})


def test_concat_mismatch_fails():
    with pytest.raises(QrtError, match="does not match"):
        qrt_run("Concat", [("a", f32(2, 3)), ("b", f32(3, 3))], {"axis": 1})


@pytest.mark.parametrize("opset,attrs,split,n_out,dim", [
    (11, {"axis": 1, "split": [1, 3, 2]}, None, 3, 6),
    (11, {"axis": -2}, None, 2, 6),
    (13, {"axis": 1}, i64(2, 0, 4), 3, 6),
    (13, {}, None, 2, 6),
    (18, {"axis": 1, "num_outputs": 4}, None, 4, 7),     # ceil(7/4) = 2: chunks 2, 2, 2, 1
    (18, {"axis": 1}, i64(5, 2), 2, 7),
])
def test_split_forms(opset, attrs, split, n_out, dim):
    x = f32(4, dim, 3)
    inputs = [("x", x)] + ([("split", split)] if split is not None else [])
    check("Split", inputs, attrs, opset=opset, n_out=n_out)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([0, 1], [2, 3], None, None),
    ([-1], [-2 ** 63], [1], [-1]),
    ([2 ** 63 - 1], [0], [-1], [-2]),
    ([1, -100], [100, 3], [2, 0], [2, 1]),
    ([5], [1], [0], [1]),             # empty result
    ([-3, 0], [-2 ** 63, -1], [0, 2], [-1, 3]),
])
def test_slice_inputs(starts, ends, axes, steps):
    inputs = [("x", f32(4, 5, 6)), ("starts", i64(*starts)), ("ends", i64(*ends))]
    inputs.append(("axes", i64(*axes)) if axes is not None else ("axes", None))
    inputs.append(("steps", i64(*steps)) if steps is not None else ("steps", None))
    while inputs[-1][1] is None:
        inputs.pop()
    check("Slice", inputs, opset=13)


def test_slice_opset1_attributes():
    check("Slice", [("x", f32(4, 5, 6))], {"starts": [1, -4], "ends": [1000, -1], "axes": [0, 2]}, opset=9)


# --- gather / scatter -------------------------------------------------------------------------------------


@pytest.mark.parametrize("indices", [np.array([[0, -1], [2, -3]], np.int64), np.array(1, np.int32),
                                     np.array([], np.int64)])
def test_gather_axis1(indices):
    check("Gather", [("x", f32(2, 3, 4)), ("i", indices)], {"axis": 1})


def test_gather_embedding_lookup():
    table = f32(50, 16)
    check("Gather", [("table", table), ("ids", RNG.integers(0, 50, (2, 7)))])


def test_gather_out_of_range_fails():
    with pytest.raises(QrtError, match="out of range"):
        qrt_run("Gather", [("x", f32(3, 2)), ("i", i64(3))])


def test_gather_elements_smaller_indices():
    idx = RNG.integers(-4, 4, (2, 2, 3))
    check("GatherElements", [("x", f32(3, 4, 5)), ("i", idx)], {"axis": -2})


@pytest.mark.parametrize("batch_dims,data_shape,idx", [
    (0, (3, 4, 2), np.array([[1], [-1]], np.int64)),
    (0, (3, 4, 2), np.array([[[0, 1], [2, 3]]], np.int64)),
    (1, (2, 3, 4), np.array([[[1, 2]], [[0, -1]]], np.int64)),
    (2, (2, 3, 4, 5), RNG.integers(0, 4, (2, 3, 6, 1))),
])
def test_gather_nd(batch_dims, data_shape, idx):
    check("GatherND", [("x", f32(*data_shape)), ("i", idx)], {"batch_dims": batch_dims}, opset=13)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_scatter_elements_duplicates(reduction, dtype):
    data = RNG.integers(-5, 6, (3, 5)).astype(dtype)
    idx = np.array([[1, 1, 4], [0, 0, 0]], np.int64)     # duplicates within a row
    updates = RNG.integers(-5, 6, idx.shape).astype(dtype)
    if reduction == "none":
        idx = np.array([[1, 3, 4], [0, 2, -1]], np.int64)   # the spec leaves duplicate writes unordered
    check("ScatterElements", [("x", data), ("i", idx), ("u", updates)], {"axis": 1, "reduction": reduction},
          opset=18)


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_scatter_nd_duplicate_slices(reduction):
    data = f32(4, 3, 2)
    idx = np.array([[1], [3], [1], [-4]], np.int64)
    updates = f32(4, 3, 2)
    check("ScatterND", [("x", data), ("i", idx), ("u", updates)], {"reduction": reduction}, opset=18)


def test_scatter_nd_elements_int32():
    data = RNG.integers(0, 9, (3, 4)).astype(np.int32)
    idx = np.array([[0, 1], [2, -1]], np.int64)
    check("ScatterND", [("x", data), ("i", idx), ("u", np.array([7, 8], np.int32))], opset=13)


def test_scatter_reduction_not_at_opset_11_is_rejected():
    with pytest.raises(QrtError):
        qrt_run("ScatterElements", [("x", f32(3)), ("i", i64(0)), ("u", f32(1))], {"reduction": "add"}, opset=13)


# --- tile / expand / pad ----------------------------------------------------------------------------------


def test_tile_and_expand():
    check("Tile", [("x", RNG.integers(0, 9, (2, 1, 3)).astype(np.uint8)), ("r", i64(2, 3, 1))])
    check("Expand", [("x", f32(3, 1)), ("s", i64(2, 1, 4))])
    check("Expand", [("x", f32(2, 1, 4)), ("s", i64(3, 1))])     # shape of lower rank
    (y,) = check("Expand", [("x", f32(1, 4)), ("s", i64(1, 1))])
    assert y.flags.c_contiguous


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [[0, 1, 2, 0, 2, 1], [1, -1, 0, 0, 2, -2]])
def test_pad_opset11(mode, pads):
    x = RNG.integers(-9, 9, (2, 4, 5)).astype(np.int32)
    check("Pad", [("x", x), ("p", i64(*pads)), ("v", np.array(7, np.int32))], {"mode": mode}, opset=11)


def test_pad_opset18_axes_and_opset19_wrap():
    x = f32(1, 3, 4, 4)
    check("Pad", [("x", x), ("p", i64(1, 2, 0, 1)), ("v", None), ("axes", i64(-1, 2))], {"mode": "reflect"},
          opset=18)
    check("Pad", [("x", x), ("p", i64(0, 0, 2, 1, 0, 0, 1, 3))], {"mode": "wrap"}, opset=19)


def test_pad_opset2_attributes():
    check("Pad", [("x", f32(3, 4))], {"pads": [1, 0, 0, 2], "mode": "constant", "value": 1.5}, opset=10)


# --- generators -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start,limit,delta", [
    (np.int32(10), np.int32(-3), np.int32(-4)),
    (np.int64(0), np.int64(0), np.int64(1)),
    (np.float32(0.5), np.float32(7.25), np.float32(0.3)),
    (np.float64(-1.0), np.float64(1.0), np.float64(0.1)),
    (np.int16(5), np.int16(20), np.int16(3)),
])
def test_range(start, limit, delta):
    check("Range", [("s", np.array(start)), ("l", np.array(limit)), ("d", np.array(delta))], opset=11, rtol=1e-6,
          atol=1e-12)


def test_constant_of_shape_int64_and_scalar():
    value = helper.make_tensor("v", TensorProto.INT64, [1], [-3])
    check("ConstantOfShape", [("s", i64(2, 0, 3))], {"value": value}, opset=9, out_dtypes=[np.int64])
    check("ConstantOfShape", [("s", np.zeros(0, np.int64))], {"value": value}, opset=9, out_dtypes=[np.int64])


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 2, 9])
def test_trilu_batched(upper, k):
    x = RNG.integers(1, 9, (2, 3, 4, 5)).astype(np.int32)
    inputs = [("x", x)] + ([("k", i64(k)[0:1].reshape(()))] if k is not None else [])
    check("Trilu", inputs, {"upper": upper}, opset=14)


def test_compress_short_condition_and_flatten():
    x = f32(3, 4)
    check("Compress", [("x", x), ("c", np.array([True, False, True]))], {"axis": -1}, opset=11)
    check("Compress", [("x", x), ("c", np.array([False, True, True, False, True]))], opset=11)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_one_hot(axis, index_dtype):
    # onnxruntime implements (indices, depth, values) = (int32|int64, float, float) among a few combinations.
    idx = np.array([[0, -1, 5], [2, -7, 1]], index_dtype)
    check("OneHot", [("i", idx), ("d", np.array(4.0, np.float32)), ("v", np.array([-2, 9], np.float32))],
          {"axis": axis}, opset=11, out_dtypes=[np.float32])


def test_eye_like():
    check("EyeLike", [("x", f32(3, 5))], {"k": -1})
    check("EyeLike", [("x", f32(4, 2))], {"k": 1, "dtype": TensorProto.INT32}, out_dtypes=[np.int32])


# --- cast -------------------------------------------------------------------------------------------------

_NUMBERS = np.array([0.0, -0.0, 1.0, -2.5, 3.14159265, 1e20, -1e-7, 65504.0, 127.9, -128.9, np.nan, np.inf, -np.inf],
                    np.float32)


@pytest.mark.parametrize("to,dtype", [
    (TensorProto.FLOAT16, np.float16), (TensorProto.DOUBLE, np.float64), (TensorProto.BOOL, np.bool_),
    (TensorProto.STRING, object),
])
def test_cast_float_specials(to, dtype):
    check("Cast", [("x", _NUMBERS)], {"to": to}, opset=13, out_dtypes=[dtype])


@pytest.mark.parametrize("src,to,dtype", [
    (np.array([0, 1, -128, 127, 300, -300], np.int32), TensorProto.INT8, np.int8),
    (np.array([0, 1, 255, 256, -1], np.int64), TensorProto.UINT8, np.uint8),
    (np.array([0, 3, -7], np.int64), TensorProto.BOOL, np.bool_),
    (np.array([True, False]), TensorProto.FLOAT, np.float32),
    (np.array([2 ** 40, -5], np.int64), TensorProto.STRING, object),
    (np.array([-2.75, 0.5, 100.9], np.float32), TensorProto.INT32, np.int32),
])
def test_cast_integer_and_bool(src, to, dtype):
    check("Cast", [("x", src)], {"to": to}, opset=13, out_dtypes=[dtype])


@pytest.mark.parametrize("to,dtype", [(TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64),
                                      (TensorProto.INT64, np.int64), (TensorProto.UINT8, np.uint8)])
def test_cast_from_string(to, dtype):
    text = ["1.5", "-INF", "inf", "NaN", "+INF", "1e-5", " 2", "1E8"] if dtype in (np.float32, np.float64) \
        else ["15", "-3", "+7", "0", "200"]
    if dtype == np.uint8:
        text = ["15", "0", "255", "+7"]
    check("Cast", [("x", np.array(text, dtype=object))], {"to": to}, opset=13, out_dtypes=[dtype])


def test_cast_to_bfloat16_and_float8_matches_onnxruntime():
    pytest.importorskip("ml_dtypes")
    x = np.concatenate([_NUMBERS, f32(20) * 300]).astype(np.float32)
    for to, saturate in [(TensorProto.BFLOAT16, None), (TensorProto.FLOAT8E4M3FN, 1), (TensorProto.FLOAT8E4M3FN, 0),
                         (TensorProto.FLOAT8E4M3FNUZ, 1), (TensorProto.FLOAT8E5M2, 1), (TensorProto.FLOAT8E5M2, 0)]:
        # Round trip through the narrow type: onnxruntime's Python API cannot return these types.
        attrs = {"to": to} if saturate is None else {"to": to, "saturate": saturate}
        nodes = [helper.make_node("Cast", ["x"], ["narrow"], **attrs),
                 helper.make_node("Cast", ["narrow"], ["y"], to=TensorProto.FLOAT)]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        if to == TensorProto.FLOAT8E5M2 and saturate == 0:
            # onnxruntime turns values that round up past E5M2's max (61440 <= |x| < 65536) into NaN;
            # the spec (and onnx's reference) make them Inf, as qrt does: checked against the reference.
            want = ReferenceEvaluator(model).run(None, {"x": x})
        else:
            want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, {"x": x})
        got = qrt.InferenceSession(model).run(None, {"x": x})
        np.testing.assert_array_equal(got[0], want[0], err_msg=str(attrs))


def test_cast_like():
    check("CastLike", [("x", np.array([1.7, -2.2], np.float32)), ("t", np.zeros(1, np.int64))], opset=15,
          out_dtypes=[np.int64])


def test_cast_unknown_type_is_invalid_model():
    with pytest.raises(QrtError, match="to"):
        qrt.InferenceSession(_bad_cast_model())


def _bad_cast_model():
    node = helper.make_node("Cast", ["x"], ["y"], to=999)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString()


def test_scatter_elements_float16_reduction_against_reference():
    # onnxruntime has no float16 scatter reductions; onnx's reference evaluator is the oracle here.
    data = np.array([1.0, 2.0, 3.0, 4.0], np.float16)
    idx, updates = i64(0, 0, 3), np.array([2.0, 3.0, 4.5], np.float16)
    model = one_node("ScatterElements", [("x", data), ("i", idx), ("u", updates)], {"reduction": "add"}, opset=18)
    feeds = {"x": data, "i": idx, "u": updates}
    (want,) = ReferenceEvaluator(model).run(None, feeds)
    (got,) = qrt.InferenceSession(with_output_ranks(model, [data])).run(None, feeds)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)


def test_cast_to_ml_dtypes_type_without_ml_dtypes_is_a_clear_error(monkeypatch):
    import qrt.ops.cast as cast_module
    monkeypatch.setattr(cast_module, "ml_dtypes", None)
    with pytest.raises(QrtError, match="ml_dtypes"):
        cast_module.target_dtype(TensorProto.FLOAT8E4M3FN)
    assert cast_module.target_dtype(TensorProto.FLOAT16) == np.float16
