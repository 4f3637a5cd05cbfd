"""Streaming range observers: ``update(array)`` per batch, ``compute_range() -> (rmin, rmax)``.

Every observer keeps fixed-size state, so calibrating on 10 or 10,000 batches takes the same memory
(onnxruntime's calibrators keep every activation of every batch until the end).

Histogram observers keep a fixed number of equal-width bins. When a batch falls outside the
current range, the bin width grows by an integer factor and the new edges are chosen among the old
ones, so old bins merge whole into new bins: re-binning adds no interpolation error and the result
is the histogram a single pass with the final edges would have built. Three layouts:

* ``"signed"``: ``[-T, T]`` with 0 on the middle edge (entropy, distribution);
* ``"absolute"``: ``|x|`` over ``[0, T]`` (symmetric percentile and MSE);
* ``"span"``: ``[lo, hi]`` fitted to the data (percentile, MSE).

Like onnxruntime, the ranges of histogram methods are clipped to the observed minimum and maximum,
so a symmetric method's ``(-t, t)`` loses its symmetry when the data does not reach ``-t`` (a
symmetric quantizer takes the larger magnitude again).
"""
from __future__ import annotations

import enum
import math

import numpy as np

from qrt.errors import QuantizationError

from . import _kernels


class CalibrationMethod(enum.Enum):
    """onnxruntime's calibration methods (same names and values) plus MSE."""

    MinMax = 0
    Entropy = 1
    Percentile = 2
    Distribution = 3
    MSE = 4

    @classmethod
    def parse(cls, value) -> "CalibrationMethod":
        """Accepts a member, onnxruntime's ``CalibrationMethod`` member (by name) or a name string."""
        if isinstance(value, cls):
            return value
        name = getattr(value, "name", value)
        if isinstance(name, str):
            for member in cls:
                if member.name.lower() == name.strip().lower():
                    return member
        raise QuantizationError(f"unknown calibration method {value!r}; expected one of "
                                + ", ".join(m.name for m in cls))


def _as_float_values(array) -> np.ndarray:
    """A flat float32/float64 view (copy only when needed) of a calibration tensor."""
    values = np.asarray(array)
    if values.dtype.kind != "f" or values.dtype not in (np.float32, np.float64):
        if values.dtype.kind not in "fiub" and values.dtype.name != "bfloat16":
            raise QuantizationError(f"cannot observe a tensor of dtype {values.dtype}")
        values = values.astype(np.float32)
    return np.ascontiguousarray(values).reshape(-1)


def _min_max(values: np.ndarray):
    # numpy's min/max are SIMD reductions (Numba left the same loop scalar: 3x slower here), and
    # they propagate NaN, which doubles as the check for non-finite data.
    lo = float(values.min())
    hi = float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        n_nan = int(np.count_nonzero(np.isnan(values)))
        n_inf = int(np.count_nonzero(np.isinf(values)))
        raise QuantizationError(f"tensor contains {n_nan} NaN and {n_inf} infinite value(s) out of "
                                f"{values.size}; calibration needs finite data")
    return lo, hi


class Observer:
    """Base class: counts updates and tracks the exact observed minimum and maximum."""

    method: CalibrationMethod

    def __init__(self):
        self.n_updates = 0
        self.data_min = math.inf
        self.data_max = -math.inf

    def update(self, array) -> None:
        """Observes one batch of a tensor; raises QuantizationError on NaN or infinite values."""
        values = _as_float_values(array)
        if values.size == 0:
            return
        lo, hi = _min_max(values)
        self.n_updates += 1
        self.data_min = min(self.data_min, lo)
        self.data_max = max(self.data_max, hi)
        self._observe(values, lo, hi)

    def _observe(self, values, lo, hi):
        """Subclasses fold one batch (with its min and max) into their state."""

    def skip(self, lo, hi) -> None:
        """Advances the state as a batch spanning ``[lo, hi]`` that another shard observes would, without
        counting its values.

        A shard that calls ``update`` with its own batches and ``skip`` with every other batch of the
        stream, in stream order, ends on the grid a single pass ends on (growth depends only on the batches' extents),
        holding exactly its own values' counts on that grid; :meth:`merge` then sums the shards into the
        single-pass state (see :mod:`calibration.shards`).
        """
        self.data_min = min(self.data_min, float(lo))
        self.data_max = max(self.data_max, float(hi))
        self._advance(float(lo), float(hi))

    def _advance(self, lo, hi):
        """Subclasses move what depends only on a batch's extent (grid, moving average)."""

    def merge(self, other: "Observer") -> "Observer":
        """Folds ``other`` (same class and options) into this observer and returns it.

        Exact: extrema are compared, counts are integers summed. Histograms must share their grid,
        which shards replaying one stream (:meth:`skip`) do; otherwise QuantizationError.
        """
        if type(other) is not type(self) or self._options() != other._options():
            raise QuantizationError(f"cannot merge {type(other).__name__}{other._options()} into "
                                    f"{type(self).__name__}{self._options()}")
        self._merge(other)
        self.n_updates += other.n_updates
        self.data_min = min(self.data_min, other.data_min)
        self.data_max = max(self.data_max, other.data_max)
        return self

    def _options(self) -> dict:
        return {}

    def _merge(self, other):
        """Subclasses merge their own state (before the base counters are)."""

    def compute_range(self) -> tuple[float, float]:
        if self.n_updates == 0:
            raise QuantizationError(f"{type(self).__name__}: no values were observed")
        return self._range()

    def _range(self) -> tuple[float, float]:
        return self.data_min, self.data_max

    def _clip(self, rmin, rmax):
        rmin = min(max(rmin, self.data_min), self.data_max)
        rmax = max(min(rmax, self.data_max), self.data_min)
        return float(rmin), float(rmax)


