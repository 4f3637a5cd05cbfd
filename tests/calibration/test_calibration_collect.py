"""collect_ranges on qrt's InferenceSession, against onnxruntime's calibrator and numpy."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import calibration as C
from calibration import CalibrationMethod, collect_ranges
from qrt.errors import QuantizationError

W = np.array([0.5, -1.0, 2.0, 1.5], np.float32)
B = np.array([0.25, 0.0, -0.5, 1.0], np.float32)


def _model():
    nodes = [
        helper.make_node("Mul", ["x", "W"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Greater", ["x", "zero"], ["g"]),        # bool: not calibrated
        helper.make_node("Where", ["g", "x", "r"], ["w"]),
        helper.make_node("Add", ["r", "B"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "calib_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B"),
                     numpy_helper.from_array(np.float32(0), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _batches(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((3 + i, 4)) * (1 + i)).astype(np.float32)} for i in range(n)]


def _numpy_activations(x):
    a = x * W
    r = np.maximum(a, 0)
    return {"x": x, "a": a, "r": r, "w": np.where(x > 0, x, r), "y": r + B}


def test_minmax_matches_numpy_and_skips_non_float_tensors():
    batches = _batches()
    ranges = collect_ranges(_model(), batches, progress=False)
    assert set(ranges) == {"x", "a", "r", "w", "y"}        # g is bool; initializers not by default
    per_batch = [_numpy_activations(b["x"]) for b in batches]
    for name, (rmin, rmax) in ranges.items():
        assert rmin == float(min(p[name].min() for p in per_batch)), name
        assert rmax == float(max(p[name].max() for p in per_batch)), name


def test_minmax_matches_onnxruntime_calibrator(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod, create_calibrator
    path = tmp_path / "model.onnx"
    onnx.save(_model(), path)
    batches = _batches(seed=1)
    for symmetric in (False, True):
        calibrator = create_calibrator(str(path), augmented_model_path=str(tmp_path / "aug.onnx"),
                                       calibrate_method=OrtMethod.MinMax,
                                       extra_options={"symmetric": symmetric})
        calibrator.collect_data(C.as_reader(batches))
        expected = {k: tuple(float(np.asarray(v).reshape(-1)[0]) for v in d.range_value) for k, d in calibrator.compute_data().items()}
        got = collect_ranges(str(path), batches, method="MinMax", progress=False, symmetric=symmetric)
        assert {"x", "a", "r", "w", "y"} <= set(expected) <= set(got)
        for name in expected:
            assert got[name] == expected[name], (name, symmetric)


def test_explicit_tensor_names_and_initializers():
    batches = _batches(2)
    ranges = collect_ranges(_model(), batches, tensor_names=["r", "g", "W", "r"], progress=False)
    assert set(ranges) == {"r", "W"}                       # g skipped: bool
    assert ranges["W"] == (float(W.min()), float(W.max()))
    with pytest.raises(QuantizationError, match=r"no tensor\(s\) named \['nope'\]"):
        collect_ranges(_model(), batches, tensor_names=["nope"], progress=False)


@pytest.mark.parametrize("method", [m for m in CalibrationMethod if m is not CalibrationMethod.MinMax])
def test_histogram_methods_through_collect(method, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    reader = C.as_reader(tmp_path / "calib.npz", batch_size=16)
    ranges = collect_ranges(_model(), reader, tensor_names=["a", "y"], method=method, progress=False,
                            num_bins=256)
    acts = _numpy_activations(x)
    for name in ("a", "y"):
        rmin, rmax = ranges[name]
        if method is CalibrationMethod.Distribution:
            absmax = float(np.abs(acts[name]).max())
            assert (rmin, rmax) == (-absmax, absmax)
        else:
            assert acts[name].min() <= rmin < rmax <= acts[name].max()


def test_providers_and_default_method_pass_through():
    batches = _batches(2)
    assert collect_ranges(_model(), batches, ["y"], None, False, providers=["CPUExecutionProvider"]) == \
        collect_ranges(_model(), batches, ["y"], CalibrationMethod.MinMax, False)


def test_observers_are_returned_by_calibrate():
    observers = C.calibrate(_model(), _batches(3), tensor_names=["y"], method="distribution",
                            progress=False)
    y = np.concatenate([_numpy_activations(b["x"])["y"].ravel() for b in _batches(3)]).astype(np.float64)
    mean, std = observers["y"].compute_distribution()
    assert mean == pytest.approx(y.mean(), rel=1e-9) and std == pytest.approx(y.std(), rel=1e-9)


def test_errors_name_the_batch_and_tensor():
    model = _model()
    with pytest.raises(QuantizationError, match="produced no batches"):
        collect_ranges(model, [], progress=False)
    good = {"x": np.ones((2, 4), np.float32)}
    with pytest.raises(QuantizationError, match=r"batch 1 has unknown input name\(s\) \['X'\]"):
        collect_ranges(model, [good, {"X": good["x"]}], progress=False)
    with pytest.raises(QuantizationError, match=r"batch 0 lacks input\(s\) \['x'\]"):
        collect_ranges(model, [{}], progress=False)
    with pytest.raises(QuantizationError, match=r"batch 0 failed: .*'x' has dtype float64"):
        collect_ranges(model, [{"x": np.ones((2, 4))}], progress=False)
    with pytest.raises(QuantizationError, match=r"batch 0 failed: .*'x' has shape \[2, 5\]"):
        collect_ranges(model, [{"x": np.ones((2, 5), np.float32)}], progress=False)
    bad = np.ones((2, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(QuantizationError, match=r"batch 1, input 'x': 1 NaN or infinite"):
        collect_ranges(model, [good, {"x": bad}], progress=False)
    huge = np.full((2, 4), 3e38, np.float32)                 # x * W overflows in 'a'
    with np.errstate(over="ignore"), pytest.raises(QuantizationError, match=r"batch 0, activation '(a|r|w|y)': .*infinite"):
        collect_ranges(model, [{"x": huge}], progress=False)
    with pytest.raises(QuantizationError, match="is a list, expected a dict"):
        collect_ranges(model, [[good["x"]]], progress=False)
    with pytest.raises(QuantizationError, match="unknown calibration option"):
        collect_ranges(model, [good], progress=False, bins=3)


def test_progress_bar_is_quiet_without_a_terminal(capsys):
    collect_ranges(_model(), _batches(2))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
