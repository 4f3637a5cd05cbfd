"""onnxruntime's configuration-object API: ``quantize(model_input, model_output, quant_config)``.

``StaticQuantConfig`` / ``DynamicQuantConfig`` hold ``quantize_static`` / ``quantize_dynamic``
arguments under onnxruntime's names; :func:`get_qdq_config` builds a QDQ ``StaticQuantConfig`` the
way onnxruntime's does (every op type of the model, ForceQuantizeNoInputCheck, a callable
``nodes_to_exclude``, UseQDQContribOps for 4-bit types below opset 21 when no 16-bit type raises
the opset). Values are checked when ``quantize`` runs, by the same code as the functions.
"""
from __future__ import annotations

import copy
import os

import onnx
from calibration import CalibrationMethod

from qrt.errors import QuantizationError

from .dynamic import quantize_dynamic
from .static import quantize_static
from .types import FOUR_BIT_TYPES, SIXTEEN_BIT_TYPES, WIDE_TYPES_OPSET, QuantFormat, QuantType

# onnxruntime's MODEL_SIZE_THRESHOLD: above it the config asks for external data.
_EXTERNAL_DATA_THRESHOLD = 2147483648


class QuantConfig:
    """Arguments shared by static and dynamic quantization (onnxruntime's base class)."""

    def __init__(self, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=None,
                 nodes_to_quantize=None, nodes_to_exclude=None, per_channel=False, reduce_range=False,
                 use_external_data_format=False):
        self.op_types_to_quantize = op_types_to_quantize or []
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        self.weight_type = weight_type
        self.activation_type = activation_type
        self.nodes_to_quantize = nodes_to_quantize or []
        self.nodes_to_exclude = nodes_to_exclude or []
        self.use_external_data_format = use_external_data_format

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "calibration_data_reader")
        return f"{type(self).__name__}({fields})"


class StaticQuantConfig(QuantConfig):
    """``quantize_static``'s arguments; defaults are onnxruntime's (QDQ, QInt8/QInt8, MinMax)."""

    def __init__(self, calibration_data_reader, calibrate_method=CalibrationMethod.MinMax,
                 quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                 op_types_to_quantize=None, nodes_to_quantize=None, nodes_to_exclude=None, per_channel=False,
                 reduce_range=False, use_external_data_format=False, calibration_providers=None,
                 extra_options=None):
        super().__init__(activation_type, weight_type, op_types_to_quantize, nodes_to_quantize, nodes_to_exclude,
                         per_channel, reduce_range, use_external_data_format)
        self.calibration_data_reader = calibration_data_reader
        self.calibrate_method = calibrate_method
        self.quant_format = quant_format
        self.calibration_providers = calibration_providers
        self.extra_options = extra_options or {}


class DynamicQuantConfig(QuantConfig):
    """``quantize_dynamic``'s arguments."""

    def __init__(self, weight_type=QuantType.QInt8, op_types_to_quantize=None, nodes_to_quantize=None,
                 nodes_to_exclude=None, per_channel=False, reduce_range=False, use_external_data_format=False,
                 extra_options=None):
        super().__init__(QuantType.QUInt8, weight_type, op_types_to_quantize, nodes_to_quantize, nodes_to_exclude,
                         per_channel, reduce_range, use_external_data_format)
        self.extra_options = extra_options or {}


def quantize(model_input, model_output, quant_config: QuantConfig):
    """Quantizes with a :class:`StaticQuantConfig` or :class:`DynamicQuantConfig`; returns the summary."""
    if isinstance(quant_config, StaticQuantConfig):
        return quantize_static(
            model_input, model_output, quant_config.calibration_data_reader,
            calibrate_method=quant_config.calibrate_method, quant_format=quant_config.quant_format,
            activation_type=quant_config.activation_type, weight_type=quant_config.weight_type,
            op_types_to_quantize=quant_config.op_types_to_quantize or None,
            nodes_to_quantize=quant_config.nodes_to_quantize or None,
            nodes_to_exclude=quant_config.nodes_to_exclude or None, per_channel=quant_config.per_channel,
            reduce_range=quant_config.reduce_range, use_external_data_format=quant_config.use_external_data_format,
            calibration_providers=quant_config.calibration_providers, extra_options=quant_config.extra_options)
    if isinstance(quant_config, DynamicQuantConfig):
        return quantize_dynamic(
            model_input, model_output, weight_type=quant_config.weight_type,
            op_types_to_quantize=quant_config.op_types_to_quantize or None,
            nodes_to_quantize=quant_config.nodes_to_quantize or None,
            nodes_to_exclude=quant_config.nodes_to_exclude or None, per_channel=quant_config.per_channel,
            reduce_range=quant_config.reduce_range, use_external_data_format=quant_config.use_external_data_format,
            extra_options=quant_config.extra_options)
    raise QuantizationError(f"quant_config must be a StaticQuantConfig or DynamicQuantConfig, got "
                            f"{type(quant_config).__name__} (onnxruntime's weight-only MatMulNBits configs "
                            "are not supported by qrt)")


