"""qrt.report: metrics chosen per output kind, shape arithmetic counted apart, a valid self-contained HTML page.

The model built here has the three output kinds and an exporter-style shape computation (Shape -> Gather ->
Unsqueeze -> Concat -> Mul on int64 feeding a Reshape) on a symbolic batch dimension; the real-model cases use
ddddocr's OCR model (symbolic width, int64 shape arithmetic, per-timestep CTC logits) and its YOLOX
detector (a [1, 3549, 6] box/objectness/class tensor, where top-1 agreement would mean nothing).
"""
import html.parser
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.errors import InvalidArgument
from qrt.report import compare, exact_agreement, node_coverage, output_kind, topk_agreement


def _kinds_model():
    rng = np.random.default_rng(14)

    def weight(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits = [weight("w1", [8, 16]), weight("w_cls", [16, 10]), weight("w_box", [16, 4]),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([4, 4], np.int64), "tail"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h_pre"], name="fc1"),
        helper.make_node("Relu", ["h_pre"], ["h"], name="relu1"),
        helper.make_node("MatMul", ["h", "w_cls"], ["logits"], name="classifier"),
        helper.make_node("MatMul", ["h", "w_box"], ["boxes"], name="box_head"),
        helper.make_node("ArgMax", ["logits"], ["class_ids"], name="argmax", axis=1, keepdims=0),
        # the reshape arithmetic an exporter writes for a symbolic batch: [batch * 1, 4, 4]
        helper.make_node("Shape", ["h"], ["h_shape"], name="shape"),
        helper.make_node("Gather", ["h_shape", "zero"], ["batch"], name="gather_batch", axis=0),
        helper.make_node("Mul", ["batch", "one"], ["batch_times_one"], name="mul_batch"),
        helper.make_node("Concat", ["batch_times_one", "tail"], ["new_shape"], name="concat_shape", axis=0),
        helper.make_node("Reshape", ["h", "new_shape"], ["feature_map"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes, "kinds",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("class_ids", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, ["batch", 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count=4, batch=16, seed=3):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 8)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module", params=["QOperator", "QDQ"])
def kinds_report(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    float_path, int8_path = str(folder / "kinds.onnx"), str(folder / f"kinds.{request.param}.onnx")
    onnx.save(_kinds_model(), float_path)
    qrt.quantize_static(float_path, int8_path, _feeds(seed=5), quant_format=getattr(qrt.QuantFormat, request.param))
    return request.param, float_path, int8_path, compare(float_path, int8_path, _feeds(), latency_runs=2)


def test_kind_heuristic_rules():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 10))
    assert output_kind("output", logits) == "scores"                       # [batch, classes]
    assert output_kind("output", np.arange(8)) == "indices"                # integer
    assert output_kind("pred_boxes", logits) == "regression"               # the name says so
    assert output_kind("target_label", logits) == "scores"
    softmax = np.exp(rng.standard_normal((2, 50, 30)))
    assert output_kind("out", softmax / softmax.sum(-1, keepdims=True)) == "scores"   # per-token probabilities
    assert output_kind("out", rng.standard_normal((1, 3549, 6)) * 100) == "regression"  # detector head
    embedding = rng.standard_normal((4, 384))
    assert output_kind("out", embedding / np.linalg.norm(embedding, axis=-1, keepdims=True)) == "regression"
    assert output_kind("out", rng.standard_normal((4, 1))) == "regression"  # one logit: no arg-max to agree on
    assert output_kind("out", rng.standard_normal((1, 16, 8, 8))) == "regression"  # feature map


def test_topk_and_exact_agreement_on_known_values():
    reference = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    test = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.5, 0.3, 0.4]])
    assert topk_agreement(reference, test, 1) == pytest.approx(1 / 3)
    # row 0: float's class 1 is int8's second best, row 2: float's class 2 is int8's second best
    assert topk_agreement(reference, test, 2) == pytest.approx(1.0)
    assert exact_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == pytest.approx(0.75)


