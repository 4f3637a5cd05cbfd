"""``compare``: what int8 costs and buys, float model vs int8 model, on the same data.

Per output: max/mean abs error, SQNR, cosine similarity, top-1 agreement and accuracy against labels.
Per layer: SQNR of every tensor the int8 model carries in int8 against its float counterpart, matched
by name the way onnxruntime's qdq_loss_debug does (``T`` in the float model is ``T_quantized`` with
``T_scale``/``T_zero_point`` in a QOperator model, or ``T_dequantized`` / ``T_DequantizeLinear_Output``
in a QDQ model). Size: file bytes and weight bytes by dtype. Latency: qrt and onnxruntime, float and
int8, medians. Coverage: which compute nodes run in int8 and which stayed float.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..bench import time_runs
from ..model import load_model
from ..session import InferenceSession
from .metrics import cosine_similarity, sqnr_db, top1_agreement

_QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                  "QLinearLeakyRelu", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
                  "QLinearSoftmax", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
                  "DynamicQuantizeMatMul"}
_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Sigmoid", "LeakyRelu", "Softmax",
                "GlobalAveragePool", "AveragePool", "Concat", "LSTM", "GRU", "Attention", "Einsum"}


@dataclass
class OutputError:
    name: str
    max_abs: float
    mean_abs: float
    sqnr_db: float
    cosine: float
    top1_agreement: float


@dataclass
class LayerError:
    tensor: str
    op_type: str
    sqnr_db: float


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
    quantized_nodes: list = field(default_factory=list)
    float_nodes: list = field(default_factory=list)

    # --- rendering -----------------------------------------------------------------------------
    def rows(self):
        """(section, [(label, value), ...]) blocks shared by the text and HTML renderings."""
        summary = [("samples", str(self.samples))]
        if self.accuracy_float is not None:
            summary += [("accuracy float", f"{self.accuracy_float:.2%}"), ("accuracy int8", f"{self.accuracy_int8:.2%}"),
                        ("accuracy change", f"{(self.accuracy_int8 - self.accuracy_float) * 100:+.2f} points")]
        summary += [("file size float", _size(self.size_float)), ("file size int8", _size(self.size_int8)),
                    ("int8 / float size", f"{self.size_int8 / max(self.size_float, 1):.1%}")]
        outputs = [(o.name, f"max|err| {o.max_abs:.4g}  mean|err| {o.mean_abs:.4g}  SQNR {o.sqnr_db:.1f} dB  "
                            f"cos {o.cosine:.5f}  top-1 agree {o.top1_agreement:.2%}") for o in self.outputs]
        latency = []
        base = self.latency_ms.get("qrt float")
        for name, ms in self.latency_ms.items():
            ratio = f"  ({base / ms:.2f}x vs qrt float)" if base and ms else ""
            latency.append((name, f"{ms:.3f} ms{ratio}"))
        layers = [(f"{l.tensor} ({l.op_type})", f"{l.sqnr_db:.1f} dB") for l in self.layers[:10]]
        coverage = [("int8 compute nodes", str(len(self.quantized_nodes))),
                    ("float compute nodes", ", ".join(f"{n} ({op})" for n, op in self.float_nodes) or "none")]
        weights = [(f"weights {dtype}", f"float model {_size(self.weight_bytes_float.get(dtype, 0))}, "
                                        f"int8 model {_size(self.weight_bytes_int8.get(dtype, 0))}")
                   for dtype in sorted(set(self.weight_bytes_float) | set(self.weight_bytes_int8))]
        return [("Summary", summary), ("Outputs (int8 vs float)", outputs), ("Latency (median)", latency),
                ("Worst layers (SQNR, lowest first)", layers), ("Size by dtype", weights), ("Coverage", coverage)]

    def __str__(self):
        lines = [f"qrt report: {self.float_model} vs {self.int8_model}"]
        for title, rows in self.rows():
            lines.append(f"\n{title}")
            width = max((len(label) for label, _ in rows), default=0)
            lines += [f"  {label:<{width}}  {value}" for label, value in rows]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self):
        parts = [f"<h3>qrt report: {html.escape(self.float_model)} vs {html.escape(self.int8_model)}</h3>"]
        for title, rows in self.rows():
            parts.append(f"<h4>{html.escape(title)}</h4><table>")
            parts += [f"<tr><td>{html.escape(label)}</td><td>{html.escape(value)}</td></tr>" for label, value in rows]
            parts.append("</table>")
        return "\n".join(parts)

    def plot(self):
        """Per-layer SQNR, weight bytes by dtype and latency, as one matplotlib figure."""
        import matplotlib
        if not os.environ.get("DISPLAY") and "ipykernel" not in matplotlib.get_backend().lower() \
                and "inline" not in matplotlib.get_backend().lower():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        layers = self.layers[:15][::-1]
        axes[0].barh([l.tensor for l in layers], [min(l.sqnr_db, 80) for l in layers], color="tab:orange")
        axes[0].set_xlabel("SQNR (dB), int8 vs float")
        axes[0].set_title("Worst layers")
        dtypes = sorted(set(self.weight_bytes_float) | set(self.weight_bytes_int8))
        x = np.arange(2)
        bottom = np.zeros(2)
        for dtype in dtypes:
            values = np.array([self.weight_bytes_float.get(dtype, 0), self.weight_bytes_int8.get(dtype, 0)]) / 1024
            axes[1].bar(x, values, bottom=bottom, label=dtype)
            bottom += values
        axes[1].set_xticks(x, ["float", "int8"])
        axes[1].set_ylabel("weights (KiB)")
        axes[1].set_title("Size by dtype")
        axes[1].legend()
        names = list(self.latency_ms)
        axes[2].bar(names, [self.latency_ms[n] for n in names],
                    color=["tab:blue", "tab:orange", "tab:gray", "tab:gray"][:len(names)])
        axes[2].set_ylabel("median latency (ms)")
        axes[2].set_title("Latency")
        axes[2].tick_params(axis="x", rotation=20)
        fig.tight_layout()
        return fig

    def to_html(self, path):
        """Write the report, with its plot embedded, as one self-contained HTML file (atomically)."""
        import base64
        import io

        from ..session import _write_atomically

        fig = self.plot()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        import matplotlib.pyplot as plt
        plt.close(fig)
        image = base64.b64encode(buffer.getvalue()).decode()
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qrt report</title></head><body>"
                f"{self._repr_html_()}<img src='data:image/png;base64,{image}'/></body></html>")
        _write_atomically(os.fspath(path), page.encode())
        return path


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


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
            onnxruntime: bool = True) -> Report:
    """Compare a float model with its int8 version on ``data`` (reader, iterable of feeds or .npz)."""
    f_proto, q_proto = load_model(float_model), load_model(int8_model)
    batches = _batches(data)
    report = Report(float_model=_label(float_model, f_proto), int8_model=_label(int8_model, q_proto),
                    samples=sum(next(iter(b.values())).shape[0] for b in batches) if batches else 0)
    report.size_float, report.size_int8 = _model_bytes(f_proto, float_model), _model_bytes(q_proto, int8_model)
    report.weight_bytes_float, report.weight_bytes_int8 = _weight_bytes(f_proto), _weight_bytes(q_proto)
    for node in q_proto.graph.node:
        if node.op_type in _QUANTIZED_OPS:
            report.quantized_nodes.append((node.name, node.op_type))
        elif node.op_type in _COMPUTE_OPS:
            report.float_nodes.append((node.name, node.op_type))

    float_sess, int8_sess = InferenceSession(f_proto), InferenceSession(q_proto)
    output_names = [o.name for o in float_sess.get_outputs()]
    f_outs = [float_sess.run(None, b) for b in batches]
    q_outs = [int8_sess.run(None, b) for b in batches]
    for i, name in enumerate(output_names):
        f = np.concatenate([o[i] for o in f_outs])
        q = np.concatenate([o[i] for o in q_outs])
        diff = np.abs(f.astype(np.float64) - q.astype(np.float64))
        report.outputs.append(OutputError(name, float(diff.max()), float(diff.mean()), sqnr_db(f, q),
                                          cosine_similarity(f, q), top1_agreement(f, q)))
    if labels is not None:
        labels = np.asarray(labels).ravel()
        f = np.concatenate([o[0] for o in f_outs]).reshape(len(labels), -1)
        q = np.concatenate([o[0] for o in q_outs]).reshape(len(labels), -1)
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
    result = []
    for name, pairs in errors.items():
        f = np.concatenate([p[0].ravel() for p in pairs])
        q = np.concatenate([p[1].ravel() for p in pairs])
        result.append(LayerError(name, float_tensors[name][0], sqnr_db(f, q)))
    result.sort(key=lambda l: l.sqnr_db)
    return result


def _label(source, proto):
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return proto.graph.name or "model"
