"""The vectorized requantizing epilogue (qrt/kernels/cpu/qgemm.py ``_requant_rows``), the AMX
route of shallow 1x1 convolutions read in place, and the QLinearAveragePool kernels
(qrt/kernels/cpu/qelementwise.py ``average_pool``, ``average_pool_last``).

The epilogue does the reference's operations in its order (int32 sum with the zero-point terms,
float64 product, round half to even, zero point, clamp), so results equal onnx.reference's bit for
bit. The cases put every column count of a tile (1, 15, 16, 17, 31, 32, 33 and more: masked lanes
in each half of a 32-column tile) against row counts that leave a partial micro-kernel tile, with
padding on every side, strides, dilations, groups, per-tensor and per-channel scales, nonzero
weight zero points (the row-sum term), int8 and uint8 outputs, and scales small enough that the
clamp is hit. Channels-last QLinearConv (com.microsoft, rows written in place) is checked against
the reference run on the transposed tensors. The same tests run under QRT_INT8_ISA=avx2|generic.

A 1x1 convolution over a whole number of 64-byte depth blocks takes the AMX tiles (where the host
has them) below ``MIN_PADDED_DEPTH``: its rows are read in place; the result equals the reference.

The channels-last average pool does the NCHW kernel's integer sums and float64 operations per
output, so the two agree exactly (and the NCHW kernel is checked against onnxruntime elsewhere).
Tolerance: exact everywhere (integers).
"""
import numpy as np
import pytest

from int8_helpers import node_model, random_q, run_qrt, run_reference, stable_seed
from qrt.kernels.cpu import qconv, qgemm_amx
from qrt.ops.contrib_quantized import QLinearAveragePool

F32 = np.float32
MS = "com.microsoft"

