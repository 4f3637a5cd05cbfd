"""The dynamic batcher and the protocol codec in-process, on a stand-in model whose runs are recorded.

The stand-in's output row i is 2 * input row i plus the call's batch size in column 0 of a second output,
so a request that got another request's rows, or rows from the wrong run, shows in its values.
"""
import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from qrt.errors import NodeExecutionError
from qrt.serve.batching import Batcher, QueueFull
from qrt.serve.protocol import ProtocolError, encode_infer_response, parse_infer_request


class _Histogram:
    def __init__(self):
        self.values = []

    def labels(self, *_):
        return self

    def observe(self, value):
        self.values.append(value)

    def set(self, value):
        self.values.append(value)


class _Model:
    name, precision, batchable = "stand-in", "float", True

    def __init__(self, delay=0.0, fail_on=None):
        self.delay, self.fail_on, self.calls = delay, fail_on, []
        self.lock = threading.Lock()

    def run(self, feeds):
        x = feeds["x"]
        with self.lock:
            self.calls.append(x.shape[0])
        time.sleep(self.delay)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise NodeExecutionError(f"node 'scale' failed on a row equal to {self.fail_on}")
        return [x * 2, np.full((x.shape[0], 1), x.shape[0], np.int64)]


def _metrics():
    return SimpleNamespace(queue_depth=_Histogram(), batch_size=_Histogram(), batch_rows=_Histogram(),
                           inference_seconds=_Histogram())


async def _with_batcher(model, coroutine, max_batch=8, max_delay_s=0.05, max_queue=64, workers=1):
    with ThreadPoolExecutor(workers) as pool:
        metrics = _metrics()
        batcher = Batcher(model, pool, workers, max_batch, max_delay_s, max_queue, metrics)
        try:
            return await coroutine(batcher), metrics
        finally:
            await asyncio.wait_for(batcher.drain(), 10)


def _rows(start, n, width=3):
    return np.arange(start * width, (start + n) * width, dtype=np.float32).reshape(n, width)


def test_requests_are_stacked_up_to_max_batch_and_split_back():
    model = _Model(delay=0.02)
    sizes = [1, 2, 3, 1, 2, 1, 3, 2, 1, 1]

    async def drive(batcher):
        starts = np.cumsum([0] + sizes[:-1])
        return await asyncio.gather(*(batcher.submit({"x": _rows(s, n)}) for s, n in zip(starts, sizes)))

    results, metrics = asyncio.run(_with_batcher(model, drive))
    for (doubled, batch), start, n in zip(results, np.cumsum([0] + sizes[:-1]), sizes):
        np.testing.assert_array_equal(doubled, _rows(start, n) * 2)
        assert batch.shape == (n, 1)
    assert sum(model.calls) == sum(sizes) and max(model.calls) <= 8
    assert len(model.calls) < len(sizes)                  # some runs stacked several requests
    assert max(metrics.batch_size.values) > 1


def test_requests_that_cannot_stack_run_apart():
    model = _Model()

    async def drive(batcher):
        return await asyncio.gather(batcher.submit({"x": _rows(0, 2, width=3)}),
                                    batcher.submit({"x": _rows(0, 2, width=4)}),
                                    batcher.submit({"x": _rows(0, 2, width=3).astype(np.float64)}))

    results, _ = asyncio.run(_with_batcher(model, drive))
    assert [r[0].shape for r in results] == [(2, 3), (2, 4), (2, 3)]
    assert results[2][0].dtype == np.float64 and model.calls == [2, 2, 2]


def test_a_failing_batch_is_rerun_request_by_request():
    model = _Model(fail_on=7.0)

    async def drive(batcher):
        return await asyncio.gather(*(batcher.submit({"x": _rows(i, 1)}) for i in range(4)),
                                    return_exceptions=True)

    results, _ = asyncio.run(_with_batcher(model, drive))
    assert isinstance(results[2], NodeExecutionError)     # row 2 holds 6, 7, 8
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i][0], _rows(i, 1) * 2)


def test_full_queue_and_abandoned_requests():
    model = _Model(delay=0.2)

    async def drive(batcher):
        first = asyncio.ensure_future(batcher.submit({"x": _rows(0, 1)}))
        await asyncio.sleep(0.05)                          # the first is running; the queue is empty
        queued = asyncio.ensure_future(batcher.submit({"x": _rows(1, 1)}))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit({"x": _rows(2, 1)})
        with pytest.raises(asyncio.TimeoutError):          # times out while queued: never runs
            await asyncio.wait_for(queued, 0.05)
        return await first

    result, _ = asyncio.run(_with_batcher(model, drive, max_batch=1, max_queue=1))
    np.testing.assert_array_equal(result[0], _rows(0, 1) * 2)
    assert model.calls == [1]


def test_protocol_round_trips_every_datatype_in_json_and_binary():
    arrays = {"b": np.array([[True, False]]), "u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
              "i64": np.array([-2 ** 62, 5], np.int64), "f16": np.array([0.5, -1.25], np.float16),
              "f64": np.array([np.pi, -0.0]), "s": np.array(["a", "héllo"], dtype=object)}
    for binary in (set(), set(arrays)):
        body, length = encode_infer_response("m", "7", list(arrays.items()), binary)
        header = json.loads(body[:length] if length else body)
        assert header["id"] == "7" and [o["datatype"] for o in header["outputs"]] == \
            ["BOOL", "UINT8", "INT64", "FP16", "FP64", "BYTES"]
        # Feed the response back as a request: the same arrays come out.
        request = {"inputs": [{k: v for k, v in o.items() if k != "parameters"} | (
            {"parameters": o["parameters"]} if "parameters" in o else {}) for o in header["outputs"]]}
        encoded = json.dumps(request).encode()
        blob = body[length:] if length else b""
        _, feeds, _, _ = parse_infer_request(encoded + blob, str(len(encoded)) if blob else None)
        for name, value in arrays.items():
            got = feeds[name]
            if value.dtype == object:
                assert [v.decode() if isinstance(v, bytes) else v for v in got] == list(value)
            else:
                assert got.dtype == value.dtype
                np.testing.assert_array_equal(got, value)


@pytest.mark.parametrize("payload,phrase", [
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "INT8", "data": [1, 300]}]}, "does not fit INT8"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2.5]}]}, "integer elements"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]}, "true/false"),
    ({"inputs": [{"name": "x", "shape": [1 << 20, 1 << 20], "datatype": "FP32", "data": []}]}, "more than"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": 1.0}]}, "'data' must be a list"),
])
def test_protocol_rejects_values_that_do_not_fit(payload, phrase):
    with pytest.raises(ProtocolError, match=phrase):
        parse_infer_request(json.dumps(payload).encode(), None)
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_infer_request(b"[" * 100_000, None)
