"""Streaming observers against direct numpy computations on the concatenated data."""
import tracemalloc

import numpy as np
import pytest

import calibration as C
from calibration import CalibrationMethod
from qrt import qmath
from qrt.errors import QuantizationError


def _growing_batches(n_batches=12, size=20_000, seed=0, kind="normal"):
    """Batches whose range grows and shifts, so histograms must re-bin several times."""
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(n_batches):
        if kind == "normal":
            b = rng.standard_normal(size) * (0.05 + 0.3 * i) + 0.1 * i
        elif kind == "lognormal":
            b = rng.lognormal(0.0, 0.5 + 0.1 * i, size)
        else:
            b = rng.uniform(-1.0 - i, 2.0 + 0.5 * i, size)
        batches.append(b.astype(np.float32).reshape(4, -1))
    return batches


def _feed(observer, batches):
    for b in batches:
        observer.update(b)
    return observer


def test_minmax_is_exact():
    batches = _growing_batches()
    data = np.concatenate([b.ravel() for b in batches])
    assert _feed(C.MinMaxObserver(), batches).compute_range() == (float(data.min()), float(data.max()))
    absmax = float(np.abs(data).max())
    assert _feed(C.MinMaxObserver(symmetric=True), batches).compute_range() == (-absmax, absmax)


def test_minmax_moving_average_is_onnxruntimes():
    """onnxruntime's MinMaxCalibrater: within one collect_data call the batch minima and maxima are
    averaged; successive calls merge by an exponential moving average."""
    batches = _growing_batches(6)
    c = 0.25
    mean = (float(np.mean([float(b.min()) for b in batches])), float(np.mean([float(b.max()) for b in batches])))
    got = _feed(C.MinMaxObserver(moving_average=True, averaging_constant=c), batches).compute_range()
    assert got == pytest.approx(mean, rel=1e-12)
    observer = _feed(C.MinMaxObserver(moving_average=True, averaging_constant=c), batches[:3])
    observer.end_collection()
    first = (float(np.mean([float(b.min()) for b in batches[:3]])), float(np.mean([float(b.max()) for b in batches[:3]])))
    second = (float(np.mean([float(b.min()) for b in batches[3:]])), float(np.mean([float(b.max()) for b in batches[3:]])))
    expected = tuple(f + c * (s - f) for f, s in zip(first, second))
    assert _feed(observer, batches[3:]).compute_range() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(QuantizationError, match="averaging_constant"):
        C.MinMaxObserver(moving_average=True, averaging_constant=1.5)


@pytest.mark.parametrize("kind", ["normal", "lognormal", "uniform"])
@pytest.mark.parametrize("percentile", [99.0, 99.9])
def test_percentile_within_one_bin_of_numpy(kind, percentile):
    batches = _growing_batches(kind=kind)
    data = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    observer = _feed(C.PercentileObserver(percentile=percentile), batches)
    cut = (100 - percentile) / 2
    expected = np.percentile(data, [cut, 100 - cut])
    assert observer.compute_range() == pytest.approx(tuple(expected), abs=observer.width)
    # The growth kept the histogram reasonably fitted to the data (at least a quarter of the bins).
    assert (data.max() - data.min()) >= observer.num_bins * observer.width / 4

    symmetric = _feed(C.PercentileObserver(percentile=percentile, symmetric=True), batches)
    t = np.percentile(np.abs(data), percentile)
    rmin, rmax = symmetric.compute_range()
    assert rmax == pytest.approx(min(t, data.max()), abs=symmetric.width)
    assert rmin == pytest.approx(max(-t, data.min()), abs=symmetric.width)