CONV_CASES = {   # id: (x shape, w shape, attributes)
    "1x1_cols1": ((1, 8, 5, 7), (1, 8, 1, 1), {}),
    "1x1_cols15_rows_tail": ((1, 16, 3, 5), (15, 16, 1, 1), {}),
    "1x1_cols17": ((2, 12, 4, 5), (17, 12, 1, 1), {}),
    "3x3_cols31_pads_all_sides": ((1, 5, 7, 9), (31, 5, 3, 3), dict(pads=[1, 2, 2, 0])),
    "3x3_cols33_stride2": ((1, 20, 11, 9), (33, 20, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    "3x3_cols16_dilated": ((1, 7, 12, 10), (16, 7, 3, 3), dict(pads=[2, 2, 2, 2], dilations=[2, 2])),
    "grouped_cols32_each": ((1, 12, 6, 7), (96, 4, 3, 3), dict(group=3, pads=[0, 1, 1, 0])),
    "1d_cols70": ((1, 9, 23), (70, 9, 3), dict(pads=[1, 2], strides=[2])),
}


def _conv(case, x_dt, y_dt, per_channel, saturating):
    x_shape, w_shape, attrs = CONV_CASES[case]
    rng = np.random.default_rng(stable_seed("epilogue", case, x_dt, y_dt, per_channel, saturating))
    M = w_shape[0]
    x = random_q(rng, x_shape, x_dt)
    w = random_q(rng, w_shape, np.int8)
    ws = rng.uniform(0.0005, 0.004, M).astype(F32) if per_channel else np.array(0.002, F32)
    wz = random_q(rng, (M,), np.int8) // 8 if per_channel else np.array(0, np.int8)
    consts = dict(xs=np.array(0.02, F32), xz=np.array(rng.integers(-20, 20) if x_dt == np.int8 else 137, x_dt),
                  w=w, ws=ws, wz=wz, ys=np.array(0.002 if saturating else 0.37, F32),
                  yz=np.array(-7 if y_dt == np.int8 else 121, y_dt),
                  b=rng.integers(-5000, 5000, M).astype(np.int32))
    order = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"]
    return x, consts, attrs, order


# onnx.reference broadcasts a per-channel w_scale over 4-D weights only.
def _per_channel_ok(case, per_channel):
    return not per_channel or len(CONV_CASES[case][1]) == 4


@pytest.mark.parametrize("saturating", [False, True], ids=["in_range", "saturating"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("x_dt, y_dt", [(np.uint8, np.uint8), (np.int8, np.int8)], ids=["u8u8", "s8s8"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_qlinearconv_equals_reference(case, x_dt, y_dt, per_channel, saturating):
    per_channel = per_channel and _per_channel_ok(case, per_channel)
    x, consts, attrs, order = _conv(case, x_dt, y_dt, per_channel, saturating)
    model = node_model("QLinearConv", dict(x=x), consts, [("y", y_dt)], attrs=attrs, opset=10, input_order=order)
    want = run_reference(model, dict(x=x))[0]
    if saturating:
        assert (want == np.iinfo(y_dt).min).any() and (want == np.iinfo(y_dt).max).any()
    np.testing.assert_array_equal(run_qrt(model, dict(x=x), intra_op_num_threads=2)[0], want)


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("case", [c for c in CONV_CASES if len(CONV_CASES[c][1]) == 4])
def test_channels_last_qlinearconv_equals_reference(case, per_channel):
    x, consts, attrs, order = _conv(case, np.uint8, np.uint8, per_channel, saturating=False)
    want = run_reference(node_model("QLinearConv", dict(x=x), consts, [("y", np.uint8)], attrs=attrs, opset=10,
                                    input_order=order), dict(x=x))[0]
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    attrs = dict(attrs, kernel_shape=list(consts["w"].shape[2:]), channels_last=1)
    model = node_model("QLinearConv", dict(x=x_last), consts, [("y", np.uint8)], attrs=attrs, domain=MS, opset=13,
                       input_order=order)
    got = run_qrt(model, dict(x=x_last))[0]
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("M, N", [(1, 1), (7, 16), (9, 17), (13, 33), (40, 70)])
def test_qlinearmatmul_equals_reference(M, N):
    rng = np.random.default_rng(stable_seed("epilogue_mm", M, N))
    K = 21
    a = random_q(rng, (M, K), np.uint8)
    consts = dict(a_s=np.array(0.02, F32), a_z=np.array(9, np.uint8), b=random_q(rng, (K, N), np.int8),
                  b_s=rng.uniform(0.001, 0.01, N).astype(F32), b_z=random_q(rng, (N,), np.int8) // 16,
                  y_s=np.array(0.05, F32), y_z=np.array(-3, np.int8))
    model = node_model("QLinearMatMul", dict(a=a), consts, [("y", np.int8)], opset=21,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"])
    np.testing.assert_array_equal(run_qrt(model, dict(a=a))[0], run_reference(model, dict(a=a))[0])


@pytest.mark.skipif(not qgemm_amx.AVAILABLE, reason="host without AMX-INT8 (or an ISA override)")
@pytest.mark.parametrize("C, tiles", [(64, True), (128, True), (48, False)])
def test_shallow_1x1_in_place_takes_the_tiles(C, tiles, monkeypatch):
    calls = []
    conv = qconv.qconv_amx
    monkeypatch.setattr(qconv, "qconv_amx", lambda *args: calls.append(1) or conv(*args))
    rng = np.random.default_rng(stable_seed("amx_shallow", C))
    x = random_q(rng, (1, C, 7, 9), np.uint8)
    consts = dict(xs=np.array(0.02, F32), xz=np.array(133, np.uint8), w=random_q(rng, (40, C, 1, 1), np.int8),
                  ws=rng.uniform(0.0005, 0.004, 40).astype(F32), wz=np.zeros(40, np.int8),
                  ys=np.array(0.3, F32), yz=np.array(120, np.uint8), b=rng.integers(-5000, 5000, 40).astype(np.int32))
    model = node_model("QLinearConv", dict(x=x), consts, [("y", np.uint8)], opset=10,
                       input_order=["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"])
    assert C < qgemm_amx.MIN_PADDED_DEPTH
    np.testing.assert_array_equal(run_qrt(model, dict(x=x))[0], run_reference(model, dict(x=x))[0])
    assert bool(calls) == tiles


POOLS = [dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         dict(kernel_shape=[3, 2], pads=[1, 0, 1, 1], strides=[2, 1], count_include_pad=1),
         dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1),
         dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
         dict(kernel_shape=[7, 7]),
         dict(kernel_shape=[3], pads=[2, 1], strides=[2]),
         dict(kernel_shape=[2, 3, 2], pads=[1, 0, 1, 0, 1, 1], count_include_pad=1)]


@pytest.mark.parametrize("dt", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("attrs", POOLS, ids=[str(i) for i in range(len(POOLS))])
def test_channels_last_average_pool_equals_nchw(attrs, dt):
    rng = np.random.default_rng(stable_seed("avgpool_last", str(attrs), dt))
    spatial = {1: (11,), 2: (7, 8), 3: (4, 5, 6)}[len(attrs["kernel_shape"])]
    x = random_q(rng, (2, 19) + spatial, dt)
    params = [np.array(0.031, F32), np.array(7 if dt == np.int8 else 130, dt), np.array(0.027, F32),
              np.array(-3 if dt == np.int8 else 120, dt)]
    nchw = QLinearAveragePool(**attrs).run(x, *params)
    last = QLinearAveragePool(**attrs, channels_last=1).run(np.ascontiguousarray(np.moveaxis(x, 1, -1)), *params)
    np.testing.assert_array_equal(last, np.moveaxis(nchw, 1, -1))


@pytest.mark.parametrize("zb_nonzero", [False, True], ids=["zb0", "zb"])
@pytest.mark.parametrize("M, N", [(9, 17), (13, 33)])
def test_rows_with_their_own_zero_points(M, N, zb_nonzero):
    """The epilogue's per-row branch: a row whose zero point differs from the first row's, or whose
    row-sum term is not zero, takes the multiplying form; the bytes are the spec's either way."""
    from qrt.kernels.cpu import qgemm
    rng = np.random.default_rng(stable_seed("rows_za", M, N, zb_nonzero))
    K = 23
    a = random_q(rng, (M, K), np.uint8)
    b = random_q(rng, (K, N), np.int8)
    zb = rng.integers(-3, 4, N) if zb_nonzero else np.zeros(N, np.int64)
    za = np.where(np.arange(M) % 3 == 1, 200, 7).astype(np.int32)
    bias = rng.integers(-3000, 3000, N).astype(np.int32)
    mult = rng.uniform(0.001, 0.02, N).astype(F32)
    epi = qgemm.Epilogue(1, 1, N, bias=bias, mult=mult, zy=-4, qmin=-128, qmax=127)
    out = np.empty((M, N), np.int8)
    qgemm.matmul(a, 0, za, qgemm.pack_weights([b], zb.reshape(1, N)), epi, out.view(np.uint8))
    acc = ((a.astype(np.int64) - za[:, None]) @ (b.astype(np.int64) - zb[None, :]) + bias).astype(np.int32)
    want = np.clip(np.rint(acc.astype(np.float64) * mult.astype(np.float64)) - 4, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("y_dt, zy", [(np.uint8, 0), (np.uint8, 255), (np.int8, -128), (np.int8, 9)])
def test_ties_round_half_to_even_and_saturate(y_dt, zy):
    """Power-of-two multipliers make exact halves: they round to even, as np.rint does; zero points
    at either bound and sums far outside the range check the clamp around the rounding."""
    from qrt.kernels.cpu import qgemm
    rng = np.random.default_rng(stable_seed("ties", y_dt, zy))
    M, K, N = 21, 5, 40
    a = random_q(rng, (M, K), np.uint8)
    b = random_q(rng, (K, N), np.int8)
    mult = (2.0 ** -rng.integers(0, 10, N)).astype(F32)
    bias = rng.integers(-40000, 40000, N).astype(np.int32)
    lo, hi = np.iinfo(y_dt).min, np.iinfo(y_dt).max
    epi = qgemm.Epilogue(1, 1, N, bias=bias, mult=mult, zy=zy, qmin=lo, qmax=hi)
    out = np.empty((M, N), y_dt)
    qgemm.matmul(a, 0, np.full(M, 3, np.int32), qgemm.pack_weights([b], np.zeros((1, N), np.int64)), epi,
                 out.view(np.uint8))
    acc = ((a.astype(np.int64) - 3) @ b.astype(np.int64) + bias).astype(np.int32)
    scaled = acc.astype(np.float64) * mult.astype(np.float64)
    assert (scaled % 1 == 0.5).any()
    want = np.clip(np.rint(scaled) + zy, lo, hi).astype(y_dt)
    assert (want == lo).any() and (want == hi).any()
    np.testing.assert_array_equal(out, want)
