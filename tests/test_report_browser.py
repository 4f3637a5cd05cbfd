"""The HTML report in a real headless browser: at a laptop width and a phone width nothing overflows sideways.

Chromium (the OS package: ``apt-get install chromium``) loads a harness page that shows the report in an
iframe exactly ``width`` CSS pixels wide (headless Chromium will not make a window narrower than 500 px, an
iframe has no such floor, and the report's media queries answer to it). After layout a probe script in the
harness opens every <details> of the report, then writes into the DOM the report's scrollWidth and
clientWidth and every visible element whose box sticks out of the viewport (elements inside a ``.scroll``
container may: scrolling them is that container's job, and the container itself is checked). ``--dump-dom``
prints the DOM, the test reads the probe's verdict back. The report written before this check (a 1350-px
PNG under unstyled tables) fails it at both widths.

The report is a synthetic one built to be hard to lay out (300 layers, long unbreakable tensor names, every
output kind, every section filled), plus the real one ``qrt demo`` writes. Screenshots at each width are
taken too and checked for size; set QRT_REPORT_SHOTS=folder to keep them for a look.

Skipped when no Chromium binary is on PATH; QRT_REQUIRE_BROWSER=1 makes that a failure (CI sets it where it
installs Chromium).
"""
import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from qrt.report import LayerError, OutputError, Report

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                if shutil.which(name)), None)
WIDTHS = (1280, 420)

if BROWSER is None:
    if os.environ.get("QRT_REQUIRE_BROWSER") == "1":
        raise RuntimeError("QRT_REQUIRE_BROWSER=1 but no chromium binary is on PATH (apt-get install chromium)")
    pytest.skip("no chromium binary on PATH (apt-get install chromium); the layout check needs a real browser",
                allow_module_level=True)

_PROBE = """<script>
window.addEventListener('load', function () {
  var doc = document.getElementById('report').contentDocument;
  doc.querySelectorAll('details').forEach(function (d) { d.open = true; });
  var root = doc.documentElement, width = root.clientWidth, offenders = [];
  doc.querySelectorAll('body *').forEach(function (el) {
    var box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) return;
    if (el.parentElement && el.parentElement.closest('.scroll')) return;
    if (box.right > width + 0.5 || box.left < -0.5)
      offenders.push(el.tagName.toLowerCase() + (typeof el.className === 'string' && el.className
        ? '.' + el.className : '') + ' ' + Math.round(box.left) + '..' + Math.round(box.right));
  });
  var out = document.createElement('pre');
  out.textContent = 'QRT-LAYOUT' + JSON.stringify({scrollWidth: root.scrollWidth, clientWidth: width,
                                                   offenders: offenders.slice(0, 20)}) + 'QRT-LAYOUT';
  document.body.appendChild(out);
});
</script>"""


def _chromium(*args, timeout=90):
    # --no-sandbox: the test may run as root (containers, CI); the page is our own local file
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", "--disable-extensions", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _harness(html_path, width, height, probe):
    """A page showing ``html_path`` in a ``width`` x ``height`` iframe (srcdoc: same origin as the probe)."""
    page = html_path.read_text(encoding="utf-8")
    harness = html_path.with_name(f"{html_path.stem}.harness{width}{'-probe' if probe else ''}.html")
    harness.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><style>body{margin:0}iframe{border:0;display:block}"
        f"</style></head><body><iframe id='report' width='{width}' height='{height}' "
        f"srcdoc='{html.escape(page, quote=True)}'></iframe>{_PROBE if probe else ''}</body></html>",
        encoding="utf-8")
    return harness


def layout(html_path, width, height=900):
    """The probe's findings for ``html_path`` rendered ``width`` CSS pixels wide."""
    harness = _harness(html_path, width, height, probe=True)
    done = _chromium(f"--window-size={max(width, 500) + 20},{height}", "--virtual-time-budget=3000",
                     "--dump-dom", harness.as_uri())
    found = re.search(r"QRT-LAYOUT(.*?)QRT-LAYOUT", done.stdout)
    assert found, f"chromium printed no probe result (exit {done.returncode}): {done.stderr[-1500:]}"
    return json.loads(found.group(1))


