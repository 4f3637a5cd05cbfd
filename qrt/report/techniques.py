"""``compare_techniques``: what each quantization technique buys, output and layer by layer.

The float model is quantized once per technique with the same calibration data, and every result is
compared with float on the same eval data:

- **plain int8**: onnxruntime's defaults (``OnnxruntimeParity``: per-tensor weights, calibrated
  ranges as they are), the baseline every other column is measured against;
- **qrt default**: qrt's default rules (per-channel Conv weights, saturating activations' ranges,
  cancelling values kept float; see :mod:`qrt.quantization`);
- each technique alone on top of plain int8: **per-channel weights**, **cross-layer equalization**,
  **bias correction**, **SmoothQuant**;
- **mixed precision**: a :func:`qrt.quantization.tune` result, when one is passed (``tuned=``): the
  nodes it gave 16-bit or float.

Per layer, each int8 tensor's SQNR against the float model that technique quantized (equalization and
SmoothQuant rescale the float model's channels; their tensors are compared with the rescaled float
model, which computes the same function), matched by name as :func:`qrt.report.compare` matches them. A
technique that finds nothing to change (no Conv->Relu->Conv pair, no LayerNorm->MatMul) writes plain
int8's model again; it is listed with its note and left out of the layer columns.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..model import load_model

PLAIN = "plain int8"
_PARITY = {"OnnxruntimeParity": True}

# name -> (quantize_static keyword arguments, what it does)
TECHNIQUES = {
    PLAIN: ({"extra_options": _PARITY}, "onnxruntime's defaults: per-tensor weights, MinMax ranges"),
    "qrt default": ({}, "per-channel Conv weights, saturating activations' ranges, cancelling values float"),
    "per-channel weights": ({"per_channel": True, "extra_options": _PARITY}, "one weight scale per output channel"),
    "cross-layer equalization": ({"equalize": True, "extra_options": _PARITY},
                                 "Conv/Gemm pairs rescaled channel by channel (Nagel et al. 2019)"),
    "bias correction": ({"bias_correction": True, "extra_options": _PARITY},
                        "biases absorb the mean output error on the calibration data"),
    "SmoothQuant": ({"extra_options": {"SmoothQuant": True, **_PARITY}},
                    "activation outliers moved into the weights (Xiao et al. 2022)"),
}


@dataclass
class TechniqueRun:
    """One technique's quantized model against float."""
    name: str
    description: str
    output_sqnr_db: float                 # worst output
    layers: dict = field(default_factory=dict)   # int8 tensor -> SQNR dB
    seconds: float = 0.0                  # quantization time
    size_ratio: float = float("nan")      # quantized size over float size
    notes: list = field(default_factory=list)
    same_as_plain: bool = False           # wrote plain int8's model again: nothing to change


@dataclass
class TechniqueReport:
    model: str
    samples: int
    runs: list = field(default_factory=list)          # plain int8 first
    tensors: list = field(default_factory=list)       # [(tensor, op_type)] in graph order

    @property
    def plain(self) -> TechniqueRun:
        return self.runs[0]

    def gain(self, run: TechniqueRun, tensor: str | None = None) -> float:
        """dB over plain int8, of the worst output (``tensor`` None) or of one int8 tensor."""
        if tensor is None:
            return _difference(run.output_sqnr_db, self.plain.output_sqnr_db)
        if tensor not in run.layers or tensor not in self.plain.layers:
            return float("nan")
        return _difference(run.layers[tensor], self.plain.layers[tensor])

    def __str__(self):
        from .render import technique_text
        return technique_text(self)

    __repr__ = __str__

    def _repr_html_(self):
        from .render import technique_fragment
        return technique_fragment(self)

    def to_html(self, path):
        """Write the report as one self-contained HTML file, atomically."""
        from ..session import _write_atomically
        from .render import technique_page

        _write_atomically(os.fspath(path), technique_page(self).encode())
        return path


def _difference(a, b):
    if math.isinf(a) and math.isinf(b):
        return 0.0
    return a - b


def _float_reference(name, kwargs, model, calibration, cache):
    """The float model the technique quantized, with the names its int8 tensors carry."""
    from ..quantization.preprocess import _default_opset, preprocess
    key = "equalized" if kwargs.get("equalize") else "smoothed" if \
        (kwargs.get("extra_options") or {}).get("SmoothQuant") else "plain"
    if key not in cache:
        if key == "equalized":
            from ..quantization import equalize
            cache[key] = equalize(model)
        elif key == "smoothed":
            from ..quantization import smooth_quant
            cache[key] = smooth_quant(model, list(calibration))
        else:
            cache[key] = preprocess(model, "model", min_opset=_default_opset(model) or 1)[0]
    return cache[key]


