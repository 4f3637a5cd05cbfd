"""``qrt quantize IN OUT``: static (calibrated) or dynamic int8 quantization from the shell.

    qrt quantize model.onnx out.onnx --calibration data.npz --format qdq --per-channel --method entropy
    qrt quantize mobilenet.onnx out.onnx --calibration data.npz --equalize --bias-correction
    qrt quantize bert.onnx bert.int8.onnx --dynamic
    qrt quantize bert.onnx bert.int8.onnx --dynamic --per-row --smooth-quant 0.5 --calibration data.npz
    qrt quantize llm.onnx llm.q4.onnx --weight-only 4 --extra algorithm=gptq --calibration data.npz

``--calibration`` takes a ``.npz`` file (one array per model input, samples along the first axis)
or a directory of ``<input>_<i>.npy`` files. Prints the quantization summary (``--verbose``: with
the reason for every node kept in float).
"""
from __future__ import annotations

import argparse
import json
import sys

from qrt.errors import QrtError, QuantizationError

_METHODS = ["minmax", "entropy", "percentile", "distribution", "mse"]
_WEIGHT_ONLY_OPTIONS = {"algorithm", "block_size", "symmetric", "accuracy_level", "quantize_embeddings", "gptq_damp"}
_TYPES = {"int8": "QInt8", "uint8": "QUInt8", "qint8": "QInt8", "quint8": "QUInt8", "int16": "QInt16",
          "uint16": "QUInt16", "int4": "QInt4", "uint4": "QUInt4"}


def _parser():
    parser = argparse.ArgumentParser(prog="qrt quantize", description="Quantize an ONNX model to int8.")
    parser.add_argument("input", help="float model (never modified)")
    parser.add_argument("output", help="where to write the quantized model")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic quantization: int8 weights, activations quantized at run time")
    parser.add_argument("--weight-only", type=int, choices=[2, 4, 8], metavar="BITS",
                        help="blockwise weight-only quantization (MatMulNBits, GatherBlockQuantized); "
                             "--extra algorithm=rtn|gptq|hqq, block_size=32, symmetric=false, accuracy_level=0, "
                             "quantize_embeddings=true; gptq reads --calibration")
    parser.add_argument("--calibration", help="calibration data: .npz file or directory of <input>_<i>.npy")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per calibration batch (.npz)")
    parser.add_argument("--format", default="qdq", choices=["qdq", "qoperator"], help="static format (default qdq)")
    parser.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights")
    parser.add_argument("--smooth-quant", nargs="?", type=float, const=0.5, default=None, metavar="ALPHA",
                        help="SmoothQuant before quantizing: move activation outliers into the weights with "
                             "migration strength ALPHA (default 0.5); reads --calibration, also with --dynamic")
    parser.add_argument("--per-row", action="store_true",
                        help="--dynamic: per-row (per-token) activation scales and per-channel weights for MatMul")
    parser.add_argument("--method", default="minmax", choices=_METHODS, help="calibration method")
    parser.add_argument("--activation-type", default="int8", choices=sorted(_TYPES), help="default int8")
    parser.add_argument("--weight-type", default="int8", choices=sorted(_TYPES), help="default int8")
    parser.add_argument("--op-types", help="comma-separated op types to quantize (default: all supported)")
    parser.add_argument("--nodes", help="comma-separated node names: quantize only these")
    parser.add_argument("--exclude", help="comma-separated node names to keep in float")
    parser.add_argument("--equalize", action="store_true",
                        help="cross-layer equalization of Conv->Relu->Conv and Gemm->Relu->Gemm pairs first")
    parser.add_argument("--bias-correction", action="store_true",
                        help="correct quantized Conv/Gemm biases by their mean output error on the calibration data")
    parser.add_argument("--range", action="append", default=[], metavar="TENSOR=MIN,MAX",
                        help="fix a tensor's range instead of calibrating it (repeatable)")
    parser.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                        help="onnxruntime extra_options entry, e.g. ActivationSymmetric=true (repeatable)")
    parser.add_argument("--external-data", action="store_true", help="store weights in OUT.data")
    parser.add_argument("--progress", action="store_true", help="show a calibration progress bar")
    parser.add_argument("--verbose", action="store_true",
                        help="list every node kept in float with its reason (by default shape-computation "
                             "nodes are counted and the others grouped by op type and reason)")
    return parser


