"""qrt.qmath against its oracles.

* ranges and scale/zero point: onnxruntime.quantization.quant_utils, bit-exact;
* quantize/dequantize: onnx.reference's QuantizeLinear/DequantizeLinear (opset 21), bit-exact.
"""
import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from qrt import qmath

QTYPES = [TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16,
          TensorProto.UINT4, TensorProto.INT4]
INT_DTYPES = [np.uint8, np.int8, np.uint16, np.int16]


def _random_ranges(n, seed):
    rng = np.random.default_rng(seed)
    magnitude = 10.0 ** rng.uniform(-6, 4, size=(2, n))
    rmin = np.concatenate([-np.abs(rng.standard_normal(n)) * magnitude[0],   # straddles zero
                           rng.uniform(-1, 1, n),                             # any sign
                           rng.uniform(0.5, 2.0, n),                          # positive only
                           [0.0, 0.0, 1.5, -2.0, 1e-40, -3e-39]])             # degenerate ones
    rmax = np.concatenate([np.abs(rng.standard_normal(n)) * magnitude[1],
                           rng.uniform(-1, 1, n),
                           rng.uniform(2.0, 4.0, n),
                           [0.0, 1e-39, 1.5, -2.0, 2e-40, 0.0]])
    return rmin.astype(np.float32), rmax.astype(np.float32)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_qrange_matches_onnxruntime(qtype, symmetric, reduce_range):
    expected = get_qmin_qmax_for_qType(qtype, reduce_range=reduce_range, symmetric=symmetric)
    assert qmath.qrange(qtype, reduce_range=reduce_range, symmetric=symmetric) == tuple(
        int(v) for v in expected)


def test_qtype_spellings_agree():
    assert qmath.qtype_key(np.uint8) == qmath.qtype_key("uint8") == qmath.qtype_key(TensorProto.UINT8)
    assert qmath.qtype_key(np.dtype(np.int8)) == qmath.qtype_key(TensorProto.INT8)
    assert qmath.qtype_key(ml_dtypes.int4) == qmath.qtype_key("int4") == "int4"
    assert qmath.qtype_dtype(TensorProto.UINT4) == np.dtype(ml_dtypes.uint4)
    from onnxruntime.quantization import QuantType
    assert qmath.qtype_key(QuantType.QInt8) == np.dtype(np.int8)
    assert qmath.QTYPE_RANGES[np.dtype(np.uint8)] == (0, 255)
    assert qmath.QTYPE_REDUCED_RANGES[np.dtype(np.uint8)] == (0, 127)
    with pytest.raises(ValueError, match="unsupported quantization type"):
        qmath.qtype_key(np.float32)
    with pytest.raises(ValueError, match="unsupported quantization type"):
        qmath.qtype_key(TensorProto.FLOAT)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_scale_zero_point_bit_exact_with_onnxruntime(qtype, symmetric, reduce_range):
    rmin, rmax = _random_ranges(400, seed=qtype)
    qmin, qmax = get_qmin_qmax_for_qType(qtype, reduce_range=reduce_range, symmetric=symmetric)
    scales, zero_points = qmath.compute_scale_zero_point(rmin, rmax, qtype, symmetric=symmetric,
                                                         reduce_range=reduce_range)
    assert scales.dtype == np.float32 and scales.shape == rmin.shape
    for i in range(rmin.size):
        ort_zp, ort_scale = compute_scale_zp(rmin[i], rmax[i], qmin, qmax, symmetric=symmetric)
        scale, zero_point = qmath.compute_scale_zero_point(rmin[i], rmax[i], qtype,
                                                           symmetric=symmetric,
                                                           reduce_range=reduce_range)
        context = (rmin[i], rmax[i], ort_scale, ort_zp, scale, zero_point)
        assert isinstance(scale, np.float32) and zero_point.shape == ()
        assert zero_point.dtype == ort_zp.dtype, context
        assert scale.tobytes() == ort_scale.tobytes(), context
        assert zero_point.tobytes() == ort_zp.tobytes(), context
        assert scales[i].tobytes() == ort_scale.tobytes(), context
        assert zero_points[i].tobytes() == ort_zp.tobytes(), context