def compare_techniques(float_model, calibration_data, eval_data=None, techniques=None, tuned=None,
                       quant_format=None) -> TechniqueReport:
    """Quantize ``float_model`` with each technique and measure it against float on ``eval_data``.

    ``calibration_data``: feeds (a list of dicts, a reader or an .npz) every quantization calibrates
    on; ``eval_data``: the feeds compared on (default: the calibration data). ``techniques``: names
    from :data:`TECHNIQUES` (default: all), plain int8 always first. ``tuned``: a
    :class:`qrt.quantization.TuneResult` shown as "mixed precision". ``quant_format``: QDQ (default)
    or QOperator.
    """
    from ..quantization import QuantFormat, quantize_static
    from ..session import InferenceSession
    from .compare import _batches, _layer_errors, _model_bytes
    from .metrics import sqnr_db

    names = list(techniques or TECHNIQUES)
    unknown = [n for n in names if n not in TECHNIQUES]
    if unknown:
        raise InvalidArgument(f"compare_techniques: unknown technique(s) {unknown}; known: {list(TECHNIQUES)}")
    names = [PLAIN] + [n for n in names if n != PLAIN]
    model = load_model(float_model)
    calibration = _batches(calibration_data)
    if not calibration:
        raise InvalidArgument("compare_techniques: the calibration data yielded no samples")
    evaluation = _batches(eval_data) if eval_data is not None else calibration
    float_session = InferenceSession(model)
    reference = [float_session.run(None, feed) for feed in evaluation]
    size_float = _model_bytes(model, float_model)
    label = os.path.basename(os.fspath(float_model)) if isinstance(float_model, (str, os.PathLike)) else \
        (model.graph.name or "model")
    report = TechniqueReport(model=label, samples=sum(next(iter(b.values())).shape[0] for b in evaluation))
    floats = {}

    def measure(name, description, quantized, seconds, notes, reference_model):
        session = InferenceSession(quantized)
        outputs = [session.run(None, feed) for feed in evaluation]
        worst = min(sqnr_db(_joined([r[i] for r in reference]), _joined([o[i] for o in outputs]))
                    for i in range(len(reference[0])))
        layers = {e.tensor: e.sqnr_db for e in _layer_errors(reference_model, quantized, evaluation)}
        return TechniqueRun(name, description, worst, layers, seconds, quantized.ByteSize() / max(size_float, 1),
                            list(notes))

    plain_bytes = None
    for name in names:
        kwargs, description = TECHNIQUES[name]
        started = time.perf_counter()
        summary = quantize_static(model, None, list(calibration),
                                  quant_format=quant_format or QuantFormat.QDQ, **kwargs)
        seconds = time.perf_counter() - started
        serialized = summary.model.SerializeToString()
        if plain_bytes is not None and serialized == plain_bytes:
            run = TechniqueRun(name, description, report.plain.output_sqnr_db, {}, seconds,
                               report.plain.size_ratio, list(summary.preprocessing), same_as_plain=True)
        else:
            run = measure(name, description, summary.model, seconds, summary.preprocessing,
                          _float_reference(name, kwargs, model, calibration, floats))
        plain_bytes = serialized if plain_bytes is None else plain_bytes
        report.runs.append(run)
    if tuned is not None:
        choices = getattr(tuned, "choices", {}) or {}
        reference_model = _float_reference("tuned", {"equalize": "equalization" in choices.get("model", "")},
                                           model, calibration, floats)
        notes = [f"{node}: {what}" for node, what in choices.items()]
        report.runs.append(measure("mixed precision", f"qrt.quantization.tune: {tuned.int8_nodes} of "
                                   f"{tuned.compute_nodes} compute nodes int8", tuned.model,
                                   getattr(tuned, "seconds", 0.0), notes, reference_model))
    position = {out: i for i, node in enumerate(floats["plain"].graph.node) for out in node.output} \
        if "plain" in floats else {}
    op_type = {out: node.op_type for model_ in floats.values() for node in model_.graph.node for out in node.output}
    seen = {t for run in report.runs for t in run.layers}
    report.tensors = sorted(((t, op_type.get(t, "?")) for t in seen), key=lambda item: position.get(item[0], 1 << 30))
    return report


def _joined(arrays):
    import numpy as np
    return np.concatenate([np.asarray(a).ravel() for a in arrays])
