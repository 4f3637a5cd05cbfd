"""``qrt demo``: the whole journey on the bundled digits CNN, offline, in seconds.

load -> check against onnxruntime -> optimize -> calibrate -> quantize (QOperator and QDQ) -> run float
and int8 on qrt -> cross-check int8 against onnxruntime -> report accuracy, size, latency, worst layers.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import onnx

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
MODEL_PATH = os.path.join(DATA_DIR, "digits_cnn.onnx")
DATA_PATH = os.path.join(DATA_DIR, "digits.npz")


def load_digits_data():
    """(calibration images, calibration labels, test images, test labels); images float32 (N, 1, 8, 8) in [0, 1]."""
    with np.load(DATA_PATH) as data:
        def images(key):
            return (data[key].astype(np.float32) / 16.0)[:, None]
        return images("calib_images"), data["calib_labels"], images("test_images"), data["test_labels"]


def batches(images, batch_size=32, input_name="image"):
    return [{input_name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)]


def accuracy(session, images, labels, batch_size=64) -> float:
    logits = np.concatenate([session.run(None, b)[0] for b in batches(images, batch_size)])
    return float(np.mean(logits.argmax(1) == labels))


def run_demo(out_dir: str, quiet: bool = False) -> dict:
    import onnxruntime as ort

    import qrt
    from qrt.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from qrt.report import compare

    say = (lambda *a: None) if quiet else print
    started = time.perf_counter()
    calib_x, _, test_x, test_y = load_digits_data()
    say(f"qrt demo: digits CNN ({os.path.getsize(MODEL_PATH) / 1024:.0f} KB), "
        f"{len(calib_x)} calibration and {len(test_x)} held-out images\n")

    # 1. float model on qrt, validated against onnxruntime
    session = qrt.InferenceSession(MODEL_PATH)
    check = qrt.check(MODEL_PATH, {"image": test_x[:64]})
    float_acc = accuracy(session, test_x, test_y)
    say(f"[1] float on qrt: held-out accuracy {float_acc:.2%}; vs onnxruntime max |diff| "
        f"{check.outputs[0].max_abs_diff:.2e} -> {'PASS' if check.passed else 'FAIL'}")

    # 2. optimize
    model = onnx.load(MODEL_PATH)
    optimized = qrt.optimize(model)
    opt_path = os.path.join(out_dir, "digits_cnn.opt.onnx")
    onnx.save(optimized, opt_path)
    say(f"[2] optimize: {len(model.graph.node)} -> {len(optimized.graph.node)} nodes "
        f"({', '.join(sorted({n.op_type for n in model.graph.node} - {n.op_type for n in optimized.graph.node})) or 'none'} removed)")

    # 3. quantize, both formats
    results = {"float_accuracy": float_acc, "check_passed": check.passed}
    paths = {}
    for fmt, label in ((QuantFormat.QOperator, "qoperator"), (QuantFormat.QDQ, "qdq")):
        path = os.path.join(out_dir, f"digits_cnn.int8.{label}.onnx")
        summary = quantize_static(opt_path, path, batches(calib_x), quant_format=fmt, per_channel=True,
                                  weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                                  calibrate_method=CalibrationMethod.MinMax)
        paths[label] = path
        int8_session = qrt.InferenceSession(path)
        acc = accuracy(int8_session, test_x, test_y)
        reference = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {"image": test_x[:256]}
        ours, theirs = int8_session.run(None, feed)[0], reference.run(None, feed)[0]
        agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
        results[f"{label}_accuracy"] = acc
        results[f"{label}_ort_top1_agreement"] = agree
        say(f"[3] int8 {label}: {len(summary.quantized)} nodes quantized, "
            f"{os.path.getsize(path) / 1024:.1f} KB ({os.path.getsize(path) / os.path.getsize(MODEL_PATH):.0%} of float); "
            f"accuracy {acc:.2%} ({(acc - float_acc) * 100:+.2f} points); "
            f"top-1 agreement with onnxruntime {agree:.2%}, max |diff| {np.abs(ours - theirs).max():.3g}")

    # 4. report
    report = compare(MODEL_PATH, paths["qoperator"], batches(test_x, 64), labels=test_y, latency_runs=20)
    html_path = os.path.join(out_dir, "report.html")
    report.to_html(html_path)
    say("\n[4] report (float vs int8 QOperator)")
    say(report)
    say(f"\nartifacts in {out_dir} (report: {html_path}); total {time.perf_counter() - started:.1f} s")
    results["report"] = report
    return results


def _parser():
    parser = argparse.ArgumentParser(prog="qrt demo", description=__doc__)
    parser.add_argument("--out", help="directory for the optimized/int8 models and report.html "
                                      "(default: a fresh temporary directory)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    out_dir = args.out or tempfile.mkdtemp(prefix="qrt-demo-")
    os.makedirs(out_dir, exist_ok=True)
    results = run_demo(out_dir)
    ok = results["check_passed"] and results["qoperator_accuracy"] >= results["float_accuracy"] - 0.02
    return 0 if ok else 1