def test_scale_zero_point_rejects_non_finite_ranges():
    with pytest.raises(ValueError, match="finite"):
        qmath.compute_scale_zero_point(np.float32(-1), np.float32(np.inf), np.uint8)
    with pytest.raises(ValueError, match="finite"):
        qmath.compute_scale_zero_point([np.nan, 0.0], [1.0, 1.0], np.int8)


def test_scale_zero_point_min_real_range():
    scale, zero_point = qmath.compute_scale_zero_point(0.0, 0.0, np.uint8, min_real_range=0.0001)
    ort_zp, ort_scale = compute_scale_zp(np.float32(0), np.float32(0), np.uint8(0), np.uint8(255),
                                         min_real_range=0.0001)
    assert scale.tobytes() == ort_scale.tobytes() and zero_point == ort_zp


# --------------------------------------------------------------- quantize / dequantize vs reference

def _reference(op, inputs, opset=21, **attrs):
    names = ["a", "b", "c"][:len(inputs)]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs)],
        [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))[0]


def _data(shape, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 40
    # Exact ties at .5 must round to even; values beyond the range must saturate.
    flat = x.reshape(-1)
    big = 2e3 if dtype == np.float16 else 1e6   # x / scale must stay finite in float16
    flat[:8] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, big, -big]
    return x.astype(dtype)


def _params(shape, dtype, seed, scale_dtype=np.float32):
    rng = np.random.default_rng(seed)
    qmin, qmax = qmath.QTYPE_RANGES[qmath.qtype_key(dtype)]
    scale = (rng.uniform(0.05, 0.8, shape)).astype(scale_dtype)
    zero_point = rng.integers(qmin, qmax + 1, shape).astype(qmath.qtype_dtype(dtype))
    return scale, zero_point


LAYOUTS = [  # (x shape, scale shape, axis, block_size)
    ((3, 5, 7), (), 1, 0),                      # per-tensor
    ((3, 5, 7), (1,), 1, 0),                    # per-tensor given as a 1-element vector
    ((3, 5, 7), (5,), 1, 0),                    # per-axis, middle axis
    ((4, 9), (9,), -1, 0),                      # per-axis, last axis (column kernel)
    ((6, 3, 2), (6,), 0, 0),                    # per-axis, first axis
    ((3, 10, 4), (3, 4, 4), 1, 3),              # blocked with a remainder block
    ((8, 6), (8, 2), 1, 3),                     # blocked along the last axis
]


@pytest.mark.parametrize("dtype", INT_DTYPES + [ml_dtypes.int4, ml_dtypes.uint4])
@pytest.mark.parametrize("x_shape,scale_shape,axis,block_size", LAYOUTS)
def test_quantize_bit_exact_with_reference(dtype, x_shape, scale_shape, axis, block_size):
    x = _data(x_shape, seed=1)
    scale, zero_point = _params(scale_shape, dtype, seed=2)
    expected = _reference("QuantizeLinear", [x, scale, zero_point], axis=axis,
                          block_size=block_size)
    got = qmath.quantize(x, scale, zero_point, dtype, axis=axis, block_size=block_size)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got.astype(np.int32), expected.astype(np.int32))


