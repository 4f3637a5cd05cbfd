"""qrt's default rules for Conv -> SiLU blocks (YOLOX-style detectors exported with BatchNorm already folded),
and ``extra_options={"OnnxruntimeParity": True}``, which turns qrt's quality rules off.

Two rules, both free at run time (no extra calibration pass, no float node):

* every Conv weight gets one scale per output channel. A BatchNorm folded at export leaves the weight's
  channels spread as widely as one qrt folds itself (there it already got per-channel scales), with nothing
  in the graph to show it;
* a tensor read only by SiLU (x * Sigmoid(x)) is quantized from where SiLU's int8 output, and the
  Sigmoid's, are 0 anyway; one read only by Sigmoid from where the Sigmoid's int8 output is 0 or 1
  (:mod:`qrt.quantization.saturation`).

ddddocr's detector: 11.5 dB with onnxruntime's tool or qrt in parity mode, 17.7 with per-channel weights,
21.6 with both (tests/test_real_models_defaults.py). The model here is built to have both problems:
output channels whose weights differ 100x, and biases that push some channels to -40 before the SiLU.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrt.quantization import QuantFormat, quantize_static
from quant_models import ListReader, run_ort, sqnr_db

CHANNELS = 8
PARITY = {"OnnxruntimeParity": True}


def conv_silu(seed=0, extra_reader=False):
    rng = np.random.default_rng(seed)
    spread = np.exp(np.linspace(np.log(0.01), np.log(1.0), CHANNELS))          # channel ranges 100x apart
    w1 = rng.standard_normal((CHANNELS, 3, 3, 3)) * spread[:, None, None, None]
    b1 = np.where(np.arange(CHANNELS) % 2 == 0, -40.0, 0.5)                    # some channels far negative
    # the next conv partly compensates the small channels (as the next folded BatchNorm does in a real
    # network), so they matter to the output
    w2 = rng.standard_normal((4, CHANNELS, 1, 1)) / np.sqrt(spread)[None, :, None, None] / CHANNELS
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1] * 4),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
             helper.make_node("Mul", ["c", "s"], ["silu"], name="mul"),
             helper.make_node("Conv", ["silu", "w2"], ["y"], name="conv2")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, CHANNELS, 16, 16]))
    graph = helper.make_graph(
        nodes, "conv_silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])], outputs,
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in dict(w1=w1, b1=b1, w2=w2).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _feeds(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _lowest(inits, name):
    """The lowest value the int8 tensor ``name`` represents."""
    return (-128 - int(inits[f"{name}_zero_point"])) * float(inits[f"{name}_scale"])


def test_default_beats_parity_mode_on_conv_silu():
    model = conv_silu()
    test = _feeds(2, 1)
    reference = run_ort(model, test)[0]
    db = {}
    for name, extra in (("default", None), ("parity", PARITY)):
        summary = quantize_static(model, None, ListReader(_feeds(8, 0)), extra_options=extra)
        db[name] = sqnr_db(reference, run_ort(summary.model, test)[0])
    # measured: parity 21.1 dB, per-channel weights alone 21.4 dB, default 27.2 dB
    assert db["default"] >= db["parity"] + 4.5, db


def test_per_channel_weights_and_silu_floor_are_reported_and_undone_by_parity():
    model = conv_silu()
    default = quantize_static(model, None, ListReader(_feeds(8, 0)))
    parity = quantize_static(model, None, ListReader(_feeds(8, 0)), extra_options=PARITY)
    inits, parity_inits = _initializers(default.model), _initializers(parity.model)
    assert inits["w1_scale"].shape == (CHANNELS,) and inits["w2_scale"].shape == (4,)
    assert parity_inits["w1_scale"].size == 1 and parity_inits["w2_scale"].size == 1
    # the SiLU input: calibrated down to about -40, quantized from the floor up
    calibrated_low = default.ranges["c"][0]
    assert calibrated_low < -30.0
    assert _lowest(parity_inits, "c") <= calibrated_low + float(parity_inits["c_scale"])
    floor = _lowest(inits, "c")
    assert -12.0 < floor < -5.0, floor
    # below the floor the Sigmoid's int8 output is 0 and SiLU's int8 output rounds to 0: no value changes
    s_scale, s_zero = float(inits["s_scale"]), int(inits["s_zero_point"])
    m_scale = float(inits["silu_scale"])
    sigmoid_at_floor = 1 / (1 + math.exp(-floor))
    assert round(sigmoid_at_floor / s_scale) == 0 and s_zero == -128
    assert abs(floor * sigmoid_at_floor) < 0.5 * m_scale
    notes = " ".join(default.preprocessing)
    assert "per-channel weights for 2 Conv(s)" in notes and "SiLU" in notes
    assert not any("per-channel" in n or "saturate" in n for n in parity.preprocessing)


def test_floor_only_when_every_reader_saturates():
    """A pre-activation the graph also outputs keeps its full range."""
    summary = quantize_static(conv_silu(extra_reader=True), None, ListReader(_feeds(8, 0)))
    assert _lowest(_initializers(summary.model), "c") < -30.0


def test_sigmoid_input_is_cut_on_both_sides():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid")]
    weights = dict(w=rng.standard_normal((2, 3, 3, 3)) * 5, b=np.array([-30.0, 30.0]))
    graph = helper.make_graph(
        nodes, "conv_sigmoid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        summary = quantize_static(model, None, ListReader(_feeds(4, 0)), quant_format=fmt)
        inits = _initializers(summary.model)
        scale = float(inits["c_scale"])
        low, high = _lowest(inits, "c"), (127 - int(inits["c_zero_point"])) * scale
        # sigmoid(+-6.93) is a quarter of a step (1/255) from 0 and 1: the bounds, within a step of c's scale
        assert abs(low + 6.93) <= scale + 0.01 and abs(high - 6.93) <= scale + 0.01, (low, high)
        parity = quantize_static(model, None, ListReader(_feeds(4, 0)), quant_format=fmt, extra_options=PARITY)
        reference = run_ort(model, _feeds(2, 1))[0]
        db = [sqnr_db(reference, run_ort(m.model, _feeds(2, 1))[0]) for m in (parity, summary)]
        assert db[1] >= db[0] + 3.0, db    # measured 34.9 -> 39.0 dB in both formats


def test_parity_from_the_command_line(tmp_path):
    from qrt.quantization.cli import main
    model = tmp_path / "m.onnx"
    onnx.save(conv_silu(), model)
    np.savez(tmp_path / "calibration.npz", x=np.concatenate([f["x"] for f in _feeds(8, 0)]))
    for name, extra in (("default", []), ("parity", ["--extra", "OnnxruntimeParity=true"])):
        assert main([str(model), str(tmp_path / f"{name}.onnx"), "--calibration", str(tmp_path / "calibration.npz"),
                     "--batch-size", "1", *extra]) == 0
    default, parity = (_initializers(onnx.load(tmp_path / f"{n}.onnx")) for n in ("default", "parity"))
    assert default["w1_scale"].shape == (CHANNELS,) and parity["w1_scale"].size == 1
