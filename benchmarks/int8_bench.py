"""int8 vs float, qrt vs onnxruntime, on a Conv-heavy CNN and an MLP, in one process.

    python benchmarks/int8_bench.py [--runs 30] [--batch 1] [--threads 2]
    python benchmarks/int8_bench.py --asm          # instructions in the compiled GEMM, per ISA
    python benchmarks/int8_bench.py --agreement    # qrt vs onnxruntime on quantized CNN/MLP models

Models are built with onnx.helper and quantized by onnxruntime.quantization.quantize_static (u8
activations, s8 per-channel weights): QOperator (QLinearConv/QLinearMatMul) and QDQ (run by qrt
after ``qrt.fusion.fuse_qdq_groups``, by onnxruntime through its QDQ transformers). Each engine is
timed in its own block (warm-up, then ``--runs`` runs; ratios use the fastest), so the two thread
pools never interleave; onnxruntime's spinning is turned off so that it does not steal the cores from Numba.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from qrt.bench import run_times  # noqa: E402


def cnn(batch):
    """A ResNet-like stack at 56x56 -> 28x28 -> 14x14: 3x3 and 1x1 convs, ReLU, global pool, FC."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    prev, channels = "input", 3
    layers = [(32, 3, 2), (64, 3, 1), (64, 3, 1), (64, 1, 1), (128, 3, 2), (128, 3, 1), (128, 1, 1),
              (256, 3, 2), (256, 3, 1), (256, 1, 1)]
    for i, (out_c, k, stride) in enumerate(layers):
        w = (rng.standard_normal((out_c, channels, k, k)) * np.sqrt(2.0 / (channels * k * k))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(out_c) * 0.05).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[k // 2] * 4, strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev, channels = f"r{i}", out_c
    inits += [numpy_helper.from_array((rng.standard_normal((10, channels)) * 0.05).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [batch, 3, 112, 112])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (batch, 3, 112, 112)


def mlp(batch):
    rng = np.random.default_rng(1)
    sizes = [1024, 2048, 2048, 1024, 10]
    inits, nodes, prev = [], [], "input"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(n_out) * 0.05).astype(np.float32), f"b{i}")]
        last = i == len(sizes) - 2
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["output" if last else f"a{i}"], name=f"add{i}")]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [batch, sizes[0]])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (batch, sizes[0])


