"""Throughput and latency of ``qrt serve``: requests/s, p50 and p99 at 1, 8 and 32 concurrent clients.

For the bundled digits CNN and onnx's light ResNet-50 (from the installed onnx package), float and
int8 (qrt.quantize_static, QDQ per-channel, on random or bundled calibration data), dynamic batching on
(``--max-batch 32 --max-delay-ms 2``) and off (``--max-batch 1``). Each configuration runs a real server
process on a loopback port; clients are closed-loop (send, wait for the answer, send again) on one
asyncio thread with httpx, one sample per request, tensors in the binary-data extension so JSON
encoding does not dominate. The light ResNet-50's batch dim is fixed to 1 in the file; its input,
output and final Reshape are made dynamic here so it can batch at all.

    python benchmarks/serve_bench.py [--models digits,resnet50] [--requests-scale 1.0]

The numbers are wall-clock on whatever else the machine is doing; client and server share its cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "serve"))
sys.path.insert(0, REPO)

from serve_client import Server  # noqa: E402


def _resnet50(tmp):
    """onnx's light ResNet-50 with its batch dim freed (input, output, the Reshape before the FC)."""
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")
    model = onnx.load(path)
    for value in list(model.graph.input[:1]) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    shapes = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    for init in model.graph.initializer:
        if init.name in shapes:
            value = numpy_helper.to_array(init).copy()
            value[0] = -1
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    out = os.path.join(tmp, "resnet50.onnx")
    onnx.save(model, out)
    name = model.graph.input[0].name
    rng = np.random.default_rng(0)
    return out, name, rng.random((1, 3, 224, 224), dtype=np.float32), \
        [{name: rng.random((1, 3, 224, 224), dtype=np.float32)} for _ in range(2)]


def _digits():
    from qrt.demo import MODEL_PATH, batches, load_digits_data
    calib, _, test, _ = load_digits_data()
    return MODEL_PATH, "image", test[:1], batches(calib[:64])


def _request(input_name, x):
    raw = np.ascontiguousarray(x, "<f4").tobytes()
    header = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


async def _load(url, body, headers, clients, total):
    import httpx
    latencies, errors = [], 0
    remaining = [total]

    async def client(http):
        nonlocal errors
        while remaining[0] > 0:
            remaining[0] -= 1
            start = time.perf_counter()
            response = await http.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await http.post(url, content=body, headers=headers)      # connection + first-run warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return len(latencies) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="digits,resnet50")
    parser.add_argument("--requests-scale", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args(argv)
    import qrt
    from pathlib import Path

    rows = []
    with tempfile.TemporaryDirectory(prefix="qrt-serve-bench-") as tmp:
        for model_name in args.models.split(","):
            path, input_name, x, calib = _resnet50(tmp) if model_name == "resnet50" else _digits()
            int8_path = os.path.join(tmp, f"{model_name}.int8.onnx")
            qrt.quantize_static(path, int8_path, calib, per_channel=True)
            base = 200 if model_name == "digits" else 6
            body, headers = _request(input_name, x)
            for precision, model_path in (("float", path), ("int8", int8_path)):
                for batching, max_batch in (("on", "32"), ("off", "1")):
                    server = Server("--model", f"m={model_path}", "--max-batch", max_batch, "--max-delay-ms", "2",
                                    tmp_path=Path(tmp))
                    try:
                        for clients in [int(c) for c in args.concurrency.split(",")]:
                            total = max(clients * 2, int(base * args.requests_scale * max(1, clients / 4)))
                            rps, p50, p99, errors = asyncio.run(_load(f"{server.url}/v2/models/m/infer", body,
                                                                      headers, clients, total))
                            row = (model_name, precision, batching, clients, total, rps, p50, p99, errors)
                            rows.append(row)
                            print("%-9s %-6s batch %-3s c=%-3d n=%-5d %8.1f req/s  p50 %8.2f ms  p99 %8.2f ms  "
                                  "errors %d" % row, flush=True)
                    finally:
                        server.stop()
    print("\n| model | precision | batching | clients | requests | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name, precision, batching, clients, total, rps, p50, p99, errors in rows:
        print(f"| {model_name} | {precision} | {batching} | {clients} | {total} | {rps:.1f} | {p50:.2f} | {p99:.2f} |"
              + (f" {errors} errors" if errors else ""))


if __name__ == "__main__":
    main()