class MinMaxObserver(Observer):
    """Global minimum and maximum, or (``moving_average``) onnxruntime's averaged range.

    onnxruntime's MinMax calibrater averages the batches' minima and maxima over one
    ``collect_data`` call and merges successive calls by an exponential moving average
    (``averaging_constant`` of the way to the new call's range). Here one collection runs until
    :meth:`end_collection` (qrt's quantizer calls it between CalibStridedMinMax strides), so a
    single pass over the data gives the plain mean, as in onnxruntime. With ``symmetric`` the
    (averaged) range becomes ``(-absmax, absmax)``.
    """

    method = CalibrationMethod.MinMax

    def __init__(self, symmetric=False, moving_average=False, averaging_constant=0.01):
        super().__init__()
        if moving_average and not 0.0 <= averaging_constant <= 1.0:
            raise QuantizationError(f"averaging_constant must be in [0, 1], got {averaging_constant}")
        self.symmetric = bool(symmetric)
        self.moving_average = bool(moving_average)
        self.averaging_constant = float(averaging_constant)
        self.merged = None              # the range of the collections already ended
        self._sums = [0.0, 0.0, 0]      # minima, maxima, batches of the open collection

    def _observe(self, values, lo, hi):
        self._sums[0] += lo
        self._sums[1] += hi
        self._sums[2] += 1

    def _symmetric(self, lo, hi):
        if not self.symmetric:
            return lo, hi
        absmax = max(abs(lo), abs(hi))
        return -absmax, absmax

    def _merged_with_open(self):
        total_lo, total_hi, count = self._sums
        if not self.moving_average and self.data_min <= self.data_max:
            return self._symmetric(self.data_min, self.data_max)
        if not count:
            return self.merged
        if self.moving_average:
            current = self._symmetric(total_lo / count, total_hi / count)
        else:
            current = self._symmetric(self.data_min, self.data_max)
        if self.merged is None or not self.moving_average:
            return current
        c = self.averaging_constant
        return (self.merged[0] + c * (current[0] - self.merged[0]),
                self.merged[1] + c * (current[1] - self.merged[1]))

    def end_collection(self):
        """Closes one collection (one onnxruntime ``collect_data`` call)."""
        self.merged = self._merged_with_open()
        self._sums = [0.0, 0.0, 0]

    def _advance(self, lo, hi):
        self._observe(None, lo, hi)

    def _options(self):
        return {"symmetric": self.symmetric, "moving_average": self.moving_average,
                "averaging_constant": self.averaging_constant}

    def _merge(self, other):
        # Plain min/max merges through data_min/data_max (the base class). Moving averages merge exactly
        # only between shards that replayed one stream (skip()): each then holds the single-pass average.
        if other.merged is None and not other._sums[2]:
            return
        if self.merged is None and not self._sums[2]:
            self.merged, self._sums = other.merged, list(other._sums)
        elif not self.moving_average:
            self._sums = [a + b for a, b in zip(self._sums, other._sums)]
        elif (self.merged, self._sums) != (other.merged, other._sums):
            raise QuantizationError("moving-average MinMax ranges merge exactly only between shards that "
                                    "replayed the same stream (Observer.skip); these saw different batches")

    def _range(self):
        lo, hi = self._merged_with_open()
        return float(lo), float(hi)


