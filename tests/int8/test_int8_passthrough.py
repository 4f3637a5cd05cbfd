"""int8 data moving through the data-movement ops without a float round trip.

A chain QuantizeLinear -> MaxPool -> Transpose -> Reshape -> Resize (nearest) -> Concat -> Slice ->
Pad -> Split -> Gather -> Squeeze/Unsqueeze -> Flatten -> DequantizeLinear, on uint8 and int8: the
quantized tensors pass every op as 8-bit data and the result equals onnxruntime's exactly.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from int8_helpers import run_ort, run_qrt

MOVEMENT = ["MaxPool", "Transpose", "Reshape", "Resize", "Concat", "Slice", "Pad", "Split", "Gather", "Squeeze",
            "Unsqueeze", "Flatten"]


def _chain(dtype):
    zero = 3 if dtype == np.int8 else 130
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zero, dtype), "z"),
             numpy_helper.from_array(np.array([1, 4, 6, 3], np.int64), "shape"),
             numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"),
             numpy_helper.from_array(np.array([0, 1], np.int64), "starts"),
             numpy_helper.from_array(np.array([8, 11], np.int64), "ends"),
             numpy_helper.from_array(np.array([1, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 1, 2], np.int64), "pads"),
             numpy_helper.from_array(np.array(zero, dtype), "pad_value"),
             numpy_helper.from_array(np.array([2, 0], np.int64), "idx"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["input", "s", "z"], ["q"]),
             n("MaxPool", ["q"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),              # (1, 4, 3, 6)
             n("Transpose", ["mp"], ["tr"], perm=[0, 1, 3, 2]),                             # (1, 4, 6, 3)
             n("Reshape", ["tr", "shape"], ["rs"]),
             n("Resize", ["rs", "", "scales"], ["up"], mode="nearest"),                     # (1, 4, 12, 6)
             n("Concat", ["up", "up"], ["cat"], axis=1),                                    # (1, 8, 12, 6)
             n("Slice", ["cat", "starts", "ends", "axes"], ["sl"]),                         # (1, 8, 12, 5)
             n("Pad", ["sl", "pads", "pad_value"], ["pd"]),                                 # (1, 8, 14, 7)
             n("Split", ["pd"], ["sp0", "sp1"], axis=1, num_outputs=2),                     # (1, 4, 14, 7) x 2
             n("Gather", ["sp1", "idx"], ["ga"], axis=1),                                   # (1, 2, 14, 7)
             n("Unsqueeze", ["ga", "axis0"], ["un"]),                                       # (1, 1, 2, 14, 7)
             n("Squeeze", ["un", "axis0"], ["sq"]),                                         # (1, 2, 14, 7)
             n("Flatten", ["sq"], ["fl"], axis=1),                                          # (1, 196)
             n("DequantizeLinear", ["fl", "s", "z"], ["output"])]
    graph = helper.make_graph(nodes, "movement", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 6, 12])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 196])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_int8_through_data_movement_ops(dtype):
    from qrt import registry
    missing = [op for op in MOVEMENT if registry.lookup(op, "", 18) is None]
    assert not missing, f"no kernel for {missing}"
    model = _chain(dtype)
    x = {"input": (np.random.default_rng(2).standard_normal((1, 4, 6, 12)) * 3).astype(np.float32)}
    got = run_qrt(model, x)[0]
    np.testing.assert_array_equal(got, run_ort(model, x)[0])
    # The values really are the quantized grid: every output is (q - zero) * scale for an integer q.
    steps = got / np.float32(0.05)
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)
