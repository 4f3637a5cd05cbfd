"""``quantize_static``: calibrate activation ranges, then rewrite to QOperator or QDQ form.

Steps: pre-process (:mod:`.preprocess`) -> choose what to quantize (:func:`plan_nodes`) ->
calibrate the activations those nodes read and write (qrt's own runtime, via the ``calibration``
package) -> keep float the inputs of an addition that cancels them (:func:`cancelling_nodes`) ->
choose parameters, folding Relu/Clip into the producer's range where exact -> rewrite
(:mod:`.rewrite`) -> check and write atomically.
"""
from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto
from calibration import CalibrationMethod

from qrt.errors import QuantizationError, QuantizationWarning

from .bias_correction import correct_biases, with_zero_biases
from .config import QuantSettings, make_config
from .equalization import equalize_graph
from .feeds import calibration_ranges, checked_feeds, with_complete_types
from .graph import MS_DOMAIN, GraphIndex, attribute, describe, toposort
from .model_io import check_output, finish, load, save, serialized_size
from .params import QParams, fixed_params, half_scaled, params_for_range
from .preprocess import MIN_OPSET, preprocess
from .rewrite import Decision, QDQRewriter, QOperatorRewriter
from .rules import DEFAULT_STATIC_OP_TYPES, RULES, activation_bounds, weight_axis
from .saturation import saturation_bounds
from .smoothquant import smooth_for_quantization
from .summary import NodeReport, QuantizationSummary, is_shape_computation
from .types import EIGHT_BIT_TYPES, FOUR_BIT_TYPES, SIXTEEN_BIT_TYPES, WIDE_TYPES_OPSET, QuantFormat, QuantType

_PASSTHROUGH_MODES = {"Resize": ("nearest", "linear")}


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _filter_reason(node: onnx.NodeProto, cfg: QuantSettings) -> str:
    if node.domain not in ("", "ai.onnx"):
        return f"op of domain {node.domain!r}"
    if node.op_type not in RULES:
        return f"qrt has no quantized form of {node.op_type}"
    if node.name in cfg.nodes_to_exclude:
        return "listed in nodes_to_exclude"
    if node.name in cfg.smoothing_nodes:
        return "SmoothQuant's smoothing Mul: quantizing its input would bring back the outliers it divides away"
    if cfg.nodes_to_quantize is not None and node.name not in cfg.nodes_to_quantize:
        return "not listed in nodes_to_quantize"
    if node.op_type not in cfg.op_types:
        return "op type not in op_types_to_quantize"
    return ""


def _not_float(g: GraphIndex, cfg: QuantSettings, name: str, what: str) -> str:
    elem = g.elem_types.get(name)
    if elem == TensorProto.FLOAT:
        return ""
    if elem == TensorProto.FLOAT16:
        # float16 scales exist for QuantizeLinear/DequantizeLinear (opset 19), not for the QLinear ops.
        return "" if cfg.quant_format == QuantFormat.QDQ else \
            f"{what} {name!r} is float16, which only QuantFormat.QDQ quantizes (QLinear ops take float32 scales)"
    kind = onnx.TensorProto.DataType.Name(elem).lower() if elem else "of unknown type"
    return f"{what} {name!r} is {kind}, only float32 and float16 tensors are quantized"