@pytest.mark.parametrize("dtype", INT_DTYPES + [ml_dtypes.int4, ml_dtypes.uint4, np.int32])
@pytest.mark.parametrize("x_shape,scale_shape,axis,block_size", LAYOUTS)
def test_dequantize_bit_exact_with_reference(dtype, x_shape, scale_shape, axis, block_size):
    rng = np.random.default_rng(3)
    if dtype == np.int32:
        q = rng.integers(-2**31, 2**31 - 1, x_shape, dtype=np.int32)
        scale = rng.uniform(0.05, 0.8, scale_shape).astype(np.float32)
        zero_point = np.zeros(scale_shape, np.int32)   # the spec requires 0 for int32
    else:
        qmin, qmax = qmath.QTYPE_RANGES[qmath.qtype_key(dtype)]
        q = rng.integers(qmin, qmax + 1, x_shape).astype(dtype)
        scale, zero_point = _params(scale_shape, dtype, seed=4)
    expected = _reference("DequantizeLinear", [q, scale, zero_point], axis=axis,
                          block_size=block_size)
    got = qmath.dequantize(q, scale, zero_point, axis=axis, block_size=block_size)
    assert got.dtype == expected.dtype == np.float32
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("float_dtype", [np.float16, np.float64])
def test_other_float_types_bit_exact_with_reference(float_dtype):
    x = _data((4, 6, 5), seed=5, dtype=float_dtype)
    for x_shape_scale, axis in [((), 1), ((6,), 1)]:
        scale, zero_point = _params(x_shape_scale, np.uint8, seed=6, scale_dtype=float_dtype)
        q_expected = _reference("QuantizeLinear", [x, scale, zero_point], axis=axis)
        q = qmath.quantize(x, scale, zero_point, np.uint8, axis=axis)
        np.testing.assert_array_equal(q, q_expected)
        y_expected = _reference("DequantizeLinear", [q, scale, zero_point], axis=axis)
        y = qmath.dequantize(q, scale, zero_point, axis=axis)
        assert y.dtype == y_expected.dtype == float_dtype
        assert y.tobytes() == y_expected.tobytes()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("x_shape,scale_shape,axis", [
    ((70001,), (), 0),             # per-tensor: chunked rows, parallel kernel and a tail row
    ((3, 257, 97), (257,), 1),     # per-axis rows, parallel
    ((700, 97), (97,), 1),         # per-axis columns, parallel
])
def test_large_tensors_use_parallel_kernels_exactly(dtype, x_shape, scale_shape, axis):
    assert np.prod(x_shape) >= qmath.PARALLEL_MIN_ELEMENTS
    x = _data(x_shape, seed=7)
    scale, zero_point = _params(scale_shape, dtype, seed=8)
    q = qmath.quantize(x, scale, zero_point, dtype, axis=axis)
    np.testing.assert_array_equal(q, _reference("QuantizeLinear", [x, scale, zero_point], axis=axis))
    y = qmath.dequantize(q, scale, zero_point, axis=axis)
    assert y.tobytes() == _reference("DequantizeLinear", [q, scale, zero_point], axis=axis).tobytes()


def test_quantize_saturates_huge_values_and_nan_goes_to_qmin():
    # The reference evaluator casts rint(x/scale) to int32 before clipping, which overflows for
    # values beyond 2**31; the spec says saturate, which qrt does.
    x = np.array([3e38, -3e38, 1e12, -1e12, np.inf, -np.inf, np.nan], np.float32)
    q = qmath.quantize(x, np.float32(0.1), np.array(10, np.int8), np.int8)
    np.testing.assert_array_equal(q, [127, -128, 127, -128, 127, -128, -128])


def test_quantize_defaults_and_round_trip():
    x = _data((2, 3, 4), seed=9) / 40
    q = qmath.quantize(x, np.float32(0.01))          # no zero point, no qtype: uint8, zero point 0
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, np.clip(np.rint(x / np.float32(0.01)), 0, 255))
    scale, zero_point = qmath.compute_scale_zero_point(x.min(), x.max(), np.int8)
    y = qmath.dequantize(qmath.quantize(x, scale, zero_point, np.int8), scale, zero_point)
    assert np.max(np.abs(y - x)) <= scale / 2 * (1 + 1e-6)
    assert qmath.quantize(np.zeros((0, 3), np.float32), np.float32(1), None, np.int8).shape == (0, 3)


def test_layout_errors_name_the_shapes():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"per-axis scale has 4 elements but axis 1"):
        qmath.quantize(x, np.ones(4, np.float32), None, np.uint8, axis=1)
    with pytest.raises(ValueError, match=r"axis 3 is out of range"):
        qmath.quantize(x, np.ones(4, np.float32), None, np.uint8, axis=3)
    with pytest.raises(ValueError, match=r"needs scale shape \(2, 2, 4\)"):
        qmath.dequantize(x.astype(np.uint8), np.ones((2, 3, 4), np.float32), axis=1, block_size=2)
    with pytest.raises(ValueError, match="zero point shape"):
        qmath.quantize(x, np.ones(3, np.float32), np.zeros(2, np.uint8), axis=1)
    with pytest.raises(ValueError, match="floating-point"):
        qmath.quantize(x.astype(np.int32), np.float32(1))
