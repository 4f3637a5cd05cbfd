"""Validated settings of one quantization call, built from onnxruntime-style arguments.

``extra_options`` keys follow onnxruntime's names and meanings (its ``quantize_static`` /
``quantize_dynamic`` docstrings). Every key is either honoured or refused with a
:class:`QuantizationError` naming it; none is ignored. The table :data:`EXTRA_OPTIONS` says, per
key, which calls it applies to; the README's "onnxruntime.quantization API" section lists the
status of each.

Honoured by both calls: ``ActivationSymmetric``, ``WeightSymmetric`` (default: True for signed
weight types), ``MatMulConstBOnly``, ``MinimumRealRange``, ``EnableSubgraph=False``,
``InputShapes`` (qrt's own: ``{input_name: [dims]}`` of the generated feed the model runs on when
onnx shape inference leaves tensor types unknown).

Static only: ``ActivationRestrictedAsymmetric``, ``ForceQuantizeNoInputCheck``,
``TensorQuantOverrides`` (per tensor: ``rmin``/``rmax``, ``scale``+``zero_point``, ``symmetric``,
``reduce_range``, ``quant_type``; per channel: ``axis``), the calibration keys
(``CalibTensorRangeSymmetric``, ``CalibMovingAverage``, ``CalibMovingAverageConstant``,
``CalibPercentile``, ``CalibNumBins``, ``CalibNumQuantizedBins``, ``CalibStridedMinMax``,
``CalibMaxIntermediateOutputs``), ``QDQKeepRemovableActivations``, and the QDQ-only keys
``AddQDQPairToWeight``, ``OpTypesToExcludeOutputQuantization``, ``DedicatedQDQPair``,
``QDQOpTypePerChannelSupportToAxis``, ``QuantizeBias``, ``UseQDQContribOps``,
``QDQDisableWeightAdjustForInt32Bias``, ``BlockSize`` (blocked rank-2 weights along the per-channel
axis, else axis 0, as onnxruntime; the opset is raised to 21; nodes with a bias stay float).

SmoothQuant, both calls: ``SmoothQuant`` (onnxruntime's name; onnxruntime runs Intel neural-compressor's
transform, qrt its own, :mod:`.smoothquant`), ``SmoothQuantAlpha`` (migration strength in [0, 1], default
0.5), ``SmoothQuantFolding`` (default True: fold ``1 / s`` into the producer where possible, else insert a
Mul). They need calibration data: ``quantize_static``'s reader, ``quantize_dynamic``'s
``calibration_data_reader`` keyword.

Dynamic only (qrt's own): ``PerRowActivations`` (per-row dynamic activation scales and per-channel
weights for MatMul/Gemm, :mod:`.dynamic`).

qrt's own, static only: ``CrossLayerEqualization`` (:mod:`.equalization`, before calibrating),
``BiasCorrection`` (:mod:`.bias_correction`, after choosing the parameters) and ``OnnxruntimeParity``
(True: none of qrt's default quality rules, i.e. per-tensor weights unless ``per_channel``, calibrated
ranges of HardSwish/SiLU/Sigmoid inputs as they are, no cancelling node kept float).

Refused with a reason: ``EnableSubgraph=True`` (If/Loop/Scan bodies stay float), ``extra.Sigmoid.nnapi=True``
(an NNAPI-only fixed Sigmoid range), ``DefaultTensorType`` (qrt observes untyped tensors' types by
running the model instead of assuming one), ``TensorQuantOverrides`` ``convert`` entries, a QDQ-only key with
``QuantFormat.QOperator``, and any key onnxruntime does not document.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from qrt.errors import QuantizationError

from .types import (EIGHT_BIT_TYPES, SIGNED_TYPES, QuantFormat, QuantType, check_static_types)

_CALIBRATION_KEYS = {
    "CalibTensorRangeSymmetric": "symmetric",
    "CalibMovingAverage": "moving_average",
    "CalibMovingAverageConstant": "averaging_constant",
    "CalibPercentile": "percentile",
    "CalibNumBins": "num_bins",
    "CalibNumQuantizedBins": "num_quantized_bins",
}

# key -> where it applies: "both", "static", "dynamic", "qdq" (static QDQ only).
EXTRA_OPTIONS = {
    "ActivationSymmetric": "both",
    "WeightSymmetric": "both",
    "MatMulConstBOnly": "both",
    "MinimumRealRange": "both",
    "EnableSubgraph": "both",
    "ForceQuantizeNoInputCheck": "both",
    "InputShapes": "both",
    "extra.Sigmoid.nnapi": "both",
    "DefaultTensorType": "both",
    "ActivationRestrictedAsymmetric": "static",
    "TensorQuantOverrides": "static",
    "CalibStridedMinMax": "static",
    "CalibMaxIntermediateOutputs": "static",
    "QDQKeepRemovableActivations": "static",
    "SmoothQuant": "both",
    "SmoothQuantAlpha": "both",
    "SmoothQuantFolding": "both",
    "PerRowActivations": "dynamic",
    "CrossLayerEqualization": "static",
    "BiasCorrection": "static",
    "OnnxruntimeParity": "static",
    "AddQDQPairToWeight": "qdq",
    "OpTypesToExcludeOutputQuantization": "qdq",
    "DedicatedQDQPair": "qdq",
    "QDQOpTypePerChannelSupportToAxis": "qdq",
    "QuantizeBias": "qdq",
    "UseQDQContribOps": "qdq",
    "QDQDisableWeightAdjustForInt32Bias": "qdq",
    "BlockSize": "qdq",
    **{key: "static" for key in _CALIBRATION_KEYS},
}

_OVERRIDE_KEYS = {"rmin", "rmax", "scale", "zero_point", "symmetric", "reduce_range", "quant_type", "axis"}


@dataclass(frozen=True)
class TensorOverride:
    """One tensor's entry of ``TensorQuantOverrides`` (onnxruntime's keys, validated)."""

    rmin: float | None = None
    rmax: float | None = None
    scale: float | None = None
    zero_point: int | None = None
    symmetric: bool | None = None
    reduce_range: bool = False
    quant_type: QuantType | None = None
    axis: int | None = None


@dataclass
class QuantSettings:
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
    min_real_range: float | None = None
    activation_restricted_asymmetric: bool = False
    force_quantize_no_input_check: bool = False
    overrides: dict = field(default_factory=dict)      # tensor name -> TensorOverride
    calibration_stride: int | None = None
    add_qdq_pair_to_weight: bool = False
    outputs_not_quantized: frozenset = frozenset()     # op types (OpTypesToExcludeOutputQuantization)
    dedicated_qdq_pair: bool = False
    per_channel_axes: dict = field(default_factory=dict)
    quantize_bias: bool = True
    qdq_domain: str = ""                               # "com.microsoft" with UseQDQContribOps
    adjust_weight_for_int32_bias: bool = True
    block_size: int = 0                                # BlockSize: blocked rank-2 weights (opset 21)
    smooth_quant_alpha: float | None = None            # SmoothQuant: None = off
    smooth_quant_folding: bool = True
    per_row_activations: bool = False                  # PerRowActivations (quantize_dynamic)
    smoothing_nodes: frozenset = frozenset()           # Muls SmoothQuant inserted: kept float
    equalize: bool = False                             # CrossLayerEqualization (qrt's own key)
    bias_correction: bool = False                      # BiasCorrection (qrt's own key)
    quality_rules: bool = True                         # False with OnnxruntimeParity (qrt's own key)

    def weight_symmetric_for(self, qtype: QuantType) -> bool:
        return self.weight_symmetric if self.weight_symmetric is not None else qtype in SIGNED_TYPES


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


def _range(name, value):
    try:
        rmin, rmax = (float(v) for v in value)
    except (TypeError, ValueError):
        raise QuantizationError(f"range for tensor {name!r} must be a pair (rmin, rmax), got {value!r}") from None
    if not (math.isfinite(rmin) and math.isfinite(rmax)) or rmin > rmax:
        raise QuantizationError(f"range for tensor {name!r} must be finite with rmin <= rmax, "
                                f"got ({rmin}, {rmax})")
    return rmin, rmax


def _bool(extra, key, default):
    value = extra.get(key, default)
    if value is None:
        return default
    if not isinstance(value, (bool, int)):
        raise QuantizationError(f"extra_options[{key!r}] must be True or False, got {value!r}")
    return bool(value)


def _override(name, entries):
    what = f"extra_options['TensorQuantOverrides'][{name!r}]"
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, (list, tuple)) or not entries or not all(isinstance(e, dict) for e in entries):
        raise QuantizationError(f"{what} must be a non-empty list of dicts, got {entries!r}")
    entry = entries[0]
    if "convert" in entry:
        raise QuantizationError(f"{what}: 'convert' (a second quantization type for some readers) is not "
                                "supported by qrt")
    unknown = sorted(set(entry) - _OVERRIDE_KEYS)
    if unknown:
        raise QuantizationError(f"{what}: unknown key(s) {unknown}; known: {sorted(_OVERRIDE_KEYS)}")
    if len(entries) > 1 and any(set(e) - {"axis"} for e in entries[1:]):
        raise QuantizationError(f"{what}: per-channel entries with different values are not supported; "
                                "give one dict (with 'axis') that applies to every channel")
    has_params = "scale" in entry or "zero_point" in entry
    if has_params:
        if not {"scale", "zero_point"} <= set(entry):
            raise QuantizationError(f"{what}: 'scale' and 'zero_point' must be given together")
        clash = sorted({"rmin", "rmax", "symmetric", "reduce_range"} & set(entry))
        if clash:
            raise QuantizationError(f"{what}: {clash} cannot be combined with 'scale'/'zero_point'")
        if not float(entry["scale"]) > 0 or not math.isfinite(float(entry["scale"])):
            raise QuantizationError(f"{what}: scale must be positive and finite, got {entry['scale']!r}")
    rmin = entry.get("rmin")
    rmax = entry.get("rmax")
    if rmin is not None or rmax is not None:
        low = float(rmin) if rmin is not None else -math.inf
        high = float(rmax) if rmax is not None else math.inf
        if math.isnan(low) or math.isnan(high) or low > high:
            raise QuantizationError(f"{what}: rmin {rmin!r} must be <= rmax {rmax!r}")
    qtype = QuantType.parse(entry["quant_type"], f"{what} quant_type") if "quant_type" in entry else None
    return TensorOverride(
        rmin=None if rmin is None else float(rmin), rmax=None if rmax is None else float(rmax),
        scale=float(entry["scale"]) if has_params else None,
        zero_point=int(entry["zero_point"]) if has_params else None,
        symmetric=None if "symmetric" not in entry else bool(entry["symmetric"]),
        reduce_range=bool(entry.get("reduce_range", False)), quant_type=qtype,
        axis=None if entry.get("axis") is None else int(entry["axis"]))


def _overrides(value):
    if not isinstance(value, dict):
        raise QuantizationError("extra_options['TensorQuantOverrides'] must be a dict "
                                "{tensor_name: [{'rmin': ..., 'rmax': ...}]}")
    return {name: _override(name, entries) for name, entries in value.items()}


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


def _positive_number(extra, key, integer=False):
    value = extra.get(key)
    if value is None:
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not number > 0 or (integer and number != value):
        kind = "a positive int" if integer else "a positive number"
        raise QuantizationError(f"extra_options[{key!r}] must be {kind}, got {value!r}")
    return number


def _per_channel_axes(value):
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in value.items()):
        raise QuantizationError("extra_options['QDQOpTypePerChannelSupportToAxis'] must be a dict "
                                f"{{op_type: axis}}, got {value!r}")
    return dict(value)


def _refuse(extra, dynamic, quant_format):
    """Keys qrt does not honour, with the reason; QDQ-only keys outside QDQ."""
    call = "quantize_dynamic" if dynamic else "quantize_static"
    unknown = sorted(k for k in extra if k not in EXTRA_OPTIONS)
    if unknown:
        raise QuantizationError(f"unknown extra_options key(s) {unknown}; onnxruntime documents, and qrt "
                                f"honours, these: {sorted(EXTRA_OPTIONS)}")
    for key in sorted(extra):
        where = EXTRA_OPTIONS[key]
        if dynamic and where not in ("both", "dynamic"):
            raise QuantizationError(f"extra_options[{key!r}] applies to quantize_static only, not {call}")
        if not dynamic and where == "dynamic":
            raise QuantizationError(f"extra_options[{key!r}] applies to quantize_dynamic only, not {call}")
        if where == "qdq" and quant_format != QuantFormat.QDQ:
            raise QuantizationError(f"extra_options[{key!r}] applies to QuantFormat.QDQ only")
    if _bool(extra, "EnableSubgraph", False):
        raise QuantizationError("extra_options['EnableSubgraph']=True: qrt does not quantize the bodies of "
                                "If/Loop/Scan; they run in float")
    if _bool(extra, "extra.Sigmoid.nnapi", False):
        raise QuantizationError("extra_options['extra.Sigmoid.nnapi']=True: the NNAPI-only fixed Sigmoid output "
                                "range is not supported by qrt")
    if "DefaultTensorType" in extra:
        raise QuantizationError("extra_options['DefaultTensorType']: qrt does not guess the element type of "
                                "tensors onnx shape inference leaves untyped; it runs the model to observe them "
                                "(extra_options['InputShapes'] sets the generated feed's shapes)")
    if dynamic and _bool(extra, "ActivationSymmetric", False):
        raise QuantizationError("extra_options['ActivationSymmetric']=True with quantize_dynamic: "
                                "DynamicQuantizeLinear computes asymmetric uint8 parameters at run time")
    if dynamic and _bool(extra, "ForceQuantizeNoInputCheck", False):
        raise QuantizationError("extra_options['ForceQuantizeNoInputCheck']=True with quantize_dynamic: "
                                "dynamic quantization has no pass-through ops to force")
    if dynamic and not _bool(extra, "MatMulConstBOnly", True):
        raise QuantizationError("extra_options['MatMulConstBOnly']=False with quantize_dynamic: qrt quantizes "
                                "MatMul dynamically only when B is a constant")


def make_config(*, quant_format, activation_type, weight_type, per_channel, reduce_range,
                op_types_to_quantize, nodes_to_quantize, nodes_to_exclude, extra_options,
                tensor_ranges, default_op_types, dynamic=False) -> QuantSettings:
    extra = dict(extra_options or {})
    quant_format = QuantFormat.parse(quant_format)
    weight_qtype = QuantType.parse(weight_type, "weight_type")
    activation_qtype = QuantType.parse(activation_type, "activation_type")
    if dynamic:
        if weight_qtype not in EIGHT_BIT_TYPES:
            raise QuantizationError(f"weight_type={weight_qtype.name}: quantize_dynamic writes "
                                    "MatMulInteger/ConvInteger, which take QInt8 or QUInt8 weights")
    else:
        check_static_types(quant_format, activation_qtype, weight_qtype)
    _refuse(extra, dynamic, quant_format)
    op_types = _names(op_types_to_quantize, "op_types_to_quantize") or frozenset(default_op_types)
    ranges = {name: _range(name, value) for name, value in (tensor_ranges or {}).items()}
    overrides = _overrides(extra.get("TensorQuantOverrides") or {})
    for name, override in overrides.items():
        if override.quant_type is not None and override.quant_type not in EIGHT_BIT_TYPES \
                and quant_format != QuantFormat.QDQ:
            raise QuantizationError(f"TensorQuantOverrides[{name!r}]: quant_type {override.quant_type.name} "
                                    "needs QuantFormat.QDQ")
        if override.quant_type == QuantType.QFLOAT8E4M3FN:
            raise QuantizationError(f"TensorQuantOverrides[{name!r}]: qrt does not quantize to QFLOAT8E4M3FN")
    weight_symmetric = extra.get("WeightSymmetric")
    if weight_symmetric is not None:
        weight_symmetric = _bool(extra, "WeightSymmetric", None)
    contrib = _bool(extra, "UseQDQContribOps", False)
    excluded_outputs = _names(extra.get("OpTypesToExcludeOutputQuantization"),
                              "extra_options['OpTypesToExcludeOutputQuantization']")
    calibration = {_CALIBRATION_KEYS[k]: v for k, v in extra.items() if k in _CALIBRATION_KEYS}
    for key in ("CalibTensorRangeSymmetric", "CalibMovingAverage"):
        if key in extra:
            calibration[_CALIBRATION_KEYS[key]] = _bool(extra, key, False)
    _positive_number(extra, "CalibMaxIntermediateOutputs", integer=True)  # qrt streams: memory is bounded anyway
    return QuantSettings(
        quant_format=quant_format,
        activation_type=activation_qtype,
        weight_type=weight_qtype,
        per_channel=bool(per_channel),
        reduce_range=bool(reduce_range),
        op_types=op_types,
        nodes_to_quantize=_names(nodes_to_quantize, "nodes_to_quantize") or None,
        nodes_to_exclude=_names(nodes_to_exclude, "nodes_to_exclude"),
        activation_symmetric=_bool(extra, "ActivationSymmetric", False),
        weight_symmetric=weight_symmetric,
        matmul_const_b_only=_bool(extra, "MatMulConstBOnly", dynamic),
        keep_removable_activations=_bool(extra, "QDQKeepRemovableActivations", False),
        tensor_ranges=ranges,
        calibration_options=calibration,
        input_shapes=_input_shapes(extra.get("InputShapes", {})),
        min_real_range=_positive_number(extra, "MinimumRealRange"),
        activation_restricted_asymmetric=_bool(extra, "ActivationRestrictedAsymmetric", False),
        force_quantize_no_input_check=_bool(extra, "ForceQuantizeNoInputCheck", False),
        overrides=overrides,
        calibration_stride=_positive_number(extra, "CalibStridedMinMax", integer=True),
        add_qdq_pair_to_weight=_bool(extra, "AddQDQPairToWeight", False),
        outputs_not_quantized=excluded_outputs,
        dedicated_qdq_pair=_bool(extra, "DedicatedQDQPair", False),
        per_channel_axes=_per_channel_axes(extra.get("QDQOpTypePerChannelSupportToAxis") or {}),
        quantize_bias=_bool(extra, "QuantizeBias", True),
        qdq_domain="com.microsoft" if contrib else "",
        adjust_weight_for_int32_bias=not _bool(extra, "QDQDisableWeightAdjustForInt32Bias", False),
        block_size=_positive_number(extra, "BlockSize", integer=True) or 0,
        smooth_quant_alpha=_smooth_quant_alpha(extra),
        smooth_quant_folding=_bool(extra, "SmoothQuantFolding", True),
        per_row_activations=_bool(extra, "PerRowActivations", False),
        equalize=_bool(extra, "CrossLayerEqualization", False),
        bias_correction=_bool(extra, "BiasCorrection", False),
        quality_rules=not _bool(extra, "OnnxruntimeParity", False),
    )


def _smooth_quant_alpha(extra):
    """SmoothQuantAlpha when SmoothQuant is on (default 0.5), else None."""
    if not _bool(extra, "SmoothQuant", False):
        return None
    alpha = extra.get("SmoothQuantAlpha", 0.5)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise QuantizationError(f"extra_options['SmoothQuantAlpha'] must be a number in [0, 1], got {alpha!r}")
    return float(alpha)
