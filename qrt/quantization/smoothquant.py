"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models", 2022): move activation outliers into the weights before int8 quantization.

A few hidden-state channels of a transformer carry values 20-100x larger than the rest, so one
per-tensor int8 range leaves the other channels two or three bits. For ``Y = X @ W`` and any
positive ``s`` of the input-channel count, ``Y = (X / s) @ (diag(s) W)``; with, per input channel j,

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

the activation's channel ranges shrink towards each other (``alpha`` = migration strength, 0.5 as in
the paper) and the weight rows absorb the difference, where per-channel (or per-tensor) weight
quantization handles it far better. The float output is unchanged up to float32 rounding.

What is smoothed: every MatMul whose B is a 2-D float initializer and every Gemm (transA=0) whose
B is one. MatMuls reading the same activation (attention's Q, K and V projections) share one ``s``,
with ``max|W_j|`` taken over all their weights. ``max|X_j|`` comes from a pass over the calibration
data (:func:`calibration.calibrate` with :class:`calibration.channels.ChannelAbsMaxObserver`).

Where ``X / s`` goes, in this order of preference (``folding=True``; each group is reported):

* ``LayerNormalization`` over the last axis with constant scale (and bias): both divided by ``s``;
* a ``MatMul``/``Gemm`` with a constant weight (and a constant bias through a following ``Add``):
  its weight columns and bias divided by ``s``;
* otherwise (and always with ``folding=False``) a ``Mul`` by ``1 / s`` inserted before the group.

Folding needs the activation to be read by the group's nodes only: a post-norm encoder's
LayerNorm output also feeds the residual ``Add``, which must see the unscaled value, so there the
``Mul`` is inserted. A weight read by a node outside the group (tied weights) is not changed, so
that node is left out of smoothing.

API::

    from qrt.quantization import smooth_quant
    smoothed = smooth_quant("model.onnx", reader, alpha=0.5)          # ModelProto, float
    smoothed, groups = smooth_quant_details(model, reader, alpha=0.5)  # plus what was done, per group

and, inside quantization, ``quantize_static`` / ``quantize_dynamic`` with
``extra_options={"SmoothQuant": True, "SmoothQuantAlpha": 0.5, "SmoothQuantFolding": True}``
(onnxruntime's key names; onnxruntime's own option runs Intel neural-compressor, this is qrt's) or
the keyword ``smooth_quant=True`` / ``smooth_quant=0.6``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibration import calibrate
from calibration.channels import ChannelAbsMaxObserver
from qrt.errors import QuantizationError

from .graph import GraphIndex, attribute

DEFAULT_ALPHA = 0.5
# s is kept within these bounds so that neither X / s nor s * W can overflow or lose every bit.
_MIN_SCALE, _MAX_SCALE = 1e-5, 1e5


@dataclass
class SmoothedGroup:
    """One smoothed activation: the nodes reading it, where ``1 / s`` went and the effect on its range.

    ``folded_into``: ``"LayerNormalization"``, ``"MatMul"``, ``"Gemm"``, ``"MatMul+Add"`` (the
    producer whose constants absorbed ``1 / s``) or ``"Mul"`` (an inserted node); ``producer``: that
    node's name (the inserted Mul's for ``"Mul"``; the Add's for ``"MatMul+Add"``). ``channel_spread_*``:
    the largest over the median per-channel max |x| before and after, the outlier measure that per-tensor
    quantization suffers from.
    """

    activation: str
    nodes: list
    folded_into: str
    producer: str
    channel_spread_before: float
    channel_spread_after: float

    def __str__(self):
        return (f"{self.activation!r} -> {', '.join(self.nodes)}: 1/s into {self.folded_into} {self.producer!r}, "
                f"channel max/median {self.channel_spread_before:.1f} -> {self.channel_spread_after:.1f}")


def _spread(channel_max):
    median = float(np.median(channel_max))
    return float(channel_max.max()) / median if median > 0 else float("inf")


def _weight_layout(g: GraphIndex, node):
    """(weight name, axis of the weight along which the input channels lie), or None if not smoothable."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    a, w = node.input[0], node.input[1]
    if not g.is_constant(w) or not g.is_float(w) or len(g.shapes[w]) != 2 or g.is_constant(a):
        return None
    if g.elem_types.get(a) not in (None, onnx.TensorProto.FLOAT):
        return None
    if node.op_type == "Gemm":
        if attribute(node, "transA", 0):
            return None
        return w, 1 if attribute(node, "transB", 0) else 0
    return w, 0


def _groups(g: GraphIndex, nodes_to_exclude=()):
    """{activation: [(node, weight, channel axis)]} for the smoothable nodes, tied weights left out."""
    groups: dict[str, list] = {}
    for node in g.graph.node:
        if node.name and node.name in nodes_to_exclude:
            continue
        layout = _weight_layout(g, node)
        if layout is not None:
            groups.setdefault(node.input[0], []).append((node, *layout))
    for activation in list(groups):
        members = groups[activation]
        ids = {id(node) for node, _, _ in members}
        kept = [m for m in members if all(id(c) in ids for c in g.consumers[m[1]]) and m[1] not in g.graph_outputs]
        channels = {g.shapes[w][axis] for _, w, axis in kept}
        if len(channels) != 1:
            kept = []   # inconsistent channel counts: a malformed graph, left for the runtime to report
        if kept:
            groups[activation] = kept
        else:
            del groups[activation]
    return groups


def _sole_reader(g, name, node):
    return g.is_constant(name) and all(c is node for c in g.consumers[name]) and name not in g.graph_outputs


def _fold_target(g: GraphIndex, activation, members, channels):
    """(kind, producer node, [(initializer, axis or None for a vector)]) to divide by s, or None."""
    if activation in g.graph_outputs or activation not in g.producer:
        return None
    ids = {id(node) for node, _, _ in members}
    if any(id(c) not in ids for c in g.consumers[activation]):
        return None
    producer = g.producer[activation]
    if producer.domain not in ("", "ai.onnx") or producer.output[0] != activation:
        return None

    def vector(name):
        return _sole_reader(g, name, producer) and g.shapes[name] in ([channels], [1, channels])

    if producer.op_type == "LayerNormalization":
        axis = attribute(producer, "axis", -1)
        rank = g.rank(producer.input[0])
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            return None
        scale_and_bias = [n for n in producer.input[1:3] if n]
        if not all(vector(n) for n in scale_and_bias):
            return None
        return "LayerNormalization", producer, [(n, None) for n in scale_and_bias]
    if producer.op_type in ("MatMul", "Gemm"):
        return _linear_target(g, producer, producer, channels)
    if producer.op_type == "Add":
        for mm_out, bias in (producer.input[:2], producer.input[1::-1]):
            if mm_out in g.producer and g.producer[mm_out].op_type == "MatMul" and vector(bias) \
                    and len(g.consumers[mm_out]) == 1 and mm_out not in g.graph_outputs:
                found = _linear_target(g, g.producer[mm_out], producer, channels)
                if found is not None:
                    return "MatMul+Add", producer, found[2] + [(bias, None)]
    return None


def _linear_target(g, linear, reported, channels):
    """A MatMul/Gemm's constant weight (its output-channel axis) and Gemm's constant C."""
    w = linear.input[1] if len(linear.input) > 1 else ""
    if linear.domain not in ("", "ai.onnx") or not w or not _sole_reader(g, w, linear) or len(g.shapes[w]) != 2:
        return None
    out_axis = 0 if linear.op_type == "Gemm" and attribute(linear, "transB", 0) else 1
    if g.shapes[w][out_axis] != channels:
        return None
    targets = [(w, out_axis)]
    if linear.op_type == "Gemm" and len(linear.input) > 2 and linear.input[2]:
        c = linear.input[2]
        if not _sole_reader(g, c, linear) or (g.shapes[c] and g.shapes[c][-1] not in (1, channels)):
            return None
        targets.append((c, "bias"))
    return linear.op_type, reported, targets


def smoothing_scales(activation_max, weight_max, alpha=DEFAULT_ALPHA):
    """The paper's ``s = max|X|**alpha / max|W|**(1 - alpha)``, 1 where either maximum is 0."""
    activation_max = np.asarray(activation_max, np.float64)
    weight_max = np.asarray(weight_max, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = activation_max ** alpha / weight_max ** (1.0 - alpha)
    usable = (activation_max > 0) & (weight_max > 0) & np.isfinite(s)
    return np.clip(np.where(usable, s, 1.0), _MIN_SCALE, _MAX_SCALE).astype(np.float32)


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0.0 <= float(alpha) <= 1.0:
        raise QuantizationError(f"SmoothQuant alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def smooth_quant_details(model, reader, alpha=DEFAULT_ALPHA, *, folding=True, nodes_to_exclude=(),
                         progress=False, providers=None) -> tuple[onnx.ModelProto, list[SmoothedGroup]]:
    """(smoothed float model, one :class:`SmoothedGroup` per smoothed activation).

    ``model``: path, bytes or ModelProto (not modified). ``reader``: calibration data, anything
    :func:`calibration.as_reader` accepts; it is read once. ``alpha`` in [0, 1]: the share of the
    outliers moved into the weights. ``folding=False`` always inserts a ``Mul``. ``nodes_to_exclude``:
    node names left as they are. Weights must be initializers (run :func:`qrt.quantization.quant_pre_process`
    or ``qrt.optimize`` first when they sit in Constant nodes).
    """
    from qrt.model import load_model, model_label

    alpha = _check_alpha(alpha)
    source = load_model(model)
    label = model_label(source, model)
    work = onnx.ModelProto()
    work.CopyFrom(source)
    try:
        work = onnx.shape_inference.infer_shapes(work, strict_mode=False)
    except Exception:
        pass    # ranks only help recognise LayerNormalization's axis; without them it is not folded
    g = GraphIndex(work)
    groups = _groups(g, frozenset(nodes_to_exclude))
    if not groups:
        return work, []
    observers = {name: ChannelAbsMaxObserver() for name in groups}
    calibrate(work, reader, tensor_names=list(groups), progress=progress, providers=providers, observers=observers)

    values = {}       # initializer name -> new value

    def current(name):
        if name not in values:
            values[name] = g.constant(name).astype(np.float32, copy=True)
        return values[name]

    new_nodes = {}    # index of the group's first node -> Mul to insert before it
    report = []
    positions = {id(node): i for i, node in enumerate(work.graph.node)}
    infos = {info.name: info for info in list(work.graph.input) + list(work.graph.value_info)
             + list(work.graph.output)}
    for activation, members in groups.items():
        observer = observers[activation]
        if observer.channel_abs_max is None:
            continue    # never held a value in the calibration data
        act_max = observer.channel_abs_max
        channels = g.shapes[members[0][1]][members[0][2]]
        if act_max.size != channels:
            raise QuantizationError(f"{label}: activation {activation!r} has {act_max.size} channels in the "
                                    f"calibration data, its MatMul weights {channels} input rows")
        weight_max = np.zeros(channels, np.float32)
        for _, w, axis in members:
            weight_max = np.maximum(weight_max, np.abs(values.get(w, g.constant(w))).max(axis=1 - axis))
        s = smoothing_scales(act_max, weight_max, alpha)
        for w in dict.fromkeys(w for _, w, _ in members):
            axis = next(a for _, name, a in members if name == w)
            current(w)[...] *= s.reshape((-1, 1) if axis == 0 else (1, -1))

        target = _fold_target(g, activation, members, channels) if folding else None
        if target is not None:
            kind, producer, constants = target
            for name, axis in constants:
                value = current(name)
                if axis is None or axis == "bias":
                    if value.ndim == 0 or value.shape[-1] == 1:
                        value = values[name] = np.broadcast_to(value, value.shape[:-1] + (channels,)).copy()
                    value /= s
                else:
                    value /= s.reshape((-1, 1) if axis == 0 else (1, -1))
            where = producer.name or producer.output[0]
        else:
            kind = "Mul"
            inverse = numpy_helper.from_array((np.float32(1.0) / s).astype(np.float32),
                                              g.unique(f"{activation}_smooth_inverse_scale"))
            work.graph.initializer.append(inverse)
            smoothed = g.unique(f"{activation}_smoothed")
            where = g.unique(f"{activation}_smooth")
            first = min(positions[id(node)] for node, _, _ in members)
            new_nodes.setdefault(first, []).append(helper.make_node("Mul", [activation, inverse.name], [smoothed],
                                                                    name=where))
            for node, _, _ in members:
                node.input[0] = smoothed
            info = infos.get(activation)
            if info is not None:    # the quantizer reads element types from value_info
                typed = onnx.ValueInfoProto()
                typed.CopyFrom(info)
                typed.name = smoothed
                work.graph.value_info.append(typed)
        report.append(SmoothedGroup(activation, [node.name or node.output[0] for node, _, _ in members], kind, where,
                                    _spread(act_max), _spread(act_max / s)))

    for tensor in work.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name].astype(np.float32), tensor.name))
    if new_nodes:
        ordered = []
        for i, node in enumerate(work.graph.node):
            ordered += new_nodes.get(i, [])
            ordered.append(node)
        del work.graph.node[:]
        work.graph.node.extend(ordered)
    return work, report


