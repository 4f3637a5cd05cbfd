"""Transformer fusions: Add (+ bias) + LayerNormalization -> com.microsoft SkipLayerNormalization, the attention
pattern -> com.microsoft MultiHeadAttention, Erf-GELU -> a FusedElementwise group.

Tolerances against onnxruntime on the unfused model: 1e-5 relative and absolute. The attention kernel scales Q
and K by sqrt(scale) each instead of the scores by scale, and the softmax and normalization reductions are
reassociated (fast-math), so results move by a few float32 ulps; the observed error is ~1e-6.
"""
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import qrt
from model_builders import bert_encoder, transformer_block


def _options(level=qrt.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = qrt.SessionOptions()
    options.graph_optimization_level = level
    return options


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_transformer_block_fuses_attention_skip_norms_and_gelu():
    model = transformer_block()
    sess = qrt.InferenceSession(model)
    ops = [(n.domain, n.op_type) for n in sess.model.graph.node]
    assert ops.count(("com.microsoft", "MultiHeadAttention")) == 1
    assert ops.count(("com.microsoft", "SkipLayerNormalization")) == 2
    assert ("qrt", "FusedElementwise") in ops
    assert not {"Softmax", "Transpose", "Reshape", "LayerNormalization", "Erf"} & {op for _, op in ops}
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 10, 64)).astype(np.float32)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-5, atol=1e-5)


def _bert_feeds(batch=2, seq=12, d_model=64):
    rng = np.random.default_rng(1)
    mask = np.zeros((batch, 1, 1, seq), np.float32)
    mask[-1, ..., seq - 3:] = -10000.0      # padding in the last sequence
    return {"x": rng.standard_normal((batch, seq, d_model)).astype(np.float32), "mask": mask}


def test_bert_encoder_with_broadcast_mask_matches_onnxruntime():
    model = bert_encoder(layers=2)
    feeds = _bert_feeds()
    want = _ort(model, feeds)[0]
    sess = qrt.InferenceSession(model)
    ops = [n.op_type for n in sess.model.graph.node]
    assert ops.count("MultiHeadAttention") == 2 and ops.count("SkipLayerNormalization") == 4
    mha = next(n for n in sess.model.graph.node if n.op_type == "MultiHeadAttention")
    assert list(mha.input)[5] == "mask"
    skip = next(n for n in sess.model.graph.node if n.op_type == "SkipLayerNormalization")
    assert len(skip.input) == 5      # the output projection's bias folded in
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-5, atol=1e-5)

    # Extended level: onnxruntime's MultiHeadAttention rejects a (B, 1, 1, L) mask, so attention stays unfused
    # and the optimized model still runs in onnxruntime.
    extended = qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    ops = [n.op_type for n in extended.model.graph.node]
    assert "MultiHeadAttention" not in ops and ops.count("SkipLayerNormalization") == 4
    np.testing.assert_allclose(_ort(extended.model, feeds)[0], want, rtol=1e-5, atol=1e-5)


def test_full_mask_attention_at_extended_level_runs_in_onnxruntime():
    model = bert_encoder(layers=1)
    mask_input = next(i for i in model.graph.input if i.name == "mask")
    mask_input.CopyFrom(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, "seq", "seq"]))
    feeds = _bert_feeds()
    feeds["mask"] = np.broadcast_to(feeds["mask"], (2, 1, 12, 12)).copy()
    sess = qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    assert "MultiHeadAttention" in [n.op_type for n in sess.model.graph.node]
    want = _ort(model, feeds)[0]
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_ort(sess.model, feeds)[0], want, rtol=1e-5, atol=1e-5)


def test_skip_layer_norm_keeps_a_sum_read_elsewhere_as_its_fourth_output():
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((1 + 0.1 * rng.standard_normal(16)).astype(np.float32), "g"),
             numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np.float32), "b")]
    nodes = [helper.make_node("Add", ["x", "r"], ["s"], name="add"),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["ln"], name="ln", epsilon=1e-6),
             helper.make_node("Mul", ["s", "ln"], ["y"], name="use_both")]
    vi = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 5, 16]) for name in ("x", "r", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", vi[:2], vi[2:], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    sess = qrt.InferenceSession(model, _options(qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    skip = sess.model.graph.node[0]
    assert skip.op_type == "SkipLayerNormalization" and list(skip.output) == ["ln", "", "", "s"]
    feeds = {"x": rng.standard_normal((3, 5, 16)).astype(np.float32),
             "r": rng.standard_normal((3, 5, 16)).astype(np.float32)}
    want = _ort(model, feeds)[0]
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_ort(sess.model, feeds)[0], want, rtol=1e-5, atol=1e-5)


def test_decomposed_layer_norms_of_an_opset_13_export_become_skip_layer_norms():
    model = bert_encoder(opset=13, layers=2, decomposed_layer_norm=True)
    feeds = _bert_feeds()
    want = _ort(model, feeds)[0]
    for level, attention in ((qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, 0),
                             (qrt.GraphOptimizationLevel.ORT_ENABLE_ALL, 2)):
        sess = qrt.InferenceSession(model, _options(level))
        ops = [n.op_type for n in sess.model.graph.node]
        assert ops.count("SkipLayerNormalization") == 4 and ops.count("MultiHeadAttention") == attention
        assert not {"ReduceMean", "Sqrt", "Pow"} & set(ops)
        np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-5, atol=1e-5)
        if attention == 0:
            np.testing.assert_allclose(_ort(sess.model, feeds)[0], want, rtol=1e-5, atol=1e-5)
