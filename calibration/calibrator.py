"""onnxruntime's calibrator object API over qrt's streaming observers.

    calibrator = create_calibrator("model.onnx", ["Conv", "MatMul"], calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(reader)          # may be called again with more data
    ranges = calibrator.compute_data()       # TensorsData: name -> TensorData(lowest=..., highest=...)
    write_calibration_table(ranges)          # calibration.json / .flatbuffers / .cache, as onnxruntime writes

The float model runs in qrt (:func:`calibration.collect.calibrate`), not in onnxruntime. The
tensors calibrated are onnxruntime's choice: the float inputs and outputs of the nodes whose op
type is in ``op_types_to_calibrate`` (every node when empty), initializers excluded. Each
``collect_data`` call is one collection: MinMax's moving average averages within a call and
merges successive calls as onnxruntime does.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto

from qrt.errors import QuantizationError

from .collect import _load, calibrate
from .observers import CalibrationMethod

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16}

# onnxruntime's create_calibrator defaults, per method: extra_options key -> (observer option, default)
_METHOD_OPTIONS = {
    CalibrationMethod.MinMax: {"symmetric": False, "moving_average": False, "averaging_constant": 0.01},
    CalibrationMethod.Entropy: {"symmetric": False, "num_bins": 128, "num_quantized_bins": 128},
    CalibrationMethod.Percentile: {"symmetric": True, "num_bins": 2048, "percentile": 99.999},
    CalibrationMethod.Distribution: {"num_bins": 2048},
}
# Keys onnxruntime accepts that change nothing qrt computes: qrt's observers stream (memory does not
# grow with the data, which max_intermediate_outputs bounds in onnxruntime), and "same" is the only
# Distribution scenario onnxruntime implements.
_NEUTRAL = {"max_intermediate_outputs": None, "scenario": "same", "per_channel": False}


def onnxruntime_defaults(method) -> dict:
    """The observer options onnxruntime's ``create_calibrator`` uses for ``method`` when none are given
    (quantize_static passes only the Calib* keys the user set, so these are its defaults too)."""
    return dict(_METHOD_OPTIONS.get(CalibrationMethod.parse(method), {}))


class TensorData:
    """One tensor's calibration result, with onnxruntime's attribute names (lowest, highest, avg, std, ...)."""

    _allowed = frozenset(["avg", "std", "lowest", "highest", "hist", "hist_edges", "bins"])

    def __init__(self, **values):
        unknown = set(values) - self._allowed
        if unknown:
            raise QuantizationError(f"TensorData: unexpected field(s) {sorted(unknown)}; allowed: "
                                    f"{sorted(self._allowed)}")
        self._fields = list(values)
        for key, value in values.items():
            setattr(self, key, value)

    @property
    def range_value(self):
        return self.lowest, self.highest

    @property
    def avg_std(self):
        return self.avg, self.std

    def to_dict(self):
        data = {k: getattr(self, k) for k in self._fields}
        data["CLS"] = type(self).__name__
        return data

    def __repr__(self):
        return "TensorData(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields) + ")"


class TensorsData:
    """``{tensor name: TensorData}`` and the method that produced it (onnxruntime's container)."""

    def __init__(self, calibration_method, data: dict):
        self.calibration_method = CalibrationMethod.parse(calibration_method)
        self.data = {}
        for name, value in data.items():
            if isinstance(value, tuple) and len(value) == 2:
                value = TensorData(lowest=np.float32(value[0]), highest=np.float32(value[1]))
            if not isinstance(value, TensorData):
                raise QuantizationError(f"TensorsData[{name!r}]: expected TensorData or (lowest, highest), "
                                        f"got {type(value).__name__}")
            self.data[name] = value

    def __iter__(self):
        return iter(self.data)

    def __contains__(self, key):
        return key in self.data

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    def __len__(self):
        return len(self.data)

    def keys(self):
        return self.data.keys()

    def values(self):
        return self.data.values()

    def items(self):
        return self.data.items()

    def to_dict(self):
        return {"CLS": type(self).__name__, "data": self.data, "calibration_method": self.calibration_method}

    def ranges(self) -> dict[str, tuple[float, float]]:
        """``{name: (rmin, rmax)}``, the form ``quantize_static(tensor_ranges=...)`` takes."""
        return {k: (float(np.asarray(v.lowest).reshape(-1)[0]), float(np.asarray(v.highest).reshape(-1)[0]))
                for k, v in self.data.items() if hasattr(v, "lowest")}


class CalibraterBase:
    """onnxruntime's calibrator interface: ``collect_data(reader)`` then ``compute_data()``."""

    def __init__(self, model_path, op_types_to_calibrate=None, augmented_model_path="augmented_model.onnx",
                 symmetric=False, use_external_data_format=False, per_channel=False,
                 calibrate_method=CalibrationMethod.MinMax, **observer_options):
        if per_channel:
            raise QuantizationError("per_channel calibration (ranges per channel) is not supported by qrt's "
                                    "calibrator; activations are calibrated per tensor")
        self.model, self.label = _load(model_path)
        self.op_types_to_calibrate = list(op_types_to_calibrate or [])
        self.augmented_model_path = augmented_model_path
        self.symmetric = symmetric
        self.use_external_data_format = use_external_data_format
        self.method = CalibrationMethod.parse(calibrate_method)
        self.observer_options = dict(observer_options)
        if "symmetric" in _METHOD_OPTIONS.get(self.method, {}):
            self.observer_options["symmetric"] = symmetric
        self.execution_providers = ["CPUExecutionProvider"]
        self.tensors_to_calibrate = sorted(self.select_tensors_to_calibrate(self.model)[0])
        self.augment_model = None
        self.observers: dict = {}

    def set_execution_providers(self, execution_providers=("CPUExecutionProvider",)):
        self.execution_providers = list(execution_providers)

    def select_tensors_to_calibrate(self, model: onnx.ModelProto):
        """(names, value infos) of the float inputs/outputs of the nodes to calibrate, as onnxruntime picks them."""
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - declared types still serve
            inferred = model
        graph = inferred.graph
        infos = {vi.name: vi for vi in itertools.chain(graph.value_info, graph.input, graph.output)}
        initializers = {t.name for t in graph.initializer}
        names = set()
        for node in graph.node:
            if self.op_types_to_calibrate and node.op_type not in self.op_types_to_calibrate:
                continue
            for name in itertools.chain(node.input, node.output):
                info = infos.get(name)
                if info is not None and info.type.HasField("tensor_type") and name not in initializers \
                        and info.type.tensor_type.elem_type in _FLOAT_TYPES:
                    names.add(name)
        return names, infos

    def augment_graph(self):
        """The model with every calibrated tensor as an extra output, saved to ``augmented_model_path``."""
        _, infos = self.select_tensors_to_calibrate(self.model)
        augmented = onnx.ModelProto()
        augmented.CopyFrom(self.model)
        existing = {o.name for o in augmented.graph.output}
        augmented.graph.output.extend(infos[n] for n in self.tensors_to_calibrate if n not in existing)
        self.augment_model = augmented
        if self.augmented_model_path:
            onnx.save(augmented, os.fspath(self.augmented_model_path),
                      save_as_external_data=bool(self.use_external_data_format))

    def get_augment_model(self):
        return self.augment_model

    def create_inference_session(self):
        """qrt builds its session inside each ``collect_data`` call; nothing to do ahead of it."""

    def collect_data(self, data_reader):
        if not self.tensors_to_calibrate:
            raise QuantizationError(f"{self.label}: no float tensor to calibrate (op_types_to_calibrate="
                                    f"{self.op_types_to_calibrate})")
        calibrate(self.model, data_reader, self.tensors_to_calibrate, self.method, progress=False,
                  providers=self.execution_providers, observers=self.observers, **self.observer_options)
        for observer in self.observers.values():
            getattr(observer, "end_collection", lambda: None)()

    def compute_data(self) -> TensorsData:
        if not self.observers:
            raise QuantizationError(f"{self.label}: compute_data before collect_data: no data was collected")
        data = {}
        for name, observer in self.observers.items():
            if not observer.n_updates:
                continue
            if self.method == CalibrationMethod.Distribution:
                avg, std = observer.compute_range()
                data[name] = TensorData(avg=np.float32(avg), std=np.float32(std),
                                        lowest=np.float32(observer.data_min), highest=np.float32(observer.data_max))
            else:
                lo, hi = observer.compute_range()
                data[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        return TensorsData(self.method, data)


class MinMaxCalibrater(CalibraterBase):
    """onnxruntime's MinMaxCalibrater signature (``max_intermediate_outputs`` bounds memory there;
    qrt's observers stream, so it changes nothing)."""

    def __init__(self, model_path, op_types_to_calibrate=None, augmented_model_path="augmented_model.onnx",
                 symmetric=False, use_external_data_format=False, moving_average=False, averaging_constant=0.01,
                 max_intermediate_outputs=None, per_channel=False):
        super().__init__(model_path, op_types_to_calibrate, augmented_model_path, symmetric,
                         use_external_data_format, per_channel, CalibrationMethod.MinMax,
                         moving_average=moving_average, averaging_constant=averaging_constant)


def save_tensors_data(tensors_data: TensorsData, path, *, smooth_quant=False) -> None:
    """Writes calibration results atomically in onnxruntime's JSON layout (``save_tensors_data``),
    so either tool reads the other's calibration cache."""
    path = os.fspath(path)
    payload = {**tensors_data.to_dict(), "smooth_quant": bool(smooth_quant)}
    fd, staged = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".calibcache_")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, default=_json_default)
        os.replace(staged, path)
    except BaseException:
        if os.path.exists(staged):
            os.unlink(staged)
        raise


