"""Entropy (KL-divergence) calibration against onnxruntime's, on one batch and on ten.

onnxruntime's oracle is its ``HistogramCollector`` with method "entropy" (the engine of its
``EntropyCalibrater``) given all the data as one batch, with the histogram our search uses: 2048
bins over ``[-absmax, absmax]`` and 128 quantized bins. Differences then come from the search, not
from the bins.
"""
import contextlib
import io

import numpy as np
import pytest

import calibration as C
from calibration import _kernels
from qrt import qmath

ort_calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")

N_VALUES = 200_000
NUM_BINS = 2048
NUM_QUANTIZED_BINS = 128


def _data(kind, n=N_VALUES, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        x = rng.standard_normal(n)
    elif kind == "laplace":
        x = rng.laplace(0.0, 1.0, n)
    elif kind == "sigmoid":
        x = 1.0 / (1.0 + np.exp(-(0.8 * rng.standard_normal(n) + 0.9)))
    elif kind == "sigmoid_far_from_zero":    # like the quantizer's repro: values in [0.16, 0.95]
        x = 1.0 / (1.0 + np.exp(-rng.normal(0.6, 0.5, n)))
    elif kind == "relu":
        x = np.maximum(rng.standard_normal(n), 0.0)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def _onnxruntime_range(x):
    collector = ort_calibrate.HistogramCollector(method="entropy", symmetric=False, num_bins=NUM_BINS,
                                                 num_quantized_bins=NUM_QUANTIZED_BINS, percentile=99.999,
                                                 scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):      # it prints progress
        collector.collect({"t": [x]})
        rmin, rmax = collector.compute_collection_result()["t"][:2]
    return float(rmin), float(rmax)


def _observe(batches, **options):
    observer = C.EntropyObserver(num_bins=NUM_BINS, num_quantized_bins=NUM_QUANTIZED_BINS, **options)
    for b in batches:
        observer.update(b)
    return observer


def _uint8_sqnr_db(x, rmin, rmax):
    scale, zero_point = qmath.compute_scale_zero_point(rmin, rmax, np.uint8)
    y = qmath.dequantize(qmath.quantize(x, scale, zero_point, np.uint8), scale, zero_point)
    x = x.astype(np.float64)
    return float(10 * np.log10(np.sum(x ** 2) / np.sum((y.astype(np.float64) - x) ** 2)))


# Tolerances on the threshold, relative to onnxruntime's. Two-sided data: 12 %, on 10**6 values.
# Near the minimum the KL curve is flat and jittery (its level is mostly the sampling noise of
# 2048 bins), so the threshold is loosely determined by the data: with 2 * 10**5 values
# onnxruntime's own threshold moved by up to 19 % between one batch and ten of the same laplace
# data, and ours was up to 22 % from its one-batch value; with 10**6 values ours was within 8.6 %
# on eight seeds, at the same uint8 SQNR within 0.25 dB (checked here to 0.5 dB). Bounded one-sided
# data (Sigmoid): 3 %; the threshold sits near the maximum where the curve is steep (measured
# within 2 %).
@pytest.mark.parametrize("kind,n,rel", [("gaussian", 10 ** 6, 0.12), ("laplace", 10 ** 6, 0.12),
                                        ("sigmoid", N_VALUES, 0.03), ("sigmoid_far_from_zero", N_VALUES, 0.03)])
def test_range_close_to_onnxruntime(kind, n, rel):
    x = _data(kind, n)
    expected_min, expected_max = _onnxruntime_range(x)
    expected_sqnr = _uint8_sqnr_db(x, expected_min, expected_max)
    for batches in ([x], np.array_split(x, 10)):
        rmin, rmax = _observe(batches).compute_range()
        assert rmax == pytest.approx(expected_max, rel=rel), (kind, len(batches), rmax, expected_max)
        if x.min() >= 0:
            # one-sided: both clip the symmetric lower end to the data
            assert rmin == expected_min == float(x.min())
        else:
            assert rmin == -rmax or rmin == float(x.min())
            assert rmin == pytest.approx(expected_min, rel=rel)
        assert _uint8_sqnr_db(x, rmin, rmax) >= expected_sqnr - 0.5


def test_relu_zeros_do_not_pull_the_threshold_in():
    """Deliberate departure from onnxruntime: exact zeros stay out of the divergence.

    onnxruntime keeps the ReLU zero spike in its histogram and stops at 2.67 here (0.8 % of the
    positive values clipped, 29 dB in uint8); we keep nearly all values and quantize far better.
    """
    x = _data("relu", n=100_000)
    _, ort_max = _onnxruntime_range(x)
    observer = _observe(np.array_split(x, 10))
    rmin, rmax = observer.compute_range()
    assert observer.zero_count == np.count_nonzero(x == 0)
    assert rmin == 0.0
    assert ort_max < rmax <= float(x.max())
    positives = x[x > 0]
    assert np.mean(positives <= rmax) >= 0.9999
    ours, theirs = _uint8_sqnr_db(x, rmin, rmax), _uint8_sqnr_db(x, 0.0, ort_max)
    assert ours > 40 and ours > theirs + 10, (ours, theirs)


@pytest.mark.parametrize("mean,std,n", [(0.6, 0.5, 50_000), (1.0, 0.6, 20_000), (0.0, 0.4, 20_000)])
def test_sigmoid_outputs_keep_their_range(mean, std, n):
    """Values far from zero used to collapse to a range one bin wide (3 dB SQNR here)."""
    rng = np.random.default_rng(0)
    x = (1.0 / (1.0 + np.exp(-rng.normal(mean, std, n)))).astype(np.float32)
    rmin, rmax = _observe(np.array_split(x, 10)).compute_range()
    assert rmin == float(x.min())
    assert np.mean(x <= rmax) >= 0.999
    assert _uint8_sqnr_db(x, rmin, rmax) >= 30


def _kl_gap(counts, h_other, h_best):
    divergences = _kernels.entropy_divergences(counts, NUM_QUANTIZED_BINS)
    return (divergences[h_other] - divergences[h_best]) / divergences[h_best]


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "sigmoid", "relu"])
@pytest.mark.parametrize("order", ["shuffled", "growing"])
def test_ten_batches_agree_with_one(kind, order):
    x = _data(kind, n=100_000)
    if order == "growing":      # every batch widens the range: the stored histogram re-bins often
        x = x[np.argsort(np.abs(x), kind="stable")]
    single = _observe([x])
    streamed = _observe(np.array_split(x, 10))

    # The search histograms agree within a bin per value: their cumulative counts interleave.
    counts_1, edges_1 = single.search_histogram()
    counts_10, edges_10 = streamed.search_histogram()
    np.testing.assert_allclose(edges_10, edges_1, rtol=0, atol=1e-12)
    c1, c10 = np.cumsum(counts_1), np.cumsum(counts_10)
    assert c10[-1] == pytest.approx(c1[-1], rel=1e-12) == np.count_nonzero(x)
    slack = 1e-9 * c1[-1]
    assert np.all(c10[1:] >= c1[:-1] - slack) and np.all(c1[1:] >= c10[:-1] - slack)

    # The thresholds agree within a couple of bins; where they do not, the KL curve is flat there and
    # the streamed choice scores within 1 % of the single-batch optimum (seen: laplace, 6 bins apart
    # at 0.13 %), and the thresholds stay within 5 %.
    h1 = _kernels.entropy_best_half_width(counts_1, NUM_QUANTIZED_BINS)
    h10 = _kernels.entropy_best_half_width(counts_10, NUM_QUANTIZED_BINS)
    if abs(h10 - h1) > 2:
        assert abs(h10 - h1) <= 0.05 * h1 and _kl_gap(counts_1, h10, h1) <= 0.01, (h1, h10)
    r1, r10 = single.compute_range(), streamed.compute_range()
    assert r10 == pytest.approx(r1, abs=abs(h10 - h1) * (edges_1[1] - edges_1[0]) + 1e-12)


