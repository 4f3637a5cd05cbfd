import os

import numpy as np
import onnx
import pytest
from onnx import helper

import qrt.optimizer as opt
from qrt.optimizer import cli
from optimizer_helpers import FLOAT, assert_same_outputs, make_model, random_feeds


def _model():
    return make_model(
        [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Dropout", ["b"], ["c"]), helper.make_node("Neg", ["c"], ["y"])],
        [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3])])


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(_model(), path)
    return path


def test_writes_the_optimized_model_and_prints_counts(model_file, tmp_path, capsys):
    before, mtime = model_file.read_bytes(), os.path.getmtime(model_file)
    out_path = tmp_path / "out.onnx"
    assert opt.main([str(model_file), str(out_path)]) == 0
    assert model_file.read_bytes() == before and os.path.getmtime(model_file) == mtime
    optimized = onnx.load(out_path)
    onnx.checker.check_model(optimized)
    assert opt.count_ops(optimized) == {"Relu": 1, "Neg": 1}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["op", "type", "before", "after"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert rows["Identity"] == ["1", "0"] and rows["Dropout"] == ["1", "0"] and rows["Relu"] == ["1", "1"]
    assert rows["total"] == ["4", "2"]
    assert sorted(os.listdir(tmp_path)) == ["in.onnx", "out.onnx"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out_path).st_mode & 0o777 == 0o666 & ~umask
    assert_same_outputs(_model(), optimized, random_feeds(optimized, np.random.default_rng(0)), exact=True)


def test_passes_option_limits_the_rewrites(model_file, tmp_path, capsys):
    out_path = tmp_path / "out.onnx"
    assert opt.main([str(model_file), str(out_path), "--passes", "eliminate_dropout"]) == 0
    assert opt.count_ops(onnx.load(out_path)) == {"Identity": 1, "Relu": 1, "Neg": 1}
    assert opt.main([str(model_file), str(out_path), "--level", "disabled"]) == 0
    assert opt.count_ops(onnx.load(out_path)) == opt.count_ops(_model())


def test_errors_return_1_with_a_message_and_write_nothing(model_file, tmp_path, capsys):
    out_path = tmp_path / "out.onnx"
    assert opt.main([str(model_file), str(out_path), "--passes", "nope"]) == 1
    assert "unknown optimizer pass 'nope'" in capsys.readouterr().err
    assert opt.main([str(tmp_path / "missing.onnx"), str(out_path)]) == 1
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert opt.main([str(tmp_path / "junk.onnx"), str(out_path)]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert not out_path.exists()


def test_refuses_to_overwrite_its_input(model_file, capsys):
    before = model_file.read_bytes()
    assert opt.main([str(model_file), str(model_file)]) == 1
    assert "never overwrites its input" in capsys.readouterr().err
    assert model_file.read_bytes() == before


def test_failed_write_keeps_the_previous_output_and_leaves_no_temp_file(model_file, tmp_path, monkeypatch):
    out_path = tmp_path / "out.onnx"
    out_path.write_bytes(b"previous")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cli.os, "replace", fail)
    assert opt.main([str(model_file), str(out_path)]) == 1
    assert out_path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["in.onnx", "out.onnx"]


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        opt.main(["only_one_argument.onnx"])
    assert exc.value.code == 2
    assert "qrt optimize" in capsys.readouterr().err
