"""Calibration data in, activation ranges out.

Every feed is checked before it reaches the runtime (names, dtype, rank, fixed dims, NaN/Inf), so
a bad reader fails with a :class:`QuantizationError` that names the sample and input instead of an
error from deep inside a kernel. Feeds are checked as they stream, so a large calibration set is
never held in memory here.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import onnx

from calibration.observers import CalibrationMethod

from qrt.errors import QrtError, QuantizationError
from qrt.model import numpy_dtype


def _input_specs(model: onnx.ModelProto):
    initializers = {t.name for t in model.graph.initializer}
    specs = {}
    for info in model.graph.input:
        if info.name in initializers or info.type.WhichOneof("value") != "tensor_type":
            continue
        tensor_type = info.type.tensor_type
        dims = None
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        specs[info.name] = (numpy_dtype(tensor_type.elem_type), dims)
    return specs


def _as_iterable(reader, label):
    """A CalibrationDataReader (get_next) or any iterable of feed dicts, via the calibration package."""
    try:
        from calibration import as_reader
    except ImportError:
        as_reader = None
    if as_reader is not None:
        try:
            reader = as_reader(reader)
        except QrtError:
            raise
        except Exception as exc:
            raise QuantizationError(f"{label}: cannot read calibration data from {type(reader).__name__}: {exc}") \
                from None
    if hasattr(reader, "get_next"):
        return iter(reader.get_next, None)
    try:
        return iter(reader)
    except TypeError:
        raise QuantizationError(f"{label}: calibration data must have get_next() or be iterable, "
                                f"got {type(reader).__name__}") from None


def checked_feeds(reader, model: onnx.ModelProto, label: str):
    """Yields the reader's feeds as dicts of arrays, raising QuantizationError on the first bad one."""
    specs = _input_specs(model)
    count = 0
    for count, feed in enumerate(_as_iterable(reader, label), start=1):
        where = f"{label}: calibration sample {count}"
        if not isinstance(feed, dict):
            raise QuantizationError(f"{where} is a {type(feed).__name__}, expected a dict of input name -> array")
        unknown = sorted(set(feed) - set(specs))
        if unknown:
            raise QuantizationError(f"{where} has input(s) {unknown} the model does not have; "
                                    f"model inputs: {sorted(specs)}")
        missing = sorted(set(specs) - set(feed))
        if missing:
            raise QuantizationError(f"{where} lacks input(s) {missing}")
        checked = {}
        for name, value in feed.items():
            array = np.asarray(value)
            dtype, dims = specs[name]
            if dtype is not None and array.dtype != dtype:
                raise QuantizationError(f"{where}: input {name!r} has dtype {array.dtype}, the model expects {dtype}")
            if dims is not None:
                if array.ndim != len(dims):
                    raise QuantizationError(f"{where}: input {name!r} has shape {array.shape} (rank {array.ndim}), "
                                            f"the model expects rank {len(dims)} {_dims(dims)}")
                bad = [i for i, d in enumerate(dims) if d is not None and d > 0 and array.shape[i] != d]
                if bad:
                    raise QuantizationError(f"{where}: input {name!r} has shape {array.shape}, "
                                            f"the model expects {_dims(dims)}")
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                n_nan = int(np.count_nonzero(np.isnan(array)))
                n_inf = int(np.count_nonzero(np.isinf(array)))
                raise QuantizationError(f"{where}: input {name!r} contains {n_nan} NaN and {n_inf} Inf value(s)")
            checked[name] = array
        yield checked
    if count == 0:
        raise QuantizationError(f"{label}: the calibration reader yielded no samples")


def strided_feeds(reader, model, label, stride):
    """CalibStridedMinMax: the reader's samples ``stride`` at a time through its ``set_range``, each
    stride one collection (onnxruntime's collect_data call), as onnxruntime's quantize_static does."""
    from calibration.collect import END_OF_COLLECTION

    try:
        total = len(reader)
    except (TypeError, NotImplementedError):
        total = None
    if total is None or not callable(getattr(reader, "set_range", None)):
        raise QuantizationError(f"{label}: extra_options['CalibStridedMinMax'] needs a reader with __len__ and "
                                f"set_range(start_index, end_index), got {type(reader).__name__}")
    if total % stride:
        raise QuantizationError(f"{label}: CalibStridedMinMax={stride} does not divide the {total} calibration "
                                "samples")
    for start in range(0, total, stride):
        reader.set_range(start_index=start, end_index=start + stride)
        yield from checked_feeds(reader, model, label)
        yield END_OF_COLLECTION


