"""``qrt report float.onnx int8.onnx --data eval.npz [--labels labels.npy] [--html report.html]``."""
from __future__ import annotations

import argparse

import numpy as np


def _parser():
    parser = argparse.ArgumentParser(prog="qrt report", description=__doc__)
    parser.add_argument("float_model", help="the float ONNX model")
    parser.add_argument("int8_model", help="its quantized version")
    parser.add_argument("--data", required=True, help=".npz (arrays named after the inputs) or a directory of .npy")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="samples per run when --data is an .npz file (default 32)")
    parser.add_argument("--labels", help=".npy with one integer label per sample")
    parser.add_argument("--html", help="write a self-contained HTML report here")
    parser.add_argument("--runs", type=int, default=20, help="latency repetitions")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)

    from calibration import as_reader
    from . import compare

    data = as_reader(args.data, batch_size=args.batch_size) if args.data.endswith(".npz") else as_reader(args.data)
    labels = np.load(args.labels) if args.labels else None
    report = compare(args.float_model, args.int8_model, data, labels=labels, latency_runs=args.runs)
    print(report)
    if args.html:
        report.to_html(args.html)
        print(f"\nHTML report written to {args.html}")
    return 0