def _check_compute(g: GraphIndex, d: Decision, cfg: QuantSettings, folded=frozenset()) -> str:
    """Fills the decision's input roles; returns why the node cannot be quantized, or ''."""
    node, rule = d.node, d.rule
    inputs = list(node.input)
    if len(node.output) != 1 or not node.output[0]:
        return "expected exactly one output"
    reason = _not_float(g, cfg, node.output[0], "output")
    if reason:
        return reason
    acts = [i for i, name in enumerate(inputs) if name] if rule.activations is None else \
        [i for i in rule.activations if i < len(inputs) and inputs[i]]
    weight = bias = None
    if rule.weight is not None:
        if rule.weight >= len(inputs) or not inputs[rule.weight]:
            return "missing weight input"
        w = inputs[rule.weight]
        if g.is_constant(w):
            weight = rule.weight
        elif node.op_type in ("Conv", "ConvTranspose"):
            return f"weight {w!r} is not a constant"
        elif cfg.matmul_const_b_only:
            return f"B {w!r} is not a constant (MatMulConstBOnly)"
        else:
            acts.append(rule.weight)
    if rule.bias is not None and rule.bias < len(inputs) and inputs[rule.bias]:
        if not g.is_constant(inputs[rule.bias]):
            return f"bias {inputs[rule.bias]!r} is not a constant"
        bias = rule.bias
    for i in acts + [j for j in (weight, bias) if j is not None]:
        reason = _not_float(g, cfg, inputs[i], "input")
        if reason:
            return reason
    if node.op_type in ("Add", "Mul", "Concat") and all(g.is_constant(inputs[i]) for i in acts):
        return "all inputs are constants"
    if node.op_type == "AveragePool" and any(v != 1 for v in (attribute(node, "dilations") or [])):
        return "dilated AveragePool has no QLinear form"
    if node.op_type == "Where" and not cfg.force_quantize_no_input_check:
        return "Where is quantized only with ForceQuantizeNoInputCheck (as onnxruntime does)"
    if node.op_type == "Gemm" and bias is not None and weight is None:
        return "Gemm with a computed B and a bias"
    d.acts = tuple(acts)
    d.weight, d.bias = weight, bias
    if weight is not None:
        rank = len(g.shapes.get(inputs[weight], []))
        override = cfg.overrides.get(inputs[weight])
        if override is not None and override.axis is not None:
            d.axis = override.axis % max(rank, 1)
        elif cfg.per_channel or (cfg.quality_rules and (node.op_type == "Conv" or node.output[0] in folded)):
            # A folded BatchNorm multiplies each output channel by its own gamma / sigma (PicoDet's vary
            # 1000x), so one scale for the folded weight leaves many channels a few levels or none.
            # onnxruntime's tool, which keeps the BatchNorm in float, gives the raw weight one scale;
            # one per output channel is what brings the folded weight back to (and past) that. Models
            # exported with the BatchNorm already folded (ddddocr's YOLOX detector) have the same spread
            # with nothing to show it, so every Conv's weight gets per-channel scales: they cost one
            # float per output channel, and onnxruntime's and qrt's int8 kernels take them at the same
            # speed. ddddocr_det: 11.5 -> 17.7 dB.
            d.axis = weight_axis(node, rank)
            if node.op_type in cfg.per_channel_axes:
                d.axis = cfg.per_channel_axes[node.op_type] % max(rank, 1)
        if cfg.block_size:
            if rank != 2:
                return f"BlockSize: blocked quantization needs a rank-2 weight, {w!r} has rank {rank}"
            if bias is not None:
                return "BlockSize: the int32 bias needs one weight scale per output channel, not per block"
            d.axis = 0 if d.axis is None else d.axis
            d.block_size = cfg.block_size
        elif d.axis is not None and bias is not None and d.axis != weight_axis(node, rank):
            return (f"per-channel axis {d.axis} of weight {w!r} is not the output-channel axis, "
                    "which the int32 bias needs")
    d.output = node.output[0]
    return ""


def _check_passthrough(g: GraphIndex, cfg: QuantSettings, node: onnx.NodeProto) -> str:
    if not node.input or not node.input[0]:
        return "no data input"
    reason = _not_float(g, cfg, node.input[0], "input")
    if reason:
        return reason
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        return "MaxPool with an Indices output"
    if node.op_type == "Resize" and _text(attribute(node, "mode", b"nearest")) not in _PASSTHROUGH_MODES["Resize"]:
        return f"Resize mode {_text(attribute(node, 'mode'))!r} has no int8 kernel"
    return ""


