"""Per-channel tables (qrt.fusion.qtables with one value per channel, qrt::QLinearTable ``channels``):
an element-wise chain of one 8-bit tensor whose constants differ by channel (BatchNormalization
between DequantizeLinear and QuantizeLinear, a per-axis DequantizeLinear, QLinearMul/QLinearAdd with
a (C, 1, 1) operand) is a (C, 256) table, read NCHW or, after the layout pass, channels-last.

The tables are built by running the covered nodes on qrt's kernels, so the fused session must equal
the unfused one (ORT_ENABLE_EXTENDED, nodes one by one) bit for bit, in both layouts. Against
onnxruntime on the original model: its QLinearMul scales each operand before multiplying where qrt
scales the integer product once, so rounding ties may land one step apart (as in
test_qlinear_tables.py), and its BatchNormalization may round a float32 differently in the last ulp
before QuantizeLinear: one step, on few elements.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from int8_helpers import run_ort, stable_seed

MS = "com.microsoft"
C = 6
ALL = qrt.GraphOptimizationLevel.ORT_ENABLE_ALL
EXTENDED = qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def _session(model, level):
    so = qrt.SessionOptions()
    so.graph_optimization_level = level
    return qrt.InferenceSession(model.SerializeToString(), so)


def _chain_model(dtype, with_conv, per_axis_dq=False):
    """[QLinearConv ->] DQ -> BatchNormalization -> Q -> QLinearMul(w) -> QLinearAdd(k) [-> QLinearConv]."""
    rng = np.random.default_rng(stable_seed("chain", np.dtype(dtype).name, with_conv, per_axis_dq))
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    zero = np.array(-5 if dtype == np.int8 else 123, dtype)
    inits = {"s": np.array(0.05, np.float32), "z": zero,
             "bn_scale": rng.uniform(0.5, 2, C).astype(np.float32), "bn_bias": rng.uniform(-1, 1, C).astype(np.float32),
             "bn_mean": rng.uniform(-0.5, 0.5, C).astype(np.float32), "bn_var": rng.uniform(0.5, 2, C).astype(np.float32),
             "w": rng.integers(10, 120, (C, 1, 1)).astype(dtype), "w_s": np.array(0.02, np.float32),
             "w_z": np.array(0, dtype), "k": rng.integers(0, 127, (C, 1, 1)).astype(dtype),
             "k_s": np.array(0.02, np.float32), "k_z": np.array(64, dtype),
             "pc_s": np.linspace(0.03, 0.08, C).astype(np.float32), "pc_z": np.full(C, zero, dtype)}
    nodes, x = [], "x"

    def conv(src, out):
        inits.update({f"{out}_w": rng.integers(-50, 51, (C, C, 3, 3)).astype(np.int8),
                      f"{out}_ws": rng.uniform(0.003, 0.01, C).astype(np.float32), f"{out}_wz": np.zeros(C, np.int8)})
        nodes.append(helper.make_node("QLinearConv", [src, "s", "z", f"{out}_w", f"{out}_ws", f"{out}_wz", "s", "z"],
                                      [out], name=out, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        return out

    if with_conv:
        x = conv(x, "conv_in")
    dq = ["pc_s", "pc_z"] if per_axis_dq else ["s", "z"]
    nodes += [helper.make_node("DequantizeLinear", [x] + dq, ["f"], name="dq", axis=1),
              helper.make_node("BatchNormalization", ["f", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["g"], name="bn"),
              helper.make_node("QuantizeLinear", ["g", "s", "z"], ["gq"], name="q"),
              helper.make_node("QLinearMul", ["gq", "s", "z", "w", "w_s", "w_z", "s", "z"], ["m"], name="mul", domain=MS),
              helper.make_node("QLinearAdd", ["m", "s", "z", "k", "k_s", "k_z", "s", "z"], ["y"], name="add", domain=MS)]
    y = conv("y", "conv_out") if with_conv else "y"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", elem, [2, C, 5, 7])],
                              [helper.make_tensor_value_info(y, elem, None)],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid(MS, 1)],
                             ir_version=8)


def _every_byte(dtype, seed):
    n = 2 * C * 5 * 7
    values = np.concatenate([np.arange(256), np.random.default_rng(seed).integers(0, 256, n - 256)])
    return np.random.default_rng(seed + 1).permutation(values).astype(np.uint8).view(dtype).reshape(2, C, 5, 7)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("with_conv", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("per_axis_dq", [False, True], ids=["per_tensor", "per_axis"])
def test_channel_table_equals_the_nodes_one_by_one(dtype, with_conv, per_axis_dq):
    model = _chain_model(dtype, with_conv, per_axis_dq)
    x = _every_byte(dtype, stable_seed(with_conv, per_axis_dq))
    fused = _session(model, ALL)
    tables = [n for n in fused.model.graph.node if n.op_type == "QLinearTable"]
    assert [t.name for t in tables] == ["dq+bn+q+mul+add"]
    axis = next(a.i for a in tables[0].attribute if a.name == "axis")
    assert axis == (3 if with_conv else 1)            # the convolutions around it make it channels-last
    if with_conv:
        assert tables[0].input[0].endswith("_nhwc")
    got = fused.run(None, {"x": x})[0]
    want = _session(model, EXTENDED).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    if not with_conv:   # onnxruntime on the bare chain (its convolutions would add their own tie rounding)
        theirs = run_ort(model, {"x": x})[0]
        off = np.abs(got.astype(int) - theirs.astype(int))
        assert off.max() <= 1 and np.mean(off != 0) <= 0.15


def _mul_model(channel_dim):
    """QLinearMul of x by a (C, 1, 1) operand; x's axis 1 declared as ``channel_dim``."""
    inits = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8),
             "w": (np.arange(C) * 30 + 20).astype(np.uint8).reshape(C, 1, 1), "w_s": np.array(0.02, np.float32),
             "w_z": np.array(0, np.uint8)}
    node = helper.make_node("QLinearMul", ["x", "s", "z", "w", "w_s", "w_z", "s", "z"], ["y"], name="mul", domain=MS)
    graph = helper.make_graph([node], "mul", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                             [2, channel_dim, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid(MS, 1)],
                             ir_version=8)


