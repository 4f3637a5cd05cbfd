"""``qrt.convert_opset``: move a model to another ai.onnx opset, and prove the result computes the same.

Opsets that differ across a pipeline (exported at 17, served by a runtime that wants 13, quantized at
another) are a classic deployment pitfall: onnx's version converter usually gets the rewrite right,
but "usually" is not a deployment criterion. Here the converter does the rewrite, qrt adds the fixes
it lacks on real exports (an op that does not exist at the target opset gets a named error instead of
the converter's bare assertion; the IR version is raised to what the new opset requires), and then
both models run, in qrt and in onnxruntime where it loads them, on the same generated inputs. A
result that differs beyond tolerance is refused, naming the first node whose output diverges (the
intermediate tensors both graphs keep are compared by name, in the converted graph's order).

The report also lists which ops changed version and the semantic changes that come with them
(Softmax's axis at 13, Split/Squeeze/Unsqueeze/Reduce* attributes becoming inputs, Resize's
coordinate modes, ...), so a reader knows what to look at when a converted model misbehaves elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .errors import QrtError
from .model import load_model

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


class OpsetConversionError(QrtError):
    """The model cannot be converted, or the converted model does not compute what the original does."""


# (op_type, opset where the change happened, what changed). Listed when a conversion crosses that opset.
SEMANTIC_CHANGES = [
    ("BatchNormalization", 9, "the 'spatial' attribute is gone; statistics are per channel"),
    ("BatchNormalization", 14, "training_mode attribute; outputs 2-3 only in training mode"),
    ("Clip", 11, "min/max move from attributes to optional inputs"),
    ("Dropout", 12, "ratio becomes an input, training_mode an optional input"),
    ("Pad", 11, "pads and constant value move from attributes to inputs"),
    ("Slice", 10, "starts/ends/axes move from attributes to inputs; steps added"),
    ("TopK", 10, "k moves from an attribute to an input"),
    ("TopK", 11, "largest/sorted attributes; negative axis"),
    ("Upsample", 10, "Upsample is deprecated in favour of Resize"),
    ("Resize", 11, "coordinate_transformation_mode (default half_pixel, was asymmetric), roi and sizes "
                   "inputs, cubic mode"),
    ("Resize", 13, "roi and scales become optional"),
    ("Resize", 18, "antialias, axes and keep_aspect_ratio_policy attributes"),
    ("Resize", 19, "half_pixel_symmetric coordinate mode"),
    ("Softmax", 13, "axis means one axis; before 13 the input was coerced to 2-D at axis (all trailing "
                    "axes normalised together)"),
    ("LogSoftmax", 13, "axis means one axis; before 13 the input was coerced to 2-D at axis"),
    ("Hardmax", 13, "axis means one axis; before 13 the input was coerced to 2-D at axis"),
    ("Split", 13, "split sizes move from an attribute to an input"),
    ("Split", 18, "num_outputs attribute for uneven splits"),
    ("Squeeze", 13, "axes move from an attribute to an input"),
    ("Unsqueeze", 13, "axes move from an attribute to an input"),
    ("ReduceSum", 13, "axes move from an attribute to an input"),
    ("ReduceMean", 18, "axes move from an attribute to an input"),
    ("ReduceMax", 18, "axes move from an attribute to an input"),
    ("ReduceMin", 18, "axes move from an attribute to an input"),
    ("ReduceProd", 18, "axes move from an attribute to an input"),
    ("ReduceL2", 18, "axes move from an attribute to an input"),
    ("Reshape", 14, "allowzero attribute (0 copies the input dim unless allowzero=1)"),
    ("QuantizeLinear", 13, "per-axis scales and zero points"),
    ("DequantizeLinear", 13, "per-axis scales and zero points"),
    ("QuantizeLinear", 21, "blocked quantization, more types"),
    ("DequantizeLinear", 21, "blocked quantization, more types"),
    ("Gemm", 11, "C becomes optional"),
    ("Cast", 13, "bfloat16; string casts defined"),
]


@dataclass
class OpChange:
    op_type: str
    source_version: int    # since_version of the schema the source model uses
    target_version: int
    semantics: list = field(default_factory=list)


@dataclass
class OutputDifference:
    name: str
    runtime: str
    max_abs_diff: float
    passed: bool


@dataclass
class OpsetConversion:
    """What :func:`convert` did: the converted model, the op version changes and the numeric check."""

    model: onnx.ModelProto
    source_opset: int
    target_opset: int
    changes: list = field(default_factory=list)
    differences: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.differences)

    def __str__(self):
        lines = [f"opset {self.source_opset} -> {self.target_opset}"]
        if not self.changes:
            lines.append("  no op changes version")
        for c in self.changes:
            lines.append(f"  {c.op_type}: version {c.source_version} -> {c.target_version}")
            lines.extend(f"      {s}" for s in c.semantics)
        lines.extend(f"  note: {n}" for n in self.notes)
        for d in self.differences:
            lines.append(f"  {d.runtime:<12} {d.name:<24} max |diff| {d.max_abs_diff:.3e}  "
                         f"{'PASS' if d.passed else 'FAIL'}")
        lines.append(f"numerically the same (rtol={self.rtol:g}, atol={self.atol:g})" if self.passed
                     else "MISMATCH")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)


def _since_version(op_type: str, opset: int, domain: str = "") -> int | None:
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except onnx.defs.SchemaError:
        return None


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_nodes(sub)


def op_changes(model: onnx.ModelProto, source: int, target: int) -> list[OpChange]:
    """The ai.onnx ops of ``model`` whose schema differs between the two opsets, with the semantic notes."""
    low, high = min(source, target), max(source, target)
    changes = []
    for op_type in sorted({n.op_type for n in _all_nodes(model.graph) if n.domain in ("", "ai.onnx")}):
        a, b = _since_version(op_type, source), _since_version(op_type, target)
        if a == b:
            continue
        notes = [f"opset {v}: {text}" for op, v, text in SEMANTIC_CHANGES if op == op_type and low < v <= high]
        changes.append(OpChange(op_type, a or 0, b or 0, notes))
    return changes


def _first_opset(op_type: str) -> int:
    return min(schema.since_version for schema in onnx.defs.get_all_schemas_with_history()
               if schema.name == op_type and schema.domain == "")


def _check_convertible(model: onnx.ModelProto, target: int, label: str):
    """onnx's converter stops on ops missing at the target with a bare assertion; name them instead."""
    missing = {}
    for node in _all_nodes(model.graph):
        if node.domain in ("", "ai.onnx") and _since_version(node.op_type, target) is None:
            missing.setdefault(node.op_type, []).append(node.name or "<unnamed>")
    if missing:
        what = "; ".join(f"{op} (first in opset {_first_opset(op)}; {len(nodes)} node(s), e.g. {nodes[0]!r})"
                         for op, nodes in sorted(missing.items()))
        raise OpsetConversionError(f"{label}: cannot convert to opset {target}: these ops do not exist there: "
                                   f"{what}")


