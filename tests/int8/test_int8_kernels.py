"""The integer GEMM and convolution kernels: exact int32 results on every micro-kernel this host can run.

Each ISA path (avx512vnni's vpdpbusd, avx2's vpmaddwd, the generic Numba loops) packs weights in its
own panel layout; every one this host can run must give numpy's int64 result for the matrix product
(the convolution, which uses the same micro-kernels, on the host's), including the edge tiles, every zero-point
combination, int8 and uint8 on both sides, and sums far beyond int16. Tolerance: exact.

The last test documents the one place qrt and onnxruntime may disagree: onnxruntime's AVX2 u8 x s8
kernels add two products into a saturating int16 (VPMADDUBSW), so on full-range data without VNNI
its MatMulInteger is not the exact integer product the spec defines. qrt never saturates.
"""
import numpy as np
import pytest

from int8_helpers import node_model, random_q, run_ort, run_qrt, run_reference, stable_seed
from qrt.kernels.cpu import qconv as kconv
from qrt.kernels.cpu import qgemm as kgemm

_HOST = kgemm.ISA
ISAS = ["generic"] + (["avx2"] if _HOST in ("avx2", "avx512vnni") else []) + \
    (["avx512vnni"] if _HOST == "avx512vnni" else [])

SHAPES = [(1, 1, 1), (3, 5, 7), (9, 64, 33), (17, 130, 70), (40, 8, 65), (1, 300, 97)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("a_dt, b_dt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8),
                                        (np.int8, np.uint8)])
def test_matmul_exact_on_every_isa(isa, a_dt, b_dt):
    rng = np.random.default_rng(stable_seed(isa, a_dt, b_dt))
    for M, K, N in SHAPES:
        a = random_q(rng, (M, K), a_dt)
        b = random_q(rng, (K, N), b_dt)
        za = random_q(rng, (M,), a_dt)
        zb = random_q(rng, (N,), b_dt)
        want = (a.astype(np.int64) - za[:, None]) @ (b.astype(np.int64) - zb[None, :])
        packed = kgemm.pack_weights([b], zb[None, :], isa=isa)
        flip = 0x80 if a_dt == np.int8 else 0
        out = np.empty((M, N), np.int32)
        kgemm.matmul(a.view(np.uint8), flip, za.astype(np.int32) + (128 if flip else 0), packed,
                     kgemm.Epilogue(0, 1, N), out)
        np.testing.assert_array_equal(out, want, err_msg=f"{isa} {M}x{K}x{N}")


