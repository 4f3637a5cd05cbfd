"""The ``qrt`` command: run, check, bench, optimize, quantize, report and demo."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .errors import QrtError


def _cmd_run(args):
    from .feeds import load_feeds, random_feeds
    from .session import InferenceSession

    session = InferenceSession(args.model, providers=args.providers)
    feeds = load_feeds(args.input, session) or random_feeds(session, seed=args.seed, dims=_dims(args.dim))
    outputs = session.run(None, feeds)
    for arg, value in zip(session.get_outputs(), outputs):
        print(f"{arg.name}: {value.dtype}{list(value.shape)}")
        with np.printoptions(threshold=20, edgeitems=3, precision=5):
            print(value)
    if args.output:
        from .session import _write_atomically
        import io
        buffer = io.BytesIO()
        np.savez(buffer, **{a.name: v for a, v in zip(session.get_outputs(), outputs)})
        _write_atomically(args.output, buffer.getvalue())
        print(f"outputs written to {args.output}")
    return 0


def _cmd_check(args):
    from .validation import check
    from .feeds import load_feeds
    from .session import InferenceSession

    feeds = None
    if args.input:
        feeds = load_feeds(args.input, InferenceSession(args.model))
    result = check(args.model, feeds, rtol=args.rtol, atol=args.atol, seed=args.seed)
    print(result)
    return 0 if result.passed else 1


def _cmd_bench(args):
    from .bench import benchmark
    from .feeds import load_feeds
    from .session import InferenceSession

    feeds = load_feeds(args.input, InferenceSession(args.model)) if args.input else None
    print(benchmark(args.model, feeds, runs=args.runs, threads=args.threads, name=os.path.basename(args.model)))
    return 0


def _dims(specs):
    dims = {}
    for spec in specs or []:
        name, _, value = spec.partition("=")
        dims[name] = int(value)
    return dims


_DELEGATED = {
    "optimize": ("qrt.optimizer", "apply graph optimization passes"),
    "quantize": ("qrt.quantization.cli", "quantize a model to int8"),
    "report": ("qrt.report.cli", "compare a float and an int8 model: accuracy, size, latency"),
    "demo": ("qrt.demo", "optimize, quantize, check and report on the bundled digits CNN"),
    "serve": ("qrt.serve.cli", "serve models over HTTP (Open Inference Protocol, dynamic batching, metrics)"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="qrt", description="Run, optimize, quantize and check ONNX models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a model (random inputs of the right shape when none are given)")
    p.add_argument("model")
    p.add_argument("--input", action="append", help="x.npy, NAME=x.npy or data.npz (repeatable)")
    p.add_argument("--dim", action="append", help="value for a symbolic dimension, NAME=VALUE")
    p.add_argument("--output", help="write the outputs to this .npz file")
    p.add_argument("--providers", nargs="+", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="compare qrt with onnxruntime on the same inputs")
    p.add_argument("model")
    p.add_argument("--input", action="append")
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("bench", help="latency of qrt vs onnxruntime in one process")
    p.add_argument("model")
    p.add_argument("--input", action="append")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_bench)

    for name, (_, help_) in _DELEGATED.items():
        sub.add_parser(name, help=help_, add_help=False)   # parsed by the sub-command's own main()
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in _DELEGATED:
            import importlib
            return importlib.import_module(_DELEGATED[argv[0]][0]).main(argv[1:]) or 0
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except QrtError as exc:
        print(f"qrt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