def _assert_within_one_bin(streamed, single):
    """Every value sits in the same bin or a neighbour: cumulative counts interleave."""
    cs, c1 = np.cumsum(streamed), np.cumsum(single)
    assert cs[-1] == c1[-1]
    assert np.all(cs[1:] >= c1[:-1]) and np.all(c1[1:] >= cs[:-1])
    # and only values sitting on a rounding boundary moved at all: float32 binning places a value
    # up to about 2**-24 * |x| / width bins off, and |x| / width stays below the number of bins
    # (an oversampled histogram has more values that close to an edge)
    assert np.abs(cs - c1).max() <= max(3, cs[-1] // 100_000, cs[-1] * cs.size * 2.0 ** -22)


@pytest.mark.parametrize("observer_factory", [
    lambda: C.PercentileObserver(num_bins=512),                  # span layout
    lambda: C.PercentileObserver(num_bins=512, symmetric=True),  # |x| layout
    lambda: C.EntropyObserver(num_bins=512),                     # signed layout
])
@pytest.mark.parametrize("kind", ["normal", "lognormal", "uniform"])
def test_rebinned_histogram_equals_single_pass(observer_factory, kind):
    batches = _growing_batches(kind=kind, size=8_000)
    observer = _feed(observer_factory(), batches)
    data = np.concatenate([b.ravel() for b in batches])
    if observer.layout == "absolute":
        data = np.abs(data)
    counts, edges = observer.histogram()
    assert counts.size == observer.storage_bins and counts.sum() == data.size
    assert edges[0] <= data.min() and data.max() <= edges[-1] * (1 + 1e-6) + 1e-30
    # oracle 1: the same float32 binning rule applied in one pass with the final edges
    index = ((data - np.float32(observer.lo)) * np.float32(1 / observer.width)).astype(np.int64)
    single = np.bincount(np.clip(index, 0, counts.size - 1), minlength=counts.size)
    _assert_within_one_bin(counts, single)
    # oracle 2: numpy's histogram with those edges
    edges = edges.copy()
    edges[-1] = max(edges[-1], float(data.max()))
    reference, _ = np.histogram(data.astype(np.float64), bins=edges)
    _assert_within_one_bin(counts, reference)


def test_entropy_range_for_gaussian_data():
    batches = _growing_batches(kind="normal", size=50_000)
    data = np.concatenate([b.ravel() for b in batches])
    rmin, rmax = _feed(C.EntropyObserver(), batches).compute_range()
    absmax = float(np.abs(data).max())
    assert rmin == -rmax
    assert 0 < rmax <= absmax
    assert rmax > 2 * data.std()     # KL keeps the bulk: not a degenerate tiny threshold


def test_entropy_clips_outliers_and_respects_non_negative_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:5] = [400, -350, 300, 500, -420]
    observer = C.EntropyObserver()
    observer.update(x)
    rmin, rmax = observer.compute_range()
    assert 1.0 < rmax < 50 and rmin == -rmax
    relu = C.EntropyObserver()
    relu.update(np.maximum(x, 0))
    rmin, rmax = relu.compute_range()
    assert rmin == 0.0 and 1.0 < rmax < 50


def _l2_error(x, rmin, rmax, qtype):
    scale, zero_point = qmath.compute_scale_zero_point(rmin, rmax, qtype)
    y = qmath.dequantize(qmath.quantize(x, scale, zero_point, qtype), scale, zero_point)
    return float(np.sum((y.astype(np.float64) - x) ** 2))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("qtype,levels", [("uint4", 16), (np.uint8, 256)])
def test_mse_range_is_near_the_best_actual_quantization_error(symmetric, qtype, levels):
    rng = np.random.default_rng(2)
    x = (rng.laplace(0.3, 1.0, 60_000)).astype(np.float32)
    observer = C.MSEObserver(symmetric=symmetric, num_levels=levels)
    for b in np.array_split(x, 7):
        observer.update(b)
    rmin, rmax = observer.compute_range()
    got = _l2_error(x, rmin, rmax, qtype)
    # brute force over clipping ranges with the real quantizer
    lows = np.linspace(x.min(), 0, 25) if not symmetric else [None]
    highs = np.linspace(0.5, x.max(), 60)
    best = min(_l2_error(x, (-h if lo is None else lo), h, qtype) for lo in lows for h in highs)
    # The observer models rounding noise as scale**2 / 12 per value, which is loose at 16 levels
    # (the zero point's rounding shifts the grid): allow 8 % there, 3 % at 256 levels.
    assert got <= (1.08 if levels == 16 else 1.03) * best, (got, best, rmin, rmax)
    assert got < _l2_error(x, float(x.min()), float(x.max()), qtype)
    if levels == 16:
        assert rmax < 0.7 * x.max()     # 4-bit: clipping the tails clearly pays
    if symmetric:
        assert rmin == -rmax or (rmin == x.min() and -rmin < rmax)   # clipped to the data


