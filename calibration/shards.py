"""Calibration split over shards of the batches, merged into exactly the single-process result.

A streaming histogram's grid depends on the order in which batch extents arrived, so shards that each
started their own grid could not be summed without re-binning error. Two passes avoid that:

1. every shard runs its batches and reports each tensor's ``(min, max)`` per batch (:func:`extents`);
2. every shard replays the whole stream in order: its own batches through ``update``, the others'
   extents through ``skip`` (:func:`observe`). All shards end on the grid one process would have
   built, each holding only its own counts, and :func:`merge` sums them.

So ``calibrate_sharded(model, batches, n)`` gives the same observers as ``calibrate(model, batches)``
for every method (Distribution's mean and std up to float64 rounding; its range exactly), at the cost of
running each batch twice. ``map_fn`` runs the per-shard work: the builtin ``map`` in one process,
:func:`qrt.ray.calibrate` on a Ray cluster.
"""
from __future__ import annotations

from qrt.errors import QrtError, QuantizationError

from .collect import (_FLOAT_TYPES, _check_feeds, _element_types, _load, _observe, _select, _untyped, _wanted,
                      _with_outputs)
from .observers import CalibrationMethod, _as_float_values, _min_max, make_observer
from .tensor_types import with_observed_types


class _ShardRunner:
    """The tensors ``calibrate`` observes and a session producing them, for one shard's batches.

    ``first_batch`` is the stream's batch 0 on every shard: where onnx's inference leaves a tensor
    untyped, ``calibrate`` runs it once to see the types, and every shard must select what it does.
    """

    def __init__(self, model, tensor_names, providers, first_batch):
        from qrt import InferenceSession
        self.proto, self.label = _load(model)
        initializer_names = {t.name for t in self.proto.graph.initializer}
        self.required = [i.name for i in self.proto.graph.input if i.name not in initializer_names]
        self.optional = [i.name for i in self.proto.graph.input if i.name in initializer_names]
        types, infos = _element_types(self.proto)
        wanted = _wanted(self.proto, self.label, tensor_names)
        if _untyped(self.proto, wanted, types, infos):
            feeds = _check_feeds(self.label, 0, first_batch, self.required, self.optional)
            self.proto, _ = with_observed_types(self.proto, feeds, self.label)
            types, infos = _element_types(self.proto)
        self.inputs, self.activations, self.initializers = _select(self.proto, self.label, tensor_names, wanted,
                                                                   types, infos)
        self.session = None
        if self.activations:
            self.session = InferenceSession(_with_outputs(self.proto, self.activations, infos),
                                            providers=providers or ["CPUExecutionProvider"])

    @property
    def names(self):
        return self.inputs + self.activations

    def values(self, index, batch):
        """``{tensor: array}`` of batch ``index`` (its number in the whole stream, for error messages)."""
        feeds = _check_feeds(self.label, index, batch, self.required, self.optional)
        values = {name: feeds[name] for name in self.inputs}
        if self.session is not None:
            try:
                outputs = self.session.run(self.activations, feeds)
            except QrtError as exc:
                raise QuantizationError(f"{self.label}: calibration batch {index} failed: {exc}") from exc
            values.update(zip(self.activations, outputs))
        return values


def _extent(value):
    if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
        return None
    flat = _as_float_values(value)
    return _min_max(flat) if flat.size else None


def extents(model, batches, first_index=0, tensor_names=None, providers=None, first_batch=None) -> dict[str, list]:
    """Pass 1 on one shard: ``{tensor: [(min, max) or None per batch]}`` for ``batches`` (a list of feeds);
    ``first_batch``: the stream's batch 0 (default: this shard's first)."""
    runner = _ShardRunner(model, tensor_names, providers, batches[0] if first_batch is None else first_batch)
    result = {name: [] for name in runner.names}
    for offset, batch in enumerate(batches):
        values = runner.values(first_index + offset, batch)
        for name in runner.names:
            try:
                result[name].append(_extent(values[name]))
            except QuantizationError as exc:
                raise QuantizationError(f"{runner.label}: calibration batch {first_index + offset}, tensor "
                                        f"{name!r}: {exc}") from None
    return result


