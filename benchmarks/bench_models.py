"""qrt vs onnxruntime on the repository's models and onnx's model-zoo graphs: same process, same inputs,
same thread count. Prints median latency, the ratio qrt/onnxruntime and cold start (session creation +
first run). Usage: python benchmarks/bench_models.py [--runs N] [--threads T] [--only NAME...]
"""
import argparse
import glob
import os
import sys

import onnx

sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "tests")]  # root: see bench_float

from qrt.bench import benchmark  # noqa: E402


def models():
    from model_builders import classic_cnn, mlp, transformer_block
    from qrt.demo import MODEL_PATH
    yield "digits_cnn", onnx.load(MODEL_PATH), None
    yield "classic_cnn", classic_cnn(), None
    yield "mlp", mlp(), None
    yield "transformer_block", transformer_block(), None
    zoo = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")
    for path in sorted(glob.glob(zoo)):
        yield os.path.basename(path)[len("light_"):-len(".onnx")], onnx.load(path), None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    print(f"{'model':<20} {'qrt ms':>10} {'ort ms':>10} {'qrt/ort':>8} {'qrt cold s':>11} {'ort cold s':>11}")
    for name, model, feeds in models():
        if args.only and name not in args.only:
            continue
        r = benchmark(model, feeds, runs=args.runs, threads=args.threads, name=name)
        print(f"{name:<20} {r.qrt_median_ms:>10.3f} {r.ort_median_ms:>10.3f} {r.ratio:>8.2f} "
              f"{r.qrt_cold_s:>11.3f} {r.ort_cold_s:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