def _split(text):
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _ranges(specs):
    ranges = {}
    for spec in specs:
        name, sep, values = spec.rpartition("=")
        parts = values.split(",")
        if not sep or not name or len(parts) != 2:
            raise QuantizationError(f"--range {spec!r}: expected TENSOR=MIN,MAX")
        try:
            ranges[name] = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise QuantizationError(f"--range {spec!r}: MIN and MAX must be numbers") from None
    return ranges


def _extra(specs):
    options = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise QuantizationError(f"--extra {spec!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except ValueError:
            options[key] = value
    return options


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        from . import quantize_dynamic, quantize_static

        common = dict(per_channel=args.per_channel, reduce_range=args.reduce_range,
                      weight_type=_TYPES[args.weight_type], op_types_to_quantize=_split(args.op_types),
                      nodes_to_quantize=_split(args.nodes), nodes_to_exclude=_split(args.exclude),
                      use_external_data_format=args.external_data, extra_options=_extra(args.extra))
        if args.smooth_quant is not None:
            common["extra_options"].update(SmoothQuant=True, SmoothQuantAlpha=args.smooth_quant)
        if args.per_row:
            if not args.dynamic:
                raise QuantizationError("--per-row applies to --dynamic quantization")
            common["extra_options"]["PerRowActivations"] = True
        if args.weight_only:
            from . import quantize_weight_only
            if args.smooth_quant is not None:
                raise QuantizationError("--smooth-quant applies to static and --dynamic quantization, "
                                        "not --weight-only")
            from calibration import as_reader

            if args.equalize or args.bias_correction:
                raise QuantizationError("--equalize and --bias-correction apply to static quantization, "
                                        "not --weight-only")
            options = _extra(args.extra)
            unknown = sorted(set(options) - _WEIGHT_ONLY_OPTIONS)
            if unknown:
                raise QuantizationError(f"--weight-only takes --extra {sorted(_WEIGHT_ONLY_OPTIONS)}, not {unknown}")
            reader = as_reader(args.calibration, batch_size=args.batch_size) if args.calibration else None
            summary = quantize_weight_only(args.input, args.output, bits=args.weight_only, reader=reader,
                                           nodes_to_exclude=_split(args.exclude) or (),
                                           use_external_data_format=args.external_data, **options)
        elif args.dynamic:
            if args.range or (args.calibration and args.smooth_quant is None):
                raise QuantizationError("--dynamic takes no --range, and --calibration only with --smooth-quant: "
                                        "activations are quantized at run time")
            if args.equalize or args.bias_correction:
                raise QuantizationError("--equalize and --bias-correction apply to static quantization, "
                                        "not --dynamic")
            reader = None
            if args.calibration:
                from calibration import as_reader
                reader = as_reader(args.calibration, batch_size=args.batch_size)
            summary = quantize_dynamic(args.input, args.output, calibration_data_reader=reader,
                                       progress=args.progress, **common)
        else:
            reader = None
            if args.calibration:
                from calibration import as_reader
                reader = as_reader(args.calibration, batch_size=args.batch_size)
            ranges = _ranges(args.range)
            if reader is None and not ranges:
                raise QuantizationError("static quantization needs --calibration DATA (or --range for every "
                                        "tensor); use --dynamic to quantize without calibration data")
            summary = quantize_static(args.input, args.output, reader, quant_format=args.format,
                                      activation_type=_TYPES[args.activation_type], calibrate_method=args.method,
                                      tensor_ranges=ranges, progress=args.progress, equalize=args.equalize,
                                      bias_correction=args.bias_correction, **common)
    except (QrtError, OSError) as exc:
        print(f"qrt quantize: error: {exc}", file=sys.stderr)
        return 1
    print(summary.format(verbose=args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