class _Reader:
    def __init__(self, shape):
        rng = np.random.default_rng(5)
        self._it = iter([{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self._it, None)


def quantize(model, shape, fmt):
    from onnxruntime.quantization import QuantType, quantize_static
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, _Reader(shape), quant_format=fmt, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
        return onnx.load(dst)


def time_runs(fn, runs):
    """(fastest, median) wall time in ms. The fastest run is the one least disturbed by other
    processes on a shared machine; the median is shown beside it."""
    times = run_times(fn, runs, warmup=3)
    return min(times) * 1e3, statistics.median(times) * 1e3


_ASM_SCRIPT = r"""
import re, sys
import numpy as np
from qrt.kernels.cpu import qgemm
isas = sys.argv[1:]
for isa in isas:
    b = np.ones((64, 64), np.int8)
    packed = qgemm.pack_weights([b], np.zeros((1, 64)), isa=isa)
    out = np.empty((16, 64), np.uint8)
    qgemm.matmul(np.ones((16, 64), np.uint8), 0, np.zeros(16, np.int32), packed,
                 qgemm.Epilogue(1, 1, 64, mult=np.full(64, 0.01)), out)
    tag = qgemm.tag_for(isa).dtype
    sig = next(s for s in qgemm.qgemm.signatures if str(s[0].dtype) == tag.name)
    asm = qgemm.qgemm.inspect_asm(sig)
    counts = {ins: len(re.findall(r"\b" + ins + r"\b", asm)) for ins in
              ("vpdpbusd", "vpdpwssd", "vpmaddwd", "vpmaddubsw", "vpmulld", "vpmovzxbw", "vpmovsxbw", "vpbroadcastd",
               "vpbroadcastq")}
    regs = {r: len(re.findall(r"%" + r + r"\d+", asm)) for r in ("zmm", "ymm", "xmm")}
    print(f"  {isa:11s} " + " ".join(f"{k}={v}" for k, v in counts.items() if v) + "  registers: "
          + " ".join(f"{k}={v}" for k, v in regs.items()))
"""


def check_asm():
    """Compiles the GEMM driver for every ISA this host runs, in a fresh cache (cached code cannot be
    inspected), and counts the instructions that show which micro-kernel LLVM emitted."""
    import subprocess
    from qrt.kernels.cpu import qgemm
    isas = {"avx512vnni": ["avx512vnni", "avx2", "generic"], "avx2": ["avx2", "generic"]}.get(qgemm.ISA, ["generic"])
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        print("qrt.kernels.cpu.qgemm.qgemm, instruction counts in the compiled driver:")
        root = os.path.join(os.path.dirname(__file__), "..")
        subprocess.run([sys.executable, "-c", _ASM_SCRIPT, *isas], env=env, check=True, cwd=root)
    if "avx2" in isas:
        # LLVM fuses vpmaddwd + vpaddd into vpdpwssd on a VNNI host; compiled for Zen 1 (AVX2 only,
        # the CI machines) the same IR shows the plain AVX2 instructions.
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, NUMBA_CPU_NAME="znver1",
                       NUMBA_CPU_FEATURES="+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+avx,+avx2,+fma,+f16c,+bmi,"
                                          "+bmi2,+popcnt,+lzcnt,+movbe,+cx16,-avx512f,-avx512bw,-avx512vnni,-avxvnni")
            print("the avx2 path compiled for znver1:")
            subprocess.run([sys.executable, "-c", _ASM_SCRIPT, "avx2"], env=env, check=True, cwd=root)


def agreement():
    """qrt vs onnxruntime on tests/int8's quantized CNN and MLP: the table of the report."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "int8"))
    from int8_helpers import run_ort, run_qrt
    from quantized_models import eval_input, float_model, ort_quantized, output_step, qrt_quantized

    from qrt.fusion import fuse_qdq_groups
    print(f"{'model':5s} {'quantizer':5s} {'format':9s} {'act':6s} {'weights':11s} {'qrt-ort':>8s} "
          f"{'differ':>7s} {'qrt-sim':>8s} {'err qrt':>8s} {'err ort':>8s}   (steps of the output scale)")
    for name in ("cnn", "mlp"):
        for quantizer in ("ort", "qrt"):
            for fmt in ("QOperator", "QDQ"):
                for act in ("QUInt8", "QInt8"):
                    for pc in ((False, True) if quantizer == "ort" else (True,)):
                        model = (ort_quantized(name, fmt, act, per_channel=pc) if quantizer == "ort"
                                 else qrt_quantized(name, fmt, act, per_channel=pc))
                        x = {"input": eval_input(name)}
                        step = output_step(model)
                        ours = run_qrt(fuse_qdq_groups(model) if fmt == "QDQ" else model, x)[0]
                        theirs = run_ort(model, x)[0]
                        ref = run_ort(float_model(name), x)[0]
                        sim = (f"{np.abs(ours - run_ort(model, x, optimize=False)[0]).max() / step:8.2f}"
                               if fmt == "QDQ" else f"{'-':>8s}")
                        print(f"{name:5s} {quantizer:5s} {fmt:9s} {act:6s} {'per-channel' if pc else 'per-tensor':11s} "
                              f"{np.abs(ours - theirs).max() / step:8.2f} {(ours != theirs).mean():7.3f} {sim} "
                              f"{np.abs(ours - ref).mean() / step:8.3f} {np.abs(theirs - ref).mean() / step:8.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1, help="CNN batch (the MLP uses 32x this)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--asm", action="store_true", help="count micro-kernel instructions and exit")
    parser.add_argument("--agreement", action="store_true", help="print the qrt vs onnxruntime table and exit")
    args = parser.parse_args(argv)
    if args.asm:
        return check_asm()
    if args.agreement:
        return agreement()

    import numba
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat

    import qrt
    from qrt.fusion import fuse_qdq_groups
    from qrt.kernels.cpu import qgemm

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"int8 kernel ISA: {qgemm.ISA}; threads: {args.threads}; numba {numba.__version__}, "
          f"onnxruntime {ort.__version__}")

    def qrt_session(model):
        options = qrt.SessionOptions()
        options.intra_op_num_threads = args.threads
        return qrt.InferenceSession(model.SerializeToString(), options)

    def ort_session(model):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    rows = []
    for name, builder, batch in (("cnn", cnn, args.batch), ("mlp", mlp, 32 * args.batch)):
        model, shape = builder(batch)
        qop = quantize(model, shape, QuantFormat.QOperator)
        qdq = quantize(model, shape, QuantFormat.QDQ)
        x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
        feeds = {"input": x}
        engines = [("qrt float", qrt_session(model)), ("qrt int8 QOperator", qrt_session(qop)),
                   ("qrt int8 QDQ (fused)", qrt_session(fuse_qdq_groups(qdq))),
                   ("ort float", ort_session(model)), ("ort int8 QOperator", ort_session(qop)),
                   ("ort int8 QDQ", ort_session(qdq))]
        reference = engines[0][1].run(None, feeds)[0]
        results = {}
        for label, session in engines:
            out = session.run(None, feeds)[0]
            best, median = time_runs(lambda: session.run(None, feeds), args.runs)
            results[label] = (best, median, float(np.abs(out - reference).max()))
        rows.append((name, shape, results))

    for name, shape, results in rows:
        print(f"\n{name} input {list(shape)}: fastest / median of {args.runs} runs, ms (max |out - qrt float|)")
        for label, (best, median, err) in results.items():
            print(f"  {label:24s} {best:9.3f} / {median:9.3f} ms   err {err:.4f}")
        qf, qi = results["qrt float"][0], results["qrt int8 QOperator"][0]
        of, oi = results["ort float"][0], results["ort int8 QOperator"][0]
        print(f"  ratios: qrt float / qrt int8 = {qf / qi:.2f}x;  ort int8 / qrt int8 = {oi / qi:.2f}x;  "
              f"ort float / qrt float = {of / qf:.2f}x;  ort float / ort int8 = {of / oi:.2f}x")


if __name__ == "__main__":
    main()