# Ops onnx's converter has no down-adapter for, although the older version computes the same as long
# as the node leaves the newer attributes at their defaults (None: absent): the versions in between
# only added types (bfloat16, float8, ...) or optional behaviour. Each entry: (the oldest version with
# today's semantics, {newer attribute: default}). The checker then verifies the types at the target
# opset and the numeric check verifies the rest. Not listed on purpose: ops whose meaning changed
# (Softmax 13, Gather 11's negative indices, Flatten 11's negative axis, Unsqueeze/Split 13's inputs).
_SAME_WITHOUT = {
    "Shape": (1, {"start": 0, "end": None}),
    "Relu": (6, {}), "Sigmoid": (6, {}), "Tanh": (6, {}), "LRN": (1, {}), "Identity": (1, {}),
    "Add": (7, {}), "Sub": (7, {}), "Mul": (7, {}), "Div": (7, {}), "Sum": (8, {}), "Concat": (4, {}),
    "Conv": (1, {}), "Transpose": (1, {}), "GlobalAveragePool": (1, {}), "ConstantOfShape": (9, {}),
    "Gemm": (7, {}), "Reshape": (5, {"allowzero": 0}), "Dropout": (12, {}),
    "Flatten": (9, {}),     # with a non-negative axis (checked below): negative axes came at 11
    "Constant": (9, {k: None for k in ("sparse_value", "value_float", "value_floats", "value_int", "value_ints",
                                       "value_string", "value_strings")}),
    "BatchNormalization": (9, {"training_mode": 0}),
    "MaxPool": (8, {"ceil_mode": 0, "dilations": "ones"}),
    "AveragePool": (7, {"ceil_mode": 0, "dilations": "ones"}),
}
_SHIELD_DOMAIN = "qrt.shielded"


