"""com.microsoft quantized ops against onnxruntime (which defines them).

Tolerance: 8-bit outputs within one quantization step, at most a few percent of elements (float32
rounding ties onnxruntime decides the other way); float outputs rtol 1e-5 (int32 sums scaled once in
float32, as onnxruntime does); the GEMM-based ops (QGemm, QLinearConv) are exact integer sums with
one requantization, so they must match exactly where onnxruntime is exact (VNNI hosts).
Scales are irregular (not ratios of small integers) so that exact ties are rare.
"""
import numpy as np
import pytest

from int8_helpers import node_model, random_q, run_ort, run_qrt, stable_seed

MS = "com.microsoft"
F32 = np.float32
TYPES = [np.uint8, np.int8]


def _within_one_step(got, want, max_fraction=0.03):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max(initial=0) <= 1
    assert (diff > 0).mean() <= max_fraction if diff.size else True


def _params(dt, rng, *names):
    out = {}
    for n in names:
        out[f"{n}_s"] = np.array(rng.uniform(0.011, 0.093), F32)
        out[f"{n}_z"] = np.array(rng.integers(-20, 20) if dt == np.int8 else rng.integers(100, 150), dt)
    return out


@pytest.mark.parametrize("dt", TYPES)
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (5,)), ((2, 3, 1, 1), (1, 3, 4, 5))])
def test_binary(dt, op, shapes):
    rng = np.random.default_rng(stable_seed(op, shapes))
    a, b = random_q(rng, shapes[0], dt), random_q(rng, shapes[1], dt)
    consts = _params(dt, rng, "a", "b", "c")
    model = node_model(op, dict(a=a, b=b), consts, [("c", dt, 4)], domain=MS,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "c_s", "c_z"])
    _within_one_step(run_qrt(model, dict(a=a, b=b))[0], run_ort(model, dict(a=a, b=b))[0])


