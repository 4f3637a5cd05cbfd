"""Transcendental element-wise ops, qrt against onnxruntime, one process, same inputs and threads.

One single-op (or small-chain) float32 model per case on two tensor sizes: a transformer activation
[1, 128, 3072] and a conv activation [8, 64, 56, 56]. Prints median latencies and the ratio
qrt/onnxruntime at each thread count; also the max relative error of qrt against onnxruntime.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=$PWD python benchmarks/bench_vmath.py [--only Sigmoid]
"""
import argparse
import math
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import qrt
from qrt.bench import time_runs

SHAPES = {"bert": [1, 128, 3072], "conv": [8, 64, 56, 56]}


def _gelu_erf_nodes():
    return [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["y"])]


CASES = {
    "Sigmoid": lambda: [helper.make_node("Sigmoid", ["x"], ["y"])],
    "Tanh": lambda: [helper.make_node("Tanh", ["x"], ["y"])],
    "Erf": lambda: [helper.make_node("Erf", ["x"], ["y"])],
    "Exp": lambda: [helper.make_node("Exp", ["x"], ["y"])],
    "Softmax": lambda: [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
    "LogSoftmax": lambda: [helper.make_node("LogSoftmax", ["x"], ["y"], axis=-1)],
    "SiLU": lambda: [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
    "GeluErf": _gelu_erf_nodes,
    "Gelu20": lambda: [helper.make_node("Gelu", ["x"], ["y"])],
    "GeluTanh20": lambda: [helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")],
}
CONSTANTS = [helper.make_tensor("sqrt2", TensorProto.FLOAT, [], [math.sqrt(2.0)]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])]


def model(case, shape):
    nodes = CASES[case]()
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              initializer=[c for c in CONSTANTS if c.name in used])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=list(CASES))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'case':<12} {'shape':<6} {'thr':>3} {'qrt ms':>8} {'ort ms':>8} {'ratio':>6} {'rel err':>11}")
    for case in args.only:
        for shape_name in args.shapes:
            shape = SHAPES[shape_name]
            x = (rng.standard_normal(shape) * 3).astype(np.float32)
            data = model(case, shape)
            for threads in args.threads:
                options = qrt.SessionOptions()
                options.intra_op_num_threads = threads
                session = qrt.InferenceSession(data, options)
                ort_options = ort.SessionOptions()
                ort_options.intra_op_num_threads = threads
                reference = ort.InferenceSession(data, ort_options, providers=["CPUExecutionProvider"])
                ours, theirs = session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0]
                # Relative where onnxruntime's value is not tiny: its own approximations (a Sigmoid
                # clamped at |x| = 18, Gelu's tails) differ from the exact value there.
                scale = np.maximum(np.abs(theirs), np.float32(1e-6))
                err = float(np.max(np.abs(ours.astype(np.float64) - theirs) / scale))
                qrt_ms = time_runs(lambda: session.run(None, {"x": x}), args.runs, 3)
                ort_ms = time_runs(lambda: reference.run(None, {"x": x}), args.runs, 3)
                print(f"{case:<12} {shape_name:<6} {threads:>3} {qrt_ms:>8.3f} {ort_ms:>8.3f} "
                      f"{qrt_ms / ort_ms:>6.2f} {err:>11.2e}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