def observe(model, batches, first_index, stream_extents, method=CalibrationMethod.MinMax, tensor_names=None,
            providers=None, first_batch=None, **observer_options) -> dict:
    """Pass 2 on one shard: observers that saw ``batches`` (stream positions ``first_index``...) and skipped
    every other batch of the stream, whose extents ``stream_extents`` (all shards' pass 1, in order) gives."""
    runner = _ShardRunner(model, tensor_names, providers, batches[0] if first_batch is None else first_batch)
    observers = {name: make_observer(method, **observer_options) for name in runner.names}
    total = len(next(iter(stream_extents.values()), []))
    own = range(first_index, first_index + len(batches))
    for index in range(total):
        if index in own:
            values = runner.values(index, batches[index - first_index])
            for name in runner.names:
                _observe(observers, name, values[name], f"{runner.label}: calibration batch {index},")
        else:
            for name in runner.names:
                extent = stream_extents[name][index]
                if extent is not None:
                    observers[name].skip(*extent)
    return observers


def merge(shards: list[dict]) -> dict:
    """``{tensor: observer}`` merged over the shards' dicts (each observer merged in place into the first)."""
    merged = {}
    for observers in shards:
        for name, observer in observers.items():
            merged[name] = merged[name].merge(observer) if name in merged else observer
    return merged


def _split(batches, num_shards):
    """Contiguous shards ``[(first index, batches)]``; stream order is shard order."""
    n = len(batches)
    num_shards = max(1, min(int(num_shards), n))
    bounds = [n * i // num_shards for i in range(num_shards + 1)]
    return [(bounds[i], batches[bounds[i]:bounds[i + 1]]) for i in range(num_shards)]


def calibrate_sharded(model, batches, num_shards=2, method=CalibrationMethod.MinMax, tensor_names=None,
                      providers=None, map_fn=None, **observer_options) -> dict:
    """Observers equal to ``calibration.calibrate(model, batches, ...)``'s, collected on ``num_shards``
    shards of ``batches`` (a list of feed dicts).

    ``map_fn(function, list of kwargs) -> list of results`` runs the shard work (default: one after
    another in this process); ``model`` should be a path or bytes so it travels cheaply.
    """
    from onnx import numpy_helper

    method = CalibrationMethod.MinMax if method is None else CalibrationMethod.parse(method)
    make_observer(method, **observer_options)   # option errors before any work
    batches = list(batches)
    if not batches:
        raise QuantizationError("calibration needs at least one batch")
    run = map_fn or (lambda function, calls: [function(**kwargs) for kwargs in calls])
    shards = _split(batches, num_shards)
    common = {"model": model, "tensor_names": tensor_names, "providers": providers, "first_batch": batches[0]}
    parts = run(extents, [{**common, "batches": part, "first_index": first} for first, part in shards])
    stream = {name: [e for part in parts for e in part[name]] for name in parts[0]}
    observed = run(observe, [{**common, "batches": part, "first_index": first, "stream_extents": stream,
                              "method": method, **observer_options} for first, part in shards])
    merged = merge(observed)

    proto, label = _load(model)
    wanted = _wanted(proto, label, tensor_names)
    initializers = [t for t in proto.graph.initializer if t.name in wanted and t.data_type in _FLOAT_TYPES]
    for tensor in initializers:
        merged[tensor.name] = make_observer(method, **observer_options)
        _observe(merged, tensor.name, numpy_helper.to_array(tensor), f"{label}: initializer")
    return merged


def ranges_of(observers) -> dict[str, tuple[float, float]]:
    """``{tensor: (rmin, rmax)}`` of observers that saw values, as ``collect_ranges`` reports them."""
    return {name: observer.compute_range() for name, observer in observers.items() if observer.n_updates}