def _scalar(g: GraphIndex, name: str):
    """The value of a one-element constant input, or None."""
    if not name or not g.is_constant(name):
        return None
    value = np.asarray(g.constant(name))
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _is_hardswish_of(g: GraphIndex, node: onnx.NodeProto, x: str) -> bool:
    """Whether ``node`` (a reader of ``x``) is part of HardSwish(x) = x * clip(x + 3, 0, 6) / 6: the
    HardSwish op, the Add(x, 3) -> Clip(0, 6) -> Mul(x, .) decomposition exporters write (its Add or
    its Mul), or x * HardSigmoid(x) with HardSwish's alpha and beta."""
    if node.op_type == "HardSwish":
        return True
    if node.op_type == "Add" and len(node.input) == 2:
        other = node.input[1] if node.input[0] == x else node.input[0]
        readers = g.consumers.get(node.output[0], [])
        if _scalar(g, other) != 3.0 or len(readers) != 1 or readers[0].op_type != "Clip":
            return False
        clip = readers[0]
        if [_scalar(g, n) for n in clip.input[1:3]] != [0.0, 6.0]:
            return False
        muls = g.consumers.get(clip.output[0], [])
        return len(muls) == 1 and muls[0].op_type == "Mul" and x in muls[0].input
    if node.op_type == "HardSigmoid":
        readers = g.consumers.get(node.output[0], [])
        return (np.isclose(attribute(node, "alpha", 0.2), 1 / 6) and np.isclose(attribute(node, "beta", 0.5), 0.5)
                and len(readers) == 1 and readers[0].op_type == "Mul" and x in readers[0].input)
    if node.op_type == "Mul" and len(node.input) == 2:
        gate = g.producer.get(node.input[1] if node.input[0] == x else node.input[0])
        return gate is not None and gate.op_type in ("Clip", "HardSigmoid") and (
            gate.op_type == "HardSigmoid" and gate.input[0] == x and _is_hardswish_of(g, gate, x)
            or gate.op_type == "Clip" and (add := g.producer.get(gate.input[0])) is not None
            and add.op_type == "Add" and x in add.input and _is_hardswish_of(g, add, x))
    return False


def hardswish_floor(g: GraphIndex, name: str):
    """-3.0 when every reader of ``name`` computes HardSwish(name), else None.

    HardSwish is 0 for every x <= -3, so values below -3 need no representation: the tensor's range
    starts at -3 at no cost in exactness, as a Relu's starts at 0. On a Conv+BatchNorm output that
    swings far negative (PicoDet's -32..122) this buys back most of the levels of its int8 scale.
    """
    readers = g.consumers.get(name, [])
    if not readers or name in g.graph_outputs:
        return None
    return -3.0 if all(_is_hardswish_of(g, node, name) for node in readers) else None


def batchnorm_folded_outputs(model: onnx.ModelProto) -> frozenset:
    """Outputs of the BatchNormalizations that read a Conv/ConvTranspose alone: pre-processing folds
    them into that Conv, which then writes this name."""
    producer = {out: node for node in model.graph.node for out in node.output}
    readers = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            readers[name] += 1
    return frozenset(node.output[0] for node in model.graph.node if node.op_type == "BatchNormalization"
                     and (conv := producer.get(node.input[0])) is not None
                     and conv.op_type in ("Conv", "ConvTranspose") and readers[node.input[0]] == 1)


def plan_nodes(g: GraphIndex, cfg: QuantSettings, folded: frozenset = frozenset(),
               keep_float: dict | None = None) -> list[Decision]:
    """One decision per node, in topological order, before any range is known.

    ``folded``: output names of Convs that carry a folded BatchNormalization
    (:func:`batchnorm_folded_outputs`); their weights get per-channel scales (see :func:`_check_compute`).
    ``keep_float``: {first output name: reason} of nodes that stay float (:func:`cancelling_nodes`).
    """
    available = set(g.graph_inputs) | set(g.initializers)
    decisions = [Decision(node, RULES.get(node.op_type)) for node in toposort(list(g.graph.node), available)]
    by_output = {}
    for d in decisions:
        for out in d.node.output:
            by_output[out] = d
        reason = _filter_reason(d.node, cfg) or (keep_float or {}).get(d.node.output[0], "")
        if reason:
            d.reason = reason
            continue
        kind = d.rule.kind
        if kind == "compute":
            reason = _check_compute(g, d, cfg, folded)
            if reason:
                d.reason = reason
            else:
                d.status = "compute"
        elif kind == "reader":
            d.reason = _not_float(g, cfg, d.node.input[0], "input") if cfg.quant_format == QuantFormat.QOperator \
                else "QDQ form keeps it on the dequantized tensor, as onnxruntime does"
            d.status = "reader-candidate" if not d.reason else "float"
        elif kind == "passthrough":
            d.reason = _check_passthrough(g, cfg, d.node)
            d.status = "passthrough-candidate" if not d.reason else "float"
        else:
            d.status = "activation-candidate"
            d.reason = "not after a quantized op"

    # Relu/Clip right after a quantized compute op, as that op's only reader, may fold into it.
    outputs = set(g.graph_outputs)
    for d in decisions:
        if d.status != "activation-candidate":
            continue
        d.status = "float"
        producer = by_output.get(d.node.input[0])
        if producer is None or producer.status != "compute":
            continue
        if cfg.quant_format == QuantFormat.QOperator and producer.rule.qlinear is None:
            d.reason = f"{producer.node.op_type} has no QLinear form to fold into"
            continue
        if cfg.keep_removable_activations:
            d.reason = "kept (QDQKeepRemovableActivations)"
            _as_qdq_op(d, cfg)
            continue
        if producer.node.op_type in cfg.outputs_not_quantized:
            d.reason = f"the output of {producer.node.op_type} is not quantized (OpTypesToExcludeOutputQuantization)"
            continue
        tensor = d.node.input[0]
        if tensor in outputs or len(g.consumers[tensor]) != 1:
            d.reason = "its input has other readers"
            continue
        bounds = activation_bounds(d.node, lambda n: g.constant(n) if g.is_constant(n) else None)
        if bounds is None:
            d.reason = "Clip bounds are not constants"
            continue
        producer.fusion = d
        d.reason = ""
    return decisions