def test_distribution_moments_are_exact():
    batches = _growing_batches(kind="lognormal")
    data = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    observer = _feed(C.DistributionObserver(), batches)
    mean, std = observer.compute_distribution()
    assert mean == pytest.approx(data.mean(), rel=1e-9)
    assert std == pytest.approx(data.std(), rel=1e-9)
    absmax = float(np.abs(data).max())
    assert observer.compute_range() == (-absmax, absmax)


def test_constant_first_batches_then_real_data():
    for method in CalibrationMethod:
        observer = C.make_observer(method)
        observer.update(np.zeros(100, np.float32))
        observer.update(np.zeros(100, np.float32))
        assert observer.compute_range() == (0.0, 0.0)
        observer.update(np.linspace(-1, 3, 1000, dtype=np.float32))
        rmin, rmax = observer.compute_range()
        if method is CalibrationMethod.Distribution:
            assert (rmin, rmax) == (-3.0, 3.0)      # (-absmax, absmax) by definition
        else:
            assert -1.0 <= rmin <= 0.0 and 0.0 < rmax <= 3.0, (method, rmin, rmax)


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_memory_does_not_grow_with_batches(method):
    rng = np.random.default_rng(3)
    pool = [rng.standard_normal(50_000).astype(np.float32) * (1 + i) for i in range(10)]
    _feed(C.make_observer(method), pool[:3]).compute_range()     # compile / load kernels first

    def peak_bytes(n_batches):
        observer = C.make_observer(method)
        tracemalloc.start()
        try:
            for i in range(n_batches):
                observer.update(pool[i % len(pool)])
            observer.compute_range()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(10), peak_bytes(200)
    assert large <= small * 1.1 + 64 * 1024, (small, large)


def test_non_finite_data_is_rejected():
    observer = C.PercentileObserver()
    with pytest.raises(QuantizationError, match=r"1 NaN and 0 infinite"):
        observer.update(np.array([1.0, np.nan, 2.0], np.float32))
    with pytest.raises(QuantizationError, match=r"0 NaN and 1 infinite"):
        C.MinMaxObserver().update(np.array([1.0, -np.inf], np.float32))
    with pytest.raises(QuantizationError, match="no values were observed"):
        C.EntropyObserver().compute_range()


def test_make_observer_options_and_method_names():
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    assert isinstance(C.make_observer(OrtMethod.Percentile), C.PercentileObserver)
    assert isinstance(C.make_observer("mse"), C.MSEObserver)
    assert CalibrationMethod.parse(OrtMethod.Entropy) is CalibrationMethod.Entropy
    assert [m.value for m in CalibrationMethod][:4] == [m.value for m in OrtMethod]
    observer = C.make_observer(CalibrationMethod.Percentile, percentile=99.0, num_bins=256,
                               symmetric=True, moving_average=True)   # MinMax's option is ignored
    assert (observer.percentile, observer.num_bins, observer.symmetric) == (99.0, 256, True)
    observer = C.make_observer(CalibrationMethod.Entropy, num_bins=1024, num_quantized_bins=64)
    assert (observer.num_bins, observer.num_quantized_bins) == (1024, 64)
    with pytest.raises(QuantizationError, match=r"unknown calibration option\(s\) \['num_bin'\]"):
        C.make_observer("percentile", num_bin=10)
    with pytest.raises(QuantizationError, match="unknown calibration method"):
        C.make_observer("kl")
    with pytest.raises(QuantizationError, match="percentile must be in"):
        C.make_observer("percentile", percentile=101)
    with pytest.raises(QuantizationError, match="even"):
        C.EntropyObserver(num_bins=101)


def test_float16_and_float64_inputs():
    x = np.linspace(-3, 5, 1001)
    for dtype in (np.float16, np.float64):
        observer = C.MinMaxObserver()
        observer.update(x.astype(dtype))
        assert observer.compute_range() == (-3.0, 5.0)
        p = C.PercentileObserver(percentile=100.0)
        p.update(x.astype(dtype))
        assert p.compute_range() == pytest.approx((-3.0, 5.0), abs=8 / 2048 + 1e-9)
