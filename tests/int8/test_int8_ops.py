"""The ai.onnx integer ops against onnx.reference, bit for bit, on cases the node tests miss.

QLinearConv / ConvInteger: groups, depthwise (with a channel multiplier), dilations, strides,
asymmetric pads, every auto_pad, 1-D and 3-D, per-channel weights, bias, all four int8/uint8
input combinations and both output types, batch > 1. QLinearMatMul / MatMulInteger: 2-D, batched
(broadcast batch dims, per-batch weights), vectors, per-column b and per-row a parameters.
QuantizeLinear / DequantizeLinear: per-axis and blocked layouts for 8-, 16- and 4-bit types.
Tolerance: exact (integers); DequantizeLinear float outputs rtol 1e-6 (one float32 multiply).
"""
import numpy as np
import pytest

from int8_helpers import node_model, random_q, run_qrt, run_reference, stable_seed

F32 = np.float32
RNG = np.random.default_rng(1234)


def _conv_case(x_dt, w_dt, y_dt, x_shape, w_shape, attrs, per_channel=True, bias=True, op="QLinearConv"):
    rng = np.random.default_rng(stable_seed(x_shape, w_shape, attrs))
    x = random_q(rng, x_shape, x_dt)
    w = random_q(rng, w_shape, w_dt)
    M = w_shape[0]
    if op == "ConvInteger":
        consts = dict(w=w, xz=np.array(rng.integers(0, 100), x_dt),
                      wz=random_q(rng, (M,), w_dt) if per_channel else np.array(3, w_dt))
        model = node_model("ConvInteger", dict(x=x), consts, [("y", np.int32)], attrs=attrs, opset=10,
                           input_order=["x", "w", "xz", "wz"])
        return model, dict(x=x)
    consts = dict(
        xs=np.array(0.02, F32), xz=np.array(rng.integers(-20, 100) if x_dt == np.int8 else rng.integers(0, 200), x_dt),
        w=w,
        ws=(rng.uniform(0.001, 0.01, M).astype(F32) if per_channel else np.array(0.004, F32)),
        wz=(random_q(rng, (M,), w_dt) if per_channel else np.array(0, w_dt)),
        ys=np.array(0.37, F32), yz=np.array(5 if y_dt == np.int8 else 128, y_dt))
    order = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias:
        consts["b"] = rng.integers(-5000, 5000, M).astype(np.int32)
        order.append("b")
    model = node_model("QLinearConv", dict(x=x), consts, [("y", y_dt)], attrs=attrs, opset=10, input_order=order)
    return model, dict(x=x)


CONV_GEOMETRIES = [
    ((1, 8, 9, 10), (6, 8, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 6, 11, 7), (4, 3, 3, 2), dict(group=2, strides=[2, 1], pads=[0, 1, 2, 0])),
    ((1, 5, 12, 12), (5, 1, 3, 3), dict(group=5, pads=[1, 1, 1, 1])),                     # depthwise
    ((1, 3, 10, 9), (6, 1, 3, 3), dict(group=3, strides=[2, 2], dilations=[2, 1])),      # multiplier 2
    ((1, 4, 9, 9), (7, 4, 3, 3), dict(dilations=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 4, 8, 9), (3, 4, 2, 3), dict(strides=[2, 3], auto_pad="SAME_LOWER")),
    ((1, 4, 8, 9), (3, 4, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    ((2, 16, 5, 5), (33, 16, 1, 1), {}),                                                  # 1x1 direct path
    ((1, 3, 17), (4, 3, 5), dict(pads=[2, 1], strides=[3])),                              # 1-D
    ((1, 2, 4, 5, 6), (3, 2, 2, 3, 2), dict(pads=[1, 0, 1, 0, 1, 1])),                    # 3-D
    ((1, 40, 6, 6), (36, 40, 3, 3), dict(pads=[1, 1, 1, 1])),                             # several panels
]


@pytest.mark.parametrize("index", range(len(CONV_GEOMETRIES)))
@pytest.mark.parametrize("types", [(np.uint8, np.int8, np.uint8), (np.int8, np.int8, np.int8),
                                   (np.uint8, np.uint8, np.int8), (np.int8, np.uint8, np.uint8)],
                         ids=["u8s8u8", "s8s8s8", "u8u8s8", "s8u8u8"])
def test_qlinearconv_matches_reference(index, types):
    x_shape, w_shape, attrs = CONV_GEOMETRIES[index]
    # onnx.reference expands a per-channel w_scale to 4-D only; other ranks are checked per tensor.
    model, feeds = _conv_case(*types, x_shape, w_shape, attrs, per_channel=len(w_shape) == 4)
    got = run_qrt(model, feeds)[0]
    want = run_reference(model, feeds)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 7, 8, 9])
