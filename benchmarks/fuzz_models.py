"""Mutated models through qrt and onnxruntime: does every one end in a result or a clean error?

Each mutation of a seed model (byte flips, truncation, garbage runs, and structured edits of
dims, dtypes, attribute values, node input names and opset numbers) is loaded and run on random
feeds in a worker process. Outcomes: ``ran``; ``error`` (qrt: a QrtError; onnxruntime: any Python
exception; also a model whose declared inputs are too large to build feeds for); ``other`` (qrt only: an exception that is not a QrtError); ``crash`` (the worker died
without a word) and ``hang`` (no answer within the timeout). A worker that crashes or hangs is
replaced and the rest of the mutations go on. ``other``, ``crash`` and ``hang`` are qrt's bugs.

Usage: python benchmarks/fuzz_models.py --count 1000 [--engine qrt ort] [--timeout 60] [--seed 0]
"""
from __future__ import annotations

import argparse
import collections
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading

import onnx
from onnx import TensorProto

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTCOMES = ("ran", "error", "other", "crash", "hang")


def seed_models() -> dict:
    """Three shipped models: the demo CNN, an encoder block and a bidirectional LSTM (serialized)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from model_builders import lstm_model, transformer_block

    import qrt
    digits = os.path.join(os.path.dirname(qrt.__file__), "data", "digits_cnn.onnx")
    with open(digits, "rb") as fh:
        cnn = fh.read()
    return {"digits_cnn": cnn, "encoder": transformer_block().SerializeToString(),
            "lstm": lstm_model().SerializeToString()}


# --------------------------------------------------------------------------- mutations

def _byte_flips(data, rng):
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncation(data, rng):
    return data[:rng.randrange(len(data))]


def _garbage_run(data, rng):
    start, length = rng.randrange(len(data)), rng.randint(1, 64)
    return data[:start] + bytes(rng.randrange(256) for _ in range(length)) + data[start + length:]


def _structured(data, rng):
    model = onnx.load_from_string(data)
    graph = model.graph
    kind = rng.choice(["dims", "dtypes", "attributes", "input_names", "opsets"])
    if kind == "dims":
        shaped = [v for v in list(graph.input) + list(graph.output) if v.type.tensor_type.shape.dim]
        inits = [t for t in graph.initializer if t.dims]
        if inits and (not shaped or rng.random() < 0.5):
            t = rng.choice(inits)
            t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2, 3, 1 << 31, -1])
        else:
            dims = rng.choice(shaped).type.tensor_type.shape.dim
            dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 1, 3, 1 << 40])
    elif kind == "dtypes":
        types = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.INT64,
                 TensorProto.BOOL, TensorProto.STRING, 0, 99]
        if graph.initializer and rng.random() < 0.5:
            rng.choice(graph.initializer).data_type = rng.choice(types)
        else:
            rng.choice(list(graph.input) + list(graph.output)).type.tensor_type.elem_type = rng.choice(types)
    elif kind == "attributes":
        attrs = [a for n in graph.node for a in n.attribute]
        if attrs:
            a = rng.choice(attrs)
            if a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([-1, 0, 2, 7, 1 << 40])
            elif a.type == onnx.AttributeProto.INTS and a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice([-3, 0, 5, 1 << 40])
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0])
            else:
                a.name = a.name + "_x"
    elif kind == "input_names":
        node = rng.choice(graph.node)
        names = [o for n in graph.node for o in n.output] + [t.name for t in graph.initializer] + ["", "nope"]
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(names)
    else:
        opset = rng.choice(model.opset_import)
        opset.version = rng.choice([1, 6, 9, 11, 13, 17, 21, 22, 99])
    return model.SerializeToString()


MUTATORS = [_byte_flips, _truncation, _garbage_run, _structured, _structured]


def mutations(models: dict, count: int, seed: int = 0):
    """``count`` (label, bytes) mutations spread over ``models``, the same for every engine and run."""
    rng = random.Random(seed)
    names = sorted(models)
    for index in range(count):
        name = names[index % len(names)]
        mutator = rng.choice(MUTATORS)
        yield f"{index}:{name}:{mutator.__name__.strip('_')}", mutator(models[name], rng)


# --------------------------------------------------------------------------- worker

def _worker(engine):
    """Read model paths from stdin, one a line; print one outcome line per path."""
    import numpy as np  # noqa: F401  (import before the first model, so an import failure is not blamed on it)

    import qrt
    from qrt.feeds import random_feeds
    if engine == "ort":
        import onnxruntime as ort
    print("@@ ready", flush=True)    # answers are marked: libraries may print to stdout too
    for line in sys.stdin:
        path = line.strip()
        try:
            if engine == "qrt":
                session = qrt.InferenceSession(path)
            else:
                session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            try:
                feeds = random_feeds(session, default_dim=2)
            except MemoryError:     # declared input dims too large to feed: the model, not the engine
                print("@@ error", flush=True)
                continue
            session.run(None, feeds)
            outcome = "ran"
        except qrt.QrtError:
            outcome = "error"
        except Exception as exc:    # the tally's subject: which exceptions escape
            outcome = "error" if engine == "ort" else f"other {type(exc).__name__}: {str(exc)[:200]!r}"
        print("@@", outcome, flush=True)


class _Worker:
    def __init__(self, engine):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", engine],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            if line.startswith("@@ "):
                self.lines.put(line[3:].strip())
        self.lines.put(None)

    def ask(self, path, timeout):
        try:
            self.process.stdin.write(path + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return "crash"
        return self.answer(timeout)

    def answer(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return "hang"
        return "crash" if line is None else line

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def run_mutations(cases, engine: str, timeout: float = 60.0) -> list:
    """(label, outcome) for each (label, bytes) case, run by ``engine`` ('qrt' or 'ort') in worker processes."""
    results, worker = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for label, data in cases:
            if worker is None:
                worker = _Worker(engine)
                ready = worker.answer(120.0)
                if ready != "ready":
                    raise RuntimeError(f"{engine} worker did not start: {ready}")
            path = os.path.join(scratch, "model.onnx")
            with open(path, "wb") as fh:
                fh.write(data)
            outcome = worker.ask(path, timeout)
            if outcome in ("crash", "hang"):
                worker.close()
                worker = None
            results.append((label, outcome))
    if worker is not None:
        worker.close()
    return results


def tally(results) -> collections.Counter:
    return collections.Counter(o.split()[0] for _, o in results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--engine", nargs="+", default=["qrt", "ort"], choices=["qrt", "ort"])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutated model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    cases = list(mutations(seed_models(), args.count, args.seed))
    print(f"{len(cases)} mutations of digits_cnn, encoder, lstm (seed {args.seed})")
    print(f"{'engine':8}" + "".join(f"{o:>8}" for o in OUTCOMES))
    for engine in args.engine:
        results = run_mutations(cases, engine, args.timeout)
        counts = tally(results)
        print(f"{engine:8}" + "".join(f"{counts[o]:>8}" for o in OUTCOMES), flush=True)
        for label, outcome in results:
            if engine == "qrt" and outcome.split()[0] in ("other", "crash", "hang"):
                print(f"  {label}: {outcome}")


if __name__ == "__main__":
    main()
