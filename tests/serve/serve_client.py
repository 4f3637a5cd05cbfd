"""Helpers for the serving tests: the real ``qrt serve`` process on a free loopback port, request builders."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, "qrt", "data", "digits_cnn.onnx")
START_TIMEOUT_S = 120     # a cold Numba cache compiles the digits CNN's kernels on warm-up


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, tmp_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"serve-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "qrt.cli", "serve", *args, "--host", "127.0.0.1",
                                         "--port", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=REPO)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"qrt serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"qrt serve not ready after {START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def infer_json(x, name="image"):
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


def infer_binary(x, name="image", binary_output=True):
    """(body, headers) of a binary-data-extension request, as tritonclient's HTTP client builds it."""
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": binary_output}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def decode_response(response):
    """The outputs of an infer response (JSON or binary) as {name: array}."""
    from qrt.serve.protocol import DATATYPES
    length = response.headers.get("inference-header-content-length")
    body = response.content
    header = json.loads(body[:int(length)] if length else body)
    offset = int(length) if length else 0
    outputs = {}
    for out in header["outputs"]:
        dtype = DATATYPES[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            outputs[out["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(out["shape"])
            offset += size
        else:
            outputs[out["name"]] = np.array(out["data"], dtype=dtype).reshape(out["shape"])
    return outputs


def metric_samples(text, name):
    """{frozenset(labels.items()): value} for the samples of metric ``name`` in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples[frozenset(sample.labels.items())] = sample.value
    return samples
