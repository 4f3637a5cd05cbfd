"""Dynamic-quantization chains fused into DynamicQuantizeMatMul / MatMulIntegerToFloat (qrt.fusion.dynamic_matmul).

Against the unfused qrt graph (ORT_ENABLE_BASIC runs the chain node by node): bit-identical. The
fused kernels quantize with the same float32 division, rounding and saturation as
DynamicQuantizeLinear, sum exactly in int32, and scale as the Cast, Mul and Add did (one float32
product of the two scales, one float32 multiply, one float32 add, never contracted into a
fused multiply-add).

Against onnxruntime on the same quantized model: rtol 1e-6 with atol 1e-6 of the output's largest
magnitude. Quantization and the int32 sums agree exactly (tested on DynamicQuantizeLinear alone
below); onnxruntime's fused epilogue may compute ``acc * scale + bias`` with one rounding (fused
multiply-add) where the graph has two, a difference of one float32 ulp of the larger term.
Measured: below 4.8e-7 absolute on outputs up to 4.
"""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from model_builders import transformer_block
from qrt.fusion import fuse_dynamic_matmuls
from qrt.kernels.cpu import qelementwise as kq
from qrt.kernels.cpu import qgemm as kgemm
from qrt.kernels.cpu import qgemm_amx as kamx
from qrt.ops.quantized import dynamic_quantize
from qrt.quantization import QuantType, quantize_dynamic

F32 = np.float32


def _session(model, level=qrt.GraphOptimizationLevel.ORT_ENABLE_ALL, **options):
    so = qrt.SessionOptions()
    so.graph_optimization_level = level
    for k, v in options.items():
        setattr(so, k, v)
    return qrt.InferenceSession(model.SerializeToString(), so)


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _ops(session):
    return [n.op_type for n in session.model.graph.node]


