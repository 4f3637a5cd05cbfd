"""`qrt serve` as a real process on a loopback port, driven over HTTP.

Oracle: a direct ``qrt.InferenceSession.run`` of the same request in this process. A request that runs
alone must match it bit for bit (same kernels, same shapes); one stacked with others matches bit for
bit in int8 (integer kernels are exact whatever the batch) and to 1e-5 in float (a larger batch changes
the GEMM's blocking and so the summation order: 7.6e-6 worst absolute difference seen on logits of
magnitude ~5). Every loop is bounded in count and time.
"""
import concurrent.futures
import json
import os
import signal
import time

import httpx
import numpy as np
import pytest

import qrt
from serve_client import DIGITS, Server, decode_response, infer_binary, infer_json, metric_samples


@pytest.fixture(scope="module")
def sessions(digits_int8):
    return {"digits": qrt.InferenceSession(DIGITS), "digits8": qrt.InferenceSession(digits_int8)}


def test_health_and_metadata(server, sessions):
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    for name, precision in (("digits", "float"), ("digits8", "int8")):
        meta = httpx.get(f"{server.url}/v2/models/{name}").json()
        session = sessions[name]
        assert meta["name"] == name and meta["parameters"]["precision"] == precision
        assert meta["inputs"] == [{"name": session.get_inputs()[0].name, "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        assert httpx.get(f"{server.url}/v2/models/{name}/ready").json()["ready"] is True


@pytest.mark.parametrize("name", ["digits", "digits8"])
@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_infer_matches_session_bit_for_bit(server, sessions, digits_data, name, encoding):
    x = digits_data[1][:3]
    expected = sessions[name].run(None, {"image": x})[0]
    if encoding == "json":
        response = httpx.post(f"{server.url}/v2/models/{name}/infer", json={**infer_json(x), "id": "r1"})
        assert response.json()["id"] == "r1"
    else:
        body, headers = infer_binary(x)
        response = httpx.post(f"{server.url}/v2/models/{name}/infer", content=body, headers=headers)
        assert response.headers["content-type"] == "application/octet-stream"
    assert response.status_code == 200, response.text
    got = decode_response(response)["logits"]
    assert got.dtype == np.float32 and got.shape == (3, 10)
    np.testing.assert_array_equal(got, expected)


def test_predict_plain_json(server, sessions, digits_data):
    x = digits_data[1][3:5]
    response = httpx.post(server.url + "/predict", json={"model": "digits8", "inputs": {"image": x.tolist()}})
    assert response.status_code == 200, response.text
    got = np.array(response.json()["outputs"]["logits"], dtype=np.float32)
    np.testing.assert_array_equal(got, sessions["digits8"].run(None, {"image": x})[0])


def test_concurrent_clients_are_batched_and_correct(server, sessions, digits_data):
    images = digits_data[1]
    jobs = [("digits8" if i % 2 else "digits", 1 + i % 3, (7 * i) % 500) for i in range(200)]

    def call(job):
        name, rows, start = job
        x = images[start:start + rows]
        with httpx.Client(timeout=60) as client:
            response = client.post(f"{server.url}/v2/models/{name}/infer", json=infer_json(x))
        return job, response.status_code, response

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs, timeout=120))
    assert len(results) == 200
    for (name, rows, start), status, response in results:
        assert status == 200, response.text
        got = decode_response(response)["logits"]
        expected = sessions[name].run(None, {"image": images[start:start + rows]})[0]
        if name == "digits8":
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    text = httpx.get(server.url + "/metrics").text
    counts = metric_samples(text, "qrt_batch_size_count")
    singles = metric_samples(text, "qrt_batch_size_bucket")
    stacked = 0
    for labels, count in counts.items():
        stacked += count - singles[labels | {("le", "1.0")}]
    assert stacked > 0, "no run stacked more than one request"
    requests = metric_samples(text, "qrt_requests_total")
    assert sum(requests.values()) >= 200
    assert {dict(k)["precision"] for k in requests} == {"float", "int8"}