def screenshot(html_path, width, height, name):
    """A PNG of the report at ``width`` (the harness page is at least 500 px wide; the report sits at the left)."""
    folder = os.environ.get("QRT_REPORT_SHOTS")
    target = os.path.join(folder, f"{name}-{width}.png") if folder else str(html_path.with_name(f"{name}-{width}.png"))
    harness = _harness(html_path, width, height, probe=False)
    done = _chromium(f"--window-size={max(width, 500)},{height}", f"--screenshot={target}", harness.as_uri())
    assert os.path.isfile(target), f"no screenshot (exit {done.returncode}): {done.stderr[-1500:]}"
    with open(target, "rb") as png:
        header = png.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def _hard_report():
    long_name = "/model/backbone/stage_3/block_12/attention/output_projection/MatMul_output_0_quantized_" * 2
    layers = [LayerError(f"{long_name}{i}" if i % 7 == 0 else f"/blocks.{i}/conv/Conv_output_0",
                         ["Conv", "Mul", "Sigmoid", "Concat"][i % 4], 5.0 + (i * 37 % 60) + (i % 3) * 0.3, i)
              for i in range(300)]
    layers.append(LayerError("identical_tensor", "Relu", float("inf"), 300))
    layers.sort(key=lambda l: l.sqnr_db)
    return Report(
        float_model="a_float_model_with_a_rather_long_file_name_exported_from_some_framework_v2.onnx",
        int8_model="a_float_model_with_a_rather_long_file_name_exported_from_some_framework_v2.int8.qdq.onnx",
        samples=64,
        outputs=[OutputError("class_logits_over_the_whole_vocabulary", "scores", 3.2, 0.1, 27.5, 0.998, 0.97, 0.995),
                 OutputError(long_name, "regression", 1.5, 0.1, 10.3, 0.95),
                 OutputError("decoded_ids", "indices", 3.0, 0.02, 12.0, 0.99, exact_agreement=0.98)],
        layers=layers, accuracy_float=0.91, accuracy_int8=0.885, size_float=19_200_000, size_int8=4_900_000,
        weight_bytes_float={"float32": 19_100_000, "int64": 112},
        weight_bytes_int8={"float32": 1_700, "int32": 33_900, "int64": 112, "int8": 4_800_000},
        latency_ms={"qrt float": 398.0, "qrt int8": 248.4, "onnxruntime float": 148.4, "onnxruntime int8": 368.1},
        quantized_nodes=[(f"Conv_{i}", "Conv") for i in range(265)],
        float_nodes=[(f"{long_name}Resize_{i}", "Resize") for i in range(2)],
        shape_nodes=[("Shape_1", "Shape"), ("Gather_2", "Gather"), ("Concat_3", "Concat"), ("Mul_4", "Mul")])


@pytest.fixture(scope="module")
def hard_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("browser") / "hard.html"
    _hard_report().to_html(path)
    return path


@pytest.mark.parametrize("width", WIDTHS)
def test_nothing_overflows_sideways(hard_page, width):
    found = layout(hard_page, width)
    assert found["clientWidth"] == width, found          # the window really is that wide
    assert found["scrollWidth"] <= found["clientWidth"], found
    assert not found["offenders"], found


@pytest.mark.parametrize("width", WIDTHS)
def test_screenshot_at_width(hard_page, width):
    assert screenshot(hard_page, width, 3200, "hard")[0] == max(width, 500)


def test_the_old_unstyled_report_would_fail(tmp_path):
    """The probe is a real check: a page with a fixed-width plot, as the report used to embed, fails it."""
    page = tmp_path / "old.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body><table><tr><td>x</td></tr>"
                    "</table><img width='1350' height='360' src='data:image/gif;base64,"
                    "R0lGODlhAQABAAAAACw='/></body></html>", encoding="utf-8")
    found = layout(page, 1280)
    assert found["scrollWidth"] > found["clientWidth"] and found["offenders"], found


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_demo_report_fits(width, tmp_path_factory):
    """The report ``qrt demo`` writes, from the real digits CNN, float against its int8 QOperator model."""
    from qrt.demo import run_demo
    out = tmp_path_factory.getbasetemp() / "browser-demo"
    if not (out / "report.html").exists():
        out.mkdir(exist_ok=True)
        run_demo(str(out), quiet=True)
    found = layout(out / "report.html", width)
    assert found["scrollWidth"] <= found["clientWidth"] and not found["offenders"], found
    screenshot(out / "report.html", width, 3000, "demo")


@pytest.mark.slow
def test_real_model_report_fits(tmp_path):
    """ddddocr's OCR model (symbolic width, int64 shape arithmetic), float against qrt's dynamic int8 version."""
    import qrt
    import real_models as rm
    from qrt.report import compare
    path = rm.model_path("ddddocr==1.6.1", "ddddocr/common.onnx")
    int8_path = str(tmp_path / "common.dynamic.onnx")
    qrt.quantize_dynamic(path, int8_path)
    feeds = [{"input1": rm.ocr_input(rm.captcha_image(seed))} for seed in (0, 1)]
    page = Path(compare(path, int8_path, feeds, latency_runs=2).to_html(tmp_path / "ocr.html"))
    for width in WIDTHS:
        found = layout(page, width)
        assert found["scrollWidth"] <= found["clientWidth"] and not found["offenders"], (width, found)
        screenshot(page, width, 2600, "ocr")