def _conv_reference(x, w, zx, zw, stride, pad, dilation, group):
    """int64 convolution of (x - zx) and (w - zw) by explicit tap sums (NCHW, 2-D)."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    wc = w.astype(np.int64) - np.asarray(zw, np.int64).reshape(-1, 1, 1, 1)
    oh = (h + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, m, oh, ow), np.int64)
    per = m // group
    for co in range(m):
        g = co // per
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dilation:i * dilation + stride * (oh - 1) + 1:stride,
                           j * dilation:j * dilation + stride * (ow - 1) + 1:stride]
                out[:, co] += np.einsum("nchw,c->nhw", patch, wc[co, :, i, j])
    return out


# The convolution driver shares the micro-kernels with the matrix product; checking it on the host's
# kernel alone saves compiling the other ISAs' parallel drivers (tens of seconds cold).
@pytest.mark.parametrize("isa", [_HOST])
def test_convolution_exact(isa):
    rng = np.random.default_rng(21)
    for (c, m, k, stride, pad, dil, group, size) in [(5, 7, 3, 1, 1, 1, 1, 9), (8, 6, 3, 2, 0, 2, 2, 11),
                                                     (16, 40, 1, 1, 0, 1, 1, 6), (3, 4, 5, 2, 2, 1, 1, 13)]:
        x = random_q(rng, (2, c, size, size - 1), np.int8)
        w = random_q(rng, (m, c // group, k, k), np.uint8)
        zw = random_q(rng, (m,), np.uint8)
        zx = -7
        want = _conv_reference(x, w, zx, zw, stride, pad, dil, group)
        per, cg = m // group, c // group
        cgp = (cg + 3) // 4 * 4
        taps = k * k
        mats = [np.ascontiguousarray(w[g * per:(g + 1) * per].reshape(per, cg, taps).transpose(2, 1, 0)).reshape(
            taps * cg, per) for g in range(group)]
        kmap = (np.arange(taps)[:, None] * cgp + np.arange(cg)[None, :]).reshape(-1)
        packed = kgemm.pack_weights(mats, zw.reshape(group, per), kmap=kmap, Kp=taps * cgp, isa=isa)
        packed.K = taps * cg
        oh, ow = want.shape[2:]
        geometry = (group, (1, k, k), (1, stride, stride), (1, dil, dil), (0, pad, pad), (0, pad, pad),
                    (1, oh, ow, m), cgp)
        for channels_last in (False, True):
            x_in = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if channels_last else x)
            bound = kconv.bind(x_in.shape, channels_last, 0x80, geometry, -(-per // packed.nr), False)
            xp = kconv.fill_buffer(bound, x_in.reshape(bound.x5_shape).view(np.uint8), 0x80, zx + 128,
                                   np.empty(bound.buffer_size, np.uint8))
            out = np.empty(bound.out3_shape, np.int32)
            kconv.run_conv(bound, xp, zx + 128, packed, packed.zb_nonzero, kgemm.Epilogue(0, group, per), channels_last,
                           cgp, out)
            got = out.reshape(2, oh, ow, m).transpose(0, 3, 1, 2) if channels_last else out.reshape(want.shape)
            np.testing.assert_array_equal(got, want, err_msg=f"{isa} c={c} m={m} k={k} channels_last={channels_last}")


@pytest.mark.parametrize("isa", ISAS)
def test_int32_sums_never_saturate(isa):
    """The largest products over a long reduction: exact in int32, where an int16 pair sum would clip."""
    K = 4096
    a = np.full((3, K), 255, np.uint8)
    b = np.full((K, 5), -128, np.int8)
    b[:, 1] = 127
    packed = kgemm.pack_weights([b], np.zeros((1, 5)), isa=isa)
    out = np.empty((3, 5), np.int32)
    kgemm.matmul(a, 0, np.zeros(3, np.int32), packed, kgemm.Epilogue(0, 1, 5), out)
    np.testing.assert_array_equal(out, a.astype(np.int64) @ b.astype(np.int64))
    assert out[0, 0] == 255 * -128 * K


def test_requantization_rounds_half_to_even_and_saturates():
    """QLinearMatMul on products that land exactly on .5 steps, and past both ends of the type."""
    a = np.array([[1, 3, 5, 7, 200, 0]], np.uint8).T          # rows of one product each
    b = np.array([[1]], np.uint8)
    consts = dict(a_s=np.array(1.0, np.float32), a_z=np.array(0, np.uint8), b=b, b_s=np.array(0.5, np.float32),
                  b_z=np.array(0, np.uint8), y_s=np.array(1.0, np.float32), y_z=np.array(-100, np.int8))
    model = node_model("QLinearMatMul", dict(a=a), consts, [("y", np.int8)], opset=10,
                       input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"])
    got = run_qrt(model, dict(a=a))[0].reshape(-1)
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4 (half to even), then + zero point; 100 + (-100) = 0; 0 -> -100.
    np.testing.assert_array_equal(got, [-100, -98, -98, -96, 0, -100])
    np.testing.assert_array_equal(got, run_reference(model, dict(a=a))[0].reshape(-1))


def _ort_saturation_candidates(a, b):
    """Outputs whose dot product has two same-sign products summing outside int16: the only places a
    saturating pair sum (VPMADDUBSW) can change the result, whichever k it pairs together."""
    products = np.sort(a[:, :, None].astype(np.int64) * b[None, :, :].astype(np.int64), axis=1)   # (M, K, N)
    return (products[:, -1, :] + products[:, -2, :] > 32767) | (products[:, 0, :] + products[:, 1, :] < -32768)


def test_full_range_matmulinteger_matches_spec_where_onnxruntime_may_saturate():
    rng = np.random.default_rng(4)
    M, K, N = 48, 256, 40
    a = random_q(rng, (M, K), np.uint8)
    b = random_q(rng, (K, N), np.int8)
    model = node_model("MatMulInteger", dict(a=a), dict(b=b), [("y", np.int32)], opset=10, input_order=["a", "b"])
    exact = a.astype(np.int64) @ b.astype(np.int64)
    got = run_qrt(model, dict(a=a))[0]
    np.testing.assert_array_equal(got, exact)                       # qrt: the spec's exact int32 result
    np.testing.assert_array_equal(got, run_reference(model, dict(a=a))[0])
    ort = run_ort(model, dict(a=a))[0]
    wrong = ort != exact
    # onnxruntime is exact with VNNI (vpdpbusd) and inexact without; where it is wrong, a pair sum
    # left int16, and with 7-bit activations (no pair can leave int16) it is exact again.
    assert not (wrong & ~_ort_saturation_candidates(a, b)).any()
    a7 = a >> 1
    ort7 = run_ort(model, dict(a=a7))[0]
    np.testing.assert_array_equal(ort7, a7.astype(np.int64) @ b.astype(np.int64))
    np.testing.assert_array_equal(run_qrt(model, dict(a=a7))[0], ort7)