def _malformed(x):
    """(model, body, headers, expected status, a phrase the error must contain)."""
    good = infer_json(x)
    data = good["inputs"][0]["data"]
    raw = np.ascontiguousarray(x, "<f4").tobytes()

    def binary(header, blob, length=None):
        encoded = json.dumps(header).encode()
        return encoded + blob, {"Inference-Header-Content-Length": str(len(encoded) if length is None else length)}

    def js(payload):
        return json.dumps(payload).encode(), {}

    one = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32"}
    return [
        (b"{", {}, 400, "malformed JSON"),
        (b"", {}, 400, "malformed JSON"),
        (b"[1, 2]", {}, 400, "JSON object"),
        (*js({"inputs": []}), 400, "non-empty 'inputs'"),
        (*js({"inputs": {"image": data}}), 400, "non-empty 'inputs'"),
        (*js({"inputs": [{"shape": [1, 1, 8, 8], "datatype": "FP32", "data": data}]}), 400, "string 'name'"),
        (*js({"inputs": [{**one, "name": "img", "data": data}]}), 400, "unknown input name(s) ['img']"),
        (*js({"inputs": [{**one, "datatype": "FP64", "data": data}]}), 400, "dtype float64, expected float32"),
        (*js({"inputs": [{**one, "datatype": "FLOAT", "data": data}]}), 400, "unknown datatype 'FLOAT'"),
        (*js({"inputs": [{**one, "shape": [1, 1, 8, 7], "data": data[:56]}]}), 400, "dimension 3 must be 8"),
        (*js({"inputs": [{**one, "shape": [64], "data": data}]}), 400, "expected rank 4"),
        (*js({"inputs": [{**one, "data": data[:63]}]}), 400, "holds 63 element(s)"),
        (*js({"inputs": [{**one, "data": ["a"] * 64}]}), 400, "numeric"),
        (*js({"inputs": [{**one, "shape": [1, -1, 8, 8], "data": data}]}), 400, "non-negative integers"),
        (*js({"inputs": [{**one, "shape": "1x64", "data": data}]}), 400, "non-negative integers"),
        (*js({"inputs": [{**one}]}), 400, "neither 'data'"),
        (*js({"inputs": [{**one, "data": data}, {**one, "data": data}]}), 400, "given twice"),
        (*js({**good, "outputs": [{"name": "probabilities"}]}), 400, "unknown output(s) ['probabilities']"),
        (*js({**good, "parameters": [1]}), 400, "'parameters' must be an object"),
        (*binary({"inputs": [{**one, "parameters": {"binary_data_size": len(raw) + 4}}]}, raw), 400, "overruns"),
        (*binary({"inputs": [{**one, "parameters": {"binary_data_size": 8}}]}, raw[:8]), 400, "needs 256"),
        (*binary({"inputs": [{**one, "parameters": {"binary_data_size": len(raw)}}]}, raw + b"xx"), 400,
         "not claimed"),
        (*binary({"inputs": [{**one, "parameters": {"binary_data_size": len(raw)}}]}, raw, length=10 ** 9), 400,
         "outside the body"),
        (*binary({"inputs": [{**one, "parameters": {"binary_data_size": len(raw)}}]}, raw, length="x1"), 400,
         "must be an integer"),
        (*js({"inputs": [{**one, "data": [[1.0] * 8] * 7 + [[1.0] * 7]}]}), 400, "holds 63 element(s)"),
    ]


def test_malformed_requests_get_4xx_naming_the_problem(server, digits_data):
    x = digits_data[1][:1]
    cases = _malformed(x)
    checked = 0
    with httpx.Client(timeout=30) as client:
        for name in ("digits", "digits8"):
            for body, headers, status, phrase in cases:
                response = client.post(f"{server.url}/v2/models/{name}/infer", content=body, headers=headers)
                assert response.status_code == status, (phrase, response.text)
                assert phrase in response.json()["error"], (phrase, response.text)
                checked += 1
        assert checked == 50
        # /predict and unknown models
        for body, phrase in ((b"{", "malformed JSON"), (b'{"inputs": {"image": [[1, 2], [3]]}}', "several models"),
                             (b'{"model": "nope", "inputs": {"image": [1]}}', "unknown model 'nope'"),
                             (b'{"model": "digits", "inputs": {"image": [[1, 2], [3]]}}', "rectangular")):
            response = client.post(server.url + "/predict", content=body)
            assert 400 <= response.status_code < 500 and phrase in response.json()["error"], response.text
        response = client.post(server.url + "/v2/models/nope/infer", json=infer_json(x))
        assert response.status_code == 404 and "unknown model 'nope'" in response.json()["error"]
        # still healthy and answering
        assert client.get(server.url + "/v2/health/ready").status_code == 200
        assert client.post(server.url + "/v2/models/digits/infer", json=infer_json(x)).status_code == 200
        text = client.get(server.url + "/metrics").text
    errors = metric_samples(text, "qrt_request_errors_total")
    assert errors[frozenset({("model", "digits"), ("code", "400")})] >= 25
    assert errors[frozenset({("model", ""), ("code", "404")})] >= 1      # client names never become labels
    assert server.process.poll() is None


