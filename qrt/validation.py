"""``qrt.check``: run a model in qrt and in onnxruntime on the same inputs and compare every output.

This is the validation step every conversion guide asks for, made one call. onnxruntime is the
oracle here, never the engine behind a qrt result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .feeds import random_feeds
from .model import load_model
from .session import InferenceSession, SessionOptions


@dataclass
class OutputComparison:
    name: str
    shape: tuple
    dtype: str
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    passed: bool


@dataclass
class CheckResult:
    """Per-output comparison of qrt against onnxruntime; ``passed`` when every output is within tolerance."""

    outputs: list = field(default_factory=list)
    rtol: float = 1e-3
    atol: float = 1e-5

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __str__(self):
        lines = [f"{'output':<24} {'shape':<18} {'max |diff|':>12} {'mean |diff|':>12}  result "
                 f"(rtol={self.rtol:g}, atol={self.atol:g})"]
        for o in self.outputs:
            lines.append(f"{o.name:<24} {str(list(o.shape)):<18} {o.max_abs_diff:>12.3e} {o.mean_abs_diff:>12.3e}  "
                         f"{'PASS' if o.passed else 'FAIL'}")
        lines.append("all outputs match onnxruntime" if self.passed else "MISMATCH against onnxruntime")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731


def compare_outputs(names, ours, theirs, rtol=1e-3, atol=1e-5) -> CheckResult:
    result = CheckResult(rtol=rtol, atol=atol)
    for name, a, b in zip(names, ours, theirs):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            result.outputs.append(OutputComparison(name, a.shape, str(a.dtype), np.inf, np.inf, np.inf, False))
            continue
        if a.dtype.kind in "fiub" and a.size:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            diff = np.where(np.isnan(a) & np.isnan(b), 0.0, diff)
            rel = diff / np.maximum(np.abs(b.astype(np.float64)), 1e-30)
            ok = bool(np.all(diff <= atol + rtol * np.abs(b.astype(np.float64)))) and a.dtype == b.dtype
            result.outputs.append(OutputComparison(name, a.shape, str(a.dtype), float(diff.max()),
                                                   float(diff.mean()), float(np.nanmax(rel)), ok))
        else:
            same = bool(np.array_equal(a, b))
            result.outputs.append(OutputComparison(name, a.shape, str(a.dtype), 0.0 if same else np.inf,
                                                   0.0 if same else np.inf, 0.0, same))
    return result


def check(model, feeds: dict | None = None, rtol: float = 1e-3, atol: float = 1e-5, seed: int = 0,
          providers=None, free_dims: dict | None = None) -> CheckResult:
    """Run ``model`` in qrt and onnxruntime on ``feeds`` (random when None) and compare the outputs.

    ``free_dims`` fixes symbolic input dimensions by name in both runtimes
    (``SessionOptions.add_free_dimension_override_by_name``).
    """
    import onnxruntime as ort

    proto = load_model(model)
    options, ort_options = SessionOptions(), ort.SessionOptions()
    for name, value in (free_dims or {}).items():
        options.add_free_dimension_override_by_name(name, value)
        ort_options.add_free_dimension_override_by_name(name, value)
    session = InferenceSession(proto, options, providers=providers)
    if feeds is None:
        feeds = random_feeds(session, seed=seed)
    ours = session.run(None, feeds)
    reference = ort.InferenceSession(proto.SerializeToString(), ort_options, providers=["CPUExecutionProvider"])
    theirs = reference.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    return compare_outputs(names, ours, theirs, rtol=rtol, atol=atol)
