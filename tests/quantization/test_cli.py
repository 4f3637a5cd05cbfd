"""``qrt quantize`` (qrt.quantization.cli.main) from argument list to written model."""
from __future__ import annotations

import numpy as np
import onnx

from qrt.quantization.cli import main
from quant_models import run_ort, sqnr_db


def test_static_from_npz(elementwise, tmp_path, capsys):
    model, make = elementwise
    onnx.save(model, tmp_path / "float.onnx")
    calib = make(8, 0)
    np.savez(tmp_path / "calib.npz", **{k: np.concatenate([f[k] for f in calib]) for k in calib[0]})
    out = tmp_path / "int8.onnx"
    code = main([str(tmp_path / "float.onnx"), str(out), "--calibration", str(tmp_path / "calib.npz"),
                 "--batch-size", "2", "--format", "qoperator", "--method", "percentile",
                 "--activation-type", "uint8", "--extra", "CalibPercentile=99.9"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "static QOperator" in printed and "% of the float model" in printed
    written = onnx.load(out)
    onnx.checker.check_model(written)
    assert "QLinearAdd" in [n.op_type for n in written.graph.node]
    test = make(4, 1)
    assert sqnr_db(run_ort(model, test)[0], run_ort(written, test)[0]) > 25


def test_dynamic(mlp, tmp_path, capsys):
    model, _ = mlp
    onnx.save(model, tmp_path / "float.onnx")
    assert main([str(tmp_path / "float.onnx"), str(tmp_path / "dyn.onnx"), "--dynamic", "--per-channel"]) == 0
    assert "dynamic" in capsys.readouterr().out
    assert "MatMulInteger" in [n.op_type for n in onnx.load(tmp_path / "dyn.onnx").graph.node]


def test_errors_exit_nonzero(elementwise, tmp_path, capsys):
    model, _ = elementwise
    onnx.save(model, tmp_path / "float.onnx")
    assert main([str(tmp_path / "float.onnx"), str(tmp_path / "o.onnx")]) == 1
    assert "needs --calibration" in capsys.readouterr().err
    assert main([str(tmp_path / "float.onnx"), str(tmp_path / "o.onnx"), "--range", "x=1"]) == 1
    assert "TENSOR=MIN,MAX" in capsys.readouterr().err
    assert main([str(tmp_path / "float.onnx"), str(tmp_path / "o.onnx"), "--calibration",
                 str(tmp_path / "missing.npz")]) == 1
    assert "missing.npz" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()
