"""qrt vs onnxruntime on transformer encoders and a SiLU conv net, with and without qrt's plan-time fusions.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/fusion_transformer.py [layers]
Prints medians of 20 runs (ms) and qrt/onnxruntime ratios at 1 and 2 threads.
"""
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, "tests")
import qrt  # noqa: E402
from qrt.bench import time_runs  # noqa: E402
from model_builders import bert_encoder, transformer_block  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def silu_convnet(channels=(16, 32, 64, 64), size=96, seed=5):
    """Conv (stride 2 for the first, 3x3) -> SiLU as Sigmoid + Mul, YOLO-style; input (1, 3, size, size)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, c_in = [], [], "x", 3
    for i, c in enumerate(channels):
        inits += [numpy_helper.from_array((rng.standard_normal((c, c_in, 3, 3)) * (2 / (9 * c_in)) ** 0.5)
                                          .astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                   strides=[2, 2] if i == 0 else [1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"y{i}"], name=f"mul{i}")]
        prev, c_in = f"y{i}", c
    nodes[-1].output[0] = "y"
    half = size // 2
    graph = helper.make_graph(nodes, "silu_convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c_in, half, half])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 1, 1, 128), np.float32)
    cases = [("transformer_block b2 s64", transformer_block(),
              {"x": rng.standard_normal((2, 64, 64)).astype(np.float32)}),
             (f"bert-base {layers} layers s128", bert_encoder(layers=layers, d_model=768, heads=12, d_ff=3072),
              {"x": rng.standard_normal((1, 128, 768)).astype(np.float32), "mask": mask}),
             (f"bert-base {layers}L s128 opset13 LN split",
              bert_encoder(opset=13, layers=layers, d_model=768, heads=12, d_ff=3072, decomposed_layer_norm=True),
              {"x": rng.standard_normal((1, 128, 768)).astype(np.float32), "mask": mask}),
             ("silu convnet 96x96", silu_convnet(), {"x": rng.standard_normal((1, 3, 96, 96)).astype(np.float32)})]
    for threads in (1, 2):
        for name, model, feeds in cases:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            o = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            row = [time_runs(lambda: o.run(None, feeds), runs=20, warmup=1)]
            for level in (qrt.GraphOptimizationLevel.ORT_ENABLE_BASIC, qrt.GraphOptimizationLevel.ORT_ENABLE_ALL):
                qo = qrt.SessionOptions()
                qo.intra_op_num_threads = threads
                qo.graph_optimization_level = level
                s = qrt.InferenceSession(model, qo)
                row.append(time_runs(lambda: s.run(None, feeds), runs=20, warmup=1))
            print(f"{threads}t {name:32s} ort {row[0]:8.2f} ms | qrt unfused {row[1]:8.2f} ({row[1] / row[0]:.2f}x)"
                  f" | qrt fused {row[2]:8.2f} ({row[2] / row[0]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
