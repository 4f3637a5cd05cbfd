"""The ASGI app: the Open Inference Protocol's REST endpoints, ``/predict``, ``/metrics``, access logs.

Sessions are built and warmed up on a thread after start-up, so ``/v2/health/live`` answers at once and
``/v2/health/ready`` turns 200 only when every model has run once. Inference runs on a thread pool
(qrt sessions are thread-safe) behind each model's :class:`~qrt.serve.batching.Batcher`; the event
loop only parses, checks and encodes.

Status codes: 400 for a request that breaks the protocol or does not fit the model (qrt's own message:
input, dtype, shape expected), 404 for an unknown model, 413 for a body over the limit, 503 with
``Retry-After`` while loading or when a model's queue is full, 504 past the per-request timeout, 500
when the model fails (the message names the node). Metric labels never take a client-chosen value, so
no request can grow the registry.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qrt.errors import InvalidArgument, QrtError

from .batching import Batcher, QueueFull
from .protocol import ProtocolError, encode_infer_response, parse_infer_request

log = logging.getLogger("qrt.serve")


@dataclass
class ServerConfig:
    models: list                      # [(name, path)]
    int8: bool = False                # quantize_dynamic each model at start-up
    calibration: str | None = None    # quantize_static each model with this calibration data
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_batch: int = 32               # rows per stacked run; 1 turns batching off
    max_delay_ms: float = 2.0         # how long the oldest queued request waits for others
    max_queue: int = 256              # queued requests per model before 503
    timeout_s: float = 30.0           # per request, queueing included
    max_body_mb: float = 256.0
    retry_after_s: int = 1


class _Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qrt_requests", "Inference requests to a served model, answered or not",
                                ["model", "precision", "endpoint"], registry=r)
        self.errors = Counter("qrt_request_errors", "Requests answered with an error, by HTTP status",
                              ["model", "code"], registry=r)
        self.latency = Histogram("qrt_request_latency_seconds", "Time from request to answer, successful "
                                 "inferences", ["model", "precision"], registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.inference_seconds = Histogram("qrt_inference_seconds", "Time of one (possibly stacked) model run",
                                           ["model", "precision"], registry=r,
                                           buckets=(.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                                    1, 2.5, 5, 10))
        self.batch_size = Histogram("qrt_batch_size", "Requests stacked into one model run", ["model", "precision"],
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_rows = Histogram("qrt_batch_rows", "Rows (batch dimension) of one model run",
                                    ["model", "precision"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096))
        self.queue_depth = Gauge("qrt_queue_depth", "Requests waiting for a batch", ["model"], registry=r)


class _HTTPError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _AccessLog:
    """ASGI middleware: one JSON line per request on the ``qrt.serve`` logger."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            record = {"method": scope["method"], "path": scope["path"], "status": status[0],
                      "ms": round((time.perf_counter() - start) * 1e3, 3)}
            record.update(scope.get("state", {}).get("log", {}))
            log.info(json.dumps(record))


