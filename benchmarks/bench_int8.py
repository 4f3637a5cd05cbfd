"""int8 latency of qrt against onnxruntime on the float benchmark's model set, same model files.

For every conv net of benchmarks/bench_float.py's set (a model with a Conv node): the float model and
two models quantized by qrt's quantize_static (QOperator and QDQ; per-channel int8 weights, uint8
activations, MinMax calibration on a few random feeds), each timed in qrt and in onnxruntime on the
same file and the same feed, batch 1, at 1 and 2 threads. For the BERT-shaped encoder
(transformer_block, d_model 768, sequence 128) and an LSTM, the model quantize_dynamic makes. Columns
are medians in ms and the ratios the issue asks about; the geometric means over the conv nets close
the table. On a shared machine the ratios move by tens of percent between runs: repeat it.
``--profile MODEL`` prints a per-op profile of one model (qrt, 2 threads) instead.

Run it without this environment's OpenBLAS throttle, as users run:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_int8.py [--only squeezenet lstm]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_int8.py --profile squeezenet --format qdq
"""
import argparse
import collections
import json
import math
import os
import statistics
import sys
import tempfile

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_float as bf  # noqa: E402  (also puts tests/ on sys.path)
import qrt  # noqa: E402
from qrt.bench import run_times  # noqa: E402
from qrt.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static  # noqa: E402

DYNAMIC_MODELS = ("bert_base_block", "lstm")
CALIBRATION_FEEDS = 3
LSTM_INPUT, LSTM_HIDDEN, LSTM_STEPS = 64, 128, 32


def lstm_model():
    """A bidirectional LSTM (input 64, hidden 128), run on 32 steps: a speech-sized recurrent model."""
    from model_builders import lstm_model as build
    return build(input_size=LSTM_INPUT, hidden=LSTM_HIDDEN)


def int8_model_set():
    """(name, loader, kind) with kind "static" for conv nets and "dynamic" for the encoder and LSTM."""
    for name, load in bf.model_set():
        if name in DYNAMIC_MODELS:
            yield name, load, "dynamic"
        elif name not in ("mlp", "transformer_block"):
            yield name, load, "static"
    yield "lstm", lstm_model, "dynamic"


class _Reader:
    def __init__(self, feeds):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def _feeds(model, model_bytes):
    session = bf.qrt_session(model_bytes, 1)
    if any(i.name == "seq_lens" for i in model.graph.input):   # the LSTM: whole sequences, batch 1
        return {"x": np.random.default_rng(0).standard_normal((LSTM_STEPS, 1, LSTM_INPUT)).astype(np.float32),
                "seq_lens": np.array([LSTM_STEPS], np.int32)}
    return bf.make_feeds(session, model, 1)


