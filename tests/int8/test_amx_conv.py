"""The AMX-tile int8 GEMM behind QLinearConv, ConvInteger, QLinearMatMul and QGemm
(qrt/kernels/cpu/qconv.py ``qconv_amx``, qrt/kernels/cpu/qgemm_amx.py).

The tiles compute the same exact int32 sums as the VNNI micro-kernel and hand them to the same
epilogue, so on a host with AMX every result must equal, bit for bit, the VNNI path's (forced by
turning ``qgemm_amx.usable`` off) and onnx.reference's. Each case also checks that the AMX driver
really ran. Cases cover what the AMX path does differently: gathered receptive fields (padded,
strided, dilated, grouped, 1-D; rows spaced off a multiple of 1 KiB), 1x1 convolutions read in
place (depth a multiple of 64, with a last block that would read past the input), depths that are
not a multiple of 64 (a partial last block), several position chunks and panel groups, and odd
channel counts. The drivers take every depth here (``MIN_PADDED_DEPTH`` lowered); one test checks
the default routing.

Against onnxruntime: within one output step, at most 1% of elements apart. Its requantization
multiplies the int32 sum by a float32 scale and rounds in float32, qrt (as onnx.reference) rounds
``float64(acc) * multiplier``, so an exact tie can land one step apart; the integer sums agree.
Tolerance everywhere else: exact (integers).
"""
import numpy as np
import pytest

from int8_helpers import assert_within_one_step, node_model, random_q, run_ort, run_qrt, run_reference, stable_seed
from qrt.kernels.cpu import qconv, qgemm_amx

pytestmark = pytest.mark.skipif(not qgemm_amx.AVAILABLE, reason="host without AMX-INT8 (or an ISA override)")

F32 = np.float32
MS = "com.microsoft"

U8S8U8, S8S8S8, U8U8S8, S8U8U8 = ((np.uint8, np.int8, np.uint8), (np.int8, np.int8, np.int8),
                                  (np.uint8, np.uint8, np.int8), (np.int8, np.uint8, np.uint8))


@pytest.fixture
def amx_calls(monkeypatch):
    """Counts calls into the AMX drivers (conv and matmul), which take every depth here."""
    monkeypatch.setattr(qgemm_amx, "MIN_PADDED_DEPTH", 0)
    calls = []
    conv, matmul = qconv.qconv_amx, qgemm_amx.matmul

    def counting_conv(*args):
        calls.append("conv")
        return conv(*args)

    def counting_matmul(*args):
        calls.append("matmul")
        return matmul(*args)

    monkeypatch.setattr(qconv, "qconv_amx", counting_conv)
    monkeypatch.setattr(qgemm_amx, "matmul", counting_matmul)
    return calls


def _vnni(model, feeds, monkeypatch, **options):
    with monkeypatch.context() as m:
        m.setattr(qgemm_amx, "usable", lambda packed, padded=False: False)
        return run_qrt(model, feeds, **options)


