"""HardSwish against onnxruntime over its whole range: both clamp edges (x = -3 and 3), the linear
part between, large magnitudes, infinities and NaN. Tolerance: rtol 1e-6, atol 1e-7 (onnxruntime
computes x * clamp(x / 6 + 1/2) in float32, qrt in float64 rounded once: they differ by a float32 ulp
at most)."""
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import qrt


def test_hard_swish_matches_onnxruntime():
    x = np.concatenate([np.linspace(-8, 8, 4097, dtype=np.float32),
                        np.array([-3, 3, -3.0000002, 2.9999998, 0, -0.0, 1e30, -1e30, np.inf, -np.inf, np.nan],
                                 dtype=np.float32)]).reshape(1, -1)
    node = helper.make_node("HardSwish", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = qrt.InferenceSession(model).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
