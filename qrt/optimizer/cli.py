"""``qrt optimize IN OUT [--passes a,b | --level L]``: optimize a model file, print node counts."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ..errors import QrtError
from .pipeline import count_ops, optimize
from .passes import PASSES


def _parser():
    parser = argparse.ArgumentParser(
        prog="qrt optimize",
        description="Optimize an ONNX model graph and print node counts by op type before and after.")
    parser.add_argument("input", help="model to read (never modified)")
    parser.add_argument("output", help="where to write the optimized model")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--passes", help=f"comma-separated passes to run, in order; known: {', '.join(PASSES)}")
    group.add_argument("--level", default="all",
                       help="graph optimization level: disabled, basic, extended or all (default: all)")
    return parser


def format_counts(before, after):
    ops = sorted(set(before) | set(after))
    width = max([len("op type"), len("total")] + [len(op) for op in ops])
    lines = [f"{'op type':<{width}}  {'before':>7}  {'after':>7}"]
    for op in ops:
        lines.append(f"{op:<{width}}  {before.get(op, 0):>7}  {after.get(op, 0):>7}")
    lines.append(f"{'total':<{width}}  {sum(before.values()):>7}  {sum(after.values()):>7}")
    return "\n".join(lines)


def write_atomically(model, path):
    """Write to a temporary file beside ``path`` and rename it over ``path``: readers never see a
    half-written model, and a failure leaves any previous file in place."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path):
        mode = os.stat(path).st_mode & 0o7777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        # mkstemp creates the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _same_file(a, b):
    if os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if not os.path.isfile(args.input):
            raise QrtError(f"model file not found: {args.input}")
        if _same_file(args.input, args.output):
            raise QrtError(f"output {args.output} is the input file; qrt optimize never overwrites its input")
        import onnx

        try:
            model = onnx.load(args.input)
        except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several types
            raise QrtError(f"cannot read ONNX model {args.input}: {exc}") from exc
        optimized = optimize(model, passes=args.passes, level=args.level)
        write_atomically(optimized, args.output)
    except (QrtError, OSError) as exc:
        print(f"qrt optimize: error: {exc}", file=sys.stderr)
        return 1
    print(format_counts(count_ops(model), count_ops(optimized)))
    print(f"wrote {args.output}")
    return 0