def test_metrics_follow_the_output_kind(kinds_report):
    _, _, _, report = kinds_report
    by_name = {o.name: o for o in report.outputs}
    assert {name: o.kind for name, o in by_name.items()} == {
        "logits": "scores", "boxes": "regression", "class_ids": "indices", "feature_map": "regression"}
    logits = by_name["logits"]
    assert logits.top1_agreement > 0.8 and logits.top5_agreement >= logits.top1_agreement
    for name in ("boxes", "feature_map"):
        assert by_name[name].top1_agreement is None and by_name[name].top5_agreement is None
        assert 15 < by_name[name].sqnr_db < 80 and by_name[name].cosine > 0.97
    # class_ids is the arg-max of logits: equal exactly where the top-1 agrees
    assert by_name["class_ids"].exact_agreement == pytest.approx(by_name["logits"].top1_agreement)
    boxes_line = next(line for line in str(report).splitlines() if "boxes [regression]" in line)
    assert "SQNR" in boxes_line and "top-1" not in boxes_line


def test_shape_arithmetic_is_counted_apart(tmp_path):
    coverage = node_coverage(_kinds_model())
    assert sorted(op for _, op in coverage.shape) == ["Concat", "Gather", "Mul", "Shape"]
    assert sorted(name for name, _ in coverage.float) == ["box_head", "classifier", "fc1", "relu1"]
    # a report on a model that keeps its shape arithmetic (qrt's quantizer folds this one away): counted apart
    path = str(tmp_path / "kinds.onnx")
    onnx.save(_kinds_model(), path)
    report = compare(path, path, _feeds(count=1), latency_runs=0, layers=False)
    assert len(report.shape_nodes) == 4 and len(report.float_nodes) == 4 and report.int8_share == 0.0
    assert re.search(r"shape computation +4: ", str(report))
    page = report._repr_html_()
    assert re.search(r"shape computation</td><td class='num'>4</td>", page)


def test_int8_coverage_in_both_formats(kinds_report):
    fmt, _, _, report = kinds_report
    # the three MatMuls compute in int8 (QLinearMatMul, or MatMul in a QDQ unit); ArgMax reads float logits
    assert len([op for _, op in report.quantized_nodes if op in ("QLinearMatMul", "MatMul")]) == 3, \
        report.quantized_nodes
    assert not report.float_nodes and report.int8_share == 1.0, report.float_nodes


def test_output_kind_override_and_unknown_names(kinds_report):
    _, float_path, int8_path, _ = kinds_report
    report = compare(float_path, int8_path, _feeds(count=1), latency_runs=0, layers=False,
                     output_kinds={"logits": "regression", "boxes": "scores"})
    by_name = {o.name: o for o in report.outputs}
    assert by_name["logits"].kind == "regression" and by_name["logits"].top1_agreement is None
    assert by_name["boxes"].kind == "scores" and by_name["boxes"].top1_agreement is not None
    with pytest.raises(InvalidArgument, match="not outputs"):
        compare(float_path, int8_path, _feeds(count=1), latency_runs=0, layers=False, output_kinds={"nope": "scores"})
    with pytest.raises(InvalidArgument, match="unknown output kind"):
        compare(float_path, int8_path, _feeds(count=1), latency_runs=0, layers=False, output_kinds={"boxes": "box"})