def _error(status, message, headers=None):
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _predict_array(name, data, dtype):
    """A /predict JSON list as the model's dtype: ints widen to floats, floats must be integral for ints."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"input {name!r}: not a rectangular array: {exc}") from None
    if array.dtype == object or array.dtype.kind in "USV":
        raise ProtocolError(f"input {name!r}: expected numbers for {dtype}, got {array.dtype.kind!r} data "
                            "(a ragged or non-numeric list)")
    if dtype.kind in "iub" and array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise ProtocolError(f"input {name!r}: expected integers for {dtype}, got fractional values")
    try:
        with np.errstate(all="raise"):
            return array.astype(dtype, casting="unsafe")
    except (ValueError, OverflowError, FloatingPointError) as exc:
        raise ProtocolError(f"input {name!r}: a value does not fit {dtype}: {exc}") from None


def create_app(config: ServerConfig, models=None):
    """The FastAPI app for ``config``; ``models`` (name -> ServedModel) skips loading (tests, Ray)."""
    metrics = _Metrics()
    state = {"models": {}, "batchers": {}, "ready": False, "error": None}
    names = [name for name, _ in config.models]

    def load_all():
        from .models import ServedModel
        loaded = {}
        threads = max(1, (os.cpu_count() or 1))
        for name, path in config.models:
            model = models[name] if models else ServedModel(name, path, config.int8, config.calibration, threads)
            model.warm_up()
            loaded[name] = model
            log.info(json.dumps({"event": "model_ready", "model": name, "precision": model.precision,
                                 "batchable": model.batchable}))
        return loaded

    async def load(executor):
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(executor, load_all)
        except Exception as exc:    # a model that cannot load: never ready; the CLI exits non-zero
            state["error"] = f"{type(exc).__name__}: {exc}"
            log.error(json.dumps({"event": "load_failed", "error": state["error"]}))
            if state.get("on_load_error"):
                state["on_load_error"]()
            return
        for name, model in loaded.items():
            state["batchers"][name] = Batcher(model, executor, config.workers, config.max_batch,
                                              config.max_delay_ms / 1e3, config.max_queue, metrics)
            metrics.queue_depth.labels(name).set(0)
        state["models"] = loaded
        state["ready"] = True

    @contextlib.asynccontextmanager
    async def lifespan(app):
        executor = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="qrt-infer")
        loading = asyncio.get_running_loop().create_task(load(executor))
        try:
            yield
        finally:
            # Connections are already drained by the server; finish whatever is still queued, then stop.
            state["ready"] = False
            if not loading.done():
                await loading
            for batcher in state["batchers"].values():
                await batcher.drain()
            executor.shutdown(wait=True)
            log.info(json.dumps({"event": "shutdown", "drained": True}))

    app = FastAPI(title="qrt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.qrt = state
    app.add_middleware(_AccessLog)

    def model_for(name, request):
        request.state.log = {"model": name}
        if name not in names:
            raise _HTTPError(404, f"unknown model {name!r}; served models are {names}")
        if not state["ready"]:
            raise _HTTPError(503, "models are still loading" if not state["error"] else
                             f"models failed to load: {state['error']}", {"Retry-After": str(config.retry_after_s)})
        return state["models"][name]

    async def body_of(request):
        limit = int(config.max_body_mb * (1 << 20))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _HTTPError(413, f"request body of {length} bytes is over the {limit}-byte limit")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _HTTPError(413, f"request body is over the {limit}-byte limit")
        return bytes(body)

    async def infer_outputs(model, feeds):
        try:
            feeds = model.check(feeds)
        except InvalidArgument as exc:
            raise _HTTPError(400, str(exc)) from None
        try:
            return await asyncio.wait_for(state["batchers"][model.name].submit(feeds), config.timeout_s)
        except QueueFull:
            raise _HTTPError(503, f"model {model.name!r}: queue is full ({config.max_queue} requests); retry later",
                             {"Retry-After": str(config.retry_after_s)}) from None
        except asyncio.TimeoutError:
            raise _HTTPError(504, f"model {model.name!r}: no answer within {config.timeout_s} s") from None
        except QrtError as exc:     # the feeds fit the model's inputs, so a failure is the model's (500)
            raise _HTTPError(500, str(exc)) from None
        except Exception as exc:    # a kernel bug must not take the server down
            raise _HTTPError(500, f"model {model.name!r} failed: {type(exc).__name__}: {exc}") from None

    def handled(endpoint):
        """Counts every request to a served model, errors by status, and the latency of answers."""
        def wrap(handler):
            async def run(request: Request):
                start = time.perf_counter()
                try:
                    response, model = await handler(request, request.path_params.get("name"))
                except _HTTPError as exc:
                    named = getattr(request.state, "log", {}).get("model")
                    label = named if named in names else ""     # never a client-chosen label value
                    loaded = state["models"].get(label)
                    if loaded is not None:
                        metrics.requests.labels(label, loaded.precision, endpoint).inc()
                    metrics.errors.labels(label, str(exc.status)).inc()
                    request.state.log = {**getattr(request.state, "log", {}), "error": exc.message[:500]}
                    return _error(exc.status, exc.message, exc.headers)
                metrics.requests.labels(model.name, model.precision, endpoint).inc()
                metrics.latency.labels(model.name, model.precision).observe(time.perf_counter() - start)
                return response
            return run
        return wrap

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if state["ready"]:
            return {"ready": True}
        return _error(503, state["error"] or "loading", {"Retry-After": str(config.retry_after_s)})

    @app.get("/v2")
    async def server_metadata():
        from qrt import __version__
        return {"name": "qrt", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request, name: str):
        try:
            return model_for(name, request).metadata()
        except _HTTPError as exc:
            return _error(exc.status, exc.message, exc.headers)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(request: Request, name: str):
        try:
            model_for(name, request)
        except _HTTPError as exc:
            return _error(exc.status, exc.message, exc.headers)
        return {"name": name, "ready": True}

    @handled("infer")
    async def _infer(request, name):
        model = model_for(name, request)
        body = await body_of(request)
        try:
            parsed, feeds, requested, binary_all = parse_infer_request(body, request.headers.get(
                "inference-header-content-length"))
        except ProtocolError as exc:
            raise _HTTPError(400, f"model {name!r}: {exc}") from None
        if requested is not None:
            unknown = [n for n in requested if n not in model.output_names]
            if unknown:
                raise _HTTPError(400, f"model {name!r}: unknown output(s) {unknown}; outputs are {model.output_names}")
        outputs = await infer_outputs(model, feeds)
        pairs = [(n, v) for n, v in zip(model.output_names, outputs) if requested is None or n in requested]
        binary = {n for n, _ in pairs if (requested[n] if requested is not None else binary_all)}
        request.state.log = {"model": name, "precision": model.precision}
        content, header_length = encode_infer_response(name, parsed.get("id"), pairs, binary)
        if header_length is None:
            return Response(content, media_type="application/json"), model
        return Response(content, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_length)}), model

    app.add_api_route("/v2/models/{name}/infer", _infer, methods=["POST"])
    app.add_api_route("/v2/models/{name}/versions/{version}/infer", _infer, methods=["POST"])

    @handled("predict")
    async def _predict(request, _name):
        body = await body_of(request)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise _HTTPError(400, f"malformed JSON: {exc}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), dict):
            raise _HTTPError(400, 'expected {"model": NAME (optional with one model), "inputs": {INPUT: list}}')
        name = payload.get("model", names[0] if len(names) == 1 else None)
        if not isinstance(name, str):
            raise _HTTPError(400, f"several models are served; name one with \"model\": one of {names}")
        model = model_for(name, request)
        want = model.session._expected_dtypes
        try:
            feeds = {k: (_predict_array(k, v, want[k]) if k in want else np.asarray(v))
                     for k, v in payload["inputs"].items()}
        except ProtocolError as exc:
            raise _HTTPError(400, f"model {name!r}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise _HTTPError(400, f"model {name!r}: bad input: {exc}") from None
        outputs = await infer_outputs(model, feeds)
        data = {n: v.tolist() for n, v in zip(model.output_names, outputs)}
        return Response(json.dumps({"model_name": name, "outputs": data}), media_type="application/json"), model

    app.add_api_route("/predict", _predict, methods=["POST"])

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
