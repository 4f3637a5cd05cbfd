"""``qrt.validate_export``: does the exported ONNX model compute what the framework model computes?

Two export pitfalls this catches, with the fix spelled out:

* a batch dimension exported as fixed (``torch.onnx.export`` without ``dynamic_axes``): the model
  works at the export batch size and nowhere else. Every input (and output) whose first dim is a
  number is named, with the exact ``dynamic_axes=...`` argument that makes it free;
* numerics that differ beyond tolerance: the reference, qrt and onnxruntime run on each batch
  size and every output's max/mean difference is reported. When the reference can show its
  intermediate values, the first ONNX node whose output disagrees is named.

``reference`` is a ``torch.nn.Module`` (run in eval mode under ``torch.no_grad``; torch is never
imported by qrt itself, only used when the caller hands a module over) or any callable taking the
inputs as positional numpy arrays and returning an array, a tuple/list of arrays or a dict keyed by
output name. Intermediates: for a callable, pass ``intermediates=`` a callable with the same inputs
returning ``{onnx tensor name: array}``; for a torch module they come from forward hooks, matched to
ONNX nodes by the scope names torch's exporter writes (``/layer1/layer1.0/conv1/Conv`` belongs to
module ``layer1.0.conv1``; a module's output is the output of the last node in its scope). That
matching is best effort: a module whose scope the exporter did not record, or whose ONNX output is
not its last node's first output, is skipped rather than guessed.

Batches: the inputs' first axis is the batch. A batch of size b repeats the example rows; for float
inputs the repeated rows get a small deterministic perturbation (10% of the example's spread), so a
model that mixes rows across the batch cannot pass by accident.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .errors import InvalidArgument
from .model import load_model, model_label


@dataclass
class OutputDiff:
    output: str
    batch: int
    runtime: str            # "qrt" or "onnxruntime"
    max_abs_diff: float
    mean_abs_diff: float
    passed: bool


@dataclass
class ExportValidation:
    """What :func:`validate_export` found; ``passed`` when nothing is flagged."""

    model: str
    batch_sizes: tuple
    rtol: float
    atol: float
    fixed_batch: dict = field(default_factory=dict)   # tensor name -> fixed first dim
    dynamic_axes: dict | None = None                  # the torch.onnx.export argument that fixes it
    diffs: list = field(default_factory=list)
    failures: list = field(default_factory=list)      # (runtime, batch, message): runs that did not happen
    first_divergence: tuple | None = None             # (node name, op_type, tensor, max |diff|)

    @property
    def passed(self) -> bool:
        return not self.fixed_batch and not self.failures and all(d.passed for d in self.diffs)

    def __str__(self):
        lines = [f"export validation of {self.model}: batch sizes {list(self.batch_sizes)}, "
                 f"rtol={self.rtol:g}, atol={self.atol:g}"]
        if self.fixed_batch:
            fixed = ", ".join(f"{n!r} (dim 0 = {v})" for n, v in self.fixed_batch.items())
            lines.append(f"FIXED BATCH: {fixed} exported with a fixed batch dimension; re-export with")
            lines.append(f"    torch.onnx.export(..., dynamic_axes={self.dynamic_axes!r})")
        for runtime, batch, message in self.failures:
            lines.append(f"  {runtime} could not run batch {batch}: {message}")
        if self.diffs:
            lines.append(f"  {'output':<20} {'batch':>5} {'runtime':<12} {'max |diff|':>11} {'mean |diff|':>11}")
        for d in self.diffs:
            lines.append(f"  {d.output:<20} {d.batch:>5} {d.runtime:<12} {d.max_abs_diff:>11.3e} "
                         f"{d.mean_abs_diff:>11.3e}  {'PASS' if d.passed else 'FAIL'}")
        if self.first_divergence:
            node, op, tensor, diff = self.first_divergence
            lines.append(f"first diverging node: {node!r} ({op}), output {tensor!r} differs by {diff:.3e}")
        lines.append("export OK" if self.passed else "export has problems (see above)")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731


def _torch_module(reference):
    torch = sys.modules.get("torch")   # a torch module can only exist if the caller imported torch
    return torch if torch is not None and isinstance(reference, torch.nn.Module) else None


def _as_arrays(value, names) -> list:
    torch = sys.modules.get("torch")

    def arr(v):
        if torch is not None and isinstance(v, torch.Tensor):
            return v.detach().cpu().numpy()
        return np.asarray(v)
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        if missing:
            raise InvalidArgument(f"the reference returned {sorted(value)}, not the model's outputs {missing}")
        return [arr(value[n]) for n in names]
    if isinstance(value, (tuple, list)):
        return [arr(v) for v in value]
    return [arr(value)]


def _run_reference(reference, inputs: list):
    torch = _torch_module(reference)
    if torch is None:
        return reference(*inputs)
    was_training = reference.training
    reference.eval()
    try:
        with torch.no_grad():
            return reference(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
    finally:
        reference.train(was_training)


def _batched(examples: list, batch: int, seed: int) -> list:
    rng = np.random.default_rng(seed + batch)
    out = []
    for x in examples:
        x = np.asarray(x)
        n = x.shape[0]
        rows = x[np.arange(batch) % n]
        if x.dtype.kind == "f" and batch > n:
            spread = float(x.std()) or 1.0
            noise = (0.1 * spread * rng.standard_normal(rows.shape)).astype(x.dtype)
            noise[:n] = 0
            rows = rows + noise
        out.append(np.ascontiguousarray(rows))
    return out


def _graph_inputs(model):
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _fixed_first_dim(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) and dims[0].HasField("dim_value") else None


def _compare(a, b, rtol, atol):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf"), float("inf"), False
    if not a64.size:
        return 0.0, 0.0, True
    diff = np.abs(a64 - b64)
    return float(diff.max()), float(diff.mean()), bool(np.all(diff <= atol + rtol * np.abs(b64)))


def _node_scope(node_name: str) -> str | None:
    """Module qualname of a node named by torch's exporter ('/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1')."""
    parts = node_name.strip("/").split("/")[:-1] if node_name.startswith("/") else []
    scope = ""
    for part in parts:
        scope = part if (not scope or part.startswith(scope + ".")) else f"{scope}.{part}"
    return scope or None


