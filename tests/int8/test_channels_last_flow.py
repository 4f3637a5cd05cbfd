"""The layout pass (qrt/fusion/channels_last.py) carrying channels-last through layout-free ops:
DequantizeLinear / QuantizeLinear (per tensor and per axis), float element-wise ops with permuted
constants, Concat on channels, and QLinearAveragePool's channels-last kernel.

The pass only moves bytes and remaps axes, so qrt with it must give exactly what qrt gives with the
pass switched off (int8 and float outputs alike: element-wise float ops compute each element the
same way in any layout). The rewritten graph uses onnxruntime's own ops, so onnxruntime must run
it and agree with itself on the original graph; its NHWC and NCHW QLinearConv round ties in
float32 and may land one step apart, and a step at a convolution can move the float ops after it by
that step's scale, so those comparisons allow a few steps (a wrong layout is off by whole values).
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
import qrt.fusion
from int8_helpers import run_ort, stable_seed
from qrt.fusion import to_channels_last

MS = "com.microsoft"
C, H, W = 8, 7, 6
ACT_SCALE, ACT_ZERO = 0.05, 128      # the uint8 grid every int8 tensor here lives on


class Builder:
    """A small int8 graph: uint8 activations on one grid, per-channel int8 conv weights."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(stable_seed(seed))
        self.nodes, self.inits = [], []
        self.const("s", np.array(ACT_SCALE, np.float32))
        self.const("z", np.array(ACT_ZERO, np.uint8))

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, output, domain="", **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{output}", domain=domain, **attrs))
        return output

    def conv(self, x, out, k=3):
        w = self.const(f"{out}_w", self.rng.integers(-60, 61, (C, C, k, k)).astype(np.int8))
        ws = self.const(f"{out}_ws", (self.rng.random(C) * 0.01 + 0.004).astype(np.float32))
        wz = self.const(f"{out}_wz", np.zeros(C, np.int8))
        b = self.const(f"{out}_b", self.rng.integers(-500, 500, C).astype(np.int32))
        return self.node("QLinearConv", [x, "s", "z", w, ws, wz, "s", "z", b], out, kernel_shape=[k, k],
                         pads=[k // 2] * 4)

    def dq(self, x, out, scale="s", zero="z", **attrs):
        return self.node("DequantizeLinear", [x, scale, zero], out, **attrs)

    def q(self, x, out, scale="s", zero="z", **attrs):
        return self.node("QuantizeLinear", [x, scale, zero], out, **attrs)

    def model(self, inputs, outputs):
        graph = helper.make_graph(
            self.nodes, "flow", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, C, H, W]) for n in inputs],
            [helper.make_tensor_value_info(n, t, None) for n, t in outputs], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)],
                                 ir_version=8)


def residual_model():
    """conv -> DQ, conv -> DQ, Sum, Relu, Q -> conv; the Relu output is also a graph output."""
    b = Builder("residual")
    x = b.q("x", "xq")
    a, c = b.dq(b.conv(x, "c1"), "a"), b.dq(b.conv(x, "c2", k=1), "c")
    r = b.node("Relu", [b.node("Sum", [a, c], "sum")], "relu")
    y = b.conv(b.q(r, "rq"), "c3")
    return b.model(["x"], [("relu", TensorProto.FLOAT), (y, TensorProto.UINT8)])


def per_axis_model():
    """Per-channel DQ and Q around float ops with per-channel, scalar and full-shape constants."""
    b = Builder("per_axis")
    scales = b.const("pc_s", (0.03 + 0.01 * np.arange(C)).astype(np.float32))
    zeros = b.const("pc_z", (120 + np.arange(C)).astype(np.uint8))
    f = b.dq(b.conv(b.q("x", "xq"), "c1"), "f", scales, zeros, axis=1)
    f = b.node("Mul", [f, b.const("gain", np.linspace(0.5, 1.5, C, dtype=np.float32).reshape(C, 1, 1))], "mul")
    f = b.node("Add", [f, b.const("shift", np.float32(0.25))], "add")
    f = b.node("Sub", [f, b.const("plane", b.rng.standard_normal((1, 1, H, W)).astype(np.float32))], "sub")
    f = b.node("Clip", [f, b.const("lo", np.float32(-2)), b.const("hi", np.float32(3))], "clip")
    y = b.conv(b.q(f, "fq", scales, zeros, axis=-3), "c2")
    return b.model(["x"], [(y, TensorProto.UINT8)])


def shared_reader_model():
    """A channels-last float tensor read by a channels-last chain and by two NCHW-only readers."""
    b = Builder("shared")
    f = b.dq(b.conv(b.q("x", "xq"), "c1"), "f")
    g = b.node("Relu", [f], "g")
    y = b.conv(b.q(g, "gq"), "c2")
    mean = b.node("ReduceMean", [g], "mean", axes=[1])
    soft = b.node("Softmax", [g], "soft", axis=1)
    return b.model(["x"], [(y, TensorProto.UINT8), (mean, TensorProto.FLOAT), (soft, TensorProto.FLOAT)])


