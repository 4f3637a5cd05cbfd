"""Validated settings of one quantization call, built from onnxruntime-style arguments.

``extra_options`` keys follow onnxruntime's names. The ones qrt acts on:

* ``ActivationSymmetric`` (default False): activation ranges symmetric around 0 (zero point 0 for
  int8, 128 for uint8).
* ``WeightSymmetric`` (default: True for signed weight types, False for unsigned).
* ``MatMulConstBOnly`` (default False): quantize MatMul/Gemm only when B is a constant.
* ``QDQKeepRemovableActivations`` (default False): keep Relu/Clip instead of folding them into
  the producer's output range.
* ``TensorQuantOverrides``: ``{tensor_name: [{"rmin": float, "rmax": float}]}``, the subset of
  onnxruntime's overrides that fixes a tensor's range (same effect as ``tensor_ranges``; where both
  name a tensor, the override wins).
* ``CalibTensorRangeSymmetric``, ``CalibMovingAverage``, ``CalibMovingAverageConstant``,
  ``CalibPercentile``, ``CalibNumBins``, ``CalibNumQuantizedBins``: passed to calibration.
* ``InputShapes`` (qrt's own): ``{input_name: [dims]}``, the shapes of the generated feed the
  model runs on when onnx shape inference leaves tensor types unknown and no calibration data
  shows them (always so for ``quantize_dynamic``). Default: symbolic dims 1 on the batch axis, 64
  elsewhere.

Other onnxruntime keys are accepted and ignored with a warning, so existing calls keep working.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from qrt.errors import QuantizationError

from .types import SUPPORTED_QUANT_TYPES, QuantFormat, QuantType

_CALIBRATION_KEYS = {
    "CalibTensorRangeSymmetric": "symmetric",
    "CalibMovingAverage": "moving_average",
    "CalibMovingAverageConstant": "averaging_constant",
    "CalibPercentile": "percentile",
    "CalibNumBins": "num_bins",
    "CalibNumQuantizedBins": "num_quantized_bins",
}
_KNOWN_KEYS = {"ActivationSymmetric", "WeightSymmetric", "MatMulConstBOnly", "QDQKeepRemovableActivations",
               "TensorQuantOverrides", "InputShapes"} | set(_CALIBRATION_KEYS)


@dataclass
class QuantConfig:
    quant_format: QuantFormat
    activation_type: QuantType
    weight_type: QuantType
    per_channel: bool
    reduce_range: bool
    op_types: frozenset
    nodes_to_quantize: frozenset | None
    nodes_to_exclude: frozenset
    activation_symmetric: bool
    weight_symmetric: bool
    matmul_const_b_only: bool
    keep_removable_activations: bool
    tensor_ranges: dict = field(default_factory=dict)
    calibration_options: dict = field(default_factory=dict)
    input_shapes: dict = field(default_factory=dict)


def _names(value, what):
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset([value])
    try:
        names = frozenset(value)
    except TypeError:
        raise QuantizationError(f"{what} must be a list of names, got {type(value).__name__}") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise QuantizationError(f"{what} must contain strings, got {bad[:3]}")
    return names


def _quant_type(value, what):
    qtype = QuantType.parse(value, what)
    if qtype not in SUPPORTED_QUANT_TYPES:
        raise QuantizationError(f"{what} {qtype.name} is not supported; qrt quantizes to "
                                + " or ".join(t.name for t in SUPPORTED_QUANT_TYPES))
    return qtype


def _range(name, value):
    try:
        rmin, rmax = (float(v) for v in value)
    except (TypeError, ValueError):
        raise QuantizationError(f"range for tensor {name!r} must be a pair (rmin, rmax), got {value!r}") from None
    if not (math.isfinite(rmin) and math.isfinite(rmax)) or rmin > rmax:
        raise QuantizationError(f"range for tensor {name!r} must be finite with rmin <= rmax, "
                                f"got ({rmin}, {rmax})")
    return rmin, rmax


def _overrides(overrides):
    """onnxruntime's TensorQuantOverrides, restricted to fixed ranges."""
    if not isinstance(overrides, dict):
        raise QuantizationError("extra_options['TensorQuantOverrides'] must be a dict "
                                "{tensor_name: [{'rmin': ..., 'rmax': ...}]}")
    ranges = {}
    for name, entries in overrides.items():
        entry = entries[0] if isinstance(entries, (list, tuple)) and entries else entries
        if not isinstance(entry, dict) or set(entry) - {"rmin", "rmax"} or not {"rmin", "rmax"} <= set(entry):
            raise QuantizationError(f"TensorQuantOverrides[{name!r}]: qrt supports only "
                                    f"[{{'rmin': float, 'rmax': float}}], got {entries!r}")
        ranges[name] = _range(name, (entry["rmin"], entry["rmax"]))
    return ranges


def _input_shapes(value):
    if not isinstance(value, dict):
        raise QuantizationError(f"extra_options['InputShapes'] must be a dict {{input_name: [dims]}}, "
                                f"got {type(value).__name__}")
    shapes = {}
    for name, dims in value.items():
        try:
            shape = tuple(int(d) for d in dims)
        except (TypeError, ValueError):
            shape = None
        if shape is None or any(d < 0 for d in shape):
            raise QuantizationError(f"extra_options['InputShapes'][{name!r}] must be a list of "
                                    f"non-negative ints, got {dims!r}")
        shapes[name] = shape
    return shapes


def make_config(*, quant_format, activation_type, weight_type, per_channel, reduce_range,
                op_types_to_quantize, nodes_to_quantize, nodes_to_exclude, extra_options,
                tensor_ranges, default_op_types) -> QuantConfig:
    extra = dict(extra_options or {})
    unknown = sorted(set(extra) - _KNOWN_KEYS)
    if unknown:
        warnings.warn(f"qrt.quantization ignores these extra_options: {unknown}", stacklevel=3)
    weight_qtype = _quant_type(weight_type, "weight_type")
    activation_qtype = _quant_type(activation_type, "activation_type")
    op_types = _names(op_types_to_quantize, "op_types_to_quantize") or frozenset(default_op_types)
    ranges = {name: _range(name, value) for name, value in (tensor_ranges or {}).items()}
    if "TensorQuantOverrides" in extra:
        ranges.update(_overrides(extra["TensorQuantOverrides"]))
    weight_symmetric = extra.get("WeightSymmetric")
    if weight_symmetric is None:
        weight_symmetric = weight_qtype == QuantType.QInt8
    return QuantConfig(
        quant_format=QuantFormat.parse(quant_format),
        activation_type=activation_qtype,
        weight_type=weight_qtype,
        per_channel=bool(per_channel),
        reduce_range=bool(reduce_range),
        op_types=op_types,
        nodes_to_quantize=_names(nodes_to_quantize, "nodes_to_quantize") or None,
        nodes_to_exclude=_names(nodes_to_exclude, "nodes_to_exclude"),
        activation_symmetric=bool(extra.get("ActivationSymmetric", False)),
        weight_symmetric=bool(weight_symmetric),
        matmul_const_b_only=bool(extra.get("MatMulConstBOnly", False)),
        keep_removable_activations=bool(extra.get("QDQKeepRemovableActivations", False)),
        tensor_ranges=ranges,
        calibration_options={_CALIBRATION_KEYS[k]: v for k, v in extra.items() if k in _CALIBRATION_KEYS},
        input_shapes=_input_shapes(extra.get("InputShapes", {})),
    )
