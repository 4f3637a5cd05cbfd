"""Check and time qrt's CUDA execution provider on a real GPU (one script, a few minutes).

    python benchmarks/gpu_check.py            # real GPU: every kernel, the models, timings
    python benchmarks/gpu_check.py --tiny     # tiny shapes, few repeats (runs under NUMBA_ENABLE_CUDASIM=1)

1. Every CUDA kernel path (qrt.kernels.cuda.checks.op_cases) against its CPU twin.
2. Models against the CPU provider: the bundled digits CNN, tests/model_builders.py's CNN, MLP and
   transformer block, the hand-built int8 CNN and MLP (QOperator), and a CNN quantized by qrt's
   quantize_static (QOperator and QDQ, per-channel int8 weights, uint8 activations) whose every
   node must run on the GPU (with the dp4a kernels where the device has them).
3. Median latency of float and int8 models: CUDA provider, CPU provider, and torch on the same GPU
   for the float models it can mirror (when torch with CUDA is installed).
Prints one compact table; exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _torch_cnn(weights, device):
    import torch
    import torch.nn.functional as F
    w = {k: torch.from_numpy(v).to(device) for k, v in weights.items()}

    def run(x):
        y = F.max_pool2d(F.relu(F.conv2d(x, w["w1"], w["b1"], padding=1)), 2)
        y = F.max_pool2d(F.relu(F.conv2d(y, w["w2"], w["b2"], padding=1)), 2)
        return F.linear(y.flatten(1), w["fc"], w["fcb"])

    return run


def _torch_mlp(weights, device):
    import torch
    w = {k: torch.from_numpy(v).to(device) for k, v in weights.items()}
    layers = len(w) // 2

    def run(x):
        for i in range(layers):
            x = x @ w[f"w{i}"] + w[f"b{i}"]
            if i < layers - 1:
                x = torch.relu(x)
        return x

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and 3 repeats (simulator smoke run)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per measurement (median)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    repeat = args.repeat or (3 if tiny else 50)
    if tiny:
        sys.setswitchinterval(5e-5)
        from qrt.kernels.cuda import config
        config.THREADS, config.MAX_BLOCKS, config.REDUCE_THREADS = 8, 3, 4
        config.GEMM_BM = config.GEMM_BN = config.GEMM_BK = 4
        config.GEMM_TM = config.GEMM_TN = 2

    import qrt
    from qrt.bench import time_runs
    from qrt.kernels.cuda import checks
    from qrt.kernels.cuda.device import SIMULATED

    if "CUDAExecutionProvider" not in qrt.get_available_providers():
        print("no CUDA device (set NUMBA_ENABLE_CUDASIM=1 to use the simulator)")
        return 1
    rows, failures = [], 0

    # 1. kernels
    cases = checks.op_cases(scale=1 if tiny else 8)
    if tiny:   # the simulator tests run every case; the smoke run keeps one per kernel family
        cases = [c for c in cases if c.name in ("Add broadcast", "Sigmoid", "Transpose", "Gemm bias",
                                                "Conv grouped strided", "MaxPool", "Softmax axis 1",
                                                "QLinearConv grouped per-channel", "QLinearAdd broadcast")]
    bad = []
    for case in cases:
        try:
            worst, allowed, fallbacks, message = checks.run_case(case)
            if worst is None or worst > allowed or fallbacks:
                bad.append(f"{case.name}: {message or 'host fallback'}")
        except Exception as exc:
            bad.append(f"{case.name}: {type(exc).__name__}: {exc}")
    failures += len(bad)
    rows.append(("kernels", f"{len(cases) - len(bad)}/{len(cases)} match CPU", "", "", "", "OK" if not bad else "FAIL"))
    for line in bad:
        print("  FAIL", line)

    # 2-3. models
    batch = 2 if tiny else 32
    size = 8 if tiny else 32
    rng = np.random.default_rng(0)
    models = []
    fcnn, fcnn_w = checks.float_cnn(channels=4 if tiny else 32, size=size, classes=5 if tiny else 10)
    models.append(("float_cnn", fcnn, {"x": rng.standard_normal((batch, 1, size, size)).astype(np.float32)}, False,
                   ("cnn", fcnn_w)))
    models.append(("int8_cnn", checks.int8_cnn(channels=4 if tiny else 32, size=size, classes=5 if tiny else 10),
                   {"x": rng.standard_normal((batch, 1, size, size)).astype(np.float32)}, True, None))
    for fmt in ("QOperator", "QDQ"):
        models.append((f"qrt_int8_cnn_{fmt.lower()}", _quantized_cnn(fmt, tiny),
                       {"x": rng.standard_normal((batch, 1, 6 if tiny else 64, 6 if tiny else 64)).astype(np.float32)},
                       True, None))
    sizes = (16, 24, 8) if tiny else (512, 1024, 1024, 10)
    fmlp, fmlp_w = checks.float_mlp(sizes)
    models.append(("float_mlp", fmlp, {"x": rng.standard_normal((batch, sizes[0])).astype(np.float32)}, False,
                   ("mlp", fmlp_w)))
    models.append(("int8_mlp", checks.int8_mlp(sizes), {"x": rng.standard_normal((batch, sizes[0])).astype(np.float32)},
                   None, None))
    if not tiny:
        import onnx
        import model_builders
        models.append(("digits_cnn", onnx.load(os.path.join(ROOT, "qrt", "data", "digits_cnn.onnx")),
                       {"image": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)}, False, None))
        models.append(("classic_cnn", model_builders.classic_cnn(),
                       {"input": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}, False, None))
        models.append(("transformer", model_builders.transformer_block(),
                       {"x": rng.standard_normal((batch, 16, 64)).astype(np.float32)}, False, None))
    torch_device = None
    if not SIMULATED:
        try:
            import torch
            if torch.cuda.is_available():
                torch_device = torch.device("cuda")
        except ImportError:
            pass

    for name, model, feeds, exact, mirror in models:
        try:
            got, expected, placement, fallbacks = checks.compare_sessions(model, feeds)
            if exact:
                ok = all(np.array_equal(g, e) for g, e in zip(got, expected))
            elif exact is None:   # QLinearAdd rounding may differ by one step from the CPU provider's
                ok = all(np.allclose(g, e, atol=0.1) for g, e in zip(got, expected))
            else:
                ok = all(np.allclose(g, e, rtol=1e-4, atol=1e-4) for g, e in zip(got, expected))
            on_cpu = sorted(n for n, p in placement.items() if p != "CUDAExecutionProvider" and not n.startswith("copy"))
            ok = ok and not (on_cpu and name.startswith("qrt_int8"))
            data = model.SerializeToString()
            gpu = qrt.InferenceSession(data, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            cpu = qrt.InferenceSession(data, providers=["CPUExecutionProvider"])
            t_gpu = time_runs(lambda: gpu.run(None, feeds), repeat, warmup=1)
            t_cpu = time_runs(lambda: cpu.run(None, feeds), repeat, warmup=1)
            t_torch = ""
            if torch_device is not None and mirror is not None:
                import torch
                run = (_torch_cnn if mirror[0] == "cnn" else _torch_mlp)(mirror[1], torch_device)
                x = torch.from_numpy(next(iter(feeds.values()))).to(torch_device)

                def torch_run():
                    with torch.no_grad():
                        run(x).cpu()
                t_torch = f"{time_runs(torch_run, repeat, warmup=1):.3f}"
            status = "OK" if ok and not fallbacks else "FAIL"
            failures += status != "OK"
            extra = f" (CPU nodes: {', '.join(on_cpu)})" if on_cpu else ""
            rows.append((name, f"{t_gpu:.3f}", f"{t_cpu:.3f}", f"{t_cpu / t_gpu:.2f}x", t_torch, status + extra))
        except Exception as exc:
            failures += 1
            rows.append((name, "", "", "", "", f"FAIL {type(exc).__name__}: {exc}"))

    from qrt.kernels.cuda.gemm import use_dp4a
    device = "simulator" if SIMULATED else _device_name()
    print(f"qrt CUDA check on {device}; batch {batch}, median of {repeat} runs (ms, host arrays in and out); "
          f"int8 products {'with' if use_dp4a() else 'without'} dp4a")
    header = ("check", "cuda ms", "cpu ms", "cpu/cuda", "torch ms", "status")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row[:5], widths)) + "  " + row[5])
    return 1 if failures else 0


def _quantized_cnn(quant_format, tiny):
    """checks.quantizable_cnn quantized by qrt (calibrated on 3 random feeds)."""
    from qrt.kernels.cuda import checks
    from qrt.quantization import QuantType, quantize_static
    model, feeds = checks.quantizable_cnn(channels=4 if tiny else 32, size=6 if tiny else 64, classes=3 if tiny else 10)

    class Reader:
        def __init__(self):
            self._feeds = iter(feeds(3))

        def get_next(self):
            return next(self._feeds, None)

    return quantize_static(model, None, Reader(), quant_format=quant_format, per_channel=True,
                           activation_type=QuantType.QUInt8).model


def _device_name():
    from numba import cuda
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return f"{name} (cc {device.compute_capability[0]}.{device.compute_capability[1]})"


if __name__ == "__main__":
    sys.exit(main())
