"""The per-technique HTML report (qrt.report.compare_techniques) in headless Chromium: at a laptop width and
a phone width nothing overflows sideways (the probe of test_report_browser.py), screenshots taken.

The report is synthetic and built to be hard to lay out: 300 int8 tensors with long unbreakable names, seven
techniques (so the layer table is wide and must scroll inside its container), long notes."""
import pytest

from qrt.report import TechniqueReport, TechniqueRun
from test_report_browser import WIDTHS, layout, screenshot


def _hard_report():
    long_name = "/model/backbone/stage_3/block_12/attention/output_projection/MatMul_output_0_quantized_" * 2
    tensors = [(f"{long_name}{i}" if i % 7 == 0 else f"/blocks.{i}/conv/Conv_output_0", "Conv") for i in range(300)]
    names = ["plain int8", "qrt default", "per-channel weights", "cross-layer equalization", "bias correction",
             "SmoothQuant", "mixed precision"]
    runs = []
    for k, name in enumerate(names):
        layers = {t: 5.0 + (i * 37 % 60) + k * 1.5 for i, (t, _) in enumerate(tensors)}
        runs.append(TechniqueRun(name, f"what {name} does, described at some length " * 2, 10.0 + 2 * k, layers,
                                 0.5 * k, 0.26, notes=[f"a note with a long unbreakable name {long_name}"],
                                 same_as_plain=name == "SmoothQuant"))
    runs[5].layers = {}
    return TechniqueReport(model=f"{long_name}.onnx", samples=16, runs=runs, tensors=tensors)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("browser-techniques") / "techniques.html"
    _hard_report().to_html(path)
    return path


@pytest.mark.parametrize("width", WIDTHS)
def test_nothing_overflows_sideways(page, width):
    found = layout(page, width)
    assert found["clientWidth"] == width, found
    assert found["scrollWidth"] <= found["clientWidth"], found
    assert not found["offenders"], found


@pytest.mark.parametrize("width", WIDTHS)
def test_screenshot_at_width(page, width):
    assert screenshot(page, width, 3200, "techniques")[0] == max(width, 500)
