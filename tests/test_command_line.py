"""The qrt command line: run, check and bench on a real model, and errors as messages, not tracebacks."""
import numpy as np
import pytest

from qrt.cli import main
from qrt.demo import MODEL_PATH


def test_run_with_random_inputs_and_saved_outputs(tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert main(["run", MODEL_PATH, "--dim", "batch=3", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "logits: float32[3, 10]" in text
    with np.load(out) as data:
        assert data["logits"].shape == (3, 10)


def test_run_with_an_input_file(tmp_path, capsys):
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", MODEL_PATH, "--input", str(tmp_path / "x.npy")]) == 0
    assert "logits: float32[2, 10]" in capsys.readouterr().out


def test_check_passes_against_onnxruntime(capsys):
    assert main(["check", MODEL_PATH]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "all outputs match onnxruntime" in text


def test_bench_prints_the_ratio(capsys):
    assert main(["bench", MODEL_PATH, "--runs", "3"]) == 0
    text = capsys.readouterr().out
    assert "ratio qrt/ort" in text and "cold start" in text


@pytest.mark.parametrize("argv, message", [
    (["run", "missing.onnx"], "missing.onnx: no such file"),
    (["run", MODEL_PATH, "--input", "nope.npy"], "input file 'nope.npy' does not exist"),
])
def test_errors_are_one_line_messages(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qrt: error:") and message in err and "Traceback" not in err


def test_wrong_input_dtype_is_named(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float64))
    assert main(["run", MODEL_PATH, "--input", str(tmp_path / "x.npy")]) == 2
    assert "input 'image' has dtype float64, expected float32" in capsys.readouterr().err


def test_qrt_check_stays_the_function_after_the_cli_ran_it(capsys):
    import qrt
    assert main(["check", MODEL_PATH]) == 0
    result = qrt.check(MODEL_PATH)
    assert result.passed and result.outputs[0].name == "logits"


def _detector(path):
    """A conv net declared [batch, 3, height, width] whose Concat needs height >= 2, as detectors do:
    a MaxPool(2, stride 2) -> 2x Resize branch is concatenated with the full-resolution features."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, "height", "width"])
    initializers = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
                    numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Concat", ["c", "u"], ["features"], axis=1)]
    graph = helper.make_graph(nodes, "detector", [x], [y], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def test_symbolic_spatial_dims_are_asked_for_up_front(tmp_path, capsys):
    model = _detector(tmp_path / "det.onnx")
    for command in ("run", "check", "bench"):
        assert main([command, model]) == 2
        err = capsys.readouterr().err
        assert "input 'images' ['batch', 3, 'height', 'width']: symbolic dimension 'height' (axis 2) has no value; " \
               "give one with --free-dim height=N or --shape images=" in err and "Traceback" not in err


def test_free_dims_and_shapes_make_a_detector_run(tmp_path, capsys):
    import onnxruntime as ort
    model = _detector(tmp_path / "det.onnx")
    out = tmp_path / "out.npz"
    assert main(["run", model, "--free-dim", "height=32", "--free-dim", "width=48", "--output", str(out)]) == 0
    assert "features: float32[1, 8, 32, 48]" in capsys.readouterr().out
    assert main(["run", model, "--shape", "images=2,3,16,20", "--seed", "3"]) == 0
    assert "features: float32[2, 8, 16, 20]" in capsys.readouterr().out
    # The written outputs are onnxruntime's for the same random input (qrt.feeds.random_feeds, seed 0).
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 48)).astype(np.float32)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    with np.load(out) as data:
        np.testing.assert_allclose(data["features"], want, rtol=1e-5, atol=1e-5)   # 27-term float32 dot products
    assert main(["check", model, "--free-dim", "height=16", "--free-dim", "width=16"]) == 0
    assert "all outputs match onnxruntime" in capsys.readouterr().out
    assert main(["bench", model, "--shape", "images=1,3,16,16", "--runs", "2"]) == 0
    assert "ratio qrt/ort" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--shape", "images=1,4,16,16"], "shape [1, 4, 16, 16] given for input 'images' does not fit its declared shape"),
    (["--shape", "image=1,3,16,16"], "shape given for unknown input(s) ['image']"),
    (["--shape", "images=1,3,x,16"], "--shape 'images=1,3,x,16': expected NAME=D0,D1,..."),
    (["--free-dim", "height"], "--free-dim 'height': expected NAME=VALUE"),
    (["--free-dim", "height=1", "--free-dim", "width=8"], "MaxPool output would be empty: input (1, 4, 1, 8)"),
])
def test_bad_shapes_are_named(tmp_path, capsys, argv, message):
    model = _detector(tmp_path / "det.onnx")
    assert main(["run", model, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qrt: error:") and message in err and "Traceback" not in err


def _parsers():
    import argparse
    from qrt.cli import build_parser
    from qrt.demo import _parser as demo_parser
    from qrt.optimizer.cli import _parser as optimize_parser
    from qrt.quantization.cli import _parser as quantize_parser
    from qrt.report.cli import _parser as report_parser
    from qrt.serve.cli import _parser as serve_parser
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {f"qrt {name}": p for name, p in sub.choices.items() if p.add_help}
    parsers.update({"qrt quantize": quantize_parser(), "qrt optimize": optimize_parser(),
                    "qrt report": report_parser(), "qrt demo": demo_parser(), "qrt serve": serve_parser()})
    assert set(parsers) == {f"qrt {name}" for name in sub.choices}
    return parsers


def test_every_option_of_every_subcommand_has_help():
    missing = [(name, action.dest) for name, parser in _parsers().items() for action in parser._actions
               if not action.help]
    assert not missing
