"""``compare``: what int8 costs and buys, float model vs int8 model, on the same data.

Per output, metrics chosen by the output's kind (:mod:`qrt.report.kinds`): class scores get top-1/top-5
agreement, boxes/regression/feature maps/embeddings SQNR, max abs error and cosine, integer outputs the
share of equal values; accuracy against labels when given.
Per layer: SQNR of every tensor the int8 model carries in int8 against its float counterpart, matched
by name the way onnxruntime's qdq_loss_debug does (``T`` in the float model is ``T_quantized`` with
``T_scale``/``T_zero_point`` in a QOperator model, or ``T_dequantized`` / ``T_DequantizeLinear_Output``
in a QDQ model). Size: file bytes and weight bytes by dtype. Latency: qrt and onnxruntime, float and
int8, medians. Coverage (:mod:`qrt.report.coverage`): which compute nodes run in int8, which stayed float,
and the shape arithmetic counted apart from both. Rendering (text and HTML) lives in :mod:`qrt.report.render`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..bench import time_runs
from ..model import load_model
from ..session import InferenceSession
from ..errors import InvalidArgument
from .coverage import int8_share, node_coverage
from .kinds import check_kind, output_kind
from .metrics import cosine_similarity, exact_agreement, sqnr_db, topk_agreement

@dataclass
class OutputError:
    """int8 vs float on one model output. Metrics that mean nothing for the output's kind are None."""
    name: str
    kind: str                       # "scores", "regression" or "indices" (see qrt.report.kinds)
    max_abs: float
    mean_abs: float
    sqnr_db: float
    cosine: float
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    exact_agreement: float | None = None


@dataclass
class LayerError:
    tensor: str
    op_type: str
    sqnr_db: float
    position: int = 0               # index of the producing node in the float graph


@dataclass
class Report:
    float_model: str
    int8_model: str
    samples: int
    outputs: list = field(default_factory=list)
    layers: list = field(default_factory=list)          # worst first
    accuracy_float: float | None = None
    accuracy_int8: float | None = None
    size_float: int = 0
    size_int8: int = 0
    weight_bytes_float: dict = field(default_factory=dict)
    weight_bytes_int8: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)      # {"qrt float": ms, "qrt int8": ms, "onnxruntime ...": ms}
    quantized_nodes: list = field(default_factory=list)  # [(name, op_type)] computing in int8
    float_nodes: list = field(default_factory=list)      # compute nodes left in float
    shape_nodes: list = field(default_factory=list)      # shape arithmetic, neither int8 nor float compute

    @property
    def int8_share(self) -> float:
        """int8 compute nodes over all compute nodes, shape arithmetic excluded."""
        return int8_share(self.quantized_nodes, self.float_nodes)

    def verdict(self):
        """(level, reason): "good", "fair" or "poor", from the weakest output (see qrt.report.render)."""
        from .render import verdict
        return verdict(self)

    def rows(self):
        """(section, [(label, value), ...]) blocks of the text rendering."""
        from .render import text_rows
        return text_rows(self)

    def __str__(self):
        lines = [f"qrt report: {self.float_model} vs {self.int8_model}"]
        for title, rows in self.rows():
            lines.append(f"\n{title}")
            width = max((len(label) for label, _ in rows), default=0)
            lines += [f"  {label:<{width}}  {value}" for label, value in rows]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self):
        from .render import html_fragment
        return html_fragment(self)

    def plot(self):
        """Per-layer SQNR along the graph, weight bytes by dtype and latency, as one matplotlib figure."""
        from .render import summary_figure
        return summary_figure(self)

    def to_html(self, path):
        """Write the report as one self-contained HTML file (inline CSS and SVG, no scripts), atomically."""
        from ..session import _write_atomically
        from .render import html_page

        _write_atomically(os.fspath(path), html_page(self).encode())
        return path


def _model_bytes(model, source) -> int:
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        return os.path.getsize(source)
    return model.ByteSize()


def _weight_bytes(model) -> dict:
    by_dtype = {}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        by_dtype[str(array.dtype)] = by_dtype.get(str(array.dtype), 0) + array.nbytes
    return by_dtype


