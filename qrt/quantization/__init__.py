"""Static and dynamic quantization of ONNX models, with onnxruntime.quantization's API.

Every public name of ``onnxruntime.quantization`` users call is here under the same name and
arguments (``quantize`` with ``StaticQuantConfig``/``DynamicQuantConfig``, ``get_qdq_config``,
``create_calibrator``, ``write_calibration_table``, ``quant_pre_process``, the enums); every
documented ``extra_options`` key is honoured or refused by name (:mod:`.config`); the README's
"onnxruntime.quantization API in qrt" section has the table, ``tests/quantization/test_ort_compat.py``
the checks against onnxruntime's tool. Switching from onnxruntime is a change of import::

    from qrt.quantization import quantize_static, quantize_dynamic, QuantFormat, QuantType, CalibrationMethod

    summary = quantize_static("model.onnx", "model.int8.onnx", reader,
                              quant_format=QuantFormat.QOperator, per_channel=True,
                              activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.Entropy)
    print(summary)      # quantized nodes, nodes kept in float and why, sizes before and after

``reader`` is a CalibrationDataReader (``get_next()`` returning a feed dict or None) or any iterable
of feed dicts. Beyond onnxruntime's arguments, ``quantize_static`` takes ``tensor_ranges={name:
(rmin, rmax)}`` to fix ranges by hand, and both functions accept ``model_output=None`` to get the
quantized ModelProto back without writing a file.

Beyond onnxruntime's tool: ``equalize(model)`` (cross-layer equalization, :mod:`.equalization`) and
empirical bias correction (:mod:`.bias_correction`), both applied by ``quantize_static(...,
extra_options={"CrossLayerEqualization": True, "BiasCorrection": True})`` (or the keywords
``equalize=True, bias_correction=True``; ``qrt quantize --equalize --bias-correction``).

Formats:

* ``QuantFormat.QOperator``: Conv -> QLinearConv, MatMul -> QLinearMatMul, Gemm -> com.microsoft
  QGemm, Add/Mul/pools/Sigmoid/LeakyRelu/Concat/Softmax -> com.microsoft QLinear ops; Relu/Clip fold
  into the producer's output range; MaxPool, Reshape, Transpose, Flatten, Squeeze, Unsqueeze,
  Resize, Split, Slice, Gather and Pad run on the int8 tensor. QuantizeLinear/DequantizeLinear
  appear only where int8 and float parts of the graph meet. ConvTranspose (no QLinear form in
  onnxruntime's CPU domains) keeps float compute on int8-stored weights.
* ``QuantFormat.QDQ`` (onnxruntime's default): QuantizeLinear/DequantizeLinear pairs on
  activations, int8 weight initializers with a DequantizeLinear (per-axis when ``per_channel``),
  int32 bias initializers with a DequantizeLinear: the layout onnxruntime and TensorRT fuse.
  QDQ also carries QInt16/QUInt16 (opset raised to 21) and QInt4/QUInt4 weights (com.microsoft
  Q/DQ below opset 21), and float16 models (float16 scales, opset 19), as onnxruntime writes them.
* Where becomes com.microsoft QLinearWhere (QOperator) or a QDQ op, with ForceQuantizeNoInputCheck
  as in onnxruntime; ArgMax reads the int8 tensor in QOperator form.
* No node qualifies: the model is written unchanged with a :class:`qrt.errors.QuantizationWarning`.

Per-channel weights use each op's output-channel axis: Conv 0, ConvTranspose 1, MatMul 1 (the
columns of a 2-D B), Gemm 0 with transB else 1. Biases are int32 with scale input_scale *
weight_scale and zero point 0. A Conv that pre-processing folded a BatchNormalization into gets
per-channel weights even without ``per_channel`` (the fold gives each output channel its own factor;
onnxruntime's tool, which keeps the BatchNorm in float, quantizes the unfolded weight per tensor).
A tensor read only by a HardSwish (the op, ``x * clip(x + 3, 0, 6)`` or ``x * HardSigmoid(x)``) is
quantized from -3 up, as a Relu's input folds to 0: HardSwish is 0 below -3.
Every Conv weight gets per-channel scales by default (a BatchNorm folded at export spreads the channels
as one qrt folds: ddddocr's detector 11.5 -> 17.7 dB), and a tensor read only by SiLU (``x *
Sigmoid(x)``) or Sigmoid is quantized from where their int8 outputs are 0 (or 1) anyway
(:mod:`.saturation`; ddddocr's detector 17.7 -> 21.6 dB). ``extra_options={"OnnxruntimeParity": True}``
turns these rules, the HardSwish floor, the folded-BatchNorm rule and the cancellation rule off, so that
the numbers are onnxruntime's tool's (pre-processing's folds aside).

Before rewriting, the model is pre-processed with :mod:`qrt.optimizer` (constant folding, so
weights in Constant nodes become initializers; BatchNormalization folded into Conv; MatMul+Add
into Gemm) and shape inference with symbolic dims. Where that inference leaves a tensor's element
type or rank unknown (ops of domains onnx has no schema for, Reshape targets computed at run time),
the model runs once in qrt on the first calibration sample, or for ``quantize_dynamic`` on a
generated feed (``extra_options={"InputShapes": {...}}`` sets its shapes), and the types are taken
from that run (:mod:`calibration.tensor_types`). Every user error raises
:class:`qrt.errors.QuantizationError`; the output file is written atomically or not at all, and
the input file is never modified.
"""
from calibration import (CalibraterBase, CalibrationDataReader, CalibrationMethod, MinMaxCalibrater, TensorData,
                         TensorsData, create_calibrator, load_tensors_data, save_tensors_data,
                         write_calibration_table)

from .configs import DynamicQuantConfig, QuantConfig, StaticQuantConfig, get_qdq_config, quantize
from .dynamic import quantize_dynamic
from .equalization import equalize
from .preprocess import quant_pre_process
from .smoothquant import SmoothedGroup, smooth_quant, smooth_quant_details
from .static import quantize_static
from .summary import NodeReport, QuantizationSummary
from .tune import TuneResult, TuneStep, tune
from .types import QuantFormat, QuantizationMode, QuantType
from .weight_only import quantize_weight_only

__all__ = [
    "quantize_static",
    "quantize_dynamic",
    "quantize",
    "QuantConfig",
    "StaticQuantConfig",
    "DynamicQuantConfig",
    "get_qdq_config",
    "QuantizationMode",
    "quantize_weight_only",
    "equalize",
    "QuantFormat",
    "QuantType",
    "CalibrationMethod",
    "CalibrationDataReader",
    "CalibraterBase",
    "MinMaxCalibrater",
    "TensorData",
    "TensorsData",
    "create_calibrator",
    "load_tensors_data",
    "save_tensors_data",
    "write_calibration_table",
    "quant_pre_process",
    "smooth_quant",
    "smooth_quant_details",
    "SmoothedGroup",
    "QuantizationSummary",
    "NodeReport",
    "tune",
    "TuneResult",
    "TuneStep",
]