def _opset(model):
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 1)


def get_qdq_config(model_input, calibration_data_reader, calibrate_method=CalibrationMethod.MinMax,
                   calibrate_args=None, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                   activation_symmetric=False, weight_symmetric=None, per_channel=False, reduce_range=False,
                   keep_removable_activations=False, min_real_range=None, tensor_quant_overrides=None,
                   calibration_providers=None, op_types_to_quantize=None, nodes_to_exclude=None,
                   extra_options=None) -> StaticQuantConfig:
    """A QDQ :class:`StaticQuantConfig` for the whole model, built as onnxruntime's ``get_qdq_config`` builds it."""
    model = model_input if isinstance(model_input, onnx.ModelProto) else \
        onnx.load_model(os.fspath(model_input), load_external_data=False)
    activation_type = QuantType.parse(activation_type, "activation_type")
    weight_type = QuantType.parse(weight_type, "weight_type")
    wanted = set(op_types_to_quantize) if op_types_to_quantize else None
    excluded = set(nodes_to_exclude) if isinstance(nodes_to_exclude, (list, tuple, set)) else set()
    op_types = set()
    for node in model.graph.node:
        if (wanted and node.op_type not in wanted) or node.name in excluded:
            continue
        if callable(nodes_to_exclude) and nodes_to_exclude(model, node):
            excluded.add(node.name)
        else:
            op_types.add(node.op_type)
    overrides = copy.deepcopy(tensor_quant_overrides) if tensor_quant_overrides else {}
    options = {
        "MinimumRealRange": min_real_range,
        "QDQKeepRemovableActivations": keep_removable_activations,
        "ActivationSymmetric": activation_symmetric,
        "WeightSymmetric": weight_symmetric,
        "ForceQuantizeNoInputCheck": True,
        "TensorQuantOverrides": overrides,
    }
    calibration_keys = {"symmetric": "CalibTensorRangeSymmetric", "moving_average": "CalibMovingAverage",
                        "averaging_constant": "CalibMovingAverageConstant",
                        "max_intermediate_outputs": "CalibMaxIntermediateOutputs", "percentile": "CalibPercentile"}
    for name, key in calibration_keys.items():
        if calibrate_args and name in calibrate_args:
            options[key] = calibrate_args[name]
    override_types = {QuantType.parse(e["quant_type"]) for entries in overrides.values()
                      for e in (entries if isinstance(entries, list) else [entries])
                      if isinstance(e, dict) and "quant_type" in e}
    types = {activation_type, weight_type} | override_types
    if _opset(model) < WIDE_TYPES_OPSET and not types & set(SIXTEEN_BIT_TYPES) and types & set(FOUR_BIT_TYPES):
        options["UseQDQContribOps"] = True
    options.update(extra_options or {})
    big = any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer) \
        or model.ByteSize() >= _EXTERNAL_DATA_THRESHOLD
    return StaticQuantConfig(
        calibration_data_reader, calibrate_method=calibrate_method, quant_format=QuantFormat.QDQ,
        activation_type=activation_type, weight_type=weight_type,
        op_types_to_quantize=op_types_to_quantize or sorted(op_types - {"Cast", "DequantizeLinear", "QuantizeLinear"}),
        nodes_to_exclude=sorted(excluded), per_channel=per_channel, reduce_range=reduce_range,
        use_external_data_format=big, calibration_providers=calibration_providers, extra_options=options)