class HistogramObserver(Observer):
    """A fixed-size histogram that re-bins by whole-bin merges as the observed range grows.

    It stores ``num_bins * oversampling`` bins; subclasses that need ``num_bins`` bins fitted to the
    final data whatever order the batches came in oversample and resample at the end (growth by an
    integer factor can leave the data in little more than half of the bins).
    """

    layout = "span"
    oversampling = 1

    def __init__(self, num_bins=2048):
        super().__init__()
        num_bins = int(num_bins)
        if num_bins < 2 or (self.layout == "signed" and num_bins % 2):
            raise QuantizationError(f"{type(self).__name__}: num_bins must be >= 2"
                                    + (" and even" if self.layout == "signed" else "")
                                    + f", got {num_bins}")
        self.num_bins = num_bins
        self.storage_bins = num_bins * self.oversampling
        self.counts = np.zeros(self.storage_bins, dtype=np.int64)
        self.lo = 0.0
        self.width = 0.0

    # --- histogram state ---------------------------------------------------------------------
    @property
    def hi(self):
        return self.lo + self.storage_bins * self.width

    def histogram(self):
        """The stored ``(counts, edges)`` like ``np.histogram``."""
        return self.counts.copy(), self.lo + self.width * np.arange(self.storage_bins + 1)

    def _initial_extent(self, lo, hi):
        if self.layout == "signed":
            absmax = max(abs(lo), abs(hi))
            return -absmax, absmax
        if self.layout == "absolute":
            return 0.0, max(abs(lo), abs(hi))
        return lo, hi

    def _start(self, lo, hi):
        first, last = self._initial_extent(lo, hi)
        width = (last - first) / self.storage_bins
        if width <= 0.0:
            # Constant data so far: any positive width works, the range is later clipped to the data.
            width = max(abs(first), 1.0) * 2.0 ** -20 / self.storage_bins
            if self.layout == "signed":
                first = -width * self.storage_bins / 2
        self.lo, self.width = first, width

    def _grow(self, lo, hi):
        """Widens the histogram (by an integer factor, on old edges) until it covers [lo, hi].

        New edges are old edges ``shift`` bins below the old first one, so old bin ``j`` lies inside
        new bin ``(j + shift) // factor``; a negative shift drops empty bins from the bottom.
        """
        n, w, old_lo, old_hi = self.storage_bins, self.width, self.lo, self.hi
        if self.layout == "signed":
            absmax = max(abs(lo), abs(hi))
            if absmax <= old_hi:
                return
            factor = float(math.ceil(absmax / old_hi))
            shift = (factor - 1.0) * (n // 2)
        elif self.layout == "absolute":
            absmax = max(abs(lo), abs(hi))
            if absmax <= old_hi:
                return
            factor, shift = float(math.ceil(absmax / old_hi)), 0.0
        else:
            if lo >= old_lo and hi <= old_hi:
                return
            # Cover everything seen so far (update() already merged this batch into data_min/max),
            # centred on it so later growth on either side finds room.
            first, last = self.data_min, self.data_max
            factor = float(max(1, math.ceil((last - first) / (n * w))))
            while True:
                lowest_shift = math.ceil((old_lo - first) / w)
                highest_shift = math.floor((old_lo + factor * n * w - last) / w)
                if lowest_shift <= highest_shift:
                    centred = round((old_lo - (first + last) / 2) / w + factor * n / 2)
                    shift = float(min(max(centred, lowest_shift), highest_shift))
                    break
                # Beyond 2**52 adding 1 is lost to rounding; doubling keeps the factor an integer.
                factor = factor + 1.0 if factor < 2.0 ** 52 else factor * 2.0
        self.counts = _kernels.rebin(self.counts, shift, factor)
        self.lo = old_lo - shift * w
        self.width = factor * w

    def _observe(self, values, lo, hi):
        self._advance(lo, hi)
        self._add(values)

    def _advance(self, lo, hi):
        if self.width == 0.0:   # no grid yet: this is the first batch of the stream
            self._start(lo, hi)
        else:
            self._grow(lo, hi)

    def _options(self):
        return {"num_bins": self.num_bins, "layout": self.layout}

    def _merge(self, other):
        if other.width == 0.0:
            return
        if self.width == 0.0:
            self.lo, self.width = other.lo, other.width
        elif (self.lo, self.width) != (other.lo, other.width):
            raise QuantizationError(
                f"{type(self).__name__}: histograms on different grids (lo {self.lo!r}, width {self.width!r} vs "
                f"lo {other.lo!r}, width {other.width!r}) cannot merge exactly; collect shards with "
                "calibration.shards, which replays the whole stream's extents on every shard")
        self.counts = self.counts + other.counts

    def _add(self, values):
        typed = values.dtype.type
        if self.layout == "absolute":
            _kernels.histogram_add_abs(values, self.counts, typed(1.0 / self.width))
        else:
            _kernels.histogram_add(values, self.counts, typed(self.lo), typed(1.0 / self.width))


class PercentileObserver(HistogramObserver):
    """The range holding ``percentile`` percent of the values (onnxruntime's Percentile method).

    Not symmetric: cuts ``(100 - percentile) / 2`` percent from each tail of the value histogram.
    Symmetric: ``(-t, t)`` with ``t`` the ``percentile`` of ``|x|``. Positions inside a bin are
    interpolated linearly, so the error against ``np.percentile`` is below one bin width.
    """

    method = CalibrationMethod.Percentile

    def __init__(self, percentile=99.999, num_bins=2048, symmetric=False):
        if not 0.0 <= float(percentile) <= 100.0:
            raise QuantizationError(f"percentile must be in [0, 100], got {percentile}")
        self.layout = "absolute" if symmetric else "span"
        super().__init__(num_bins)
        self.percentile = float(percentile)
        self.symmetric = bool(symmetric)

    def _options(self):
        return {**super()._options(), "percentile": self.percentile}

    def _quantile(self, fraction):
        cumulative = np.cumsum(self.counts, dtype=np.float64)
        target = fraction * cumulative[-1]
        j = int(np.searchsorted(cumulative, target, side="left"))
        j = min(j, self.storage_bins - 1)
        before = cumulative[j - 1] if j else 0.0
        inside = self.counts[j]
        position = (target - before) / inside if inside else 0.0
        return self.lo + (j + position) * self.width

    def _range(self):
        if self.symmetric:
            t = self._quantile(self.percentile / 100.0)
            return self._clip(-t, t)
        cut = (100.0 - self.percentile) / 200.0
        return self._clip(self._quantile(cut), self._quantile(1.0 - cut))


class EntropyObserver(HistogramObserver):
    """KL-divergence calibration (TensorRT's method, as onnxruntime's Entropy).

    The search runs on ``num_bins`` bins over ``[-a, a]``, ``a`` the largest observed magnitude, as
    onnxruntime's histogram of a single batch: thresholds ``t`` are tried from
    ``num_quantized_bins`` bins wide to the whole histogram (see
    :func:`calibration._kernels.entropy_best_half_width`, which also charges the values a threshold
    clips), and the range is ``(-t, t)`` clipped to the observed data.

    The streamed histogram stores ``oversampling`` times more bins and is resampled onto the search
    bins at the end, so ten batches give the search nearly the histogram one batch would (the KL
    divergence depends on the bin width: a histogram that growth left twice as coarse moves the
    threshold by tens of bins). At the defaults that is 128 KiB of counts per tensor.

    Exact zeros are counted apart and left out of the divergence: zero is a level of every
    quantization range, so they cost nothing whatever the threshold. Kept in the histogram, the
    spike of a ReLU output would be smeared over a quantized level in Q, and the search would trade
    real clipping error for a narrower level around that spike (on half-normal ReLU data it clips
    6 % of the positive values, 18 dB SQNR in uint8).
    """

    method = CalibrationMethod.Entropy
    layout = "signed"
    oversampling = 8

    def __init__(self, num_bins=2048, num_quantized_bins=128):
        super().__init__(num_bins)
        if not 2 <= int(num_quantized_bins) <= num_bins:
            raise QuantizationError(f"num_quantized_bins must be in [2, num_bins={num_bins}], "
                                    f"got {num_quantized_bins}")
        self.num_quantized_bins = int(num_quantized_bins)
        self.zero_count = 0

    def _options(self):
        return {**super()._options(), "num_quantized_bins": self.num_quantized_bins}

    def _merge(self, other):
        super()._merge(other)
        self.zero_count += other.zero_count

    def _add(self, values):
        typed = values.dtype.type
        self.zero_count += _kernels.histogram_add_nonzero(values, self.counts, typed(self.lo),
                                                          typed(1.0 / self.width))

    def search_histogram(self):
        """``(counts, edges)``: float64 counts of the non-zero values on ``num_bins`` bins over
        ``[-a, a]``, the histogram the threshold search runs on."""
        a = max(abs(self.data_min), abs(self.data_max))
        width = 2.0 * a / self.num_bins
        counts = _kernels.resample(self.counts, self.lo, self.width, -a, width, self.num_bins)
        return counts, -a + width * np.arange(self.num_bins + 1)

    def _range(self):
        if not self.counts.any():
            return self._clip(0.0, 0.0)     # only zeros were observed
        counts, edges = self.search_histogram()
        half = _kernels.entropy_best_half_width(counts, self.num_quantized_bins)
        t = half * (edges[1] - edges[0])
        return self._clip(-t, t)


class DistributionObserver(HistogramObserver):
    """Mean and standard deviation (onnxruntime's Distribution method, used for float8 scales).

    Moments are exact (streamed float64 sums, merged with Chan's formula); the histogram over
    ``[-T, T]`` is kept as onnxruntime reports it. ``compute_range`` returns ``(-absmax, absmax)``
    like the ``lowest``/``highest`` onnxruntime attaches to this method;
    ``compute_distribution`` returns ``(mean, std)``.
    """

    method = CalibrationMethod.Distribution
    layout = "signed"

    def __init__(self, num_bins=2048):
        super().__init__(num_bins)
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def _observe(self, values, lo, hi):
        super()._observe(values, lo, hi)
        total, total_sq = _kernels.sum_and_sum_of_squares(values)
        n = values.size
        batch_mean = total / n
        batch_m2 = max(total_sq - n * batch_mean * batch_mean, 0.0)
        merged = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / merged
        self.m2 += batch_m2 + delta * delta * self.count * n / merged
        self.count = merged

    def _merge(self, other):
        super()._merge(other)
        if other.count:     # Chan's parallel update: exact up to float64 rounding (the range is exact)
            merged = self.count + other.count
            delta = other.mean - self.mean
            self.mean += delta * other.count / merged
            self.m2 += other.m2 + delta * delta * self.count * other.count / merged
            self.count = merged

    def compute_distribution(self) -> tuple[float, float]:
        if self.n_updates == 0:
            raise QuantizationError(f"{type(self).__name__}: no values were observed")
        return float(self.mean), float(math.sqrt(self.m2 / self.count))

    def _range(self):
        absmax = max(abs(self.data_min), abs(self.data_max))
        return -absmax, absmax


class MSEObserver(HistogramObserver):
    """The clipping range with the least L2 quantization error (torch's HistogramObserver idea).

    Searches every pair of histogram edges (or every threshold when ``symmetric``) for a
    ``num_levels``-level uniform quantizer; see :func:`calibration._kernels.mse_best_range`.
    """

    method = CalibrationMethod.MSE

    def __init__(self, num_bins=2048, num_levels=256, symmetric=False):
        self.layout = "absolute" if symmetric else "span"
        super().__init__(num_bins)
        if int(num_levels) < 2:
            raise QuantizationError(f"num_levels must be >= 2, got {num_levels}")
        self.num_levels = int(num_levels)
        self.symmetric = bool(symmetric)

    def _options(self):
        return {**super()._options(), "num_levels": self.num_levels}

    def _range(self):
        counts = self.counts.astype(np.float64)
        if self.symmetric:
            t = _kernels.mse_best_threshold(counts, self.width, self.num_levels)
            return self._clip(-t, t)
        a, b = _kernels.mse_best_range(counts, self.lo, self.width, self.num_levels)
        return self._clip(a, b)


_OBSERVERS = {
    CalibrationMethod.MinMax: MinMaxObserver,
    CalibrationMethod.Entropy: EntropyObserver,
    CalibrationMethod.Percentile: PercentileObserver,
    CalibrationMethod.Distribution: DistributionObserver,
    CalibrationMethod.MSE: MSEObserver,
}

_OPTIONS = {
    CalibrationMethod.MinMax: {"symmetric", "moving_average", "averaging_constant"},
    CalibrationMethod.Entropy: {"num_bins", "num_quantized_bins"},
    CalibrationMethod.Percentile: {"percentile", "num_bins", "symmetric"},
    CalibrationMethod.Distribution: {"num_bins"},
    CalibrationMethod.MSE: {"num_bins", "num_levels", "symmetric"},
}
KNOWN_OPTIONS = frozenset().union(*_OPTIONS.values())


def make_observer(method=CalibrationMethod.MinMax, **options) -> Observer:
    """An observer for ``method``; options that another method uses are ignored (the quantizer
    passes one set of calibration options whatever the method), unknown names are an error."""
    method = CalibrationMethod.parse(method)
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise QuantizationError(f"unknown calibration option(s) {sorted(unknown)}; known options are "
                                f"{sorted(KNOWN_OPTIONS)}")
    relevant = {k: v for k, v in options.items() if k in _OPTIONS[method]}
    return _OBSERVERS[method](**relevant)