def with_complete_types(model, label, reader, input_shapes):
    """(model, reader, note): where onnx shape inference left a tensor's element type or rank unknown,
    it is taken from one qrt run on the first calibration sample (the reader is given back with that
    sample still in front) or, without a reader, on a generated feed shaped by ``input_shapes``.
    The note says what was done ('' when inference was complete and nothing ran)."""
    from calibration.tensor_types import untyped_tensors, with_observed_types

    if not untyped_tensors(model):
        return model, reader, ""
    if reader is not None:
        samples = checked_feeds(reader, model, label)
        first = next(samples)
        reader = itertools.chain([first], samples)
        source = "the first calibration sample"
    else:
        first = None
        source = "a generated feed"
    model, count = with_observed_types(model, first, label, input_shapes)
    note = (f"element type and rank of {count} tensor(s) that onnx shape inference left unknown "
            f"taken from a qrt run on {source}")
    return model, reader, note


def _dims(dims):
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _load_cache(path, method):
    """{tensor: (rmin, rmax)} from a calibration cache in onnxruntime's layout (``save_tensors_data``)
    or qrt's earlier ``{tensor: [rmin, rmax]}``; a cache made by another method is an error, as in
    onnxruntime."""
    from calibration.calibrator import load_tensors_data

    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise QuantizationError(f"calibration cache {path} is unreadable: {exc}") from None
    if isinstance(data, dict) and data.get("CLS") == "TensorsData":
        cached = load_tensors_data(path)
        if cached.calibration_method != method:
            raise QuantizationError(f"calibration cache {path} was made with {cached.calibration_method.name}, "
                                    f"this call calibrates with {method.name}; delete the cache or pass "
                                    "the matching calibrate_method")
        return cached.ranges()
    try:
        return {k: (float(v[0]), float(v[1])) for k, v in data.items()}
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise QuantizationError(f"calibration cache {path} is unreadable: {exc}") from None


def _save_cache(path, ranges, method):
    from calibration.calibrator import TensorsData, save_tensors_data

    try:
        save_tensors_data(TensorsData(method, {k: (v[0], v[1]) for k, v in ranges.items()}), path)
    except OSError as exc:
        raise QuantizationError(f"cannot write calibration cache {path}: {exc}") from None


def calibration_ranges(model, label, reader, wanted, cfg, method, providers, cache_path, progress, probes=()):
    """{tensor: (rmin, rmax)} for every name in ``wanted``: overrides, then the cache, then calibration.

    ``probes``: more tensors whose ranges the quantizer would like to know (it quantizes none of them).
    With a reader they are calibrated (in the same pass as ``wanted``), from ``tensor_ranges`` where
    given there, and never written to the calibration cache, which stays the table of quantized
    tensors onnxruntime writes; without a reader they are left out."""
    wanted_set = set(wanted)
    ranges = {name: cfg.tensor_ranges[name] for name in [*wanted, *probes] if name in cfg.tensor_ranges}
    cache_path = os.fspath(cache_path) if cache_path is not None else None
    cached = _load_cache(cache_path, CalibrationMethod.parse(method))
    ranges.update({name: cached[name] for name in wanted if name in cached and name not in ranges})
    missing = [name for name in wanted if name not in ranges]
    if reader is not None:
        missing += [name for name in dict.fromkeys(probes) if name not in ranges and name not in wanted_set]
    if missing:
        if reader is None:
            raise QuantizationError(f"{label}: no calibration data reader, and no range given for "
                                    f"{len(missing)} tensor(s): {missing[:8]}")
        from calibration.collect import collect_ranges

        from calibration.calibrator import onnxruntime_defaults

        options = {**onnxruntime_defaults(method), **cfg.calibration_options}
        if providers is not None:
            options["providers"] = providers
        feeds = checked_feeds(reader, model, label) if cfg.calibration_stride is None else \
            strided_feeds(reader, model, label, cfg.calibration_stride)
        try:
            collected = collect_ranges(model, feeds, missing, method, progress=progress, **options)
        except QuantizationError:
            raise
        except QrtError as exc:
            raise QuantizationError(f"{label}: calibration runs the float model in qrt's runtime, which "
                                    f"failed: {exc}") from exc
        except Exception as exc:
            raise QuantizationError(f"{label}: calibration failed: {type(exc).__name__}: {exc}") from exc
        absent = [name for name in missing if name not in collected and name in wanted_set]
        missing = [name for name in missing if name in collected]
        if absent:
            raise QuantizationError(f"{label}: calibration produced no range for {absent[:8]}")
        for name in missing:
            rmin, rmax = (float(v) for v in collected[name])
            if not (np.isfinite(rmin) and np.isfinite(rmax)) and name not in wanted_set:
                continue
            if not (np.isfinite(rmin) and np.isfinite(rmax)):
                raise QuantizationError(f"{label}: calibrated range of tensor {name!r} is ({rmin}, {rmax}); "
                                        "the float model produces NaN/Inf on the calibration data")
            ranges[name] = (rmin, rmax)
        calibrated = {n: ranges[n] for n in missing if n in wanted_set}
        if cache_path is not None and calibrated:
            _save_cache(cache_path, {**cached, **calibrated}, CalibrationMethod.parse(method))
    return ranges
