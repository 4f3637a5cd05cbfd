"""Mergeable observers and sharded calibration: the merge of N shards equals one pass over the stream.

Exact equality throughout (counts are integers, extrema are compared, grids come from the same float
operations on the same extents); Distribution's mean/std are merged with Chan's formula, equal to
1e-12 relative.
"""
import numpy as np
import pytest

from calibration import CalibrationMethod, collect_ranges, make_observer
from calibration.shards import _split, calibrate_sharded, merge, ranges_of
from qrt.errors import QuantizationError

METHODS = [
    (CalibrationMethod.MinMax, {}),
    (CalibrationMethod.MinMax, {"moving_average": True, "averaging_constant": 0.1}),
    (CalibrationMethod.Entropy, {"num_bins": 256, "num_quantized_bins": 32}),
    (CalibrationMethod.Percentile, {"num_bins": 256, "percentile": 99.0}),
    (CalibrationMethod.Percentile, {"num_bins": 256, "symmetric": True}),
    (CalibrationMethod.Distribution, {"num_bins": 256}),
    (CalibrationMethod.MSE, {"num_bins": 64}),
]


def _stream(seed=7):
    """Batches whose ranges grow, shrink and shift (so histograms re-bin several times), with zeros."""
    rng = np.random.default_rng(seed)
    batches = []
    for i, (loc, scale) in enumerate([(0, 0.1), (1, 0.5), (-3, 2), (0, 0.01), (5, 1), (-20, 3), (0, 1), (2, 8)]):
        x = (rng.normal(loc, scale, size=300 + 50 * i)).astype(np.float32)
        x[::7] = 0.0
        batches.append(x)
    batches.insert(3, np.zeros(0, np.float32))     # an empty batch counts for nothing
    return batches


def _single(method, options, batches):
    observer = make_observer(method, **options)
    for x in batches:
        observer.update(x)
    return observer


def _sharded(method, options, batches, num_shards):
    extents = [(float(x.min()), float(x.max())) if x.size else None for x in batches]
    shards = []
    for first, part in _split(batches, num_shards):
        observer = make_observer(method, **options)
        for index, extent in enumerate(extents):
            if first <= index < first + len(part):
                observer.update(batches[index])
            elif extent is not None:
                observer.skip(*extent)
        shards.append({"t": observer})
    return merge(shards)["t"]


@pytest.mark.parametrize("num_shards", [2, 3, 9])
@pytest.mark.parametrize("method,options", METHODS, ids=lambda v: getattr(v, "name", str(v)))
def test_merge_of_replayed_shards_equals_single_pass(method, options, num_shards):
    batches = _stream()
    single = _single(method, options, batches)
    merged = _sharded(method, options, batches, num_shards)
    assert merged.compute_range() == single.compute_range()
    assert (merged.n_updates, merged.data_min, merged.data_max) == (single.n_updates, single.data_min, single.data_max)
    if hasattr(single, "counts"):
        assert (merged.lo, merged.width) == (single.lo, single.width)
        np.testing.assert_array_equal(merged.counts, single.counts)
    if method == CalibrationMethod.Entropy:
        assert merged.zero_count == single.zero_count
    if method == CalibrationMethod.Distribution:
        np.testing.assert_allclose(merged.compute_distribution(), single.compute_distribution(), rtol=1e-12)


def test_minmax_merges_independent_observers_exactly():
    batches = _stream()
    parts = [_single(CalibrationMethod.MinMax, {}, batches[i::3]) for i in range(3)]
    merged = merge([{"t": p} for p in parts])["t"]
    assert merged.compute_range() == _single(CalibrationMethod.MinMax, {}, batches).compute_range()


def test_merge_refuses_what_it_cannot_merge_exactly():
    batches = _stream()
    a = _single(CalibrationMethod.Percentile, {"num_bins": 256}, batches[:3])
    b = _single(CalibrationMethod.Percentile, {"num_bins": 256}, batches[5:])
    with pytest.raises(QuantizationError, match="different grids"):
        a.merge(b)
    with pytest.raises(QuantizationError, match="cannot merge"):
        a.merge(_single(CalibrationMethod.Percentile, {"num_bins": 128}, batches[:3]))
    with pytest.raises(QuantizationError, match="cannot merge"):
        a.merge(make_observer(CalibrationMethod.MinMax))


@pytest.mark.parametrize("method,options", [METHODS[0], METHODS[2], METHODS[3]],
                         ids=["MinMax", "Entropy", "Percentile"])
def test_sharded_calibration_of_a_model_equals_collect_ranges(method, options):
    from qrt.demo import MODEL_PATH, batches, load_digits_data
    calib_x = load_digits_data()[0][:80]
    feeds = batches(calib_x, batch_size=10)
    single = collect_ranges(MODEL_PATH, feeds, method=method, progress=False, **options)
    sharded = ranges_of(calibrate_sharded(MODEL_PATH, feeds, num_shards=3, method=method, **options))
    assert sharded == single


def test_sharded_calibration_types_what_onnx_inference_cannot_as_calibrate_does():
    """com.microsoft FusedConv defeats onnx shape inference: calibrate types its output by running the
    stream's first batch, and every shard must select the same tensors from that same batch."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [helper.make_node("FusedConv", ["x", "W"], ["a"], domain="com.microsoft", activation="Relu", pads=[1] * 4),
         helper.make_node("Sigmoid", ["a"], ["y"])], "untyped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    feeds = [{"x": rng.uniform(-s, s, (2, 2, 6, 6)).astype(np.float32)} for s in (1, 3, 0.5, 6, 2)]
    single = collect_ranges(model.SerializeToString(), feeds, method="Percentile", progress=False, num_bins=128)
    assert "a" in single
    sharded = calibrate_sharded(model.SerializeToString(), feeds, num_shards=2, method="Percentile", num_bins=128)
    assert ranges_of(sharded) == single
