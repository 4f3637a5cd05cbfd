"""Conv nets, qrt vs onnxruntime at 1 and 2 threads, side by side in one process (issue 12, conv slice).

Prints per model the median latency of qrt and onnxruntime at each thread count, the ratio qrt/ort, and qrt's
own 1->2 thread speed-up. Run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (users' OpenBLAS).
Usage: python benchmarks/bench_conv.py [--runs N] [--only NAME...]
"""
import argparse
import os

import numpy as np
import onnx
import onnxruntime as ort

import qrt
from qrt.bench import time_runs
from qrt.feeds import random_feeds

ZOO = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
NAMES = ["digits_cnn", "resnet50", "squeezenet", "inception_v1", "shufflenet", "densenet121", "vgg19"]


def load(name):
    if name == "digits_cnn":
        from qrt.demo import MODEL_PATH
        return onnx.load(MODEL_PATH)
    return onnx.load(os.path.join(ZOO, f"light_{name}.onnx"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    print(f"{'model':<14} {'qrt1':>8} {'ort1':>8} {'r1':>5} {'qrt2':>8} {'ort2':>8} {'r2':>5} {'qrt 1->2':>8}")
    for name in args.only or NAMES:
        model = load(name)
        row = {}
        for threads in (1, 2):
            options = qrt.SessionOptions()
            options.intra_op_num_threads = threads
            session = qrt.InferenceSession(model, options)
            feeds = random_feeds(session)
            ort_options = ort.SessionOptions()
            ort_options.intra_op_num_threads = threads
            reference = ort.InferenceSession(model.SerializeToString(), ort_options,
                                             providers=["CPUExecutionProvider"])
            got = session.run(None, feeds)[0]
            want = reference.run(None, feeds)[0]
            assert np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max()), name
            # Interleave qrt and ort repeats so machine noise hits both alike.
            q, o = [], []
            for _ in range(2):
                q.append(time_runs(lambda: session.run(None, feeds), args.runs // 2, warmup=2))
                o.append(time_runs(lambda: reference.run(None, feeds), args.runs // 2, warmup=2))
            row[threads] = (min(q), min(o))
        (q1, o1), (q2, o2) = row[1], row[2]
        print(f"{name:<14} {q1:>8.2f} {o1:>8.2f} {q1 / o1:>5.2f} {q2:>8.2f} {o2:>8.2f} {q2 / o2:>5.2f} "
              f"{q1 / q2:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
