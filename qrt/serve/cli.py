"""``qrt serve``: serve models over HTTP with the Open Inference Protocol (uvicorn + the app in app.py).

SIGTERM or Ctrl-C: uvicorn stops accepting connections and waits for the requests in flight, then the
app's shutdown runs whatever is still queued before the process exits.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from qrt.errors import QrtError


def _parser():
    p = argparse.ArgumentParser(prog="qrt serve", description="Serve ONNX models over HTTP (Open Inference "
                                "Protocol / KServe v2 REST, plus POST /predict and GET /metrics).")
    p.add_argument("model", nargs="*", help="a model file, served under its file name without extension")
    p.add_argument("--model", dest="named", action="append", metavar="NAME=PATH", help="a model under NAME "
                   "(repeatable)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--int8", action="store_true", help="quantize each model dynamically at start-up")
    precision.add_argument("--quantize", metavar="CALIB", help="quantize each model statically at start-up with "
                           "this calibration data (.npz or a directory of .npy files)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=None, help="inference threads (default: one per core)")
    p.add_argument("--max-batch", type=int, default=32, help="rows stacked into one run; 1 turns batching off")
    p.add_argument("--max-delay-ms", type=float, default=2.0, help="how long a request waits for others to "
                   "batch with")
    p.add_argument("--max-queue", type=int, default=256, help="queued requests per model before 503")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request, queueing included (504)")
    p.add_argument("--max-body-mb", type=float, default=256.0, help="larger request bodies get 413")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error (JSON lines on stderr)")
    return p


class _JsonLines(logging.Formatter):
    """Messages that are JSON objects get a timestamp and level merged in; others are wrapped."""

    def format(self, record):
        message = record.getMessage()
        try:
            body = json.loads(message)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            body = {"message": message}
        return json.dumps({"ts": round(record.created, 3), "level": record.levelname.lower(),
                           "logger": record.name, **body})


def _configure_logging(level):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    for name in ("qrt.serve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        import uvicorn

        from .app import ServerConfig, create_app
    except ImportError as exc:
        raise QrtError(f"qrt serve needs the serve extra (pip install 'qrt[serve]'): {exc}") from None
    from .models import parse_model_specs

    config = ServerConfig(models=parse_model_specs(args.model, args.named), int8=args.int8,
                          calibration=args.quantize, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
                          max_queue=args.max_queue, timeout_s=args.timeout, max_body_mb=args.max_body_mb)
    if args.workers:
        config.workers = args.workers
    _configure_logging(args.log_level)
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_config=None,
                                           access_log=False, lifespan="on", timeout_graceful_shutdown=args.timeout + 5))

    def stop():
        server.should_exit = True
    app.state.qrt["on_load_error"] = stop
    server.run()
    if app.state.qrt["error"]:
        print(f"qrt serve: error: {app.state.qrt['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