# An Add/Sub whose result is this many times smaller than its inputs loses as many int8 levels
# to quantizing them: at 8x the difference keeps 32 of the 256 levels its inputs had (5 bits).
CANCELLATION_RATIO = 8.0


def cancellation_candidates(g: GraphIndex, cfg: QuantSettings, decisions) -> list:
    """[(Add/Sub node, its two inputs' producers)]: the additions whose both inputs are written by
    quantized nodes, whose output range decides (:func:`cancelling_nodes`) whether they cancel."""
    written = {}
    for d in decisions:
        if d.status == "compute" and d.node.op_type not in cfg.outputs_not_quantized:
            written[d.node.output[0]] = d
            if d.fusion is not None:
                written[d.fusion.node.output[0]] = d

    candidates = []
    for node in g.graph.node:
        if node.op_type not in ("Add", "Sub") or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        producers = [written.get(name) for name in node.input]
        if None not in producers and producers[0] is not producers[1]:
            candidates.append((node, producers))
    return candidates


def _activation_type(cfg: QuantSettings, name: str) -> QuantType:
    override = cfg.overrides.get(name)
    return override.quant_type if override and override.quant_type else cfg.activation_type


def _span(rmin: float, rmax: float) -> float:
    """Width of the range an int8 scale covers: MinMax ranges always include zero."""
    return max(rmax, 0.0) - min(rmin, 0.0)


def cancelling_nodes(cfg: QuantSettings, candidates, ranges) -> dict[str, str]:
    """{first output name: reason} of the nodes to keep float because an addition cancels their outputs.

    A decomposed LayerNorm computes the variance as E[x^2] - E[x]^2 (magika's, exported from JAX):
    two values of about 0.5 whose difference is about 0.03. Quantized to int8 each is off by up to
    half of 0.5/255, which is 3% of that difference, and the normalisation divides by its square
    root. Calibration measures it: where the difference's range is CANCELLATION_RATIO times narrower
    than an input's, the producers of both inputs keep float outputs (and the addition itself, if it
    is quantized). Magika: 12.7 -> 21.7 dB, four scalar-per-row Muls float (keeping the mean's own
    producer float as well, whose error mean(x) ** 2 doubles, gives 19.7 dB). Only 8-bit
    activations are guarded; nodes listed in ``nodes_to_quantize`` are quantized as asked."""
    keep = {}
    for node, producers in candidates:
        out = node.output[0]
        if out not in ranges or any(p.node.output[0] not in ranges for p in producers):
            continue
        if any(_activation_type(cfg, p.node.output[0]) not in EIGHT_BIT_TYPES for p in producers):
            continue    # 16-bit inputs leave the difference 256 times more levels
        widest = max(_span(*ranges[p.node.output[0]]) for p in producers)
        narrowed = _span(*ranges[out])
        if widest <= 0.0 or widest < CANCELLATION_RATIO * narrowed:
            continue
        reason = (f"its output cancels in {node.op_type} {describe(node)}: range {narrowed:.3g} wide against "
                  f"{widest:.3g} for its inputs, so int8 inputs would leave the difference "
                  f"{255 * narrowed / widest:.0f} of 256 levels")
        for d in producers:
            if cfg.nodes_to_quantize is None or d.node.name not in cfg.nodes_to_quantize:
                keep.setdefault(d.node.output[0], reason)
        if node.op_type in RULES and (cfg.nodes_to_quantize is None or node.name not in cfg.nodes_to_quantize):
            keep.setdefault(out, reason)
    return keep