class _Checker(html.parser.HTMLParser):
    """Collects tags and checks nesting of the elements that must close."""

    VOID = {"meta", "br", "img", "line", "circle", "polyline", "input", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.errors, self.attrs = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def test_html_is_valid_and_self_contained(kinds_report, tmp_path):
    _, _, _, report = kinds_report
    path = report.to_html(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert {"html", "head", "style", "body", "main", "table", "svg"} <= set(checker.tags)
    assert "script" not in checker.tags and "link" not in checker.tags and "iframe" not in checker.tags
    # nothing fetched: the only URL is the SVG namespace, which is a name, not a request
    urls = set(re.findall(r"(?:https?:)?//[\w.-]+[^\s'\"<>]*", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert not any(name in ("src", "href") and not value.startswith("data:") for name, value in checker.attrs
                   if value), [a for a in checker.attrs if a[0] in ("src", "href")]
    assert "name='viewport'" in page and "overflow-x: auto" in page and "max-width: 100%" in page
    assert path == tmp_path / "report.html"
    # one verdict banner, the summary before the outputs and the layers
    assert page.count("class='verdict ") == 1
    assert page.index("class='verdict") < page.index("Outputs: int8 against float") < page.index("Layer by layer")
    assert "<strong>SQNR</strong>" not in page  # values are bold, labels are not
    assert "class_ids" in page and "indices" in page


def _ort_float_output(path, feeds):
    import onnxruntime as ort
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_detector_boxes_are_regression_not_scores():
    """ddddocr's YOLOX head [1, 3549, 6] (box, objectness, class per anchor) on a click-captcha scene."""
    import real_models as rm
    path = rm.model_path("ddddocr==1.6.1", "ddddocr/common_det.onnx")
    boxes, = _ort_float_output(path, {"images": rm.detector_input(rm.click_captcha_image(0))})
    assert boxes.shape == (1, 3549, 6)
    assert output_kind("output", boxes) == "regression"


def test_real_ocr_model_with_symbolic_width(tmp_path):
    """ddddocr's OCR model: symbolic width, int64 Shape/Gather/Mul/Concat arithmetic, per-timestep logits out.

    The output ([time, 1, 8210], declared stale as [1, seqlen]) is 3-D, which the heuristic takes for
    regression like a detector head; a caller who knows it holds CTC class scores says so."""
    import real_models as rm
    path = rm.model_path("ddddocr==1.6.1", "ddddocr/common.onnx")
    float_coverage = node_coverage(onnx.load(path))
    assert {op for _, op in float_coverage.shape} >= {"Shape", "Gather", "Concat", "Mul"}
    assert not [entry for entry in float_coverage.float if entry[1] in ("Gather", "Unsqueeze")]
    int8_path = str(tmp_path / "common.dynamic.onnx")
    qrt.quantize_dynamic(path, int8_path)
    feeds = [{"input1": rm.ocr_input(rm.captcha_image(seed))} for seed in (0, 1)]
    report = compare(path, int8_path, feeds, latency_runs=0, layers=False)
    output, = report.outputs
    assert output.kind == "regression" and output.top1_agreement is None and output.sqnr_db > 10
    as_scores, = compare(path, int8_path, feeds, latency_runs=0, layers=False, output_kinds={"387": "scores"}).outputs
    assert as_scores.kind == "scores" and as_scores.top1_agreement >= 0.9  # the decoded characters mostly agree
    assert report.shape_nodes and all(op in {"Shape", "Gather", "Unsqueeze", "Concat", "Mul"}
                                      for _, op in report.shape_nodes)
    # dynamic quantization's rescaling Mul/Add and the shape Muls are not float compute; SiLU's Mul is
    assert len([1 for _, op in report.float_nodes if op == "Mul"]) == 11
    assert "ConvInteger" in {op for _, op in report.quantized_nodes}


def test_verdict_follows_the_weakest_output():
    from qrt.report import OutputError, Report

    def verdict(*outputs, accuracy=None):
        report = Report("f.onnx", "q.onnx", 10, outputs=list(outputs))
        if accuracy:
            report.accuracy_float, report.accuracy_int8 = accuracy
        return report.verdict()

    scores = OutputError("logits", "scores", 0.1, 0.01, 35.0, 0.999, top1_agreement=0.995)
    assert verdict(scores)[0] == "good"
    assert verdict(scores, accuracy=(0.95, 0.92))[0] == "poor"          # 3 points of accuracy lost
    drifting = OutputError("logits", "scores", 5.0, 1.0, 15.4, 0.98, top1_agreement=1.0)
    level, reason = verdict(drifting)
    assert level == "fair" and "15.4 dB" in reason                     # same classes, drifting probabilities
    boxes = OutputError("boxes", "regression", 1.5, 0.1, 10.3, 0.95)
    level, reason = verdict(scores, boxes)
    assert level == "poor" and reason.startswith("boxes: SQNR 10.3 dB")
    ids = OutputError("ids", "indices", 1.0, 0.01, 30.0, 0.99, exact_agreement=0.96)
    assert verdict(scores, ids)[0] == "fair"


def test_cli_output_kind_flag(kinds_report, tmp_path, capsys):
    from qrt.cli import main
    _, float_path, int8_path, _ = kinds_report
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.concatenate([f["x"] for f in _feeds(count=2)]))
    page = tmp_path / "report.html"
    assert main(["report", float_path, int8_path, "--data", str(data), "--runs", "0", "--html", str(page),
                 "--output-kind", "logits=regression", "--output-kind", "class_ids=indices"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"logits \[regression\] +SQNR", text) and re.search(r"class_ids \[indices\] +equal", text)
    assert "boxes [regression]" in text
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert main(["report", float_path, int8_path, "--data", str(data), "--output-kind", "logits"]) != 0
    assert "expected NAME=KIND" in capsys.readouterr().err