def load_tensors_data(path) -> TensorsData:
    """Reads a file written by :func:`save_tensors_data` (qrt's or onnxruntime's)."""
    try:
        with open(os.fspath(path)) as f:
            payload = json.load(f)
        method = payload["calibration_method"]
        if isinstance(method, dict):
            method = method["value"].split(".")[-1]

        def value(v):
            if isinstance(v, dict) and v.get("CLS") == "numpy.array":
                return np.array(v["data"], dtype=v["dtype"])
            return np.array(v, np.float32) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

        data = {name: TensorData(**{k: value(v) for k, v in entry.items() if k != "CLS"})
                for name, entry in payload["data"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise QuantizationError(f"calibration cache {os.fspath(path)} is unreadable: {exc}") from None
    return TensorsData(method, data)


def create_calibrator(model, op_types_to_calibrate=None, augmented_model_path="augmented_model.onnx",
                      calibrate_method=CalibrationMethod.MinMax, use_external_data_format=False,
                      providers=None, extra_options=None) -> CalibraterBase:
    """onnxruntime's ``create_calibrator``: a calibrator for ``calibrate_method`` with its defaults,
    ``extra_options`` overriding them (symmetric, moving_average, averaging_constant, num_bins,
    num_quantized_bins, percentile; max_intermediate_outputs and scenario='same' change nothing in
    qrt, whose observers stream). The augmented model is written to ``augmented_model_path``."""
    method = CalibrationMethod.parse(calibrate_method)
    if method not in _METHOD_OPTIONS:
        raise QuantizationError(f"create_calibrator: unsupported calibrate_method {method.name}; onnxruntime's "
                                f"are {[m.name for m in _METHOD_OPTIONS]}")
    options = dict(_METHOD_OPTIONS[method])
    extra = dict(extra_options or {})
    for key, neutral in _NEUTRAL.items():
        value = extra.pop(key, neutral)
        if key == "scenario" and value != "same":
            raise QuantizationError(f"create_calibrator: scenario {value!r} is not supported (only 'same')")
        if key == "per_channel" and value:
            raise QuantizationError("create_calibrator: per_channel ranges are not supported by qrt's calibrator")
    unknown = sorted(set(extra) - set(options))
    if unknown:
        raise QuantizationError(f"create_calibrator: extra_options {unknown} do not apply to {method.name}; "
                                f"known: {sorted(options)}")
    options.update(extra)
    symmetric = options.pop("symmetric", False)
    calibrator = CalibraterBase(model, op_types_to_calibrate, augmented_model_path, symmetric=symmetric,
                                use_external_data_format=use_external_data_format, calibrate_method=method,
                                **options)
    if providers:
        calibrator.set_execution_providers(providers)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    return calibrator


def _table_entries(calibration_cache):
    """(name, lowest, highest) per tensor from TensorsData, {name: TensorData} or {name: (lo, hi)}."""
    items = calibration_cache.items()
    entries = []
    for name, value in sorted(items):
        if isinstance(value, TensorData) or hasattr(value, "range_value"):
            lo, hi = value.range_value
        else:
            lo, hi = value
        entries.append((name, float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])))
    return entries