def test_qlinearconv_per_tensor_without_bias(index):
    x_shape, w_shape, attrs = CONV_GEOMETRIES[index]
    model, feeds = _conv_case(np.uint8, np.int8, np.uint8, x_shape, w_shape, attrs, per_channel=False, bias=False)
    np.testing.assert_array_equal(run_qrt(model, feeds)[0], run_reference(model, feeds)[0])


# onnx.reference's ConvInteger broadcasts a per-channel zero point over 4-D weights only.
@pytest.mark.parametrize("index", [0, 1, 2, 4, 7])
@pytest.mark.parametrize("types", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
def test_convinteger_matches_reference(index, types):
    x_shape, w_shape, attrs = CONV_GEOMETRIES[index]
    model, feeds = _conv_case(types[0], types[1], None, x_shape, w_shape, attrs, op="ConvInteger")
    got = run_qrt(model, feeds)[0]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, run_reference(model, feeds)[0])


def test_qlinearconv_saturates_both_ends():
    """A large multiplier pushes outputs past both ends of the type: they clamp, never wrap."""
    rng = np.random.default_rng(7)
    x = random_q(rng, (1, 8, 6, 6), np.uint8)
    w = random_q(rng, (4, 8, 3, 3), np.int8)
    consts = dict(xs=np.array(0.5, F32), xz=np.array(128, np.uint8), w=w, ws=np.array(0.5, F32),
                  wz=np.array(0, np.int8), ys=np.array(0.01, F32), yz=np.array(0, np.int8))
    model = node_model("QLinearConv", dict(x=x), consts, [("y", np.int8)], opset=10,
                       input_order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"])
    got = run_qrt(model, dict(x=x))[0]
    np.testing.assert_array_equal(got, run_reference(model, dict(x=x))[0])
    assert (got == -128).any() and (got == 127).any()


MATMUL_CASES = [
    ((5, 7), (7, 9), "tensor"),
    ((3, 4, 33), (33, 40), "column"),
    ((2, 1, 3, 16), (4, 16, 5), "tensor"),       # broadcast batch dims, per-batch weights
    ((16,), (16, 3), "tensor"),                  # vector a
    ((4, 16), (16,), "tensor"),                  # vector b
    ((1, 300), (300, 70), "column"),             # batch-1 linear layer
    ((6, 10), (10, 4), "row"),                   # per-row a scale and zero point
]


@pytest.mark.parametrize("case", MATMUL_CASES, ids=[f"{a}x{b}-{k}" for a, b, k in MATMUL_CASES])
@pytest.mark.parametrize("types", [(np.uint8, np.int8, np.uint8), (np.int8, np.int8, np.int8),
                                   (np.uint8, np.uint8, np.uint8), (np.int8, np.uint8, np.int8)],
                         ids=["u8s8u8", "s8s8s8", "u8u8u8", "s8u8s8"])
def test_qlinearmatmul_matches_reference(case, types):
    a_shape, b_shape, kind = case
    a_dt, b_dt, y_dt = types
    rng = np.random.default_rng(stable_seed(case))
    a = random_q(rng, a_shape, a_dt)
    b = random_q(rng, b_shape, b_dt)
    N = b_shape[-1] if len(b_shape) > 1 else 1
    if kind == "column":
        bs, bz = rng.uniform(0.001, 0.02, N).astype(F32), random_q(rng, (N,), b_dt)
    else:
        bs, bz = np.array(0.011, F32), np.array(7, b_dt)
    if kind == "row":
        M = a_shape[-2]
        a_s, a_z = rng.uniform(0.01, 0.05, M).astype(F32), random_q(rng, (M,), a_dt)
        a_s, a_z = a_s.reshape(M, 1), a_z.reshape(M, 1)
    else:
        a_s, a_z = np.array(0.023, F32), np.array(9, a_dt)
    consts = dict(a_s=a_s, a_z=a_z, b=b, b_s=bs, b_z=bz, y_s=np.array(0.9, F32), y_z=np.array(3, y_dt))
    out_rank = np.matmul(np.zeros(a_shape), np.zeros(b_shape)).ndim
    model = node_model("QLinearMatMul", dict(a=a), consts, [("y", y_dt, out_rank)],
                       opset=21, input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"])
    got = run_qrt(model, dict(a=a))[0]
    want = run_reference(model, dict(a=a))[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_qlinearmatmul_with_both_operands_at_run_time():
    rng = np.random.default_rng(3)
    a = random_q(rng, (2, 5, 24), np.uint8)
    b = random_q(rng, (2, 24, 6), np.int8)
    consts = dict(a_s=np.array(0.02, F32), a_z=np.array(100, np.uint8), b_s=np.array(0.01, F32),
                  b_z=np.array(-3, np.int8), y_s=np.array(0.5, F32), y_z=np.array(120, np.uint8))
    model = node_model("QLinearMatMul", dict(a=a, b=b), consts, [("y", np.uint8)], opset=10,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"])
    np.testing.assert_array_equal(run_qrt(model, dict(a=a, b=b))[0], run_reference(model, dict(a=a, b=b))[0])


@pytest.mark.parametrize("types", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
def test_matmulinteger_per_row_and_per_column_zero_points(types):
    rng = np.random.default_rng(5)
    a = random_q(rng, (6, 37), types[0])
    b = random_q(rng, (37, 11), types[1])
    za = random_q(rng, (6,), types[0])
    zb = random_q(rng, (11,), types[1])
    model = node_model("MatMulInteger", dict(a=a), dict(b=b, za=za, zb=zb), [("y", np.int32)], opset=10,
                       input_order=["a", "b", "za", "zb"])
    got = run_qrt(model, dict(a=a))[0]
    want = (a.astype(np.int64) - za[:, None].astype(np.int64)) @ (b.astype(np.int64) - zb.astype(np.int64))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_matmulinteger_batched_scalar_zero_points_matches_reference():
    rng = np.random.default_rng(6)
    a = random_q(rng, (3, 4, 20), np.uint8)
    b = random_q(rng, (3, 20, 5), np.int8)
    model = node_model("MatMulInteger", dict(a=a, b=b), dict(za=np.array(12, np.uint8), zb=np.array(-4, np.int8)),
                       [("y", np.int32)], opset=10, input_order=["a", "b", "za", "zb"])
    np.testing.assert_array_equal(run_qrt(model, dict(a=a, b=b))[0], run_reference(model, dict(a=a, b=b))[0])


QDQ_LAYOUTS = [
    (np.uint8, (2, 3, 4), dict(axis=1), (3,)),
    (np.int8, (2, 3, 4), dict(axis=-1), (4,)),
    (np.int16, (5, 6), dict(axis=0), (5,)),
    (np.uint16, (5, 6), {}, ()),
    (np.int8, (4, 10), dict(axis=1, block_size=4), (4, 3)),
    (np.uint8, (6, 5), dict(axis=0, block_size=2), (3, 5)),
]


@pytest.mark.parametrize("layout", QDQ_LAYOUTS, ids=[f"{np.dtype(t).name}-{s}-{a}" for t, s, a, _ in QDQ_LAYOUTS])
def test_quantize_dequantize_layouts_match_reference(layout):
    dtype, shape, attrs, p_shape = layout
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3).astype(F32)
    # A tie, a negative tie, and a value that saturates (kept below 2**31 steps: onnx.reference casts
    # through int32 before clipping, so it wraps where the spec saturates).
    x.reshape(-1)[:3] = [2.5, -0.5, 1e6]
    scale = rng.uniform(0.01, 0.1, p_shape).astype(F32)
    zp = random_q(rng, p_shape, dtype) // 4
    q_model = node_model("QuantizeLinear", dict(x=x), dict(s=scale, z=zp.astype(dtype)), [("y", dtype)],
                         attrs=attrs, opset=21, input_order=["x", "s", "z"])
    q_got = run_qrt(q_model, dict(x=x))[0]
    np.testing.assert_array_equal(q_got, run_reference(q_model, dict(x=x))[0])
    d_model = node_model("DequantizeLinear", dict(q=q_got), dict(s=scale, z=zp.astype(dtype)), [("y", F32)],
                         attrs=attrs, opset=21, input_order=["q", "s", "z"])
    np.testing.assert_allclose(run_qrt(d_model, dict(q=q_got))[0], run_reference(d_model, dict(q=q_got))[0],
                               rtol=1e-6)


@pytest.mark.parametrize("opset", [10, 13, 19, 21, 23])
def test_quantize_linear_every_opset_per_tensor(opset):
    x = np.array([-1000.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 1000.0], F32)
    model = node_model("QuantizeLinear", dict(x=x), dict(s=np.array(1.0, F32), z=np.array(-3, np.int8)),
                       [("y", np.int8)], opset=opset, input_order=["x", "s", "z"])
    got = run_qrt(model, dict(x=x))[0]
    np.testing.assert_array_equal(got, [-128, -5, -5, -3, -3, -1, -1, 127])
    np.testing.assert_array_equal(got, run_reference(model, dict(x=x))[0])


def test_dynamic_quantize_linear_matches_reference_on_random_data():
    rng = np.random.default_rng(8)
    for x in (rng.standard_normal((3, 50)).astype(F32), np.abs(rng.standard_normal(40)).astype(F32),
              -np.abs(rng.standard_normal((2, 2, 9))).astype(F32), np.zeros(7, F32)):
        model = node_model("DynamicQuantizeLinear", dict(x=x), {}, [("y", np.uint8), ("s", F32, 0), ("z", np.uint8, 0)],
                           opset=11)
        got = run_qrt(model, dict(x=x))
        want = run_reference(model, dict(x=x))
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