def mixed_model():
    """Add of a channels-last tensor and an NCHW graph input: stays NCHW; Concat of two DQs goes NHWC."""
    b = Builder("mixed")
    x = b.q("x", "xq")
    f = b.dq(b.conv(x, "c1"), "f")
    mixed = b.node("Add", [f, "x2"], "mixed")
    cat = b.node("Concat", [f, b.dq(b.conv(x, "c2", k=1), "g")], "cat", axis=1)
    y = b.node("QLinearGlobalAveragePool", [b.q(cat, "catq"), "s", "z", "s", "z"], "pool", domain=MS)
    return b.model(["x", "x2"], [(mixed, TensorProto.FLOAT), (y, TensorProto.UINT8)])


def pool_model():
    """conv -> QLinearAveragePool (count_include_pad) -> conv."""
    b = Builder("pool")
    p = b.node("QLinearAveragePool", [b.conv(b.q("x", "xq"), "c1"), "s", "z", "s", "z"], "p", domain=MS,
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], count_include_pad=1)
    return b.model(["x"], [(b.conv(p, "c2"), TensorProto.UINT8)])


MODELS = {"residual": residual_model, "per_axis": per_axis_model, "shared": shared_reader_model,
          "mixed": mixed_model, "pool": pool_model}


def _feeds(model):
    rng = np.random.default_rng(stable_seed("feeds", model.graph.name))
    return {i.name: (rng.standard_normal((2, C, H, W)) * 2).astype(np.float32) for i in model.graph.input}


def _transposes(model):
    return [n for n in model.graph.node if n.op_type == "Transpose"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pass_gives_the_results_of_the_nchw_plan_exactly(name, monkeypatch):
    model = MODELS[name]()
    feeds = _feeds(model)
    with_pass = qrt.InferenceSession(model.SerializeToString()).run(None, feeds)
    monkeypatch.setattr(qrt.fusion, "to_channels_last", lambda m: m)
    without = qrt.InferenceSession(model.SerializeToString()).run(None, feeds)
    for got, want in zip(with_pass, without):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_runs_the_rewritten_graph_alike(name):
    model = MODELS[name]()
    feeds = _feeds(model)
    rewritten = to_channels_last(model)
    assert {n.name for n in model.graph.node} <= {n.name for n in rewritten.graph.node}
    for got, want, out in zip(run_ort(rewritten, feeds), run_ort(model, feeds), model.graph.output):
        assert got.shape == want.shape
        if got.dtype == np.uint8:
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 3, out.name
        else:
            np.testing.assert_allclose(got, want, atol=3 * ACT_SCALE * 1.5, err_msg=out.name)
    qrt_out = qrt.InferenceSession(model.SerializeToString()).run(None, feeds)
    for got, want in zip(qrt_out, run_ort(model, feeds)):
        if got.dtype == np.uint8:
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 3
        else:
            np.testing.assert_allclose(got, want, atol=3 * ACT_SCALE * 1.5)


def test_residual_chain_runs_without_transposes_between_convolutions():
    rewritten = to_channels_last(residual_model())
    ops = {n.name: n for n in rewritten.graph.node}
    # One reorder in (the quantized graph input) and one back for each graph output.
    assert sorted((t.input[0], t.output[0]) for t in _transposes(rewritten)) == [
        ("c3_nhwc", "c3"), ("relu_nhwc", "relu"), ("xq", "xq_nhwc")]
    for name in ("DequantizeLinear_a", "Sum_sum", "Relu_relu", "QuantizeLinear_rq"):
        assert all(i.endswith("_nhwc") for i in ops[name].input[:1]), name


def test_per_axis_quantization_moves_its_axis_and_constants_are_permuted():
    rewritten = to_channels_last(per_axis_model())
    ops = {n.name: n for n in rewritten.graph.node}
    axis = lambda n: next(a.i for a in n.attribute if a.name == "axis")  # noqa: E731
    assert axis(ops["DequantizeLinear_f"]) == 3 and axis(ops["QuantizeLinear_fq"]) == 3
    inits = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    assert inits[ops["Mul_mul"].input[1]].shape == (1, 1, 1, C)
    assert inits[ops["Sub_sub"].input[1]].shape == (1, H, W, 1)
    assert ops["Add_add"].input[1] == "shift" and list(ops["Clip_clip"].input[1:]) == ["lo", "hi"]
    assert len(_transposes(rewritten)) == 2


def test_tensor_with_several_nchw_readers_is_converted_once():
    rewritten = to_channels_last(shared_reader_model())
    back = [t for t in _transposes(rewritten) if t.output[0] == "g"]
    assert len(back) == 1
    assert [n.op_type for n in rewritten.graph.node if "g" in n.input] == ["ReduceMean", "Softmax"]


def test_mixed_layout_inputs_keep_the_op_nchw():
    rewritten = to_channels_last(mixed_model())
    ops = {n.name: n for n in rewritten.graph.node}
    assert list(ops["Add_mixed"].input) == ["f", "x2"]
    assert next(a.i for a in ops["Concat_cat"].attribute if a.name == "axis") == 3
    assert ops["QLinearGlobalAveragePool_pool"].input[0].endswith("_nhwc")


def test_layout_free_op_without_a_channels_last_reader_stays_nchw():
    """DequantizeLinear feeding only a float NCHW op converts the 8-bit tensor, not the float one."""
    b = Builder("sensitive")
    f = b.dq(b.conv(b.conv(b.q("x", "xq"), "c1"), "c2"), "f")
    b.node("Softmax", [f], "soft", axis=1)
    rewritten = to_channels_last(b.model(["x"], [("soft", TensorProto.FLOAT)]))
    ops = {n.name: n for n in rewritten.graph.node}
    assert ops["DequantizeLinear_f"].input[0] == "c2"


POOLS = [dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
         dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], count_include_pad=1),
         dict(kernel_shape=[3, 2], pads=[1, 0, 1, 1], strides=[2, 1], count_include_pad=1),
         dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1),
         dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
         dict(kernel_shape=[7, 7], strides=[1, 1])]


