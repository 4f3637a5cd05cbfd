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