def calibration_feeds(feeds, count=CALIBRATION_FEEDS):
    """Variations of the timing feed (float inputs rescaled and jittered; others as they are)."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        feed = {}
        for name, value in feeds.items():
            if value.dtype.kind == "f":
                jitter = rng.standard_normal(value.shape) * float(np.std(value) or 1.0) * 0.1
                value = (value * rng.uniform(0.7, 1.3) + jitter).astype(value.dtype)
            feed[name] = value
        out.append(feed)
    return out


def quantized_models(model, feeds, kind, directory):
    """{label: path} of the int8 models: "qop" and "qdq" (static) or "dyn" (dynamic)."""
    paths = {}
    if kind == "dynamic":
        paths["dyn"] = os.path.join(directory, "dynamic.onnx")
        quantize_dynamic(model, paths["dyn"], weight_type=QuantType.QInt8)
        return paths
    for label, fmt in (("qop", QuantFormat.QOperator), ("qdq", QuantFormat.QDQ)):
        paths[label] = os.path.join(directory, f"{label}.onnx")
        quantize_static(model, paths[label], _Reader(calibration_feeds(feeds)), quant_format=fmt, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return paths


ROUNDS = 3


def _times(qrt_session, ort_session, feeds, runs):
    """Medians (ms) of qrt and onnxruntime, timed in ``ROUNDS`` alternating blocks (one engine's pool
    at a time, as in bench_float) so that load from other processes drifting in and out of the
    machine weighs on both engines alike."""
    qrt_times, ort_times = [], []
    per_round = max(1, -(-runs // ROUNDS))
    for _ in range(ROUNDS):
        qrt_times += run_times(lambda: qrt_session.run(None, feeds), per_round, warmup=2)
        ort_times += run_times(lambda: ort_session.run(None, feeds), per_round, warmup=2)
    return statistics.median(qrt_times) * 1e3, statistics.median(ort_times) * 1e3


def measure(model, kind, threads_list, runs):
    """{threads: {label: (qrt ms, onnxruntime ms)}} for "float" and each quantized model."""
    model_bytes = model.SerializeToString()
    feeds = _feeds(model, model_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"float": model_bytes}
        for label, path in quantized_models(model, feeds, kind, tmp).items():
            with open(path, "rb") as f:
                models[label] = f.read()
    return {threads: {label: _times(bf.qrt_session(data, threads), bf.ort_session(data, threads), feeds, runs)
                      for label, data in models.items()}
            for threads in threads_list}


def _geomean(values):
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _load(load):
    source = load()
    if source is None:
        return None
    return source if isinstance(source, onnx.ModelProto) else onnx.load(source)


def benchmark(only, threads_list, runs, out=sys.stdout):
    print(f"{'model':<18} {'int8':<4} {'thr':>3} {'qrt F':>8} {'ort F':>8} {'qrt Q':>8} {'ort Q':>8} "
          f"{'qrtQ/ortQ':>9} {'qrtQ/qrtF':>9} {'ortQ/ortF':>9} {'qrtF/ortF':>9} {'QDQ qrt/ort':>11} "
          f"{'qrt QDQ/QOP':>11}", file=out, flush=True)
    conv = collections.defaultdict(lambda: collections.defaultdict(list))
    for name, load, kind in int8_model_set():
        if only and name not in only:
            continue
        model = _load(load)
        if model is None:
            print(f"{name:<18} skipped: not available", file=out, flush=True)
            continue
        if kind == "static" and not any(node.op_type == "Conv" for node in model.graph.node):
            continue
        try:
            by_threads = measure(model, kind, threads_list, runs)
        except Exception as exc:     # a model qrt cannot quantize or run is reported, not fatal
            print(f"{name:<18} failed: {type(exc).__name__}: {str(exc)[:200]}", file=out, flush=True)
            continue
        for threads, r in by_threads.items():
            (qf, of) = r["float"]
            (qq, oq) = r["dyn"] if kind == "dynamic" else r["qop"]
            qdq = ""
            if kind == "static":
                qd, od = r["qdq"]
                qdq = f"{qd / od:>11.2f} {qd / qq:>11.2f}"
                for key, value in (("qrtQ/ortQ", qq / oq), ("qrtQ/qrtF", qq / qf), ("ortQ/ortF", oq / of),
                                   ("QDQ qrt/ort", qd / od), ("qrt QDQ/QOP", qd / qq)):
                    conv[threads][key].append(value)
            print(f"{name:<18} {'dyn' if kind == 'dynamic' else 'qop':<4} {threads:>3} {qf:>8.3f} {of:>8.3f} "
                  f"{qq:>8.3f} {oq:>8.3f} {qq / oq:>9.2f} {qq / qf:>9.2f} {oq / of:>9.2f} {qf / of:>9.2f} {qdq}",
                  file=out, flush=True)
    for threads, columns in sorted(conv.items()):
        summary = ", ".join(f"{key} {_geomean(values):.2f} (worst {max(values):.2f})"
                            for key, values in columns.items())
        print(f"geometric mean over {len(columns['qrtQ/ortQ'])} conv nets, {threads} thread(s): {summary}", file=out)


def profile(name, fmt, threads, runs, out=sys.stdout):
    """Per-op-type time of one model in qrt (after two warm-up runs), most expensive first."""
    found = [(load, kind) for n, load, kind in int8_model_set() if n == name]
    if not found:
        raise SystemExit(f"unknown model {name!r}")
    load, kind = found[0]
    model = _load(load)
    if model is None:
        raise SystemExit(f"{name} is not available")
    model_bytes = model.SerializeToString()
    feeds = _feeds(model, model_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "float":
            data = model_bytes
        else:
            paths = quantized_models(model, feeds, kind, tmp)
            label = "dyn" if kind == "dynamic" else fmt
            with open(paths[label], "rb") as f:
                data = f.read()
        options = qrt.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = qrt.InferenceSession(data, options)
        warmup = 2
        for _ in range(warmup + runs):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = [e for e in json.load(f) if e.get("cat") == "Node"]
    per_run = len(events) // (warmup + runs)
    total, count = collections.Counter(), collections.Counter()
    for event in events[warmup * per_run:]:
        op = event.get("args", {}).get("op_name", event["name"])
        total[op] += event["dur"]
        count[op] += 1
    whole = sum(total.values()) or 1
    print(f"{name} ({fmt if fmt == 'float' or kind == 'static' else 'dynamic'}), qrt, {threads} thread(s), "
          f"{runs} runs: {whole / runs / 1e3:.2f} ms per run in nodes", file=out)
    for op, duration in total.most_common():
        print(f"  {op:<28} {duration / runs / 1e3:9.3f} ms {100 * duration / whole:5.1f}%  nodes {count[op] // runs}",
              file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", help="model names to run (see the table)")
    parser.add_argument("--profile", metavar="MODEL", help="print a per-op profile of MODEL instead of the table")
    parser.add_argument("--format", choices=("qop", "qdq", "float"), default="qop",
                        help="which form of MODEL --profile runs (dynamic models ignore qop/qdq)")
    args = parser.parse_args(argv)
    for line in bf.environment():
        print(line)
    if args.profile:
        profile(args.profile, args.format, max(args.threads), args.runs)
    else:
        benchmark(args.only, args.threads, args.runs)


if __name__ == "__main__":
    main()