def _as_qdq_op(d: Decision, cfg: QuantSettings):
    """A Relu/Clip that stays after a quantized op is itself a QDQ op in QDQ form (Q/DQ on its input
    and output, its own range), as onnxruntime writes it; in QOperator form it stays float."""
    if cfg.quant_format == QuantFormat.QDQ:
        d.status, d.acts, d.output, d.detail = "compute", (0,), d.node.output[0], "QDQ"
        d.reason = ""


def tensors_to_calibrate(g: GraphIndex, cfg: QuantSettings, decisions: list[Decision]) -> list[str]:
    names = []
    for d in decisions:
        if d.status == "passthrough-candidate" and cfg.force_quantize_no_input_check:
            # ForceQuantizeNoInputCheck: the pass-through op quantizes its float input itself.
            names += [d.node.input[0]] if not g.is_constant(d.node.input[0]) else []
        if d.status != "compute":
            continue
        names += [d.node.input[i] for i in d.acts if not g.is_constant(d.node.input[i])]
        if d.node.op_type not in cfg.outputs_not_quantized:
            names.append(d.output)
        if d.fusion is not None:
            names.append(d.fusion.node.output[0])
    fixed = {name for name, o in cfg.overrides.items() if o.scale is not None}
    return [name for name in dict.fromkeys(names) if name not in fixed]


def activation_params(cfg: QuantSettings, name: str, ranges, bounds=None) -> QParams:
    """A tensor's parameters from its range, with its TensorQuantOverrides entry applied.

    ``bounds`` = (low, high) narrows the range (a Relu/Clip folded into the producer).
    """
    override = cfg.overrides.get(name)
    qtype = override.quant_type if override and override.quant_type else cfg.activation_type
    if override and override.scale is not None:
        return fixed_params(override.scale, override.zero_point, qtype)
    rmin, rmax = ranges[name]
    if override:
        rmin = override.rmin if override.rmin is not None else rmin
        rmax = override.rmax if override.rmax is not None else rmax
    if bounds is not None:
        rmin, rmax = max(rmin, bounds[0]), min(rmax, bounds[1])
    symmetric = override.symmetric if override and override.symmetric is not None else cfg.activation_symmetric
    reduce_range = bool(override and override.reduce_range)
    return params_for_range(rmin, rmax, qtype, symmetric=symmetric, reduce_range=reduce_range,
                            min_real_range=cfg.min_real_range, restricted=cfg.activation_restricted_asymmetric)


def _levels(cfg: QuantSettings, name: str) -> int:
    return 65535 if _activation_type(cfg, name) in SIXTEEN_BIT_TYPES else 255


def saturating_bounds(g: GraphIndex, cfg: QuantSettings, name: str, ranges):
    """(low, high) that narrow ``name``'s range because every reader saturates beyond them (HardSwish,
    SiLU, Sigmoid: :mod:`.saturation`), or None."""
    if not cfg.quality_rules:
        return None
    floor = hardswish_floor(g, name)
    if floor is not None:
        return floor, float("inf")
    return saturation_bounds(g, name, ranges, lambda out: _levels(cfg, out))