def smooth_quant(model, reader, alpha=DEFAULT_ALPHA, *, folding=True, nodes_to_exclude=(), progress=False,
                 providers=None) -> onnx.ModelProto:
    """The float model with SmoothQuant applied (see :func:`smooth_quant_details` for the arguments)."""
    return smooth_quant_details(model, reader, alpha, folding=folding, nodes_to_exclude=nodes_to_exclude,
                                progress=progress, providers=providers)[0]


def describe_groups(groups: list[SmoothedGroup]) -> str:
    """One line for a quantization summary's notes."""
    kinds = {}
    for group in groups:
        kinds[group.folded_into] = kinds.get(group.folded_into, 0) + 1
    nodes = sum(len(group.nodes) for group in groups)
    where = ", ".join(f"{n} into {kind}" for kind, n in sorted(kinds.items()))
    worst = max((group.channel_spread_before for group in groups), default=0.0)
    after = max((group.channel_spread_after for group in groups), default=0.0)
    return (f"SmoothQuant: {nodes} MatMul/Gemm node(s) reading {len(groups)} activation(s) smoothed ({where}); "
            f"largest channel max/median {worst:.1f} -> {after:.1f}")


def smooth_for_quantization(model: onnx.ModelProto, label: str, reader, cfg, progress=False, providers=None):
    """(model, reader to calibrate with afterwards, note or None) for a quantize call with SmoothQuant on.

    The calibration data is read twice (channel maxima here, ranges later in ``quantize_static``), so
    the batches are held in a list.
    """
    if cfg.smooth_quant_alpha is None:
        return model, reader, None
    if reader is None:
        raise QuantizationError(f"{label}: SmoothQuant needs calibration data to find the activation outliers; "
                                "pass a calibration data reader (quantize_dynamic: calibration_data_reader=...)")
    from calibration import as_reader

    batches = list(as_reader(reader))
    smoothed, groups = smooth_quant_details(model, batches, cfg.smooth_quant_alpha, folding=cfg.smooth_quant_folding,
                                            nodes_to_exclude=cfg.nodes_to_exclude, progress=progress,
                                            providers=providers)
    note = describe_groups(groups) if groups else "SmoothQuant: no MatMul/Gemm with a constant weight to smooth"
    # An inserted Mul stays float: quantizing its input would put back the per-tensor range it removes.
    cfg.smoothing_nodes = frozenset(g.producer for g in groups if g.folded_into == "Mul")
    return smoothed, batches, note
