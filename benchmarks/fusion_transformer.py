"""qrt vs onnxruntime on transformer encoders, with and without qrt's plan-time fusions.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benchmarks/fusion_transformer.py [layers]
Prints medians of 20 runs (ms) and qrt/onnxruntime ratios at 1 and 2 threads.
"""
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, "tests")
import qrt  # noqa: E402
from model_builders import bert_encoder, transformer_block  # noqa: E402


def median_ms(fn, runs=20):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main():
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 1, 1, 128), np.float32)
    cases = [("transformer_block b2 s64", transformer_block(),
              {"x": rng.standard_normal((2, 64, 64)).astype(np.float32)}),
             (f"bert-base {layers} layers s128", bert_encoder(layers=layers, d_model=768, heads=12, d_ff=3072),
              {"x": rng.standard_normal((1, 128, 768)).astype(np.float32), "mask": mask})]
    for threads in (1, 2):
        for name, model, feeds in cases:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            o = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            row = [median_ms(lambda: o.run(None, feeds))]
            for level in (qrt.GraphOptimizationLevel.ORT_ENABLE_BASIC, qrt.GraphOptimizationLevel.ORT_ENABLE_ALL):
                qo = qrt.SessionOptions()
                qo.intra_op_num_threads = threads
                qo.graph_optimization_level = level
                s = qrt.InferenceSession(model, qo)
                row.append(median_ms(lambda: s.run(None, feeds)))
            print(f"{threads}t {name:32s} ort {row[0]:8.2f} ms | qrt unfused {row[1]:8.2f} ({row[1] / row[0]:.2f}x)"
                  f" | qrt fused {row[2]:8.2f} ({row[2] / row[0]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