def _json_default(obj):
    if isinstance(obj, (TensorData, TensorsData)) or hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, np.ndarray):
        return {"data": obj.tolist(), "dtype": str(obj.dtype), "CLS": "numpy.array"}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, CalibrationMethod):
        return {"CLS": "CalibrationMethod", "value": f"CalibrationMethod.{obj.name}"}
    raise TypeError(f"cannot write {type(obj).__name__} to a calibration table")


def write_calibration_table(calibration_cache, dir="."):  # noqa: A002 - onnxruntime's argument name
    """onnxruntime's ``write_calibration_table``: ``calibration.json`` (the ranges), and for TensorRT
    ``calibration.flatbuffers`` and ``calibration.cache`` (``name max(|lowest|..highest)``: onnxruntime
    writes max(highest, lowest) per tensor, and so does qrt)."""
    entries = _table_entries(calibration_cache)
    with open(os.path.join(dir, "calibration.json"), "w") as f:
        f.write(json.dumps(calibration_cache, default=_json_default))
    with open(os.path.join(dir, "calibration.flatbuffers"), "wb") as f:
        f.write(_trt_table(entries))
    with open(os.path.join(dir, "calibration.cache"), "w") as f:
        for name, lo, hi in entries:
            f.write(f"{name} {max(hi, lo)}\n")


def _trt_table(entries) -> bytes:
    """onnxruntime's TrtTable flatbuffer (table TrtTable { dict: [KeyValue] }, KeyValue { key, value: string })."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    offsets = []
    for name, lo, hi in entries:
        key = builder.CreateString(name)
        value = builder.CreateString(str(max(hi, lo)))
        builder.StartObject(2)
        builder.PrependUOffsetTRelativeSlot(0, key, 0)
        builder.PrependUOffsetTRelativeSlot(1, value, 0)
        offsets.append(builder.EndObject())
    builder.StartVector(4, len(offsets), 4)
    for offset in offsets:  # prepended, so stored last-first, as onnxruntime stores them
        builder.PrependUOffsetTRelative(offset)
    vector = builder.EndVector()
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, vector, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())