def _conv_model(types, x_shape, w_shape, attrs, per_channel, op="QLinearConv"):
    x_dt, w_dt, y_dt = types
    rng = np.random.default_rng(stable_seed("amx", types, x_shape, w_shape, attrs, per_channel, op))
    x = random_q(rng, x_shape, x_dt)
    w = random_q(rng, w_shape, w_dt)
    M = w_shape[0]
    # Per-channel weight zero points are nonzero (the row-sum term runs); per-tensor ones the usual 0.
    wz = random_q(rng, (M,), w_dt) if per_channel else np.array(128 if w_dt == np.uint8 else 0, w_dt)
    xz = np.array(rng.integers(-20, 100) if x_dt == np.int8 else rng.integers(0, 200), x_dt)
    if op == "ConvInteger":
        model = node_model(op, dict(x=x), dict(w=w, xz=xz, wz=wz), [("y", np.int32)], attrs=attrs, opset=10,
                           input_order=["x", "w", "xz", "wz"])
        return model, dict(x=x)
    consts = dict(xs=np.array(0.02, F32), xz=xz, w=w,
                  ws=rng.uniform(0.0005, 0.004, M).astype(F32) if per_channel else np.array(0.002, F32), wz=wz,
                  ys=np.array(0.37, F32), yz=np.array(5 if y_dt == np.int8 else 128, y_dt),
                  b=rng.integers(-5000, 5000, M).astype(np.int32))
    model = node_model(op, dict(x=x), consts, [("y", y_dt)], attrs=attrs, opset=10,
                       input_order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"])
    return model, dict(x=x)


CONV_CASES = {   # id: (x shape, w shape, attributes)
    "1x1_in_place": ((1, 64, 9, 10), (70, 64, 1, 1), {}),
    "1x1_in_place_tail_batch2": ((2, 128, 5, 5), (33, 128, 1, 1), {}),
    "1x1_depth48": ((1, 48, 7, 9), (35, 48, 1, 1), {}),
    "1x1_gathered_1024": ((1, 1024, 3, 5), (20, 1024, 1, 1), {}),
    "1x1_stride2": ((1, 64, 9, 9), (40, 64, 1, 1), dict(strides=[2, 2])),
    "3x3_stride2_depth360": ((1, 40, 9, 10), (36, 40, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    "3x3_depth576": ((1, 64, 8, 8), (64, 64, 3, 3), dict(pads=[1, 1, 1, 1])),
    "3x3_dilated_asym": ((1, 20, 12, 11), (17, 20, 3, 3), dict(pads=[2, 1, 0, 2], dilations=[2, 2])),
    "7x7_rgb_stride2": ((1, 3, 30, 28), (16, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2])),
    "grouped_rounded": ((2, 6, 11, 7), (4, 3, 3, 2), dict(group=2, strides=[2, 1], pads=[0, 1, 2, 0])),
    "grouped_4x32": ((1, 128, 6, 6), (64, 32, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),
    "many_chunks": ((1, 16, 40, 41), (24, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    "1d": ((1, 20, 50), (13, 20, 5), dict(pads=[2, 1], strides=[2])),
}


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("types", [U8S8U8, S8S8S8, U8U8S8, S8U8U8], ids=["u8s8u8", "s8s8s8", "u8u8s8", "s8u8u8"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_qlinearconv_amx_equals_vnni_and_reference(case, types, per_channel, amx_calls, monkeypatch):
    x_shape, w_shape, attrs = CONV_CASES[case]
    # onnx.reference broadcasts a per-channel w_scale over 4-D weights only.
    model, feeds = _conv_model(types, x_shape, w_shape, attrs, per_channel and len(w_shape) == 4)
    got = run_qrt(model, feeds, intra_op_num_threads=2)[0]     # two threads: chunks and panel groups split
    assert "conv" in amx_calls
    vnni = _vnni(model, feeds, monkeypatch, intra_op_num_threads=2)[0]
    np.testing.assert_array_equal(got, vnni)
    np.testing.assert_array_equal(got, run_reference(model, feeds)[0])


@pytest.mark.parametrize("case", ["1x1_in_place_tail_batch2", "3x3_stride2_depth360", "many_chunks"])
def test_qlinearconv_amx_one_thread(case, amx_calls, monkeypatch):
    x_shape, w_shape, attrs = CONV_CASES[case]
    model, feeds = _conv_model(U8S8U8, x_shape, w_shape, attrs, per_channel=True)
    got = run_qrt(model, feeds, intra_op_num_threads=1)[0]
    assert "conv" in amx_calls
    np.testing.assert_array_equal(got, _vnni(model, feeds, monkeypatch, intra_op_num_threads=1)[0])


def test_only_deep_products_take_the_tiles_by_default(monkeypatch):
    calls = []
    conv = qconv.qconv_amx
    monkeypatch.setattr(qconv, "qconv_amx", lambda *args: calls.append(1) or conv(*args))
    for case, deep in (("1x1_depth48", False), ("3x3_depth576", True)):
        calls.clear()
        x_shape, w_shape, attrs = CONV_CASES[case]
        model, feeds = _conv_model(U8S8U8, x_shape, w_shape, attrs, per_channel=True)
        run_qrt(model, feeds)
        assert bool(calls) == deep, case


@pytest.mark.parametrize("case", ["1x1_in_place", "3x3_stride2_depth360", "7x7_rgb_stride2", "grouped_4x32",
                                  "many_chunks"])
@pytest.mark.parametrize("types", [U8S8U8, S8S8S8], ids=["u8s8u8", "s8s8s8"])
def test_qlinearconv_amx_matches_onnxruntime(case, types, amx_calls):
    x_shape, w_shape, attrs = CONV_CASES[case]
    model, feeds = _conv_model(types, x_shape, w_shape, attrs, per_channel=False)
    got = run_qrt(model, feeds)[0]
    assert "conv" in amx_calls
    assert_within_one_step(got, run_ort(model, feeds)[0], max_fraction=0.01)


@pytest.mark.parametrize("case", ["1x1_in_place", "3x3_stride2_depth360", "grouped_rounded"])
def test_convinteger_amx_equals_reference(case, amx_calls, monkeypatch):
    x_shape, w_shape, attrs = CONV_CASES[case]
    model, feeds = _conv_model((np.uint8, np.uint8, None), x_shape, w_shape, attrs, per_channel=True,
                               op="ConvInteger")
    got = run_qrt(model, feeds)[0]
    assert "conv" in amx_calls and got.dtype == np.int32
    np.testing.assert_array_equal(got, _vnni(model, feeds, monkeypatch)[0])
    np.testing.assert_array_equal(got, run_reference(model, feeds)[0])


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "gathered"])
def test_channels_last_qlinearconv_amx_equals_vnni(in_place, amx_calls, monkeypatch):
    """com.microsoft QLinearConv with ``channels_last``: the epilogue writes rows, not a transpose."""
    rng = np.random.default_rng(stable_seed("amx_nhwc", in_place))
    C, M, k = (64, 45, 1) if in_place else (24, 45, 3)
    x = random_q(rng, (2, 9, 11, C), np.uint8)
    w = random_q(rng, (M, C, k, k), np.int8)
    consts = dict(xs=np.array(0.03, F32), xz=np.array(131, np.uint8), w=w,
                  ws=rng.uniform(0.001, 0.005, M).astype(F32), wz=np.zeros(M, np.int8),
                  ys=np.array(0.4, F32), yz=np.array(120, np.uint8), b=rng.integers(-3000, 3000, M).astype(np.int32))
    model = node_model("QLinearConv", dict(x=x), consts, [("y", np.uint8)], domain=MS, opset=13,
                       attrs=dict(kernel_shape=[k, k], pads=[k // 2] * 4, channels_last=1),
                       input_order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"])
    got = run_qrt(model, dict(x=x))[0]
    assert "conv" in amx_calls
    np.testing.assert_array_equal(got, _vnni(model, dict(x=x), monkeypatch)[0])
    assert_within_one_step(got, run_ort(model, dict(x=x))[0], max_fraction=0.01)


@pytest.mark.parametrize("K", [64, 100, 3])
@pytest.mark.parametrize("types", [U8S8U8, S8S8S8, U8U8S8], ids=["u8s8u8", "s8s8s8", "u8u8s8"])
def test_qlinearmatmul_amx_equals_vnni_and_reference(K, types, amx_calls, monkeypatch):
    a_dt, b_dt, y_dt = types
    rng = np.random.default_rng(stable_seed("amx_mm", K, types))
    M, N = 37, 45
    a = random_q(rng, (M, K), a_dt)
    consts = dict(a_s=np.array(0.02, F32), a_z=random_q(rng, (), a_dt), b=random_q(rng, (K, N), b_dt),
                  b_s=rng.uniform(0.001, 0.01, N).astype(F32), b_z=random_q(rng, (N,), b_dt),
                  y_s=np.array(0.3, F32), y_z=np.array(3, y_dt))
    model = node_model("QLinearMatMul", dict(a=a), consts, [("y", y_dt)], opset=21,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"])
    got = run_qrt(model, dict(a=a))[0]
    assert "matmul" in amx_calls
    np.testing.assert_array_equal(got, _vnni(model, dict(a=a), monkeypatch)[0])
    np.testing.assert_array_equal(got, run_reference(model, dict(a=a))[0])


@pytest.mark.parametrize("K", [256, 70])
def test_qgemm_amx_equals_vnni_and_onnxruntime(K, amx_calls, monkeypatch):
    rng = np.random.default_rng(stable_seed("amx_qgemm", K))
    # More rows than a VNNI row tile: a prepared QGemm runs fewer on VNNI (qgemm.matmul_runner).
    M, N = 37, 130
    a = random_q(rng, (M, K), np.uint8)
    consts = dict(a_s=np.array(0.0173, F32), a_z=np.array(5, np.uint8), b=random_q(rng, (N, K), np.int8),
                  b_s=rng.uniform(0.002, 0.01, N).astype(F32), b_z=np.zeros(N, np.int8),
                  c=rng.integers(-2000, 2000, N).astype(np.int32), y_s=np.array(0.0377, F32),
                  y_z=np.array(3, np.uint8))
    model = node_model("QGemm", dict(a=a), consts, [("y", np.uint8, 2)], attrs=dict(transB=1), domain=MS,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "c", "y_s", "y_z"])
    got = run_qrt(model, dict(a=a))[0]
    assert "matmul" in amx_calls
    np.testing.assert_array_equal(got, _vnni(model, dict(a=a), monkeypatch)[0])
    assert_within_one_step(got, run_ort(model, dict(a=a))[0], max_fraction=0.01)