def _fused_vs_unfused(model, feeds):
    fused = _session(model)
    unfused = _session(model, qrt.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert "MatMulInteger" in _ops(unfused)
    got, want = fused.run(None, feeds), unfused.run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    return fused, got


def _close_to_ort(model, feeds, got):
    for g, w in zip(got, _ort(model, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (2, 37)])
@pytest.mark.parametrize("per_channel, weight_type", [(False, QuantType.QInt8), (True, QuantType.QInt8),
                                                      (False, QuantType.QUInt8)])
def test_encoder_block_bit_identical_to_unfused_and_close_to_onnxruntime(shape, per_channel, weight_type):
    """Q/K/V share one DynamicQuantizeLinear (kept, quantizing once); the other three MatMuls each
    have their own and become DynamicQuantizeMatMul, with the FFN bias Adds folded in. QUInt8
    weights have nonzero zero points, so the row sums written while quantizing are used."""
    model = quantize_dynamic(transformer_block(d_model=64, heads=4, d_ff=96), None, per_channel=per_channel,
                             weight_type=weight_type).model
    feeds = {"x": np.random.default_rng(1).standard_normal(shape + (64,)).astype(F32)}
    fused, got = _fused_vs_unfused(model, feeds)
    ops = _ops(fused)
    assert ops.count("MatMulIntegerToFloat") == 3 and ops.count("DynamicQuantizeMatMul") == 3
    assert ops.count("DynamicQuantizeLinear") == 1
    assert not {"MatMulInteger", "Cast"} & set(ops)
    _close_to_ort(model, feeds, got)


def _gemm_model(sizes=(30, 7, 5)):
    rng = np.random.default_rng(2)
    nodes, inits, prev = [], [], "input"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(F32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(n_out).astype(F32), f"c{i}")]
        out = "output" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"c{i}"], [out], name=f"gemm{i}", transB=1,
                                      alpha=0.75, beta=1.5))
        prev = out
    graph = helper.make_graph(
        nodes, "gemms", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gemm_with_alpha_beta_and_padded_depth():
    """Gemm layers (alpha folded into the weight scale, beta * C into the bias) with depths 30 and 7,
    not multiples of 4: the quantized rows are zero-padded to the packed depth."""
    model = quantize_dynamic(_gemm_model(), None).model
    feeds = {"input": np.random.default_rng(2).standard_normal((3, 30)).astype(F32)}
    fused, got = _fused_vs_unfused(model, feeds)
    assert _ops(fused).count("DynamicQuantizeMatMul") == 2
    _close_to_ort(model, feeds, got)


def _chain_model(extra_outputs=(), bias_shape=(6,), k=10, n=6, share_quantized=False):
    """X -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale product) -> Add(bias) -> Y."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "B"),
             numpy_helper.from_array(np.array(0, np.int8), "B_zp"),
             numpy_helper.from_array(np.array(0.01, F32), "B_scale"),
             numpy_helper.from_array(rng.standard_normal(bias_shape).astype(F32), "bias")]
    n_ = helper.make_node
    nodes = [n_("DynamicQuantizeLinear", ["X"], ["Xq", "Xs", "Xz"], name="dql"),
             n_("MatMulInteger", ["Xq", "B", "Xz", "B_zp"], ["acc"], name="mmi"),
             n_("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT, name="cast"),
             n_("Mul", ["Xs", "B_scale"], ["s"], name="scale"),
             n_("Mul", ["s", "accf"], ["prod"], name="mul"),
             n_("Add", ["bias", "prod"], ["Y"], name="add")]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])]
    if share_quantized:
        nodes.append(n_("Cast", ["Xq"], ["Xq_float"], to=TensorProto.FLOAT, name="other_reader"))
        outputs.append(helper.make_tensor_value_info("Xq_float", TensorProto.FLOAT, ["m", k]))
    outputs += [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["m", n]) for o in extra_outputs]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", k])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_whole_chain_becomes_one_node_named_after_it():
    model = _chain_model()
    fused = fuse_dynamic_matmuls(model)
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [("DynamicQuantizeMatMul", "com.microsoft")]
    assert fused.graph.node[0].name == "dql+mmi+cast+scale+mul+add"
    assert {t.name for t in fused.graph.initializer} == {"B", "B_zp", "B_scale", "bias"}
    feeds = {"X": np.random.default_rng(4).standard_normal((5, 10)).astype(F32)}
    _, got = _fused_vs_unfused(model, feeds)
    # The fused model is still an onnxruntime model, with the same results.
    _close_to_ort(fused, feeds, got)
    _close_to_ort(model, feeds, got)


def test_profiler_shows_one_event_per_fused_group(tmp_path):
    model = _chain_model()
    session = _session(model, enable_profiling=True, profile_file_prefix=str(tmp_path / "p"))
    session.run(None, {"X": np.ones((2, 10), F32)})
    events = [e for e in json.load(open(session.end_profiling())) if e.get("cat") == "Node"]
    assert [e["args"]["op_name"] for e in events] == ["DynamicQuantizeMatMul"]
    assert events[0]["name"].startswith("dql+mmi+cast+scale+mul+add")


def test_quantized_input_read_elsewhere_keeps_dynamic_quantize_linear():
    model = _chain_model(share_quantized=True)
    fused = fuse_dynamic_matmuls(model)
    assert [n.op_type for n in fused.graph.node] == ["DynamicQuantizeLinear", "MatMulIntegerToFloat", "Cast"]
    assert fused.graph.node[1].name == "mmi+cast+scale+mul+add"
    feeds = {"X": np.random.default_rng(5).standard_normal((3, 10)).astype(F32)}
    _, got = _fused_vs_unfused(model, feeds)
    _close_to_ort(fused, feeds, got)


def test_intermediate_read_outside_or_odd_bias_is_not_fused():
    """The float accumulator is a graph output: nothing fuses. A bias of shape (1, 6): the Add stays."""
    assert fuse_dynamic_matmuls(_chain_model(extra_outputs=("accf",))).graph.node[1].op_type == "MatMulInteger"
    model = _chain_model(bias_shape=(1, 6))
    fused = fuse_dynamic_matmuls(model)
    assert [n.op_type for n in fused.graph.node] == ["DynamicQuantizeMatMul", "Add"]
    feeds = {"X": np.random.default_rng(6).standard_normal((4, 10)).astype(F32)}
    _fused_vs_unfused(model, feeds)


def _reference_dynamic_quantize(x):
    """qrt's DynamicQuantizeLinear before the integer-key range pass: np-semantics min/max, then qmath."""
    from qrt import qmath
    lo, hi = kq.min_max(x.reshape(-1)) if x.size else (0.0, 0.0)
    maxx = np.float32(max(0.0, hi)) if hi == hi else np.float32(hi)
    minx = np.float32(min(0.0, lo)) if lo == lo else np.float32(lo)
    span = np.float32(1.0) if maxx == minx else np.float32(maxx - minx)
    scale = np.float32(span / np.float32(255))
    with np.errstate(invalid="ignore"):
        zp = np.uint8(np.rint(np.clip(np.float32(0) - minx / scale, 0, 255)) if scale == scale else 0)
    return qmath.quantize(x, scale, np.asarray(zp), qtype=np.uint8), scale, zp


@pytest.mark.parametrize("case", ["normal", "shifted", "negative", "zeros", "scalar", "nan", "inf", "-inf", "empty",
                                  "signed_zeros", "ties", "large"])
def test_dynamic_quantize_linear_range_pass(case):
    """The range found on ordered integer keys (serial, and parallel for the large case) is np.min/np.max's,
    NaN included; the quantized values equal qmath's."""
    rng = np.random.default_rng(7)
    x = {"normal": rng.standard_normal((16, 33)), "shifted": rng.standard_normal((8, 768)) + 3,
         "negative": -np.abs(rng.standard_normal((5, 7))), "zeros": np.zeros((3, 4)), "scalar": np.array(2.5),
         "nan": np.array([[1.0, np.nan, -2]]), "inf": np.array([[np.inf, 1, -1]]), "-inf": np.array([[-np.inf, 1]]),
         "empty": np.zeros((3, 0)), "signed_zeros": np.array([-0.0, 0.0]),
         "ties": np.array([0.5, 1.5, 2.5, 127.5, -3.5]) * (2 / 255),
         "large": rng.standard_normal((300, 300)) * 10}[case].astype(F32)
    y, scale, zp = dynamic_quantize(x)
    want_y, want_scale, want_zp = _reference_dynamic_quantize(x)
    np.testing.assert_array_equal(y, want_y)
    assert y.dtype == np.uint8 and y.shape == x.shape
    np.testing.assert_array_equal(np.float32(scale), np.float32(want_scale))
    assert int(zp) == int(want_zp)
    if case in ("normal", "shifted", "negative", "large", "ties", "inf"):
        model = helper.make_model(helper.make_graph(
            [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "dql",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
             helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
             helper.make_tensor_value_info("z", TensorProto.UINT8, None)]), opset_imports=[helper.make_opsetid("", 13)])
        oy, os_, oz = _ort(model, {"x": x})
        np.testing.assert_array_equal(y, oy)
        assert np.float32(scale) == os_ and int(zp) == int(oz)


def test_fusion_leaves_other_graphs_alone():
    model = transformer_block(d_model=16, heads=2, d_ff=32)
    assert fuse_dynamic_matmuls(model) is model
    assert isinstance(fuse_dynamic_matmuls(onnx.ModelProto()), onnx.ModelProto)


@pytest.mark.skipif(not kamx.AVAILABLE, reason="the host has no AMX-INT8 (or Linux refused the tile state)")
@pytest.mark.parametrize("M", [1, 16, 17, 40])
@pytest.mark.parametrize("K, N", [(64, 32), (192, 70)])
@pytest.mark.parametrize("mode", [0, 2])
def test_amx_driver_equals_vnni_driver(M, K, N, mode):
    """The AMX tiles sum exactly like the VNNI micro-kernel: int32 sums (mode 0) and the float epilogue (mode 2)
    equal for row tails of 1, 16 and 17 rows of a block, a column tail, and nonzero weight zero points."""
    rng = np.random.default_rng(M * 1000 + K + N)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    packed = kgemm.pack_weights([b], rng.integers(-4, 5, (1, N)))
    assert kamx.usable(packed) and packed.zb_nonzero
    a = kamx.padded_rows(M, K)
    a[:] = rng.integers(0, 256, (M, K), dtype=np.uint8)
    row_sum = a.astype(np.int64).sum(axis=1).astype(np.int32)
    epi = kgemm.Epilogue(mode, 1, N, fscale=rng.uniform(1e-4, 1e-2, N).astype(F32),
                         fbias=rng.standard_normal(N).astype(F32))
    dtype = np.int32 if mode == 0 else F32
    got, want = np.empty((M, N), dtype), np.empty((M, N), dtype)
    kgemm.matmul_rows(a, K, row_sum, 77, packed, epi, got)
    kgemm.matmul(np.ascontiguousarray(a), 0, np.full(M, 77, np.int32), packed, epi, want)
    np.testing.assert_array_equal(got, want)
    if mode == 0:
        exact = (a.astype(np.int64) - 77) @ (b.astype(np.int64) - packed.zb[0].astype(np.int64))
        np.testing.assert_array_equal(got, exact)