def assign_params(g: GraphIndex, cfg: QuantSettings, decisions, ranges) -> dict[str, QParams]:
    """Activation parameters; decides each Relu/Clip fold and which pass-through ops run in int8."""
    params: dict[str, QParams] = {}

    for d in decisions:
        if d.status != "compute":
            continue
        for i in d.acts:
            name = d.node.input[i]
            # A tensor written by an earlier compute op already has its (possibly Relu-clamped) params.
            if not g.is_constant(name) and name not in params:
                params[name] = activation_params(cfg, name, ranges, bounds=saturating_bounds(g, cfg, name, ranges))
        d.detail = (d.rule.qlinear or f"float {d.node.op_type} on int8 weights") \
            if cfg.quant_format == QuantFormat.QOperator else "QDQ"
        act = d.fusion
        d.fusion = None
        if act is not None:
            low, high = activation_bounds(act.node, lambda n: g.constant(n) if g.is_constant(n) else None)
            out = act.node.output[0]
            candidate = activation_params(cfg, out, ranges, bounds=(low, high))
            lowest, highest = candidate.representable()
            half_step = 0.5 * float(np.max(candidate.scale))
            if lowest >= low - half_step and highest <= high + half_step:
                d.output = out
                act.status, act.fused_into = "fused", d.node.name or describe(d.node)
                params[out] = candidate
                continue
            act.reason = (f"range [{lowest:.4g}, {highest:.4g}] of the {candidate.qtype.name} output "
                          f"(ActivationSymmetric={cfg.activation_symmetric}) exceeds the clamp [{low:g}, {high:g}]")
            _as_qdq_op(act, cfg)
        if d.node.op_type not in cfg.outputs_not_quantized:
            params[d.output] = activation_params(cfg, d.output, ranges,
                                                 bounds=saturating_bounds(g, cfg, d.output, ranges))

    int8_ready = {d.output for d in decisions if d.status == "compute"
                  and d.node.op_type not in cfg.outputs_not_quantized
                  and (cfg.quant_format == QuantFormat.QDQ or d.rule.qlinear is not None)}
    for d in decisions:
        if d.status == "reader-candidate":
            if d.node.input[0] in int8_ready:
                d.status, d.detail = "reader", f"{d.node.op_type} on the int8 tensor"
            else:
                d.status, d.reason = "float", "its input is float (it reads the int8 tensor of a quantized producer)"
            continue
        if d.status != "passthrough-candidate":
            continue
        data = d.node.input[0]
        if data not in int8_ready and not g.is_constant(data):
            if not cfg.force_quantize_no_input_check:
                d.status, d.reason = "float", "its input is float (pass-through ops follow a quantized producer)"
                continue
            params.setdefault(data, activation_params(cfg, data, ranges))
        d.status, d.detail = "passthrough", "runs on int8"
        for out in d.node.output:
            if out:
                int8_ready.add(out)
    return {name: half_scaled(p) if g.elem_types.get(name) == TensorProto.FLOAT16 else p
            for name, p in params.items()}


def quality_rule_notes(g: GraphIndex, cfg: QuantSettings, decisions, ranges) -> list[str]:
    """What qrt's default rules changed against onnxruntime's tool (none with OnnxruntimeParity)."""
    if not cfg.quality_rules:
        return []
    notes = []
    convs = sum(1 for d in decisions if d.status == "compute" and d.node.op_type == "Conv" and d.axis is not None)
    if convs and not cfg.per_channel:
        notes.append(f"per-channel weights for {convs} Conv(s), as qrt does by default "
                     "(extra_options={'OnnxruntimeParity': True}: one scale per weight, as onnxruntime's tool)")
    narrowed = 0
    for name in {d.node.input[i] for d in decisions if d.status == "compute" for i in d.acts} | \
            {d.output for d in decisions if d.status == "compute"}:
        bounds = saturating_bounds(g, cfg, name, ranges) if name in ranges else None
        if bounds is not None and (ranges[name][0] < bounds[0] or ranges[name][1] > bounds[1]):
            narrowed += 1
    if narrowed:
        notes.append(f"ranges of {narrowed} tensor(s) read only by HardSwish, SiLU or Sigmoid cut where those "
                     "saturate (their int8 outputs are the same there)")
    return notes


def _reports(g, decisions) -> list[NodeReport]:
    reports = []
    for d in decisions:
        name = d.node.name or d.node.output[0]
        if d.status in ("compute", "passthrough", "reader"):
            reports.append(NodeReport(name, d.node.op_type, "quantized", d.detail))
        elif d.status == "fused":
            reports.append(NodeReport(name, d.node.op_type, "fused", f"into {d.fused_into}"))
        else:
            reports.append(NodeReport(name, d.node.op_type, "float", d.reason,
                                      shape_computation=is_shape_computation(d.node, g.elem_types)))
    return reports


def _unknown_names(g, cfg) -> list[str]:
    known = {n.name for n in g.graph.node}
    out = []
    for what, names in (("nodes_to_quantize", cfg.nodes_to_quantize or ()), ("nodes_to_exclude", cfg.nodes_to_exclude)):
        missing = sorted(set(names) - known)
        if missing:
            out.append(f"{what} names no node of the (pre-processed) model: {missing[:10]}")
    return out