def _pool(x, channels_last, dtype, attrs):
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    zx, zy = (np.array(-3, np.int8), np.array(5, np.int8)) if dtype == np.int8 else \
        (np.array(131, np.uint8), np.array(120, np.uint8))
    inits = [numpy_helper.from_array(np.array(0.031, np.float32), "xs"), numpy_helper.from_array(zx, "xz"),
             numpy_helper.from_array(np.array(0.027, np.float32), "ys"), numpy_helper.from_array(zy, "yz")]
    node = helper.make_node("QLinearAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"], domain=MS,
                            channels_last=int(channels_last), **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    return model


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("attrs", POOLS, ids=[str(i) for i in range(len(POOLS))])
@pytest.mark.parametrize("shape", [(2, 19, 9, 11), (1, 64, 40, 40)], ids=["small", "threaded"])
def test_channels_last_average_pool_equals_nchw_kernel_and_onnxruntime(dtype, attrs, shape):
    rng = np.random.default_rng(stable_seed("avgpool", str(attrs), np.dtype(dtype).name, shape))
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    want = qrt.InferenceSession(_pool(x, False, dtype, attrs).SerializeToString()).run(None, {"x": x})[0]
    model = _pool(x_nhwc, True, dtype, attrs)
    so = qrt.SessionOptions()
    so.intra_op_num_threads = 2     # the large shape passes PARALLEL_MIN_ELEMENTS: the threaded kernel
    got = qrt.InferenceSession(model.SerializeToString(), so).run(None, {"x": x_nhwc})[0]
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))
    # onnxruntime scales each window in float32 (qrt in float64): a tie may round one step apart.
    theirs = run_ort(model, {"x": x_nhwc})[0]
    assert np.abs(got.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.parametrize("inner", [64, 100, 200])
def test_vbmi_concat_rows_equal_the_byte_loop(inner):
    """The 64-byte vpermi2b lookup of a mapped channels-last input writes what the byte loop writes."""
    from qrt.kernels.cpu import qelementwise as kq
    from qrt.kernels.cpu import qmovement as kmove
    if not kq.TABLE_VBMI:
        pytest.skip("no AVX-512 VBMI here: the byte loop is the only path")
    rng = np.random.default_rng(stable_seed("vbmi_concat", inner))
    x = rng.integers(0, 256, (37, inner)).astype(np.uint8)
    table = rng.integers(0, 256, 256).astype(np.uint8)
    want = np.zeros((37, inner + 70), np.uint8)
    got = want.copy()
    kmove.concat_block(x, table, True, want, 50)
    kmove.concat_block_vbmi(x, table, got, 50)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[:, 50:50 + inner], table[x])


def test_channels_last_concat_of_wide_inputs_matches_onnxruntime():
    """QLinearConcat on the last axis with 100- and 70-channel inputs on other grids (mapped rows)."""
    rng = np.random.default_rng(stable_seed("wide_concat"))
    xs = [rng.integers(0, 256, (2, 5, 6, c)).astype(np.uint8) for c in (100, 70)]
    inits = [numpy_helper.from_array(np.array(v, t), n) for n, v, t in
             (("ys", 0.05, np.float32), ("yz", 128, np.uint8), ("s0", 0.031, np.float32), ("z0", 120, np.uint8),
              ("s1", 0.072, np.float32), ("z1", 131, np.uint8))]
    node = helper.make_node("QLinearConcat", ["ys", "yz", "x0", "s0", "z0", "x1", "s1", "z1"], ["y"], domain=MS,
                            axis=3)
    graph = helper.make_graph([node], "cat", [helper.make_tensor_value_info(f"x{i}", TensorProto.UINT8, list(x.shape))
                                              for i, x in enumerate(xs)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    got = qrt.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    theirs = run_ort(model, feeds)[0]
    # onnxruntime requantizes in float32 as qrt's table does; a tie may still land one step apart.
    assert np.abs(got.astype(int) - theirs.astype(int)).max() <= 1
    assert np.mean(got != theirs) <= 0.01