def test_size_one_channel_axis_runs_the_nodes_broadcast():
    """Fed one channel, the per-channel operand widens the output: the body runs as the node would."""
    model = _mul_model("c")
    sess = _session(model, ALL)
    assert [(n.op_type, n.name) for n in sess.model.graph.node] == [("QLinearTable", "mul")]
    for x in (_every_byte(np.uint8, 5)[:, :1], _every_byte(np.uint8, 6)):
        got = sess.run(None, {"x": x})[0]
        assert got.shape == (2, C, 5, 7)
        np.testing.assert_array_equal(got, _session(model, EXTENDED).run(None, {"x": x})[0])


def test_source_known_to_have_one_channel_gets_no_channel_table():
    sess = _session(_mul_model(1), ALL)
    assert [n.op_type for n in sess.model.graph.node] == ["QLinearMul"]


def test_constant_varying_along_a_spatial_axis_is_not_a_channel_table():
    model = _chain_model(np.uint8, False)
    for t in model.graph.initializer:
        if t.name == "w":
            t.CopyFrom(numpy_helper.from_array(np.arange(1, 8, dtype=np.uint8).reshape(1, 7) * 9, "w"))
    sess = _session(model, ALL)
    tables = [n.name for n in sess.model.graph.node if n.op_type == "QLinearTable"]
    assert "mul" not in " ".join(tables)
    x = _every_byte(np.uint8, 3)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], _session(model, EXTENDED).run(None, {"x": x})[0])


def test_large_channels_last_table_on_two_threads_equals_the_nodes():
    """Past PARALLEL_MIN_ELEMENTS the channels-last lookup runs on the thread pool: same bytes."""
    from qrt.kernels.cpu import qelementwise as kq
    model = _chain_model(np.uint8, True)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 160
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 160
    x = np.random.default_rng(7).integers(0, 256, (2, C, 160, 160)).astype(np.uint8)
    assert x.size >= kq.PARALLEL_MIN_ELEMENTS
    so = qrt.SessionOptions()
    so.intra_op_num_threads = 2
    got = qrt.InferenceSession(model.SerializeToString(), so).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, _session(model, EXTENDED).run(None, {"x": x})[0])
