"""Run a model over calibration batches and observe the ranges of its float tensors.

The model is copied with the requested intermediate tensors added as graph outputs, one
``qrt.InferenceSession`` is built from the copy, and every batch runs once; each float output goes
to its tensor's streaming observer and is dropped, so memory does not grow with the number of
batches. Graph inputs are observed from the feeds and initializers once from their values.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from tqdm.auto import tqdm

from qrt.errors import QrtError, QuantizationError

from .observers import CalibrationMethod, Observer, make_observer
from .readers import as_reader
from .tensor_types import with_observed_types

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def _load(model):
    from qrt.model import load_model, model_label
    proto = load_model(model)
    return proto, model_label(proto, model)


def _element_types(model: onnx.ModelProto):
    """Element types of the main graph's tensors, and the inferred ValueInfo of those whose rank is
    known (onnx's checker wants a shape on every graph output)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:
        # Inference is only an aid: without it, the types the model itself declares still serve.
        inferred = model
    types, infos = {}, {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.WhichOneof("value") == "tensor_type" and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
            if info.type.tensor_type.HasField("shape"):
                infos[info.name] = info
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types, infos


def _wanted(model, label, tensor_names):
    """The tensors to observe (default: every graph input and node output), checked to exist."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    produced = [o for node in graph.node for o in node.output if o]
    if tensor_names is None:
        return list(dict.fromkeys(graph_inputs + produced))
    wanted = list(dict.fromkeys(tensor_names))
    known = set(graph_inputs) | set(produced) | initializers
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise QuantizationError(f"{label}: no tensor(s) named {unknown} in the main graph "
                                "(tensors inside If/Loop/Scan bodies cannot be calibrated)")
    return wanted


def _untyped(model, wanted, types, infos):
    """Wanted tensors whose element type is unknown, or whose rank is (a calibrated activation becomes
    a graph output, and onnx's checker wants a shape on every output)."""
    graph = model.graph
    produced = {o for node in graph.node for o in node.output if o}
    outputs = {o.name for o in graph.output}
    return [n for n in wanted if n not in types or (n in produced and n not in outputs and n not in infos)]


def _select(model, label, tensor_names, wanted, types, infos):
    """(inputs, activations, initializers) to observe: float tensors only."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    untyped = _untyped(model, wanted, types, infos)
    if tensor_names is not None and untyped:
        raise QuantizationError(f"{label}: the type or rank of tensor(s) {untyped} could neither be inferred "
                                "nor observed in a run on the first batch, so they cannot be added as outputs "
                                "for calibration")
    floats = [n for n in wanted if types.get(n) in _FLOAT_TYPES and n not in untyped]
    inputs = [n for n in floats if n in graph_inputs]
    inits = [n for n in floats if n in initializers]
    activations = [n for n in floats if n not in inputs and n not in initializers]
    return inputs, activations, [initializers[n] for n in inits]


def _with_outputs(model, names, infos):
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(infos[n] for n in names if n not in existing)
    return augmented


def _length(reader):
    try:
        return len(reader)
    except (TypeError, NotImplementedError):
        return None


def _check_feeds(label, index, batch, required, optional):
    if not isinstance(batch, Mapping):
        raise QuantizationError(f"{label}: calibration batch {index} is a {type(batch).__name__}, expected a "
                                "dict mapping input names to arrays")
    unknown = [n for n in batch if n not in required and n not in optional]
    if unknown:
        raise QuantizationError(f"{label}: calibration batch {index} has unknown input name(s) {unknown}; "
                                f"the model's inputs are {sorted(required)}")
    missing = [n for n in required if n not in batch]
    if missing:
        raise QuantizationError(f"{label}: calibration batch {index} lacks input(s) {missing}")
    feeds = {}
    for name, value in batch.items():
        value = value if isinstance(value, np.ndarray) else np.asarray(value)
        if value.dtype.kind == "f" and value.size and not np.isfinite(value).all():
            bad = int(np.count_nonzero(~np.isfinite(value)))
            raise QuantizationError(f"{label}: calibration batch {index}, input {name!r}: {bad} NaN or "
                                    f"infinite value(s) out of {value.size}")
        feeds[name] = value
    return feeds


class _EndOfCollection:
    def __repr__(self):
        return "END_OF_COLLECTION"


# A reader may yield this between batches to close one collection (onnxruntime's collect_data
# call): MinMax's moving average averages within a collection and merges across them.
END_OF_COLLECTION = _EndOfCollection()


def calibrate(model, reader, tensor_names=None, method=CalibrationMethod.MinMax, progress=True,
              providers=None, observers=None, **observer_options) -> dict[str, Observer]:
    """Observers (see :func:`calibration.make_observer`) fed with every batch of ``reader``.

    ``model``: path, bytes or ModelProto. ``reader``: anything :func:`calibration.as_reader` accepts.
    ``method``: a :class:`CalibrationMethod`, onnxruntime's member, its name, or None for MinMax.
    ``providers``: for the session (default CPU).
    ``tensor_names``: the tensors to observe (default: every float graph input and node output of the
    main graph); tensors whose type is not float are skipped. Where onnx shape inference cannot type a
    wanted tensor, the first batch runs once more to observe its type (:mod:`.tensor_types`).
    ``observers``: observers of an earlier call to continue (onnxruntime's repeated collect_data);
    the dict is updated in place and returned.
    Raises QuantizationError for an empty reader, a batch with unknown or missing inputs, a feed the
    session rejects, and NaN/Inf in feeds or activations, naming the batch and tensor.
    """
    from qrt import InferenceSession

    proto, label = _load(model)
    method = CalibrationMethod.MinMax if method is None else CalibrationMethod.parse(method)
    make_observer(method, **observer_options)   # option errors before any work
    initializer_names = {t.name for t in proto.graph.initializer}
    required = [i.name for i in proto.graph.input if i.name not in initializer_names]
    optional = [i.name for i in proto.graph.input if i.name in initializer_names]
    reader = as_reader(reader)
    first = None
    types, infos = _element_types(proto)
    wanted = _wanted(proto, label, tensor_names)
    if _untyped(proto, wanted, types, infos):
        # onnx's inference left holes: the first batch runs once more to show the missing types.
        first = reader.get_next()
        if first is not None:
            proto, _ = with_observed_types(proto, _check_feeds(label, 0, first, required, optional), label)
            types, infos = _element_types(proto)
    inputs, activations, initializers = _select(proto, label, tensor_names, wanted, types, infos)
    observers = {} if observers is None else observers
    fresh = [n for n in inputs + activations + [t.name for t in initializers] if n not in observers]
    observers.update({n: make_observer(method, **observer_options) for n in fresh})

    for tensor in initializers:
        if tensor.name in fresh:
            _observe(observers, tensor.name, numpy_helper.to_array(tensor), f"{label}: initializer")

    session = None
    if activations:
        session = InferenceSession(_with_outputs(proto, activations, infos),
                                   providers=providers or ["CPUExecutionProvider"])
    batches = 0
    with tqdm(total=_length(reader), disable=None if progress else True, unit="batch",
              desc=f"calibrating {label}") as bar:
        while True:
            if first is not None:
                batch, first = first, None
            else:
                batch = reader.get_next()
            if batch is None:
                break
            if batch is END_OF_COLLECTION:
                for observer in observers.values():
                    getattr(observer, "end_collection", lambda: None)()
                continue
            feeds = _check_feeds(label, batches, batch, required, optional)
            for name in inputs:
                _observe(observers, name, feeds[name], f"{label}: calibration batch {batches}, input")
            if session is not None:
                try:
                    outputs = session.run(activations, feeds)
                except QrtError as exc:
                    raise QuantizationError(f"{label}: calibration batch {batches} failed: {exc}") from exc
                for name, value in zip(activations, outputs):
                    _observe(observers, name, value, f"{label}: calibration batch {batches}, activation")
                del outputs
            batches += 1
            bar.update(1)
    if batches == 0:
        raise QuantizationError(f"{label}: the calibration data reader produced no batches")
    return observers


def _observe(observers, name, value, where):
    if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
        return
    try:
        observers[name].update(value)
    except QuantizationError as exc:
        raise QuantizationError(f"{where} {name!r}: {exc}") from None


def collect_ranges(model, reader, tensor_names=None, method=CalibrationMethod.MinMax, progress=True,
                   providers=None, **observer_options) -> dict[str, tuple[float, float]]:
    """``{tensor name: (rmin, rmax)}`` calibrated with ``method`` over every batch of ``reader``.

    Same arguments and errors as :func:`calibrate`. Tensors that never held a value (always empty)
    are left out.
    """
    observers = calibrate(model, reader, tensor_names, method, progress, providers, **observer_options)
    ranges = {}
    for name, observer in observers.items():
        if observer.n_updates:
            rmin, rmax = observer.compute_range()
            ranges[name] = (rmin, rmax)
            if not (math.isfinite(rmin) and math.isfinite(rmax)):
                raise QuantizationError(f"range of {name!r} is not finite: ({rmin}, {rmax})")
    return ranges
