"""qrt.report.compare_techniques: plain int8 against each technique, output and layer by layer.

On the depthwise chain of test_equalization.py (filter ranges 100x apart), the paper's effect must show in
the report: cross-layer equalization >= 10 dB over plain int8 at the output (measured 11.1 -> 29.0 dB,
the same numbers test_equalization.py measures with quantize_static directly). SmoothQuant finds no
LayerNorm/MatMul to smooth and writes plain int8's model again, which the report says instead of
measuring it twice.
"""
import math

import pytest

from qrt.errors import InvalidArgument
from qrt.report import TECHNIQUES, compare_techniques
from test_equalization import _images, depthwise_chain


@pytest.fixture(scope="module")
def report():
    return compare_techniques(depthwise_chain(), _images(8, 20), _images(4, 21))


def test_each_technique_is_measured_against_plain_int8(report):
    assert [run.name for run in report.runs] == list(TECHNIQUES)
    assert report.plain.name == "plain int8"
    runs = {run.name: run for run in report.runs}
    assert report.gain(runs["cross-layer equalization"]) >= 10.0, str(report)
    assert runs["SmoothQuant"].same_as_plain and report.gain(runs["SmoothQuant"]) == 0.0
    assert not runs["cross-layer equalization"].same_as_plain
    assert any("cross-layer equalization: 2 layer pair(s)" in n for n in runs["cross-layer equalization"].notes)
    # the graph output is an int8 tensor too: its layer gain is the output gain
    assert math.isclose(report.gain(runs["cross-layer equalization"], "y"),
                        report.gain(runs["cross-layer equalization"]), abs_tol=0.05)


def test_rescaled_layers_are_compared_with_the_rescaled_float_model(report):
    """Equalization divides r1's channels by their scales: against the original float model r1 would
    look like noise (negative dB); against the equalized float model it is a normal int8 tensor."""
    equalized = next(run for run in report.runs if run.name == "cross-layer equalization")
    assert {"r1", "r2", "y"} <= {t for t, _ in report.tensors}
    for tensor in ("r1", "r2"):
        assert equalized.layers[tensor] > 20.0, (tensor, equalized.layers)


def test_text_and_html(report, tmp_path):
    text = str(report)
    assert "cross-layer equalization" in text and "vs plain" in text and "same model as plain int8" in text
    page = (tmp_path / "t.html")
    report.to_html(page)
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "<svg" in html
    assert "What each technique buys" in html and "polyline" in html
    assert "qrt-report" in report._repr_html_()


def test_tune_result_is_shown_as_mixed_precision(tmp_path):
    from qrt.quantization import tune
    model = depthwise_chain()
    tuned = tune(model, _images(8, 20), None, target=25.0, eval_reader=_images(4, 21), max_seconds=60,
                 verbose=False, extra_options={"OnnxruntimeParity": True})
    report = compare_techniques(model, _images(8, 20), _images(4, 21), techniques=["plain int8"], tuned=tuned)
    assert [run.name for run in report.runs] == ["plain int8", "mixed precision"]
    assert math.isclose(report.runs[1].output_sqnr_db, tuned.metric, abs_tol=0.5)


def test_unknown_technique_is_refused():
    with pytest.raises(InvalidArgument, match="unknown technique"):
        compare_techniques(depthwise_chain(), _images(2, 0), techniques=["magic"])
