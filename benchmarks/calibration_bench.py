"""What calibration costs next to plain float inference of the same batches, on qrt's session.

    python benchmarks/calibration_bench.py [--batches 32] [--batch-size 8] [--methods MinMax Entropy]

Builds a small CNN (Conv/Relu x3, Flatten, Gemm), runs the batches once through a plain
``qrt.InferenceSession`` and once through ``calibration.collect_ranges`` per method, both warm
(kernels compiled, one untimed round first), and prints each method's time and its ratio to plain
inference. The goal is a ratio of at most 2: observing every activation should cost no more than
running the model again.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qrt
from calibration import CalibrationMethod, collect_ranges


def build_cnn(seed=0, channels=(16, 32, 32), size=32):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    previous, in_channels, spatial = "input", 3, size
    for i, (out_channels, stride) in enumerate(zip(channels, (1, 2, 1))):
        w = (rng.standard_normal((out_channels, in_channels, 3, 3)) / np.sqrt(9 * in_channels)).astype(np.float32)
        b = (rng.standard_normal(out_channels) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"conv{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        previous, in_channels, spatial = f"relu{i}", out_channels, spatial // stride
    features = in_channels * spatial * spatial
    fc = (rng.standard_normal((10, features)) / np.sqrt(features)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("Flatten", [previous], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "calibration_bench_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=[m.name for m in CalibrationMethod])
    args = parser.parse_args(argv)

    model = build_cnn()
    rng = np.random.default_rng(1)
    batches = [{"input": rng.standard_normal((args.batch_size, 3, 32, 32)).astype(np.float32)}
               for _ in range(args.batches)]

    session = qrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def plain():
        for feed in batches:
            session.run(None, feed)

    plain()   # warm: kernels compiled or loaded from Numba's cache
    plain_best, plain_median = best_of(args.repeats, plain)
    print(f"{args.batches} batches of {args.batch_size}: plain float inference {plain_best * 1e3:.1f} ms "
          f"(median {plain_median * 1e3:.1f} ms)")
    print(f"{'method':<13}{'calibration ms':>15}{'ratio':>8}   (calibration includes building its session)")
    worst = 0.0
    for name in args.methods:
        method = CalibrationMethod.parse(name)

        def calibrate():
            collect_ranges(model, batches, method=method, progress=False)

        calibrate()
        best, _ = best_of(args.repeats, calibrate)
        ratio = best / plain_best
        worst = max(worst, ratio)
        print(f"{method.name:<13}{best * 1e3:>15.1f}{ratio:>8.2f}")
    print(f"worst ratio {worst:.2f} ({'within' if worst <= 2.0 else 'ABOVE'} the 2x goal)")
    return 0 if worst <= 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
