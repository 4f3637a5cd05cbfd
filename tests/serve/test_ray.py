"""qrt on a local Ray cluster (2 CPUs): the Serve deployment, batch_infer and sharded calibration.

Oracles: the plain ``qrt serve`` process (same requests, same answers bit for bit), a single-process
``InferenceSession`` (int8, exactly, whatever rows Ray groups into a batch) and ``calibration.collect_ranges``
(exactly equal).
"""
import time

import httpx
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need ray[serve,data] (pip install 'qrt[ray]')")
pytest.importorskip("ray.serve", reason="the Ray tests need ray[serve,data] (pip install 'qrt[ray]')")
pytest.importorskip("ray.data", reason="the Ray tests need ray[serve,data] (pip install 'qrt[ray]')")

import qrt  # noqa: E402
import qrt.ray  # noqa: E402
from serve_client import DIGITS, decode_response, free_port, infer_json  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_serve_deployment_answers_like_the_plain_server(local_ray, server, digits_int8, digits_data):
    from ray import serve
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = qrt.ray.deployment({"digits": DIGITS, "digits8": digits_int8}, num_replicas=1,
                                 ray_actor_options={"num_cpus": 0.5}, max_batch=32, workers=1)
        serve.run(app, name="qrt", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(url + "/v2/health/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the Serve replica never became ready"
            time.sleep(0.2)
        x = digits_data[1][:5]
        for name in ("digits", "digits8"):
            assert httpx.get(f"{url}/v2/models/{name}").json() == httpx.get(f"{server.url}/v2/models/{name}").json()
            ours = httpx.post(f"{url}/v2/models/{name}/infer", json=infer_json(x), timeout=30)
            plain = httpx.post(f"{server.url}/v2/models/{name}/infer", json=infer_json(x), timeout=30)
            assert ours.status_code == 200, ours.text
            np.testing.assert_array_equal(decode_response(ours)["logits"], decode_response(plain)["logits"])
        bad = httpx.post(f"{url}/v2/models/digits/infer", json={"inputs": []}, timeout=30)
        assert bad.status_code == 400 and "non-empty 'inputs'" in bad.json()["error"]
    finally:
        serve.shutdown()


def test_batch_infer_over_1000_rows_equals_single_process(local_ray, digits_int8, digits_data):
    images = np.concatenate([digits_data[1], digits_data[1]])[:1000]
    dataset = ray.data.from_items([{"id": i, "pixels": images[i]} for i in range(1000)])
    # int8, so equality is exact whatever rows Ray groups together (the float path is the same code).
    result = qrt.ray.batch_infer(dataset, digits_int8, input_columns={"image": "pixels"}, keep_columns=["id"],
                                 batch_size=128, concurrency=2, num_cpus=0.5).take_all()
    assert len(result) == 1000
    result.sort(key=lambda row: row["id"])
    assert [row["id"] for row in result] == list(range(1000))
    got = np.stack([row["logits"] for row in result])
    np.testing.assert_array_equal(got, qrt.InferenceSession(digits_int8).run(None, {"image": images})[0])


def test_batch_infer_names_unmatched_inputs(local_ray):
    dataset = ray.data.from_items([{"pixels": np.zeros((1, 8, 8), np.float32)}])
    with pytest.raises(qrt.QrtError, match="input_columns"):
        qrt.ray.batch_infer(dataset, DIGITS)


@pytest.mark.parametrize("method", ["MinMax", "Entropy"])
def test_sharded_calibration_on_ray_equals_single_process(local_ray, digits_data, method):
    from calibration import collect_ranges
    from qrt.demo import batches
    feeds = batches(digits_data[0][:96], batch_size=12)
    single = collect_ranges(DIGITS, feeds, method=method, progress=False)
    assert qrt.ray.collect_ranges(DIGITS, feeds, num_shards=2, method=method, num_cpus=1) == single