def _torch_intermediates(module, inputs, model) -> dict:
    """{onnx tensor name: value} for the modules whose scope the exporter recorded (best effort)."""
    torch = _torch_module(module)
    recorded = {}

    def hook(name):
        def record(_mod, _args, output):
            if isinstance(output, torch.Tensor) and name not in recorded:
                recorded[name] = output.detach().cpu().numpy()
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in module.named_modules() if name]
    try:
        _run_reference(module, inputs)
    finally:
        for handle in handles:
            handle.remove()
    last_in_scope = {}
    for node in model.graph.node:
        scope = _node_scope(node.name)
        while scope:
            last_in_scope[scope] = node      # later nodes overwrite: the last node of each scope wins
            scope = scope.rpartition(".")[0] if "." in scope else None
    return {last_in_scope[name].output[0]: value for name, value in recorded.items() if name in last_in_scope}


def _locate(model, feeds, expected: dict, rtol, atol):
    from .session import GraphOptimizationLevel, InferenceSession, SessionOptions
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name, value in expected.items():
        if name in present:
            continue
        info = inferred.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            info = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype),
                                                 [f"{name}_d{i}" for i in range(np.ndim(value))])
        probe.graph.output.append(info)
    options = SessionOptions()
    options.graph_optimization_level = GraphOptimizationLevel.ORT_DISABLE_ALL   # keep every named tensor
    session = InferenceSession(probe, options)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for node in model.graph.node:
        for out in node.output:
            if out in expected and out in got:
                worst, _, ok = _compare(got[out], expected[out], rtol, atol)
                if not ok:
                    return node.name or f"<unnamed {node.op_type}>", node.op_type, out, worst
    return None


def validate_export(reference, onnx_model, example_inputs, batch_sizes=(1, 3), rtol: float = 1e-5,
                    atol: float = 1e-5, intermediates=None, seed: int = 0) -> ExportValidation:
    """Run ``reference``, qrt and onnxruntime on each batch size and report what differs (see module doc).

    ``example_inputs``: one array, a tuple/list in the model's input order, or a dict by input name.
    """
    import onnxruntime as ort
    from .session import InferenceSession

    model = load_model(onnx_model)
    label = model_label(model, onnx_model)
    inputs = _graph_inputs(model)
    names = [i.name for i in inputs]
    if isinstance(example_inputs, dict):
        examples = [example_inputs[n] for n in names if n in example_inputs]
    elif isinstance(example_inputs, (tuple, list)):
        examples = list(example_inputs)
    else:
        examples = [example_inputs]
    if len(examples) != len(names):
        raise InvalidArgument(f"{label}: the model has inputs {names}; got {len(examples)} example input(s)")
    examples = [np.asarray(x) for x in examples]
    output_names = [o.name for o in model.graph.output]
    report = ExportValidation(label, tuple(batch_sizes), rtol, atol)

    fixed = {i.name: _fixed_first_dim(i) for i in inputs}
    fixed = {n: v for n, v in fixed.items() if v is not None and any(b != v for b in batch_sizes)}
    if fixed:
        report.fixed_batch = dict(fixed)
        exported = set(fixed.values())
        for out in model.graph.output:
            if _fixed_first_dim(out) in exported:
                report.fixed_batch.setdefault(out.name, _fixed_first_dim(out))
        report.dynamic_axes = {name: {0: "batch"} for name in names + output_names
                               if name in report.fixed_batch}

    ours = InferenceSession(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        theirs = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        theirs = None
        report.failures.append(("onnxruntime", 0, f"could not load the model: {str(exc).splitlines()[0]}"))

    diverged_feeds = None
    for batch in batch_sizes:
        batch_inputs = _batched(examples, batch, seed)
        feeds = dict(zip(names, batch_inputs))
        want = _as_arrays(_run_reference(reference, batch_inputs), output_names)
        if len(want) != len(output_names):
            raise InvalidArgument(f"{label}: the reference returned {len(want)} output(s); the model has "
                                  f"{len(output_names)}: {output_names}")
        runs = [("qrt", lambda: ours.run(None, feeds))]
        if theirs is not None:
            runs.append(("onnxruntime", lambda: theirs.run(None, feeds)))
        for runtime, run in runs:
            try:
                got = run()
            except Exception as exc:   # qrt's feed check on a fixed dim, or onnxruntime's: reported, not raised
                report.failures.append((runtime, batch, " ".join(str(exc).split())[:300]))
                continue
            for name, a, b in zip(output_names, got, want):
                worst, mean, ok = _compare(a, b, rtol, atol)
                report.diffs.append(OutputDiff(name, batch, runtime, worst, mean, ok))
                if not ok and runtime == "qrt" and diverged_feeds is None:
                    diverged_feeds = (batch_inputs, feeds)

    if diverged_feeds is not None:
        batch_inputs, feeds = diverged_feeds
        if intermediates is not None:
            expected = {k: np.asarray(v) for k, v in intermediates(*batch_inputs).items()}
        elif _torch_module(reference) is not None:
            expected = _torch_intermediates(reference, batch_inputs, model)
        else:
            expected = {}
        if expected:
            report.first_divergence = _locate(model, feeds, expected, rtol, atol)
    return report
