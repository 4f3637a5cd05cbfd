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


def _detector_head(path):
    """Conv features reshaped to a target computed from the dynamic batch and height by Shape/Gather/
    Unsqueeze/Concat, as YOLO exports do: six integer shape-computation nodes beside the float ops."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    consts = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
              numpy_helper.from_array(np.array(0, np.int64), "i0"),
              numpy_helper.from_array(np.array(2, np.int64), "i2"),
              numpy_helper.from_array(np.array([0], np.int64), "axes"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i0"], ["n"], name="gather_n"),
             helper.make_node("Gather", ["s", "i2"], ["h"], name="gather_h"),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze_n"),
             helper.make_node("Unsqueeze", ["h", "axes"], ["h1"], name="unsqueeze_h"),
             helper.make_node("Concat", ["n1", "h1", "minus_one"], ["target"], name="concat_shape", axis=0),
             helper.make_node("Reshape", ["r", "target"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "H", 32])], consts)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    np.savez(path.parent / "calib.npz", x=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    return str(path), str(path.parent / "calib.npz")


SHAPE_NODES = ["shape", "gather_n", "gather_h", "unsqueeze_n", "unsqueeze_h", "concat_shape"]


def test_shape_computation_is_one_line_unless_verbose(tmp_path, capsys):
    model, calib = _detector_head(tmp_path / "head.onnx")
    argv = [model, str(tmp_path / "int8.onnx"), "--calibration", calib, "--batch-size", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 shape-computation node(s) stay as they are: Gather x2, Unsqueeze x2, Shape x1, Concat x1" in printed
    assert not any(f"'{name}'" in printed for name in SHAPE_NODES), printed
    assert main(argv + ["--verbose"]) == 0
    verbose = capsys.readouterr().out
    assert "shape-computation" not in verbose
    for name in SHAPE_NODES:
        assert f"'{name}': " in verbose


def test_summary_object_keeps_every_float_node_and_reason(tmp_path):
    from qrt.quantization import quantize_static
    model, calib = _detector_head(tmp_path / "head.onnx")
    data = np.load(calib)["x"]
    summary = quantize_static(model, None, [{"x": data[i:i + 2]} for i in range(0, 8, 2)])
    shape = {r.name: r for r in summary.float_nodes if r.shape_computation}
    assert sorted(shape) == sorted(SHAPE_NODES)
    assert all(r.detail for r in shape.values())
    assert {r.name for r in summary.quantized} >= {"conv"}


def test_paddle_style_model_quantizes_and_runs(tmp_path, capsys):
    """PaddlePaddle exports: a -1 batch dim and graph outputs typed without a shape, which
    onnx.checker rejects and onnxruntime runs; the quantized model must load in onnxruntime too."""
    import pytest
    model, calib = _detector_head(tmp_path / "head.onnx")
    proto = onnx.load(model)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_value = -1
    proto.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(proto, tmp_path / "paddle.onnx")
    out = tmp_path / "paddle.int8.onnx"
    with pytest.warns(UserWarning, match="field 'shape'"):
        assert main([str(tmp_path / "paddle.onnx"), str(out), "--calibration", calib]) == 0
    x = np.load(calib)["x"][:3]
    float_y, int8_y = run_ort(proto, [{"x": x}])[0], run_ort(onnx.load(out), [{"x": x}])[0]
    assert int8_y.shape == (3, 8, 32) and sqnr_db(float_y, int8_y) > 25
