"""qrt demo and qrt.report on the bundled digits CNN: the main job, end to end."""
import os

import numpy as np
import pytest

from qrt.demo import batches, load_digits_data, run_demo
from qrt.report import compare, cosine_similarity, sqnr_db, top1_agreement


def test_metrics_on_known_values():
    x = np.array([1.0, -2.0, 3.0, 0.5])
    assert sqnr_db(x, x) == float("inf")
    # noise power 0.01*4 against signal power 14.25: 10*log10(14.25/0.04)
    assert sqnr_db(x, x + 0.1) == pytest.approx(10 * np.log10(14.25 / 0.04))
    assert cosine_similarity(x, 2 * x) == pytest.approx(1.0)
    assert cosine_similarity(x, -x) == pytest.approx(-1.0)
    assert top1_agreement(np.eye(3), np.eye(3)[[0, 2, 1]]) == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(str(out), quiet=True)


def test_demo_accuracy_float_vs_int8(demo):
    out, results = demo
    assert results["check_passed"]
    assert results["float_accuracy"] > 0.95
    # int8 within one accuracy point of float on the held-out digits, in both formats
    for fmt in ("qoperator", "qdq"):
        assert results[f"{fmt}_accuracy"] >= results["float_accuracy"] - 0.01, fmt
        assert results[f"{fmt}_ort_top1_agreement"] >= 0.98, fmt
    for name in ("digits_cnn.opt.onnx", "digits_cnn.int8.qoperator.onnx", "digits_cnn.int8.qdq.onnx", "report.html"):
        assert os.path.getsize(out / name) > 0


def test_demo_report_contents(demo):
    out, results = demo
    report = results["report"]
    assert report.samples == 540
    assert report.size_int8 <= 0.5 * report.size_float
    assert report.weight_bytes_int8.get("int8", 0) > 0
    assert report.layers and report.layers == sorted(report.layers, key=lambda l: l.sqnr_db)
    assert all(np.isfinite(l.sqnr_db) and l.sqnr_db > 10 for l in report.layers)
    assert report.outputs[0].sqnr_db > 15 and report.outputs[0].cosine > 0.98
    assert set(report.latency_ms) >= {"qrt float", "qrt int8"}
    assert {op for _, op in report.quantized_nodes} >= {"QLinearConv"}
    text = str(report)
    assert "Worst layers" in text and "accuracy int8" in text
    html = (out / "report.html").read_text()
    assert "<table>" in html and "<svg " in html and "<style>" in html
    assert report.outputs[0].kind == "scores" and report.outputs[0].top5_agreement >= report.outputs[0].top1_agreement
    assert report.verdict()[0] == "good" and not report.shape_nodes


def test_compare_without_labels_on_a_reader():
    from calibration import as_reader
    _, _, test_x, _ = load_digits_data()
    from qrt.demo import MODEL_PATH
    report = compare(MODEL_PATH, MODEL_PATH, as_reader(batches(test_x[:64])), latency_runs=0, layers=False)
    assert report.accuracy_float is None
    assert report.outputs[0].max_abs == 0.0 and report.outputs[0].top1_agreement == 1.0
