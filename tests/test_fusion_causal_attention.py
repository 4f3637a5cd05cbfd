"""Decoder fusions. Causal attention: a decoder's attention — rotate-half rotary on q and k written out (Slice, Neg,
Concat, Mul, Add), a causal mask (a constant triangular Add, or a Where on a constant triangular condition), Softmax and
MatMul — becomes com.microsoft RotaryEmbedding + MultiHeadAttention(unidirectional=1), run by the fused kernel.
RMSNorm written out (x * x or x ^ 2, ReduceMean, Add eps, Sqrt, Div or Reciprocal + Mul, gain Mul) becomes
SimplifiedLayerNormalization.

Tolerance against onnxruntime on the unfused model: 1e-5 relative and absolute (float32). The rotary kernel rounds
exactly as the written-out nodes; the attention kernel folds the scale into Q and reassociates the softmax sums
(fast-math), which moves results by a few ulps (observed ~1e-6 on outputs of magnitude ~1); RMSNorm multiplies
by 1/rms where the nodes divide by rms (one more rounding).
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "quantization"))
from nbits_models import decoder_stack  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _options(level=qrt.GraphOptimizationLevel.ORT_ENABLE_ALL, profile_dir=None):
    options = qrt.SessionOptions()
    options.graph_optimization_level = level
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / "p")
    return options


def _ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("seq", [1, 16])
def test_decoder_stack_attention_runs_fused_and_causal(seq):
    model = decoder_stack(layers=2, hidden=64, heads=4, ffn=96, vocab=100, seq=seq)
    feeds = {"input_ids": np.random.default_rng(seq).integers(0, 100, (2, seq))}
    want = _ort(model, feeds)[0]
    sess = qrt.InferenceSession(model)
    ops = _ops(sess.model)
    assert ops.count("MultiHeadAttention") == 2 and ops.count("RotaryEmbedding") == 4
    assert ops.count("SimplifiedLayerNormalization") == 5
    assert not {"Softmax", "Where", "Slice", "Neg", "Concat", "Transpose", "Reshape", "ReduceMean", "Sqrt",
                "Div"} & set(ops)
    for mha in (n for n in sess.model.graph.node if n.op_type == "MultiHeadAttention"):
        assert {a.name: a.i for a in mha.attribute}["unidirectional"] == 1 and len(mha.input) == 3
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, **TOL)

    # The extended level's output holds only ops onnxruntime has, and onnxruntime agrees with it.
    extended = qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    assert _ops(extended.model).count("MultiHeadAttention") == 2
    np.testing.assert_allclose(_ort(extended.model, feeds)[0], want, **TOL)


def _attention(mask_form, seq=7, hidden=32, heads=4):
    """One self-attention over x (2, seq, hidden): projections, per-head split, scores / sqrt(D), a mask, Softmax,
    MatMul, head merge. ``mask_form`` picks how the mask is written."""
    rng = np.random.default_rng(5)
    dh = hidden // heads
    upper = np.triu(np.ones((seq, seq), bool), k=1)
    inits = [numpy_helper.from_array((rng.standard_normal((hidden, hidden)) * hidden ** -0.5).astype(np.float32), w)
             for w in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(np.array([0, 0, heads, dh], np.int64), "split"),
              numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "merge"),
              numpy_helper.from_array(np.array(np.sqrt(dh), np.float32), "root")]
    n = helper.make_node
    nodes = []
    for t in "qkv":
        nodes += [n("MatMul", ["x", f"w{t}"], [f"{t}_proj"], name=f"{t}_mm"),
                  n("Reshape", [f"{t}_proj", "split"], [f"{t}_4d"], name=f"{t}_split"),
                  n("Transpose", [f"{t}_4d"], [f"{t}_h"], name=f"{t}_heads", perm=[0, 2, 3, 1] if t == "k" else
                    [0, 2, 1, 3])]
    nodes += [n("MatMul", ["q_h", "k_h"], ["qk"], name="qk"), n("Div", ["qk", "root"], ["scores"], name="scale")]
    if mask_form == "where_keep":        # Where(tril, scores, -inf)
        inits += [numpy_helper.from_array(~upper, "keep"),
                  numpy_helper.from_array(np.array(-np.inf, np.float32), "fill")]
        nodes.append(n("Where", ["keep", "scores", "fill"], ["masked"], name="mask"))
    elif mask_form == "masked_fill":     # torch's masked_fill(triu, finfo.min)
        inits += [numpy_helper.from_array(upper, "hide"),
                  numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "fill")]
        nodes.append(n("Where", ["hide", "fill", "scores"], ["masked"], name="mask"))
    elif mask_form == "where_weak":      # a fill of -1 hides nothing: not a causal mask
        inits += [numpy_helper.from_array(~upper, "keep"), numpy_helper.from_array(np.array(-1.0, np.float32), "fill")]
        nodes.append(n("Where", ["keep", "scores", "fill"], ["masked"], name="mask"))
    else:                                # additive: "add" (causal, 4-D), "add_shifted" (sees one key ahead)
        mask = np.triu(np.full((seq, seq), -np.inf, np.float32), k=2 if mask_form == "add_shifted" else 1)
        inits.append(numpy_helper.from_array(mask.reshape(1, 1, seq, seq), "bias"))
        nodes.append(n("Add", ["bias", "scores"], ["masked"], name="mask"))
    nodes += [n("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
              n("MatMul", ["probs", "v_h"], ["ctx_h"], name="pv"),
              n("Transpose", ["ctx_h"], ["ctx_t"], name="ctx_t", perm=[0, 2, 1, 3]),
              n("Reshape", ["ctx_t", "merge"], ["y"], name="ctx_merge")]
    graph = helper.make_graph(nodes, "attention",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, seq, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, seq, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("form, fused_as", [("where_keep", "causal"), ("masked_fill", "causal"), ("add", "causal"),
                                            ("add_shifted", "bias"), ("where_weak", None)])
def test_mask_forms(form, fused_as, tmp_path):
    model = _attention(form)
    feeds = {"x": np.random.default_rng(6).standard_normal((2, 7, 32)).astype(np.float32)}
    want = _ort(model, feeds)[0]
    sess = qrt.InferenceSession(model, _options(profile_dir=tmp_path))
    fused = [n for n in sess.model.graph.node if n.op_type == "MultiHeadAttention"]
    assert len(fused) == (fused_as is not None)
    if fused_as == "causal":
        assert len(fused[0].input) == 3 and {a.name: a.i for a in fused[0].attribute}["unidirectional"] == 1
    elif fused_as == "bias":       # not causal: the constant stays an additive attention_bias
        assert list(fused[0].input)[5] == "bias" and "unidirectional" not in {a.name for a in fused[0].attribute}
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, **TOL)
    events = json.load(open(sess.end_profiling()))
    names = [e["name"] for e in events if e.get("cat") == "Node" and e["args"]["op_name"] == "MultiHeadAttention"]
    # One event for the whole group, named after the nodes it covers (in graph order).
    assert names == (["q_split+q_heads+k_split+k_heads+v_split+v_heads+qk+scale+mask+softmax+pv+ctx_t+ctx_merge"]
                     if fused else [])


def test_rotary_node_is_named_after_the_nodes_it_covers(tmp_path):
    model = decoder_stack(layers=1, hidden=32, heads=2, ffn=48, vocab=50, seq=4)
    sess = qrt.InferenceSession(model, _options(profile_dir=tmp_path))
    sess.run(None, {"input_ids": np.zeros((1, 4), np.int64)})
    events = json.load(open(sess.end_profiling()))
    rotary = sorted(e["name"] for e in events if e.get("cat") == "Node" and e["args"]["op_name"] == "RotaryEmbedding")
    assert rotary == ["layer0.k.split_reshape+layer0.k.heads_transpose+layer0.k_rope.x1_slice+layer0.k_rope.x2_slice+"
                      "layer0.k_rope.neg_neg+layer0.k_rope.rot_concat+layer0.k_rope.xcos_mul+layer0.k_rope.rsin_mul+"
                      "layer0.k_rope.out_add",
                      "layer0.q.split_reshape+layer0.q.heads_transpose+layer0.q_rope.x1_slice+layer0.q_rope.x2_slice+"
                      "layer0.q_rope.neg_neg+layer0.q_rope.rot_concat+layer0.q_rope.xcos_mul+layer0.q_rope.rsin_mul+"
                      "layer0.q_rope.out_add"]


@pytest.mark.parametrize("square, inverse, gain", [("Pow", "Div", True), ("Mul", "Reciprocal", True),
                                                   ("Mul", "Div", False)])
def test_rms_norm_forms(square, inverse, gain):
    hidden = 48
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.linspace(0.5, 1.5, hidden).astype(np.float32), "g")]
    n = helper.make_node
    nodes = [n("Pow", ["x", "two"], ["sq"], name="sq") if square == "Pow" else n("Mul", ["x", "x"], ["sq"], name="sq"),
             n("ReduceMean", ["sq", "axes"], ["ms"], name="ms", keepdims=1),
             n("Add", ["ms", "eps"], ["mse"], name="mse"), n("Sqrt", ["mse"], ["rms"], name="rms")]
    if inverse == "Div":
        nodes.append(n("Div", ["x", "rms"], ["normed"], name="normed"))
    else:
        nodes += [n("Reciprocal", ["rms"], ["inv"], name="inv"), n("Mul", ["inv", "x"], ["normed"], name="normed")]
    if gain:
        nodes.append(n("Mul", ["normed", "g"], ["out"], name="gain"))
    nodes.append(n("Relu", ["out" if gain else "normed"], ["y"], name="after"))
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 5, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {"x": (np.random.default_rng(7).standard_normal((3, 5, hidden)) * 3).astype(np.float32)}
    sess = qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    assert _ops(sess.model) == ["SimplifiedLayerNormalization", "Relu"]
    np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], **TOL)
    np.testing.assert_allclose(_ort(sess.model, feeds)[0], _ort(model, feeds)[0], **TOL)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("positions", ["start", "per_token"])
def test_microsoft_rotary_embedding_matches_onnxruntime(interleaved, positions):
    rng = np.random.default_rng(8)
    batch, seq, heads, dh = 2, 5, 3, 8
    x = rng.standard_normal((batch, seq, heads * dh)).astype(np.float32)
    cos, sin = (rng.standard_normal((12, dh // 2)).astype(np.float32) for _ in range(2))
    ids = np.array([3], np.int64) if positions == "start" else rng.integers(0, 12, (batch, seq))
    node = helper.make_node("RotaryEmbedding", ["x", "ids", "cos", "sin"], ["y"], domain="com.microsoft",
                            num_heads=heads, interleaved=interleaved)
    graph = helper.make_graph([node], "rope",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
                               helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "m"][:ids.ndim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
                              [numpy_helper.from_array(cos, "cos"), numpy_helper.from_array(sin, "sin")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    feeds = {"x": x, "ids": ids}
    np.testing.assert_allclose(qrt.InferenceSession(model).run(None, feeds)[0], _ort(model, feeds)[0], **TOL)
    with pytest.raises(qrt.errors.QrtError, match="position_ids"):
        qrt.InferenceSession(model).run(None, {"x": x, "ids": np.zeros((2,) if ids.ndim == 1 else (1, 2), np.int64)})
