"""Fixtures for the serving tests: models, data and a server with both digits models."""
import pytest

pytest.importorskip("httpx", reason="the serving tests need httpx (pip install 'qrt[dev]')")
pytest.importorskip("fastapi", reason="qrt serve needs the serve extra (pip install 'qrt[serve]')")
pytest.importorskip("uvicorn", reason="qrt serve needs the serve extra (pip install 'qrt[serve]')")
pytest.importorskip("prometheus_client", reason="qrt serve needs the serve extra (pip install 'qrt[serve]')")

from serve_client import DIGITS, Server  # noqa: E402


@pytest.fixture(scope="session")
def digits_data():
    from qrt.demo import load_digits_data
    calib_x, _, test_x, _ = load_digits_data()
    return calib_x, test_x


@pytest.fixture(scope="session")
def digits_int8(tmp_path_factory, digits_data):
    """The digits CNN quantized by qrt.quantize_static (QDQ, per-channel) on 64 calibration images."""
    import qrt
    from qrt.demo import batches
    path = str(tmp_path_factory.mktemp("serve") / "digits.int8.onnx")
    qrt.quantize_static(DIGITS, path, batches(digits_data[0][:64]), per_channel=True)
    return path


@pytest.fixture(scope="session")
def fold_model(tmp_path_factory):
    """Reshape of x [N, 6] to [4, -1]: fails while running (node 'fold_by_four') unless 4 divides 6 N."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"], name="fold_by_four")], "fold",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, None])],
                              [helper.make_tensor("shape", TensorProto.INT64, [2], [4, -1])])
    path = str(tmp_path_factory.mktemp("serve") / "fold.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, digits_int8, fold_model):
    """Both digits models and the fold model, batching on (up to 32 rows, 5 ms), two inference threads."""
    srv = Server("--model", f"digits={DIGITS}", "--model", f"digits8={digits_int8}", "--model", f"fold={fold_model}",
                 "--max-batch", "32", "--max-delay-ms", "5", "--workers", "2",
                 tmp_path=tmp_path_factory.mktemp("serve-log"))
    yield srv
    srv.stop()