def _float_tensors(model):
    """Float activations of a model with known rank: {name: (producing op_type, shape)} in graph order."""
    from ..model import shape_of
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = {}
    for node in inferred.graph.node:
        for name in node.output:
            type_proto = infos.get(name)
            if name and type_proto is not None and type_proto.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                shape = shape_of(type_proto)
                if shape is not None:
                    out[name] = (node.op_type, [d if d is not None else f"{name}_d{i}" for i, d in enumerate(shape)])
    return out


def _with_outputs(model, names: dict):
    """A copy of ``model`` that also returns the tensors ``names`` maps to their ONNX element types.

    Types come from the caller, not shape inference: onnx cannot infer com.microsoft ops' outputs.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name, (elem_type, shape) in names.items():
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, shape))
    return copy


def _match_int8_tensors(float_tensors, int8_model):
    """Map float tensor -> how to read it from the int8 model: ('q', q, scale, zp) or ('f', name)."""
    produced = {o for n in int8_model.graph.node for o in n.output}
    inits = {t.name: t for t in int8_model.graph.initializer}
    matches = {}
    for name in float_tensors:
        if f"{name}_quantized" in produced and f"{name}_scale" in inits and f"{name}_zero_point" in inits:
            matches[name] = ("q", f"{name}_quantized", numpy_helper.to_array(inits[f"{name}_scale"]),
                             numpy_helper.to_array(inits[f"{name}_zero_point"]))
        else:
            for candidate in (f"{name}_dequantized", f"{name}_DequantizeLinear_Output"):
                if candidate in produced:
                    matches[name] = ("f", candidate)
                    break
    return matches


def _batches(data):
    from calibration import as_reader
    reader = as_reader(data)
    batches = []
    while True:
        batch = reader.get_next()
        if batch is None:
            return batches
        batches.append(batch)


def compare(float_model, int8_model, data, labels=None, latency_runs: int = 20, layers: bool = True,
            onnxruntime: bool = True, output_kinds: dict | None = None) -> Report:
    """Compare a float model with its int8 version on ``data`` (reader, iterable of feeds or .npz).

    ``output_kinds`` ({output name: "scores" | "regression" | "indices"}) overrides the kind
    :func:`qrt.report.kinds.output_kind` guesses, which picks the metrics shown for that output.
    ``labels`` (one class per sample) are scored against the first output of kind "scores".
    """
    f_proto, q_proto = load_model(float_model), load_model(int8_model)
    batches = _batches(data)
    report = Report(float_model=_label(float_model, f_proto), int8_model=_label(int8_model, q_proto),
                    samples=sum(next(iter(b.values())).shape[0] for b in batches) if batches else 0)
    report.size_float, report.size_int8 = _model_bytes(f_proto, float_model), _model_bytes(q_proto, int8_model)
    report.weight_bytes_float, report.weight_bytes_int8 = _weight_bytes(f_proto), _weight_bytes(q_proto)
    coverage = node_coverage(q_proto)
    report.quantized_nodes, report.float_nodes, report.shape_nodes = coverage.int8, coverage.float, coverage.shape

    float_sess, int8_sess = InferenceSession(f_proto), InferenceSession(q_proto)
    output_names = [o.name for o in float_sess.get_outputs()]
    f_outs = [float_sess.run(None, b) for b in batches]
    q_outs = [int8_sess.run(None, b) for b in batches]
    output_kinds = dict(output_kinds or {})
    unknown = set(output_kinds) - set(output_names)
    if unknown:
        raise InvalidArgument(f"output_kinds names {sorted(unknown)}, which are not outputs of "
                              f"{report.float_model} (outputs: {output_names})")
    for i, name in enumerate(output_names):
        f = _joined([o[i] for o in f_outs])
        q = _joined([o[i] for o in q_outs])
        kind = check_kind(name, output_kinds[name]) if name in output_kinds else output_kind(name, f)
        report.outputs.append(_output_error(name, kind, f, q))
    if labels is not None:
        labels = np.asarray(labels).ravel()
        scored = next((i for i, o in enumerate(report.outputs) if o.kind == "scores"), 0)
        f = np.concatenate([o[scored] for o in f_outs]).reshape(len(labels), -1)
        q = np.concatenate([o[scored] for o in q_outs]).reshape(len(labels), -1)
        report.accuracy_float = float(np.mean(f.argmax(1) == labels))
        report.accuracy_int8 = float(np.mean(q.argmax(1) == labels))

    if layers:
        report.layers = _layer_errors(f_proto, q_proto, batches)

    if latency_runs and batches:
        feed = batches[0]
        report.latency_ms["qrt float"] = time_runs(lambda: float_sess.run(None, feed), latency_runs, 2)
        report.latency_ms["qrt int8"] = time_runs(lambda: int8_sess.run(None, feed), latency_runs, 2)
        if onnxruntime:
            import onnxruntime as ort
            for key, proto in (("onnxruntime float", f_proto), ("onnxruntime int8", q_proto)):
                try:
                    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
                except Exception:
                    continue
                report.latency_ms[key] = time_runs(lambda: ref.run(None, feed), latency_runs, 2)
    return report


def _joined(arrays):
    """One output over all batches: stacked on the batch axis, or flattened where batches differ in shape
    (a sequence length that follows the input), which every metric of a flat tensor accepts."""
    if all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays)
    return np.concatenate([a.ravel() for a in arrays])


def _output_error(name, kind, f, q):
    if f.shape != q.shape:
        raise InvalidArgument(f"output {name!r}: the float model gives shape {f.shape}, the int8 model {q.shape}")
    diff = np.abs(f.astype(np.float64) - q.astype(np.float64))
    error = OutputError(name, kind, float(diff.max()) if diff.size else 0.0, float(diff.mean()) if diff.size else 0.0,
                        sqnr_db(f, q), cosine_similarity(f, q))
    if kind == "scores":
        error.top1_agreement = topk_agreement(f, q, 1)
        if f.ndim and f.shape[-1] > 5:
            error.top5_agreement = topk_agreement(f, q, 5)
    elif kind == "indices":
        error.exact_agreement = exact_agreement(f, q)
    return error


def _layer_errors(f_proto, q_proto, batches):
    float_tensors = _float_tensors(f_proto)
    matches = _match_int8_tensors(float_tensors, q_proto)
    if not matches:
        return []
    f_sess = InferenceSession(_with_outputs(
        f_proto, {name: (onnx.TensorProto.FLOAT, float_tensors[name][1]) for name in matches}))
    q_types = {m[1]: (onnx.helper.np_dtype_to_tensor_dtype(m[3].dtype) if m[0] == "q" else onnx.TensorProto.FLOAT,
                      float_tensors[name][1]) for name, m in matches.items()}
    q_sess = InferenceSession(_with_outputs(q_proto, q_types))
    f_index = {o.name: i for i, o in enumerate(f_sess.get_outputs())}
    q_index = {o.name: i for i, o in enumerate(q_sess.get_outputs())}
    errors = {name: [] for name in matches}
    for batch in batches:
        f_vals, q_vals = f_sess.run(None, batch), q_sess.run(None, batch)
        for name, match in matches.items():
            f = f_vals[f_index[name]]
            q = q_vals[q_index[match[1]]]
            if match[0] == "q":
                scale, zp = match[2], match[3]
                q = (q.astype(np.float32) - zp.astype(np.float32)) * scale
            errors[name].append((f, q))
    position = {name: i for i, node in enumerate(f_proto.graph.node) for name in node.output}
    result = []
    for name, pairs in errors.items():
        f = np.concatenate([p[0].ravel() for p in pairs])
        q = np.concatenate([p[1].ravel() for p in pairs])
        result.append(LayerError(name, float_tensors[name][0], sqnr_db(f, q), position.get(name, 0)))
    result.sort(key=lambda l: l.sqnr_db)
    return result


def _label(source, proto):
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return proto.graph.name or "model"