def test_resample_equals_piecewise_uniform_density():
    """Oracle: the stored histogram's cumulative counts, interpolated linearly at the new edges."""
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 50, 96)
    counts[[0, 1, 95]] = 0
    lo, width = -1.3, 0.027
    old_edges = lo + width * np.arange(counts.size + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    for new_lo, new_width, n in [(-1.0, 0.0513, 40), (-1.3, 0.027 * 3, 32), (-1.2, 0.011, 200)]:
        got = _kernels.resample(counts, lo, width, new_lo, new_width, n)
        inner = np.interp(new_lo + new_width * np.arange(1, n), old_edges, cumulative)
        expected = np.diff(np.concatenate([[0.0], inner, [cumulative[-1]]]))   # the rest to the ends
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # old edges on new edges (up to rounding): whole-bin merges, no fractions of a count
    merged = _kernels.resample(counts, lo, width, lo, 4 * width, 24)
    np.testing.assert_array_equal(merged, counts.reshape(24, 4).sum(axis=1))


def test_divergence_charges_clipping():
    """Values in the top quarter only: TensorRT's normalized Q scores a slice that ends one bin
    into the data as a perfect match; with clipping charged the whole range wins."""
    counts = np.zeros(256)
    counts[200:256] = np.linspace(50, 5, 56)
    divergences = _kernels.entropy_divergences(counts, 16)
    assert np.all(np.isinf(divergences[:73]))       # slices [-h, h) that hold no values
    assert divergences[73] > 1.0                     # one bin of 56: nearly all values clipped
    assert _kernels.entropy_best_half_width(counts, 16) == 128


def test_only_zeros():
    observer = C.EntropyObserver()
    observer.update(np.zeros(10, np.float32))
    observer.update(-np.zeros(5, np.float32))
    assert observer.compute_range() == (0.0, 0.0)
    assert observer.zero_count == 15
