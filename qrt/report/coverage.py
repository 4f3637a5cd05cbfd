"""Which nodes of an int8 model compute in int8, which stayed float, and which are shape arithmetic.

Every node falls in one of four groups:

- ``int8``: a quantized operator (QOperator ops such as QLinearConv, integer ops such as ConvInteger and
  MatMulInteger), or, in a QDQ model, a compute node whose float inputs all come from DequantizeLinear
  nodes and whose output goes to a QuantizeLinear (the node unit onnxruntime and qrt's planner run in int8);
  integer arithmetic on the quantized data path (the Add of an int32 bias after ConvInteger) counts here too.
- ``float``: a compute node (convolution, matmul, element-wise arithmetic, activations, normalisation,
  pooling, reductions) that runs in float.
- ``shape``: shape arithmetic — Shape/Size and the integer or bool nodes computed only from them and from
  constants (Gather/Concat/Mul/Unsqueeze on int64 in an exporter's reshape logic). Quantization leaves these
  alone by nature: they carry sizes, not activations, so they are neither int8 nor float compute.
- ``other``: data movement and glue (Reshape, Transpose, Slice, Cast, Q/DQ themselves, ...), including the
  float Mul/Add that rescale an integer accumulator in a dynamically quantized model (ConvInteger -> Cast ->
  Mul by input scale x weight scale -> Add bias): they are the int8 node's dequantization, not float compute.

A node's element types come from the model's value_info plus onnx shape inference, best effort: contrib
ops that onnx cannot infer leave their outputs untyped, which only matters for the shape group, whose
members are found from Shape/Size and integer constants first.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from ..quantization.graph import GraphIndex

# MatMulNBits (4-bit weights, float activations) counts as quantized: its weights are, which is its point.
QUANTIZED_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax", "QLinearReduceMean",
    "QLinearWhere", "QAttention", "QEmbedLayerNormalization", "MatMulInteger", "ConvInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulNBits"})

COMPUTE_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "Attention", "LSTM", "GRU", "RNN",
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu",
    "PRelu", "Elu", "Selu", "Gelu", "FastGelu", "HardSigmoid", "HardSwish", "Softplus", "Clip", "Softmax",
    "LogSoftmax", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "SkipLayerNormalization", "GroupNormalization", "GlobalAveragePool", "AveragePool", "MaxPool",
    "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "Resize", "Concat"})

_SHAPE_SOURCES = frozenset({"Shape", "Size"})


@dataclass
class Coverage:
    """Node names and op types per group (see the module docstring)."""
    int8: list = field(default_factory=list)
    float: list = field(default_factory=list)
    shape: list = field(default_factory=list)
    other: list = field(default_factory=list)

    @property
    def int8_share(self) -> float:
        return int8_share(self.int8, self.float)


def int8_share(int8_nodes, float_nodes) -> float:
    """int8 compute nodes over all compute nodes (shape arithmetic excluded); 1.0 for a model with none."""
    compute = len(int8_nodes) + len(float_nodes)
    return len(int8_nodes) / compute if compute else 1.0


def op_counts(nodes) -> list:
    """[(op_type, count)] of [(name, op_type)], most frequent first, ties by name."""
    return sorted(Counter(op for _, op in nodes).items(), key=lambda item: (-item[1], item[0]))


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # onnx refuses some contrib or malformed graphs outright; the declared types remain
        return model


def node_coverage(model: onnx.ModelProto) -> Coverage:
    """Sort the main graph's nodes of ``model`` into int8 / float / shape / other."""
    index = GraphIndex(_typed(model))
    shape_tensors = {name for name, tensor in index.initializers.items()
                     if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)}
    glue = _dequantization_glue(index)
    coverage = Coverage()
    for node in index.graph.node:
        inputs = [name for name in node.input if name]
        outputs = [name for name in node.output if name]
        entry = (node.name or (outputs[0] if outputs else node.op_type), node.op_type)
        integer_out = all(index.elem_types.get(name) in (_INTEGER | _INDEX | {None}) for name in outputs)
        if node.op_type == "Constant":
            if integer_out:
                shape_tensors.update(outputs)
            coverage.other.append(entry)
        elif node.op_type in _SHAPE_SOURCES or (
                inputs and all(name in shape_tensors for name in inputs) and integer_out):
            shape_tensors.update(outputs)
            coverage.shape.append(entry)
        elif id(node) in glue:
            coverage.other.append(entry)
        elif node.op_type in QUANTIZED_OPS or _runs_in_qdq(node, index):
            coverage.int8.append(entry)
        elif node.op_type in COMPUTE_OPS:
            quantized_path = outputs and all(index.elem_types.get(name) in _INTEGER for name in outputs)
            (coverage.int8 if quantized_path else coverage.float).append(entry)
        else:
            coverage.other.append(entry)
    return coverage


# Integer types of the quantized data path, and those of sizes and indices.
_INTEGER = frozenset({onnx.TensorProto.INT32, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
                      onnx.TensorProto.INT16, onnx.TensorProto.UINT16})
_INDEX = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.BOOL})


_ACCUMULATOR_OPS = frozenset({"ConvInteger", "MatMulInteger"})


def _dequantization_glue(index: GraphIndex) -> set:
    """ids of the nodes that turn an integer accumulator back into float (see the module docstring)."""
    scales = {node.output[1] for node in index.graph.node
              if node.op_type == "DynamicQuantizeLinear" and len(node.output) > 1}
    accumulators = {out for node in index.graph.node if node.op_type in _ACCUMULATOR_OPS for out in node.output}
    glue = set()
    for node in index.graph.node:
        inputs = [name for name in node.input if name]
        constant_or_scale = [name in index.initializers or name in scales for name in inputs]
        if node.op_type == "Mul" and inputs and all(constant_or_scale):
            scales.update(node.output)      # input scale x weight scale
            glue.add(id(node))
        elif (node.op_type in ("Cast", "Reshape") and inputs and inputs[0] in accumulators) or (
                node.op_type in ("Mul", "Add") and len(inputs) == 2 and any(n in accumulators for n in inputs)
                and any(constant_or_scale)):
            accumulators.update(node.output)
            glue.add(id(node))
    return glue


# Ops whose inputs after the first are settings (Resize's roi/scales/sizes, Clip's bounds, axes), not operands:
# a QDQ unit dequantizes only the data input of these.
_SETTINGS_AFTER_FIRST = frozenset({"Resize", "Clip", "ReduceMean", "ReduceSum", "ReduceMax", "Softmax",
                                   "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


def _runs_in_qdq(node, index: GraphIndex) -> bool:
    """A QDQ node unit: every operand dequantized, the output quantized again."""
    if node.op_type not in COMPUTE_OPS:
        return False
    inputs = list(node.input[:1]) if node.op_type in _SETTINGS_AFTER_FIRST else [n for n in node.input if n]
    if not inputs or not inputs[0]:
        return False
    for name in inputs:
        producer = index.producer.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            continue
        if name in index.initializers and index.elem_types.get(name) != onnx.TensorProto.FLOAT:
            continue  # integer settings passed as inputs (axes)
        return False
    outputs = [name for name in node.output if name]
    return bool(outputs) and all(
        any(c.op_type == "QuantizeLinear" for c in index.consumers.get(name, ())) for name in outputs)