HALF_SCALE_OPSET = 19


def _types_used(cfg: QuantSettings) -> set:
    return {cfg.activation_type, cfg.weight_type} | {o.quant_type for o in cfg.overrides.values()}


def needed_opset(cfg: QuantSettings, model=None) -> int:
    """16-bit types need opset 21's QuantizeLinear/DequantizeLinear: the model's opset is raised, as
    onnxruntime raises it, unless the com.microsoft ones carry them (UseQDQContribOps). float16
    tensors in QDQ form need float16 scales, which QuantizeLinear takes from opset 19 (onnxruntime
    writes them into the model's opset even below 19, which its own checker then rejects)."""
    if cfg.block_size or (not cfg.qdq_domain and _types_used(cfg) & set(SIXTEEN_BIT_TYPES)):
        return WIDE_TYPES_OPSET
    if model is not None and cfg.quant_format == QuantFormat.QDQ and _has_half(model):
        return HALF_SCALE_OPSET
    return MIN_OPSET


def _has_half(model) -> bool:
    graph = model.graph
    infos = list(graph.input) + list(graph.output) + list(graph.value_info)
    return any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer) or \
        any(i.type.tensor_type.elem_type == TensorProto.FLOAT16 for i in infos)


def use_contrib_for_four_bit(cfg: QuantSettings, opset: int):
    """4-bit types below opset 21 go through com.microsoft QuantizeLinear/DequantizeLinear, as
    onnxruntime writes them (its opset is not raised for 4-bit types)."""
    if opset < WIDE_TYPES_OPSET and _types_used(cfg) & set(FOUR_BIT_TYPES):
        cfg.qdq_domain = MS_DOMAIN


def unchanged(mode, label, source, model_output, size_before, reports, notes, use_external_data_format):
    """As onnxruntime does when no node qualifies: the model is written as given, with a warning."""
    reasons = sorted({f"{r.op_type}: {r.detail}" for r in reports if r.detail})
    message = f"{label}: nothing to quantize; no node qualifies, so the model is written unchanged"
    warnings.warn(message + " (" + "; ".join(reasons[:5]) + ")", QuantizationWarning, stacklevel=3)
    summary = QuantizationSummary(
        mode=mode, model_name=label, output_path=str(model_output) if model_output is not None else None,
        size_before=size_before, size_after=serialized_size(source), nodes=reports, preprocessing=notes,
        warnings=[message], model=source)
    if model_output is not None:
        summary.size_after = save(source, model_output, use_external_data_format)
    return summary


