"""The ``qrt`` command: run, check, bench, optimize, quantize, report, demo, preprocess and convert."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .errors import InvalidArgument, QrtError


def _cmd_run(args):
    session = _session(args, providers=args.providers)
    outputs = session.run(None, _feeds(args, session))
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

    feeds = _feeds(args, _session(args))
    result = check(args.model, feeds, rtol=args.rtol, atol=args.atol, free_dims=_free_dims(args.free_dim))
    print(result)
    return 0 if result.passed else 1


def _cmd_bench(args):
    from .bench import benchmark

    feeds = _feeds(args, _session(args))
    print(benchmark(args.model, feeds, runs=args.runs, threads=args.threads, name=os.path.basename(args.model),
                    free_dims=_free_dims(args.free_dim)))
    return 0


def _session(args, providers=None):
    from .session import InferenceSession, SessionOptions

    options = SessionOptions()
    for name, value in _free_dims(args.free_dim).items():
        options.add_free_dimension_override_by_name(name, value)
    return InferenceSession(args.model, options, providers=providers)


def _feeds(args, session):
    from .feeds import load_feeds, random_feeds

    images = _image_feeds(args)
    if images is not None:
        return {**images, **(load_feeds(args.input, session) or {})}
    return load_feeds(args.input, session) or random_feeds(session, seed=args.seed, shapes=_shapes(args.shape))


def _image_feeds(args):
    """``--image PATH`` for a model with embedded preprocessing: decoded only, the model does the rest."""
    if not getattr(args, "image", None):
        return None
    from .preprocessing import image_feed
    return image_feed(args.image, args.model)


def _number(text: str) -> float:
    num, slash, den = text.partition("/")
    try:
        return float(num) / float(den) if slash else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def _numbers(text: str) -> list:
    return [_number(t) for t in text.split(",")]


def _size(text: str) -> tuple:
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit():
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 320x320, got {text!r}")
    return int(height), int(width)


def _cmd_preprocess(args):
    from .preprocessing import embed_preprocessing
    from .session import _save_atomically

    model = embed_preprocessing(args.model, layout=args.layout, color="BGR" if args.bgr else "RGB",
                                resize=args.resize, scale=args.scale, mean=args.mean, std=args.std,
                                input_dtype=args.input_dtype, interpolation=args.interpolation,
                                model_layout=args.model_layout)
    _save_atomically(model, args.output)
    steps = [n.op_type for n in model.graph.node if n.name.startswith("qrt_preprocess/")]
    print(f"{args.output}: input {model.graph.input[0].name!r} now takes raw {args.input_dtype} "
          f"{args.layout.upper()} images; embedded: {' -> '.join(steps)}")
    return 0


def _cmd_convert(args):
    from .opset import convert
    from .session import _save_atomically

    result = convert(args.model, args.opset, rtol=args.rtol, atol=args.atol, seed=args.seed)
    print(result)
    _save_atomically(result.model, args.output)
    print(f"written to {args.output}")
    return 0


def _free_dims(specs):
    dims = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise InvalidArgument(f"--free-dim {spec!r}: expected NAME=VALUE with a non-negative integer VALUE, "
                                  "e.g. height=320")
        dims[name] = int(value)
    return dims


def _shapes(specs):
    shapes = {}
    for spec in specs or []:
        name, sep, values = spec.rpartition("=")
        dims = [v.strip() for v in values.split(",")] if values.strip() else []
        if not sep or not name or not all(d.isdigit() for d in dims):
            raise InvalidArgument(f"--shape {spec!r}: expected NAME=D0,D1,... with non-negative integers, "
                                  "e.g. images=1,3,320,320")
        shapes[name] = tuple(int(d) for d in dims)
    return shapes


def _add_feed_options(p):
    p.add_argument("--input", action="append", metavar="FILE",
                   help="input data: x.npy (single-input model), NAME=x.npy or data.npz (repeatable); "
                        "without it, inputs are random")
    p.add_argument("--shape", action="append", metavar="NAME=D0,D1,...",
                   help="shape of the random input NAME, e.g. images=1,3,320,320 (repeatable)")
    p.add_argument("--free-dim", "--dim", dest="free_dim", action="append", metavar="DIM=VALUE",
                   help="fix the inputs' symbolic dimension DIM, e.g. height=320 (repeatable), as onnxruntime's "
                        "SessionOptions.add_free_dimension_override_by_name; a free leading (batch) dim is 1 "
                        "unless given, any other free dim must be given")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


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
    p.add_argument("model", help="ONNX model file")
    _add_feed_options(p)
    p.add_argument("--image", help="an image file, for a model with embedded preprocessing (qrt preprocess)")
    p.add_argument("--output", help="write the outputs to this .npz file")
    p.add_argument("--providers", nargs="+", default=None, metavar="PROVIDER",
                   help="execution providers in order of preference, e.g. CUDAExecutionProvider "
                        "CPUExecutionProvider (default: CPU)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="compare qrt with onnxruntime on the same inputs")
    p.add_argument("model", help="ONNX model file")
    _add_feed_options(p)
    p.add_argument("--image", help="an image file, for a model with embedded preprocessing (qrt preprocess)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance per element (default 1e-3)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance per element (default 1e-5)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("bench", help="latency of qrt vs onnxruntime in one process")
    p.add_argument("model", help="ONNX model file")
    _add_feed_options(p)
    p.add_argument("--runs", type=int, default=20, help="timed runs per runtime; the median is reported (default 20)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for both runtimes (default: Numba's thread count)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("preprocess", help="embed image preprocessing in the model (it then takes raw images)")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("output", help="where to write the model with preprocessing embedded (atomically)")
    p.add_argument("--layout", default="nhwc", choices=["nhwc", "nchw", "NHWC", "NCHW"],
                   help="layout of the raw images (default nhwc)")
    p.add_argument("--bgr", action="store_true", help="raw images are BGR (OpenCV); the model wants RGB")
    p.add_argument("--resize", type=_size, help="HEIGHTxWIDTH the model wants; raw images may be any size")
    p.add_argument("--interpolation", default="linear", choices=["linear", "nearest", "cubic"],
                   help="Resize mode used with --resize (default linear)")
    p.add_argument("--scale", type=_number, default=1 / 255, help="multiplier first, e.g. 1/255 (default)")
    p.add_argument("--mean", type=_numbers, help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_numbers, help="per-channel std after scaling, e.g. 0.229,0.224,0.225")
    p.add_argument("--input-dtype", default="uint8", choices=["uint8", "uint16", "float32"],
                   help="element type of the raw images the new input takes (default uint8)")
    p.add_argument("--model-layout", default="NCHW", choices=["NCHW", "NHWC"], help="layout the model expects")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("convert", help="convert to another opset, refusing a result that computes differently")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("output", help="where to write the converted model (atomically, only if it checks out)")
    p.add_argument("--opset", type=int, required=True, help="target ai.onnx opset version")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance of the numeric check (default 1e-4)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of the numeric check (default 1e-5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated check inputs (default 0)")
    p.set_defaults(func=_cmd_convert)

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