def test_model_failure_is_a_500_naming_the_node_and_serving_goes_on(server):
    with httpx.Client(timeout=30) as client:
        meta = client.get(f"{server.url}/v2/models/fold").json()
        assert meta["parameters"]["batchable"] is False       # its output's first dim is not the batch
        url = f"{server.url}/v2/models/fold/infer"
        for _ in range(3):
            failed = client.post(url, json=infer_json(np.ones((1, 6), np.float32), "x"))
            assert failed.status_code == 500
            assert "node 'fold_by_four' (Reshape)" in failed.json()["error"]
            fine = client.post(url, json=infer_json(np.ones((2, 6), np.float32), "x"))
            assert fine.status_code == 200 and decode_response(fine)["y"].shape == (4, 3)
        assert client.get(server.url + "/v2/health/ready").status_code == 200
        errors = metric_samples(client.get(server.url + "/metrics").text, "qrt_request_errors_total")
    assert errors[frozenset({("model", "fold"), ("code", "500")})] == 3


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's RSS from /proc")
def test_bad_and_good_requests_do_not_grow_memory(server, digits_data):
    x = digits_data[1][:4]
    body, headers, _, _ = _malformed(x)[19]    # an overrunning binary request

    def burst():
        with httpx.Client(timeout=30) as client:
            for _ in range(100):
                client.post(f"{server.url}/v2/models/digits/infer", content=body, headers=headers)
                client.post(f"{server.url}/v2/models/digits/infer", json=infer_json(x))
                client.post(f"{server.url}/v2/models/digits/infer", content=b'{"inputs": [')

    burst()
    before = _rss_kib(server.process.pid)
    burst()
    burst()
    grown = _rss_kib(server.process.pid) - before
    # 600 requests; a per-request leak of even 10 KiB would show as 6 MiB.
    assert grown < 4096, f"server RSS grew by {grown} KiB over 600 requests"


@pytest.fixture
def slow_server(tmp_path):
    """One request at a time and room for one more: a 4,000-row request keeps it busy for ~100 ms."""
    srv = Server("--model", f"digits={DIGITS}", "--max-batch", "1", "--workers", "1", "--max-queue", "1",
                 tmp_path=tmp_path)
    yield srv
    srv.stop()


def test_full_queue_answers_503_with_retry_after(slow_server, digits_data):
    x = np.ascontiguousarray(np.tile(digits_data[1], (8, 1, 1, 1))[:4000])
    body, headers = infer_binary(x)

    def call(_):
        with httpx.Client(timeout=60) as client:
            return client.post(f"{slow_server.url}/v2/models/digits/infer", content=body, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, range(12), timeout=120))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"no 503 from 12 concurrent requests on a queue of 1: {statuses}"
    assert refused[0].headers["retry-after"] == "1" and "queue is full" in refused[0].json()["error"]
    assert httpx.get(slow_server.url + "/v2/health/ready").status_code == 200


def test_sigterm_drains_in_flight_requests(tmp_path, digits_data):
    srv = Server("--model", f"digits={DIGITS}", "--max-batch", "1", "--workers", "1", "--max-queue", "16",
                 tmp_path=tmp_path)
    try:
        x = np.ascontiguousarray(np.tile(digits_data[1], (8, 1, 1, 1))[:4000])
        expected = qrt.InferenceSession(DIGITS).run(None, {"image": x})[0]
        body, headers = infer_binary(x)

        def call(_):
            with httpx.Client(timeout=60) as client:
                return client.post(f"{srv.url}/v2/models/digits/infer", content=body, headers=headers)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(call, i) for i in range(6)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:      # wait until requests are queued behind the running one
                depth = metric_samples(httpx.get(srv.url + "/metrics").text, "qrt_queue_depth")
                if depth.get(frozenset({("model", "digits")}), 0) >= 2:
                    break
                time.sleep(0.005)
            else:
                pytest.fail("requests never queued up")
            srv.process.send_signal(signal.SIGTERM)
            responses = [f.result(timeout=120) for f in futures]
        # uvicorn re-raises the signal once it has shut down gracefully, so the exit status is SIGTERM's.
        assert srv.process.wait(60) in (0, -signal.SIGTERM)
        for response in responses:
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(decode_response(response)["logits"], expected, rtol=0, atol=0)
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/v2/health/live", timeout=2)
        assert '"drained": true' in srv.log()
    finally:
        srv.stop()


def test_requests_past_the_timeout_get_504_and_serving_goes_on(tmp_path, digits_data):
    srv = Server("--model", f"digits={DIGITS}", "--max-batch", "1", "--workers", "1", "--timeout", "0.2",
                 tmp_path=tmp_path)
    try:
        x = np.ascontiguousarray(np.tile(digits_data[1], (8, 1, 1, 1))[:4000])
        body, headers = infer_binary(x)

        def call(_):
            with httpx.Client(timeout=60) as client:
                return client.post(f"{srv.url}/v2/models/digits/infer", content=body, headers=headers)

        # Eight requests run one after another: the last ones wait far past 0.2 s.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(call, range(8), timeout=120))
        late = [r for r in responses if r.status_code == 504]
        assert late and {r.status_code for r in responses} <= {200, 504}
        assert "no answer within 0.2 s" in late[0].json()["error"]
        small = httpx.post(f"{srv.url}/v2/models/digits/infer", json=infer_json(digits_data[1][:1]), timeout=30)
        assert small.status_code == 200
    finally:
        srv.stop()
