"""``qrt report float.onnx int8.onnx --data eval.npz [--labels labels.npy] [--html report.html]``.

``--images a.jpg b.png ...`` instead of ``--data`` for models with embedded preprocessing (qrt
preprocess): each image is decoded into the raw input the model takes and is one batch of one.
"""
from __future__ import annotations

import argparse

import numpy as np


def _parser():
    parser = argparse.ArgumentParser(prog="qrt report", description=__doc__)
    parser.add_argument("float_model", help="the float ONNX model")
    parser.add_argument("int8_model", help="its quantized version")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=".npz (arrays named after the inputs) or a directory of .npy")
    source.add_argument("--images", nargs="+", help="image files, for models with embedded preprocessing")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="samples per run when --data is an .npz file (default 32)")
    parser.add_argument("--labels", help=".npy with one integer label per sample")
    parser.add_argument("--html", help="write a self-contained HTML report here")
    parser.add_argument("--runs", type=int, default=20, help="latency repetitions")
    parser.add_argument("--output-kind", action="append", default=[], metavar="NAME=KIND",
                        help="metrics for output NAME: scores (top-1/top-5 agreement), regression (SQNR, max "
                             "error, cosine) or indices (equal values); guessed from name, shape and values "
                             "when not given (repeatable)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)

    from calibration import as_reader

    from ..errors import InvalidArgument
    from . import compare

    if args.images:
        from ..preprocessing import image_feed
        data = [image_feed(path, args.float_model) for path in args.images]
    elif args.data.endswith(".npz"):
        data = as_reader(args.data, batch_size=args.batch_size)
    else:
        data = as_reader(args.data)
    labels = np.load(args.labels) if args.labels else None
    kinds = {}
    for item in args.output_kind:
        name, sep, kind = item.rpartition("=")
        if not sep or not name:
            raise InvalidArgument(f"--output-kind {item!r}: expected NAME=KIND, e.g. boxes=regression")
        kinds[name] = kind
    report = compare(args.float_model, args.int8_model, data, labels=labels, latency_runs=args.runs,
                     output_kinds=kinds)
    print(report)
    if args.html:
        report.to_html(args.html)
        print(f"\nHTML report written to {args.html}")
    return 0