UNARY = [("QLinearSigmoid", {}), ("QLinearLeakyRelu", dict(alpha=0.13)),
         ("QLinearGlobalAveragePool", dict(channels_last=0)), ("QLinearGlobalAveragePool", dict(channels_last=1)),
         ("QLinearAveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
         ("QLinearAveragePool", dict(kernel_shape=[3, 2], pads=[1, 0, 1, 1], strides=[2, 1], count_include_pad=1)),
         ("QLinearAveragePool", dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1)),
         ("QLinearAveragePool", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
         ("QLinearAveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], channels_last=1)),
         ("QLinearSoftmax", dict(axis=-1, opset=13)), ("QLinearSoftmax", dict(axis=1, opset=13)),
         ("QLinearSoftmax", dict(axis=1, opset=11))]


@pytest.mark.parametrize("dt", TYPES)
@pytest.mark.parametrize("op, attrs", UNARY, ids=[f"{o}-{i}" for i, (o, _) in enumerate(UNARY)])
def test_unary(dt, op, attrs):
    rng = np.random.default_rng(3)
    x = random_q(rng, (2, 3, 7, 6), dt)
    consts = _params(dt, rng, "x", "y")
    if op == "QLinearSoftmax":
        consts["y_s"] = np.array(1 / 256, F32)
        consts["y_z"] = np.array(-128 if dt == np.int8 else 0, dt)
    model = node_model(op, dict(x=x), consts, [("y", dt)], attrs=attrs, domain=MS,
                       input_order=["x", "x_s", "x_z", "y_s", "y_z"])
    _within_one_step(run_qrt(model, dict(x=x))[0], run_ort(model, dict(x=x))[0])


@pytest.mark.parametrize("dt", TYPES)
def test_concat_requantizes_each_input(dt):
    rng = np.random.default_rng(4)
    xs = [random_q(rng, (2, c, 5), dt) for c in (3, 1, 4)]
    consts = _params(dt, rng, "y", "i0", "i1")
    consts["i2_s"], consts["i2_z"] = consts["y_s"], consts["y_z"]          # one input already on the output grid
    order = ["y_s", "y_z"] + [n for i in range(3) for n in (f"x{i}", f"i{i}_s", f"i{i}_z")]
    model = node_model("QLinearConcat", {f"x{i}": x for i, x in enumerate(xs)}, consts, [("y", dt, 3)],
                       attrs=dict(axis=1), domain=MS, input_order=order)
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    _within_one_step(run_qrt(model, feeds)[0], run_ort(model, feeds)[0])


def _ort_exact():
    from test_int8_crosscheck import _onnxruntime_exact_on_this_host
    return _onnxruntime_exact_on_this_host()


@pytest.mark.parametrize("a_dt, b_dt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
@pytest.mark.parametrize("trans_b, per_column, with_c, quantized", [(1, True, True, True), (0, False, True, True),
                                                                    (1, True, False, False), (0, True, True, False)])
def test_qgemm(a_dt, b_dt, trans_b, per_column, with_c, quantized):
    rng = np.random.default_rng(5)
    M, K, N = 7, 45, 19
    a = random_q(rng, (M, K), a_dt)
    b = random_q(rng, (N, K) if trans_b else (K, N), b_dt)
    consts = dict(a_s=np.array(0.0173, F32), a_z=np.array(5, a_dt), b=b,
                  b_s=rng.uniform(0.002, 0.01, N).astype(F32) if per_column else np.array(0.0061, F32),
                  b_z=np.zeros(N, b_dt) if per_column else np.array(0, b_dt))
    if b_dt == np.uint8:
        consts["b_z"] = consts["b_z"] + np.uint8(128)
    order = ["a", "a_s", "a_z", "b", "b_s", "b_z"]
    if with_c:
        consts["c"] = rng.integers(-2000, 2000, N).astype(np.int32)
        order.append("c")
    elif quantized:
        order.append("")
    if quantized:
        consts.update(y_s=np.array(0.0377, F32), y_z=np.array(3, a_dt))
        order += ["y_s", "y_z"]
    out_dt = a_dt if quantized else F32
    model = node_model("QGemm", dict(a=a), consts, [("y", out_dt, 2)], attrs=dict(transB=trans_b, alpha=0.75),
                       domain=MS, input_order=order)
    got, want = run_qrt(model, dict(a=a))[0], run_ort(model, dict(a=a))[0]
    if quantized:
        _within_one_step(got, want)
        if _ort_exact():
            assert (got != want).mean() <= 0.01
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("b_dt", [np.int8, np.uint8])
@pytest.mark.parametrize("with_bias, per_column", [(True, True), (False, False)])
def test_matmul_integer_to_float(b_dt, with_bias, per_column):
    rng = np.random.default_rng(6)
    a = random_q(rng, (2, 5, 33), np.uint8)
    b = random_q(rng, (33, 12), b_dt)
    consts = dict(b=b, a_s=np.array(0.021, F32),
                  b_s=rng.uniform(0.002, 0.01, 12).astype(F32) if per_column else np.array(0.0061, F32),
                  a_z=np.array(131, np.uint8), b_z=random_q(rng, (12,), b_dt) if per_column else np.array(3, b_dt))
    order = ["a", "b", "a_s", "b_s", "a_z", "b_z"]
    if with_bias:
        consts["bias"] = rng.standard_normal(12).astype(F32)
        order.append("bias")
    model = node_model("MatMulIntegerToFloat", dict(a=a), consts, [("y", F32, 3)], domain=MS, input_order=order)
    got, want = run_qrt(model, dict(a=a))[0], run_ort(model, dict(a=a))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("b_dt", [np.int8, np.uint8])
def test_dynamic_quantize_matmul(b_dt):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 4, 40)).astype(F32)
    b = random_q(rng, (40, 9), b_dt)
    consts = dict(b=b, b_s=rng.uniform(0.002, 0.01, 9).astype(F32), b_z=random_q(rng, (9,), b_dt),
                  bias=rng.standard_normal(9).astype(F32))
    model = node_model("DynamicQuantizeMatMul", dict(a=a), consts, [("y", F32, 3)], domain=MS,
                       input_order=["a", "b", "b_s", "b_z", "bias"])
    got, want = run_qrt(model, dict(a=a))[0], run_ort(model, dict(a=a))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_ms_qlinearconv_channels_last_matches_channels_first():
    rng = np.random.default_rng(8)
    x = random_q(rng, (1, 4, 7, 6), np.uint8)
    w = random_q(rng, (5, 4, 3, 3), np.int8)
    consts = dict(xs=np.array(0.02, F32), xz=np.array(120, np.uint8), w=w, ws=np.full(5, 0.004, F32),
                  wz=np.zeros(5, np.int8), ys=np.array(0.3, F32), yz=np.array(100, np.uint8))
    order = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    first = node_model("QLinearConv", dict(x=x), consts, [("y", np.uint8)], attrs=dict(pads=[1, 1, 1, 1]), opset=10,
                       input_order=order)
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    last = node_model("QLinearConv", dict(x=x_last), consts, [("y", np.uint8)],
                      attrs=dict(pads=[1, 1, 1, 1], channels_last=1), domain=MS, input_order=order)
    want = run_qrt(first, dict(x=x))[0]
    np.testing.assert_array_equal(run_qrt(last, dict(x=x_last))[0], want.transpose(0, 2, 3, 1))
