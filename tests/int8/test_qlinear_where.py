"""com.microsoft QLinearWhere (what quantize_static writes for Where in QOperator form): bit-exact
against onnxruntime's kernel on int8 and uint8, with broadcasting, saturation and equal/unequal
parameters."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.errors import QrtError


def _model(dtype, cond_shape, x_shape, y_shape, params):
    out_shape = list(np.broadcast_shapes(tuple(cond_shape), tuple(x_shape), tuple(y_shape)))
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    (xs, xz), (ys, yz), (zs, zz) = params
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("xs", xs), ("ys", ys), ("zs", zs))]
    inits += [numpy_helper.from_array(np.array(v, dtype), n) for n, v in (("xz", xz), ("yz", yz), ("zz", zz))]
    node = helper.make_node("QLinearWhere", ["c", "x", "xs", "xz", "y", "ys", "yz", "zs", "zz"], ["z"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "where", [helper.make_tensor_value_info("c", TensorProto.BOOL, cond_shape),
                                                helper.make_tensor_value_info("x", elem, x_shape),
                                                helper.make_tensor_value_info("y", elem, y_shape)],
                              [helper.make_tensor_value_info("z", elem, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("shapes, params", [
    (([2, 3, 4], [2, 3, 4], [2, 3, 4]), ((0.05, 3), (0.02, -7), (0.04, 1))),
    (([3, 1], [1, 4], [3, 4]), ((0.1, 0), (0.1, 0), (0.1, 0))),          # equal parameters: a copy
    (([4], [3, 4], [1]), ((0.5, 10), (0.003, 0), (0.01, -20))),           # saturating requantization
])
def test_qlinear_where_is_exact(dtype, shapes, params):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    params = tuple((s, min(max(z + (128 if dtype == np.uint8 else 0), info.min), info.max)) for s, z in params)
    model = _model(dtype, *shapes, params)
    feed = {"c": rng.random(shapes[0]) > 0.5,
            "x": rng.integers(info.min, info.max + 1, shapes[1]).astype(dtype),
            "y": rng.integers(info.min, info.max + 1, shapes[2]).astype(dtype)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = qrt.InferenceSession(model).run(None, feed)[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_qlinear_where_rejects_mixed_types():
    model = _model(np.int8, [2], [2], [2], ((0.1, 0), (0.1, 0), (0.1, 0)))
    session = qrt.InferenceSession(model)
    with pytest.raises(QrtError):
        session.run(None, {"c": np.array([True, False]), "x": np.zeros(2, np.int8), "y": np.zeros(2, np.uint8)})
