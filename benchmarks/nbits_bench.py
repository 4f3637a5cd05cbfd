"""4-bit weight-only models at batch 1: qrt (MatMulNBits) vs onnxruntime on the same file vs qrt float.

    python benchmarks/nbits_bench.py [--threads N] [--repeat R] [--algorithm rtn|gptq|hqq] [--clock wall|cpu]
                                     [--accuracy-level 0|4]

Models (built like the tests' ones, tests/quantization/nbits_models.py): a Llama-style decoder stack
(hidden 2048, FFN 5632, 2 layers) run on one token (the decoding step, where reading the weights
bounds the time), the same stack on 16 tokens, and a BERT-base-shaped encoder (2 layers) on 128
tokens. For each: float and 4-bit sizes, latency of qrt float, qrt 4-bit and onnxruntime 4-bit
(same file, same thread count, median of ``repeat`` interleaved runs after warm-up), and the 4-bit output's SQNR
and minimum cosine (per output row) against float. ``--clock cpu`` times the process's CPU time instead of
the wall clock: with ``--threads 1`` on a machine shared with other work it counts only this process's
own work. ``--accuracy-level 4`` writes that level into the 4-bit models: both runtimes then quantize
activations to int8 per block.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "quantization"))


def _medians_ms(runs, repeat, clock=time.perf_counter):
    """Median latency of each callable, timed in interleaved rounds so that load from other processes
    falls on all of them alike."""
    for run in runs:
        run()
        run()
    times = [[] for _ in runs]
    for _ in range(repeat):
        for run, samples in zip(runs, times):
            start = clock()
            run()
            samples.append(clock() - start)
    return [1e3 * statistics.median(samples) for samples in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--algorithm", default="rtn", choices=["rtn", "gptq", "hqq"])
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    parser.add_argument("--accuracy-level", type=int, default=0, choices=[0, 4])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    import onnxruntime as ort
    from nbits_models import bert_encoder, decoder_stack

    import qrt
    from qrt.quantization import quantize_weight_only

    cases = [("decoder 2x2048, 1 token", decoder_stack(layers=2, hidden=2048, heads=16, ffn=5632, vocab=32000, seq=1),
              1, 1, 32000),
             ("decoder 2x2048, 16 tokens",
              decoder_stack(layers=2, hidden=2048, heads=16, ffn=5632, vocab=32000, seq=16), 1, 16, 32000),
             ("BERT-base 2 layers, 128 tokens", bert_encoder(layers=2), 1, 128, 30522)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    qrt_options = qrt.SessionOptions()
    qrt_options.intra_op_num_threads = args.threads
    rng = np.random.default_rng(0)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"threads {args.threads}, algorithm {args.algorithm}, accuracy_level {args.accuracy_level}, "
          f"median of {args.repeat}, {args.clock} clock")
    print(f"{'model':32s} {'size':>7s} {'float qrt':>10s} {'4bit qrt':>9s} {'4bit ort':>9s} {'qrt/ort':>8s} "
          f"{'4b/float':>8s} {'SQNR':>7s} {'min cos':>8s}")
    for name, model, batch, seq, vocab in cases:
        feeds = {"input_ids": rng.integers(0, vocab, (batch, seq))}
        calibration = [{"input_ids": rng.integers(0, vocab, (4, seq))} for _ in range(4)]
        quantized = quantize_weight_only(model, None, algorithm=args.algorithm, accuracy_level=args.accuracy_level,
                                         reader=calibration if args.algorithm == "gptq" else None).model
        float_qrt = qrt.InferenceSession(model, qrt_options)
        q_qrt = qrt.InferenceSession(quantized, qrt_options)
        q_ort = ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ref = float_qrt.run(None, feeds)[0]
        got = q_qrt.run(None, feeds)[0]
        flat_ref, flat_got = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
        cos = np.sum(flat_ref * flat_got, 1) / np.linalg.norm(flat_ref, axis=1) / np.linalg.norm(flat_got, axis=1)
        sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((got - ref).astype(np.float64) ** 2))
        t_float, t_qrt, t_ort = _medians_ms([lambda: float_qrt.run(None, feeds), lambda: q_qrt.run(None, feeds),
                                             lambda: q_ort.run(None, feeds)], args.repeat, clock)
        print(f"{name:32s} {quantized.ByteSize() / model.ByteSize():6.3f}x {t_float:8.2f}ms {t_qrt:7.2f}ms "
              f"{t_ort:7.2f}ms {t_qrt / t_ort:7.2f}x {t_qrt / t_float:7.2f}x {sqnr:6.1f}dB {cos.min():8.4f}",
              flush=True)


if __name__ == "__main__":
    main()