def _at_default(attr, default) -> bool:
    if default is None:
        return False
    value = helper.get_attribute_value(attr)
    return all(v == 1 for v in value) if default == "ones" else value == default


def _shieldable(node, target: int) -> bool:
    entry = _SAME_WITHOUT.get(node.op_type)
    if node.domain not in ("", "ai.onnx") or entry is None or target < entry[0]:
        return False
    if node.op_type == "Gemm" and len(node.input) < 3:       # C became optional at 11
        return False
    if node.op_type == "BatchNormalization" and len(node.output) > 1:   # training outputs
        return False
    if node.op_type == "Flatten" and any(a.name == "axis" and a.i < 0 for a in node.attribute):
        return False
    newer = entry[1]
    return all(_at_default(a, newer[a.name]) for a in node.attribute if a.name in newer)


def _shield(model: onnx.ModelProto, target: int) -> int:
    """Moves the nodes :func:`_shieldable` allows out of the converter's sight; returns how many."""
    count = 0
    for node in _all_nodes(model.graph):
        if _shieldable(node, target):
            node.domain = _SHIELD_DOMAIN
            count += 1
    if count and not any(imp.domain == _SHIELD_DOMAIN for imp in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_SHIELD_DOMAIN, 1))
    return count


def _inference_dropouts_to_identity(model: onnx.ModelProto) -> int:
    """Dropout at opset 12+ takes its ratio as an input, which onnx cannot move back to an attribute;
    at inference (no training_mode input, no mask output) it is the identity, so it becomes one."""
    count = 0
    used = {name for n in _all_nodes(model.graph) for name in n.input} | {o.name for o in model.graph.output}
    for node in _all_nodes(model.graph):
        if node.op_type == "Dropout" and node.domain in ("", "ai.onnx") and len(node.input) < 3 \
                and (len(node.output) < 2 or node.output[1] not in used):
            node.op_type = "Identity"
            del node.input[1:]
            del node.output[1:]
            del node.attribute[:]
            count += 1
    if count:   # their ratio Constants now feed nothing
        used = {name for n in _all_nodes(model.graph) for name in n.input} | {o.name for o in model.graph.output}
        kept = [n for n in model.graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return count


def _collapse_coerced_softmax(model: onnx.ModelProto) -> int:
    """Flatten(x, axis=a) -> Softmax(axis=-1) -> Reshape(to Shape(x)) is how onnx's converter writes an
    opset<13 Softmax at 13; below 13 it is exactly Softmax(x, axis=a), and onnx's converter cannot take
    the pattern back apart. Same for LogSoftmax and Hardmax. The collapsed node is shielded."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}
    drop, count = set(), 0
    for node in graph.node:
        if node.op_type not in ("Softmax", "LogSoftmax", "Hardmax") or node.domain not in ("", "ai.onnx"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        flatten = producer.get(node.input[0])
        after = readers.get(node.output[0], [])
        if flatten is None or flatten.op_type != "Flatten" or axis not in (-1, 1) or len(after) != 1 \
                or node.output[0] in outputs or len(readers.get(flatten.output[0], [])) != 1:
            continue
        reshape = after[0]
        shape = producer.get(reshape.input[1]) if reshape.op_type == "Reshape" else None
        if shape is None or shape.op_type != "Shape" or shape.input[0] != flatten.input[0] or shape.attribute:
            continue
        flat_axis = next((a.i for a in flatten.attribute if a.name == "axis"), 1)
        node.input[0] = flatten.input[0]
        node.output[0] = reshape.output[0]
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("axis", flat_axis))
        node.domain = _SHIELD_DOMAIN
        drop.update({id(flatten), id(reshape)})
        if len(readers.get(shape.output[0], [])) == 1:
            drop.add(id(shape))
        count += 1
    if count:
        kept = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(kept)
        if not any(imp.domain == _SHIELD_DOMAIN for imp in model.opset_import):
            model.opset_import.append(helper.make_opsetid(_SHIELD_DOMAIN, 1))
    return count


def _unshield(model: onnx.ModelProto):
    for node in _all_nodes(model.graph):
        if node.domain == _SHIELD_DOMAIN:
            node.domain = ""
    kept = [imp for imp in model.opset_import if imp.domain != _SHIELD_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _run_qrt(model, feeds, extra_outputs=None):
    from .session import GraphOptimizationLevel, InferenceSession, SessionOptions
    options = SessionOptions()
    # No fusions: the tensors named in both graphs must survive to be compared.
    options.graph_optimization_level = GraphOptimizationLevel.ORT_DISABLE_ALL
    session = InferenceSession(_with_outputs(model, extra_outputs) if extra_outputs else model, options)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _ort_session(model):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _with_outputs(model, infos: dict):
    """A copy of ``model`` that also returns the tensors of ``infos`` (name -> inferred ValueInfoProto)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(info for name, info in infos.items() if name not in present)
    return copy


def _close(a, b, rtol, atol) -> tuple[float, bool]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf"), False
    if a.dtype.kind not in "fc":
        same = bool(np.array_equal(a, b))
        return (0.0 if same else float("inf")), same
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = np.where(np.isnan(a64) & np.isnan(b64), 0.0, np.abs(a64 - b64))
    if not diff.size:
        return 0.0, True
    return float(np.nanmax(diff)), bool(np.all(diff <= atol + rtol * np.abs(b64)))


def _intermediates(model) -> dict:
    """Tensor intermediates whose type shape inference knows: {name: ValueInfoProto}."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: v for v in inferred.graph.value_info
            if v.type.WhichOneof("value") == "tensor_type" and v.type.tensor_type.HasField("shape")}


def first_divergence(source: onnx.ModelProto, converted: onnx.ModelProto, feeds: dict,
                     rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL):
    """(node name, op_type, tensor, max |diff|) of the first node of ``converted`` whose output differs
    from the tensor of the same name in ``source`` (graph outputs and the intermediates whose type
    both graphs infer), or None when every shared tensor agrees."""
    ours, theirs = _intermediates(source), _intermediates(converted)
    shared = {n: v for n, v in ours.items()
              if n in theirs and theirs[n].type.tensor_type.elem_type == v.type.tensor_type.elem_type}
    a = _run_qrt(source, feeds, shared)
    b = _run_qrt(converted, feeds, {n: theirs[n] for n in shared})
    for node in converted.graph.node:
        for out in node.output:
            if out in a and out in b:
                diff, ok = _close(b[out], a[out], rtol, atol)
                if not ok:
                    return node.name or f"<unnamed {node.op_type}>", node.op_type, out, diff
    return None


def convert(model, target_opset: int, feeds: dict | None = None, rtol: float = DEFAULT_RTOL,
            atol: float = DEFAULT_ATOL, seed: int = 0, check: bool = True) -> OpsetConversion:
    """Convert ``model`` (path, bytes or ModelProto; never modified) to ``target_opset`` and check it.

    ``feeds`` are the inputs both models run on (random ones of the right shape when None; symbolic
    dims take 1). Raises :class:`OpsetConversionError` when the conversion fails or the outputs
    differ beyond ``atol + rtol * |original|``. ``check=False`` skips running the models (the
    report then has no differences).
    """
    from onnx import version_converter
    from .feeds import random_feeds
    from .model import model_label
    from .session import InferenceSession

    source = load_model(model)
    label = model_label(source, model)
    source_opset = default_opset(source)
    if source_opset is None:
        raise OpsetConversionError(f"{label}: the model imports no ai.onnx opset, so there is nothing to convert")
    target = int(target_opset)
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= target <= newest:
        raise OpsetConversionError(f"{label}: target opset {target} is outside 1..{newest} "
                                   f"(the newest this onnx {onnx.__version__} knows)")
    notes = []
    if target == source_opset:
        converted = load_model(source)
        notes.append("the model already uses this opset; nothing converted")
    else:
        _check_convertible(source, target, label)
        staged = load_model(source)
        shielded = dropouts = collapsed = 0
        if target < source_opset:
            if target < 12 <= source_opset:
                dropouts = _inference_dropouts_to_identity(staged)
            if target < 13 <= source_opset:
                collapsed = _collapse_coerced_softmax(staged)
            shielded = _shield(staged, target)
        try:
            converted = version_converter.convert_version(staged, target)
            _unshield(converted)
        except Exception as exc:
            raise OpsetConversionError(f"{label}: onnx's version converter failed from opset {source_opset} "
                                       f"to {target}: {str(exc).strip() or type(exc).__name__}") from None
        if collapsed:
            notes.append(f"{collapsed} Flatten -> Softmax -> Reshape chain(s) collapsed back into one opset-"
                         f"{target} Softmax over the flattened axes (what the chain computes)")
        if dropouts:
            notes.append(f"{dropouts} inference Dropout node(s) replaced by Identity (their ratio input "
                         f"cannot become an attribute again below opset 12)")
        if shielded:
            notes.append(f"{shielded} node(s) moved to opset {target} by qrt, not onnx's converter (it has no "
                         f"down-adapter for ops whose older version computes the same; see qrt.opset)")
        needed_ir = helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
        if converted.ir_version < needed_ir:
            notes.append(f"IR version {converted.ir_version} raised to {needed_ir}, the minimum for opset {target}")
            converted.ir_version = needed_ir
        try:
            onnx.checker.check_model(converted)
        except onnx.checker.ValidationError as exc:
            raise OpsetConversionError(f"{label}: the converted model is not valid at opset {target}: "
                                       f"{str(exc).splitlines()[0]}") from None
    result = OpsetConversion(converted, source_opset, target, op_changes(source, source_opset, target),
                             notes=notes, rtol=rtol, atol=atol)
    if not check:
        return result

    if feeds is None:
        feeds = random_feeds(InferenceSession(source), seed=seed)
    want = _run_qrt(source, feeds)
    got = _run_qrt(converted, feeds)
    for name, value in want.items():
        diff, ok = _close(got.get(name), value, rtol, atol) if name in got else (float("inf"), False)
        result.differences.append(OutputDifference(name, "qrt", diff, ok))
    try:
        ort_want = _ort_session(source).run(None, feeds)
    except Exception:   # onnxruntime may not load the source opset; qrt's check above still stands
        ort_want = None
        notes.append("onnxruntime could not load the original model; checked in qrt only")
    if ort_want is not None:
        try:
            ort_got = _ort_session(converted).run(None, feeds)
        except Exception as exc:
            raise OpsetConversionError(f"{label}: onnxruntime runs the original but not the opset-{target} "
                                       f"model: {' '.join(str(exc).split())[:300]}") from None
        for name, a, b in zip([o.name for o in converted.graph.output], ort_got, ort_want):
            diff, ok = _close(a, b, rtol, atol)
            result.differences.append(OutputDifference(name, "onnxruntime", diff, ok))
    if not result.passed:
        worst = max(result.differences, key=lambda d: d.max_abs_diff)
        where = first_divergence(source, converted, feeds, rtol, atol)
        at = (f"; first diverging node: {where[0]!r} ({where[1]}), output {where[2]!r} differs by {where[3]:.3e}"
              if where else "; no tensor both graphs name differs on its own, so the node is not located")
        raise OpsetConversionError(f"{label}: the opset-{target} model differs from the original: output "
                                   f"{worst.name!r} ({worst.runtime}) by {worst.max_abs_diff:.3e} (rtol={rtol:g}, "
                                   f"atol={atol:g}){at}\n{result}")
    return result


def convert_opset(model, target_opset: int, feeds: dict | None = None, rtol: float = DEFAULT_RTOL,
                  atol: float = DEFAULT_ATOL, seed: int = 0) -> onnx.ModelProto:
    """The converted, numerically checked model; see :func:`convert` for the report as well."""
    return convert(model, target_opset, feeds=feeds, rtol=rtol, atol=atol, seed=seed).model