def quantize_static(model_input, model_output, calibration_data_reader=None,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=None, per_channel=False,
                    reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_quantize=None, nodes_to_exclude=None, use_external_data_format=False,
                    calibrate_method=CalibrationMethod.MinMax, calibration_providers=None, extra_options=None,
                    calibration_cache_path=None, *, tensor_ranges=None, progress=False, equalize=False,
                    bias_correction=False) -> QuantizationSummary:
    """Quantizes weights and activations of a float model with calibrated activation ranges.

    Arguments and defaults are ``onnxruntime.quantization.quantize_static``'s; see
    :mod:`qrt.quantization` for what each does. qrt additions (keyword only): ``tensor_ranges``
    (``{tensor_name: (rmin, rmax)}`` used instead of calibrated ranges; when it covers every tensor
    the reader may be None), ``progress`` (a calibration progress bar), ``equalize`` (cross-layer
    equalization of the float model first, :func:`qrt.quantization.equalize`; same as
    ``extra_options={"CrossLayerEqualization": True}``) and ``bias_correction`` (empirical bias
    correction of quantized Conv/Gemm from the calibration data, :mod:`.bias_correction`; same as
    ``extra_options={"BiasCorrection": True}``; the calibration samples are held in memory, as they
    are read more than once). ``model_output=None`` writes nothing; the model is in the returned
    summary's ``model``.
    """
    cfg = make_config(quant_format=quant_format, activation_type=activation_type, weight_type=weight_type,
                      per_channel=per_channel, reduce_range=reduce_range,
                      op_types_to_quantize=op_types_to_quantize, nodes_to_quantize=nodes_to_quantize,
                      nodes_to_exclude=nodes_to_exclude, extra_options=extra_options,
                      tensor_ranges=tensor_ranges, default_op_types=DEFAULT_STATIC_OP_TYPES)
    cfg.equalize = cfg.equalize or bool(equalize)
    cfg.bias_correction = cfg.bias_correction or bool(bias_correction)
    calibrate_method = CalibrationMethod.parse(calibrate_method)
    check_output(model_input, model_output)
    source, label, size_before = load(model_input)
    if cfg.bias_correction and (calibration_data_reader is None or cfg.calibration_stride is not None):
        raise QuantizationError(f"{label}: bias correction measures the quantized model on the calibration "
                                "data: it needs a calibration_data_reader"
                                + (" and cannot be combined with CalibStridedMinMax" if calibration_data_reader
                                   is not None else ""))
    model, notes = preprocess(source, label, min_opset=needed_opset(cfg, source))
    folded = batchnorm_folded_outputs(source)
    if cfg.equalize:
        model, pairs = equalize_graph(model, label)
        notes.append(f"cross-layer equalization: {len(pairs)} layer pair(s) rescaled" if pairs else
                     "cross-layer equalization: no Conv->Relu->Conv or Gemm->Relu->Gemm pair to equalize")
    if cfg.bias_correction:
        model, added = with_zero_biases(model)
        notes += [f"bias correction: zero bias added to {added} Conv(s) without one"] if added else []
    model, calibration_data_reader, note = with_complete_types(model, label, calibration_data_reader,
                                                               cfg.input_shapes)
    notes += [note] if note else []
    model, calibration_data_reader, note = smooth_for_quantization(model, label, calibration_data_reader, cfg,
                                                                   progress, calibration_providers)
    notes += [note] if note else []
    if cfg.bias_correction:
        calibration_data_reader = list(checked_feeds(calibration_data_reader, model, label))
    # Input preprocessing embedded by qrt.preprocessing stays float: it turns raw pixels into the
    # network's input, and quantizing it would change what the network sees.
    from qrt.preprocessing import preprocessing_nodes
    cfg.nodes_to_exclude = cfg.nodes_to_exclude | (preprocessing_nodes(model) & {n.name for n in model.graph.node})
    g = GraphIndex(model)
    use_contrib_for_four_bit(cfg, g.opset)
    decisions = plan_nodes(g, cfg, folded)
    if not any(d.status == "compute" for d in decisions):
        return unchanged(f"static {cfg.quant_format.name}", label, source, model_output, size_before,
                         _reports(g, decisions), notes, use_external_data_format)

    wanted = tensors_to_calibrate(g, cfg, decisions)
    candidates = cancellation_candidates(g, cfg, decisions)
    ranges = calibration_ranges(model, label, calibration_data_reader, wanted, cfg, calibrate_method,
                                calibration_providers, calibration_cache_path, progress,
                                probes=[node.output[0] for node, _ in candidates])
    keep_float = cancelling_nodes(cfg, candidates, ranges) if cfg.quality_rules else {}
    if keep_float:
        # Keeping nodes float only drops tensors from those that need a range: every range is known.
        decisions = plan_nodes(g, cfg, folded, keep_float)
        notes.append(f"kept float, as an addition cancels their outputs: {len(keep_float)} node(s)")
    ranges = {name: ranges[name] for name in wanted if name in ranges}
    params = assign_params(g, cfg, decisions, ranges)
    notes += quality_rule_notes(g, cfg, decisions, ranges)
    if cfg.bias_correction:
        model, corrected = correct_biases(model, cfg, decisions, params, calibration_data_reader, label)
        notes += corrected
        g = GraphIndex(model)

    writer_class = QOperatorRewriter if cfg.quant_format == QuantFormat.QOperator else QDQRewriter
    writer = writer_class(g, cfg, params)
    nodes = writer.run(decisions)
    quantized = finish(model, nodes, writer.initializers, label)

    summary = QuantizationSummary(
        mode=f"static {cfg.quant_format.name}", model_name=label,
        output_path=str(model_output) if model_output is not None else None,
        size_before=size_before, size_after=serialized_size(quantized), nodes=_reports(g, decisions),
        preprocessing=notes, warnings=_unknown_names(g, cfg) + writer.warnings,
        ranges={k: tuple(map(float, v)) for k, v in ranges.items()}, model=quantized)
    if model_output is not None:
        summary.size_after = save(quantized, model_output, use_external_data_format)
    return summary
