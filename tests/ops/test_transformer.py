"""Softmax family, LayerNormalization, RMSNormalization, Attention, RotaryEmbedding and Dropout against
onnxruntime (and onnx.reference where onnxruntime differs from the spec or has no kernel).

Tolerance: float32 at rtol=1e-5, atol=1e-6 for softmax-family and normalization outputs (each is a
handful of roundings of O(1) values); attention outputs at rtol=1e-5, atol=1e-5 (a softmax-weighted
sum of V rows whose scores are dot products summed in a different order). float64 at 1e-12.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import qrt
from qrt.errors import InvalidModel, QrtError
from qrt.kernels.cpu.threads import WORK_PER_THREAD

RNG = np.random.default_rng(23)


def _model(op_type, inputs, attrs, opset, outputs):
    """``outputs``: (name, numpy dtype, rank) per node output; an empty name omits that output."""
    graph = helper.make_graph(
        [helper.make_node(op_type, [n for n, _ in inputs], [o[0] for o in outputs], **attrs)], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs if n],
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(t)),
                                       [f"{name}{d}" for d in range(rank)])
         for name, t, rank in outputs if name])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(inputs):
    return {n: v for n, v in inputs if n}


def _qrt(model, inputs):
    return qrt.InferenceSession(model).run(None, _feeds(inputs))


def _ort(model, inputs):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, _feeds(inputs))


def _reference(model, inputs):
    return ReferenceEvaluator(model).run(None, _feeds(inputs))


def _close(got, want, rtol=1e-5, atol=1e-6):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype == np.float64:
        rtol = atol = 1e-12
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _rand(*shape, dtype=np.float32, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


# ---------------------------------------------------------------- Softmax, LogSoftmax, Hardmax

SOFTMAX_CASES = [
    # (shape, axis, opset): opset 11 flattens from axis on; opset 13 uses the one axis.
    ((3, 7), -1, 13),
    ((2, 3, 5), 1, 13),          # middle axis: the strided kernel
    ((2, 3, 5), 0, 13),
    ((2, 3, 4, 5), -3, 13),
    ((2, 3, 5), 1, 11),          # coerced to (2, 15)
    ((2, 3, 4, 5), 2, 11),
    ((2, 3, 5), 0, 11),          # coerced to (1, 30)
    ((4, 12, 9, 9), -1, 13),     # attention-score shape
]


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("shape,axis,opset", SOFTMAX_CASES)
def test_softmax_family_against_onnxruntime(op_type, shape, axis, opset):
    x = _rand(*shape, scale=3.0)
    inputs = [("x", x)]
    model = _model(op_type, inputs, dict(axis=axis), opset, [("y", np.float32, len(shape))])
    _close(_qrt(model, inputs)[0], _ort(model, inputs)[0])


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_default_axis_changes_at_opset_13(op_type):
    x = _rand(2, 3, 4)
    inputs = [("x", x)]
    for opset in (11, 13):
        model = _model(op_type, inputs, {}, opset, [("y", np.float32, 3)])
        _close(_qrt(model, inputs)[0], _ort(model, inputs)[0])


def test_softmax_large_rows_parallel_kernel_and_float64():
    x = _rand(2 * WORK_PER_THREAD // 1024 + 8, 1024, scale=10.0)   # takes the parallel kernel at 2 threads
    inputs = [("x", x)]
    model = _model("Softmax", inputs, dict(axis=-1), 13, [("y", np.float32, 2)])
    got = _qrt(model, inputs)[0]
    _close(got, _ort(model, inputs)[0])
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)
    x64 = [("x", _rand(3, 5, dtype=np.float64))]
    model64 = _model("LogSoftmax", x64, dict(axis=0), 13, [("y", np.float64, 2)])
    _close(_qrt(model64, x64)[0], _ort(model64, x64)[0])


def test_softmax_extremes():
    x = np.array([[1e4, 0.0, -1e4], [-np.inf, 0.0, 1.0], [88.0, 89.0, 90.0], [-100.0, -100.0, -100.0]],
                 dtype=np.float32)
    inputs = [("x", x)]
    for op_type in ("Softmax", "LogSoftmax"):
        model = _model(op_type, inputs, dict(axis=-1), 13, [("y", np.float32, 2)])
        _close(_qrt(model, inputs)[0], _ort(model, inputs)[0])
    nan_row = [("x", np.array([[0.0, np.nan, 1.0]], dtype=np.float32))]
    model = _model("Softmax", nan_row, dict(axis=-1), 13, [("y", np.float32, 2)])
    assert np.isnan(_qrt(model, nan_row)[0]).all()


def test_hardmax_ties_pick_the_first():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    inputs = [("x", x)]
    model = _model("Hardmax", inputs, dict(axis=-1), 13, [("y", np.float32, 2)])
    np.testing.assert_array_equal(_qrt(model, inputs)[0], [[0, 1, 0, 0], [1, 0, 0, 0]])
    model_axis0 = _model("Hardmax", inputs, dict(axis=0), 13, [("y", np.float32, 2)])
    np.testing.assert_array_equal(_qrt(model_axis0, inputs)[0], [[0, 0, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_softmax_narrow_floats_round_like_the_reference(dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    x = _rand(3, 4, 6, dtype=dtype, scale=2.0)
    inputs = [("x", x)]
    for axis in (-1, 1):
        model = _model("Softmax", inputs, dict(axis=axis), 13, [("y", dtype, 3)])
        np.testing.assert_array_equal(_qrt(model, inputs)[0], _reference(model, inputs)[0])


def test_softmax_axis_out_of_range():
    inputs = [("x", _rand(2, 3))]
    model = _model("Softmax", inputs, dict(axis=2), 13, [("y", np.float32, 2)])
    with pytest.raises(QrtError):
        qrt.InferenceSession(model).run(None, _feeds(inputs))


# ---------------------------------------------------------------- LayerNormalization / RMSNormalization

@pytest.mark.parametrize("shape,axis", [((2, 3, 8), -1), ((2, 3, 8), 1), ((4, 6), 0), ((2, 5, 3, 4), -2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_against_onnxruntime(shape, axis, with_bias):
    norm_shape = shape[axis:]
    inputs = [("x", _rand(*shape, scale=2.0) + 1.0), ("scale", _rand(*norm_shape))]
    if with_bias:
        inputs.append(("bias", _rand(*norm_shape)))
    stat_rank = len(shape)
    outputs = [("y", np.float32, len(shape)), ("mean", np.float32, stat_rank), ("inv_std", np.float32, stat_rank)]
    model = _model("LayerNormalization", inputs, dict(axis=axis, epsilon=1e-3), 17, outputs)
    got, want = _qrt(model, inputs), _ort(model, inputs)
    for g, w in zip(got, want):
        _close(g, w, atol=1e-5)


def test_layer_norm_bert_shape_parallel_kernel():
    inputs = [("x", _rand(2, 128, 768)), ("scale", _rand(768)), ("bias", _rand(768))]
    model = _model("LayerNormalization", inputs, dict(epsilon=1e-12), 17, [("y", np.float32, 3)])
    _close(_qrt(model, inputs)[0], _ort(model, inputs)[0], atol=1e-5)


def test_layer_norm_scale_broadcast_over_leading_axes_and_float64():
    # Scale broadcasts unidirectionally to the whole input, not only to the normalized axes.
    inputs = [("x", _rand(3, 4, 5)), ("scale", _rand(3, 1, 5)), ("bias", _rand(5))]
    model = _model("LayerNormalization", inputs, dict(axis=-1), 17, [("y", np.float32, 3)])
    _close(_qrt(model, inputs)[0], _reference(model, inputs)[0], atol=1e-5)
    x64 = [("x", _rand(2, 6, dtype=np.float64)), ("scale", _rand(6, dtype=np.float64))]
    model64 = _model("LayerNormalization", x64, {}, 17, [("y", np.float64, 2)])
    _close(_qrt(model64, x64)[0], _ort(model64, x64)[0])


def test_layer_norm_bad_scale_shape():
    inputs = [("x", _rand(2, 6)), ("scale", _rand(5))]
    model = _model("LayerNormalization", [("x", inputs[0][1]), ("scale", _rand(6))], {}, 17, [("y", np.float32, 2)])
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "n"
    with pytest.raises(QrtError, match="Scale"):
        qrt.InferenceSession(model).run(None, _feeds(inputs))


@pytest.mark.parametrize("shape,axis", [((2, 3, 8), -1), ((2, 3, 8), 1), ((1, 5, 64), -1)])
def test_rms_norm_against_onnxruntime(shape, axis):
    inputs = [("x", _rand(*shape)), ("scale", _rand(*shape[axis:]))]
    model = _model("RMSNormalization", inputs, dict(axis=axis, epsilon=1e-6), 23, [("y", np.float32, len(shape))])
    _close(_qrt(model, inputs)[0], _ort(model, inputs)[0], atol=1e-5)


# ---------------------------------------------------------------- Attention

def _attention(inputs, attrs, opset=23, n_out=1, out_rank=4, outputs=None):
    names = ["Y", "present_key", "present_value", "qk"][:n_out]
    ranks = [out_rank, 4, 4, 4]
    outputs = outputs or [(n, np.float32, r) for n, r in zip(names, ranks)]
    return _model("Attention", inputs, attrs, opset, outputs)


def _check_attention(inputs, attrs, opset=23, n_out=1, out_rank=4, oracle=_ort):
    model = _attention(inputs, attrs, opset, n_out, out_rank)
    got, want = _qrt(model, inputs), oracle(model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _close(g, w, atol=1e-5)
    return got


def test_attention_bert_padding_mask():
    # BERT-base-like heads with an additive key-padding mask broadcast over heads (and, for the
    # reference, over queries: onnxruntime wants the query axis spelled out).
    b, h, s, d = 2, 12, 16, 64
    mask = np.zeros((b, 1, 1, s), np.float32)
    mask[1, ..., 11:] = -10000.0
    inputs = [("Q", _rand(b, h, s, d)), ("K", _rand(b, h, s, d)), ("V", _rand(b, h, s, d)), ("mask", mask)]
    _check_attention(inputs, {}, oracle=_reference)
    inputs[3] = ("mask", np.ascontiguousarray(np.broadcast_to(mask, (b, 1, s, s))))
    _check_attention(inputs, {})


def test_attention_decoder_step_with_past_and_causal_bool_mask():
    b, h, past, d = 1, 4, 7, 16
    inputs = [("Q", _rand(b, h, 1, d)), ("K", _rand(b, h, 1, d)), ("V", _rand(b, h, 1, d)),
              ("mask", np.ones((1, past + 1), bool)), ("past_key", _rand(b, h, past, d)),
              ("past_value", _rand(b, h, past, d))]
    got = _check_attention(inputs, dict(is_causal=1), n_out=3)
    np.testing.assert_array_equal(got[1][:, :, :past], inputs[4][1])


def test_attention_prefill_causal_with_past_offsets_the_diagonal():
    b, h, past, s, d = 2, 2, 3, 4, 8
    inputs = [("Q", _rand(b, h, s, d)), ("K", _rand(b, h, s, d)), ("V", _rand(b, h, s, d)), ("", None),
              ("past_key", _rand(b, h, past, d)), ("past_value", _rand(b, h, past, d))]
    _check_attention(inputs, dict(is_causal=1), n_out=3)


def test_attention_3d_grouped_query_heads():
    # Llama-style GQA: 8 query heads share 2 key/value heads; hidden sizes packed in the last axis.
    b, s, t, hq, hkv, d = 2, 5, 5, 8, 2, 16
    inputs = [("Q", _rand(b, s, hq * d)), ("K", _rand(b, t, hkv * d)), ("V", _rand(b, t, hkv * d))]
    _check_attention(inputs, dict(q_num_heads=hq, kv_num_heads=hkv, is_causal=1), out_rank=3)


def test_attention_value_head_size_differs_and_cross_attention():
    inputs = [("Q", _rand(1, 3, 4, 8)), ("K", _rand(1, 3, 9, 8)), ("V", _rand(1, 3, 9, 5)),
              ("mask", RNG.random((4, 9)) > 0.3)]
    _check_attention(inputs, dict(scale=0.2))


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_qk_output_modes_with_softcap(mode):
    inputs = [("Q", _rand(1, 2, 3, 8, scale=3.0)), ("K", _rand(1, 2, 5, 8, scale=3.0)), ("V", _rand(1, 2, 5, 8)),
              ("mask", _rand(2, 3, 5))]
    _check_attention(inputs, dict(softcap=5.0, qk_matmul_output_mode=mode, is_causal=1), n_out=4,
                     oracle=_reference)


def test_attention_fully_masked_rows_are_zero():
    mask = np.ones((1, 1, 3, 4), bool)
    mask[0, 0, 1] = False
    inputs = [("Q", _rand(1, 2, 3, 8)), ("K", _rand(1, 2, 4, 8)), ("V", _rand(1, 2, 4, 8)), ("mask", mask)]
    got = _check_attention(inputs, dict(qk_matmul_output_mode=3), n_out=4, oracle=_reference)
    assert not got[0][:, :, 1].any() and not got[3][:, :, 1].any()


def test_attention_24_padded_external_cache_and_25_window():
    b, h, s, t, d = 2, 2, 3, 6, 8
    base = [("Q", _rand(b, h, s, d)), ("K", _rand(b, h, t, d)), ("V", _rand(b, h, t, d)), ("", None), ("", None),
            ("", None), ("nonpad", np.array([6, 4], np.int64))]
    _check_attention(base, dict(is_causal=1), opset=24, oracle=_reference)
    _check_attention(base, dict(left_window_size=2, right_window_size=1), opset=25, oracle=_reference)


def test_attention_bad_inputs():
    inputs = [("Q", _rand(1, 3, 4, 8)), ("K", _rand(1, 2, 4, 8)), ("V", _rand(1, 2, 4, 8))]
    model = _attention(inputs, {})
    with pytest.raises(QrtError, match="multiple"):
        qrt.InferenceSession(model).run(None, _feeds(inputs))
    three_d = [("Q", _rand(1, 4, 16)), ("K", _rand(1, 4, 16)), ("V", _rand(1, 4, 16))]
    model = _attention(three_d, {}, out_rank=3)
    with pytest.raises(QrtError, match="q_num_heads"):
        qrt.InferenceSession(model).run(None, _feeds(three_d))
    with pytest.raises(InvalidModel, match="qk_matmul_output_mode"):
        qrt.InferenceSession(_attention(inputs, dict(qk_matmul_output_mode=7)))


# ---------------------------------------------------------------- RotaryEmbedding

def _rope_caches(positions, half):
    freqs = 1.0 / (10000 ** (np.arange(half) / half))
    angles = np.arange(positions)[:, None] * freqs[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_dim", [0, 8])
def test_rotary_embedding_4d_with_positions(interleaved, rotary_dim):
    b, h, s, d = 2, 3, 5, 16
    cos, sin = _rope_caches(12, (rotary_dim or d) // 2)
    positions = RNG.integers(0, 12, size=(b, s)).astype(np.int64)
    inputs = [("x", _rand(b, h, s, d)), ("cos", cos), ("sin", sin), ("pos", positions)]
    model = _model("RotaryEmbedding", inputs, dict(interleaved=interleaved, rotary_embedding_dim=rotary_dim), 23,
                   [("y", np.float32, 4)])
    _close(_qrt(model, inputs)[0], _ort(model, inputs)[0])


def test_rotary_embedding_3d_without_positions():
    b, s, heads, d = 2, 4, 2, 8
    cos, sin = _rope_caches(s, d // 2)
    cos3, sin3 = np.broadcast_to(cos, (b, s, d // 2)).copy(), np.broadcast_to(sin, (b, s, d // 2)).copy()
    inputs = [("x", _rand(b, s, heads * d)), ("cos", cos3), ("sin", sin3)]
    model = _model("RotaryEmbedding", inputs, dict(num_heads=heads), 23, [("y", np.float32, 3)])
    _close(_qrt(model, inputs)[0], _ort(model, inputs)[0])


def test_rotary_embedding_position_out_of_range():
    cos, sin = _rope_caches(4, 4)
    inputs = [("x", _rand(1, 1, 2, 8)), ("cos", cos), ("sin", sin), ("pos", np.array([[0, 9]], np.int64))]
    model = _model("RotaryEmbedding", inputs, {}, 23, [("y", np.float32, 4)])
    with pytest.raises(QrtError, match="position_ids"):
        qrt.InferenceSession(model).run(None, _feeds(inputs))


# ---------------------------------------------------------------- Dropout

def test_dropout_inference_is_identity_with_all_true_mask():
    x = _rand(3, 4)
    for opset, mask_type in ((7, np.float32), (10, bool), (13, bool)):
        inputs = [("x", x)]
        model = _model("Dropout", inputs, {}, opset, [("y", np.float32, 2), ("mask", mask_type, 2)])
        y, mask = _qrt(model, inputs)
        np.testing.assert_array_equal(y, x)
        assert mask.dtype == np.dtype(mask_type) and mask.all()


def test_dropout_training_mode_reproduces_the_seeded_reference():
    x = _rand(4, 5, 6)
    inputs = [("x", x), ("ratio", np.array(0.3, np.float32)), ("training", np.array(True))]
    model = _model("Dropout", inputs, dict(seed=7), 13, [("y", np.float32, 3), ("mask", bool, 3)])
    got, want = _qrt(model, inputs), _reference(model, inputs)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])
    assert 0 < got[1].mean() < 1
    np.testing.assert_allclose(got[0][got[1]], x[got[1]] / 0.7, rtol=1e-6)


def test_dropout_bad_ratio():
    inputs = [("x", _rand(2, 2)), ("ratio", np.array(1.5, np.float32)), ("training", np.array(True))]
    model = _model("Dropout", inputs, dict(seed=1), 13, [("y", np.float32, 2)])
    with pytest.raises(QrtError, match="ratio"):
        qrt.InferenceSession(model).run(None, _feeds(inputs))


def test_dropout_unseeded_training_is_not_folded():
    # A constant input in training mode without a seed must draw a new mask on every run.
    x = helper.make_tensor("x", TensorProto.FLOAT, [64], np.ones(64, np.float32))
    ratio = helper.make_tensor("r", TensorProto.FLOAT, [], [0.5])
    training = helper.make_tensor("t", TensorProto.BOOL, [], [True])
    graph = helper.make_graph([helper.make_node("Dropout", ["x", "r", "t"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], [x, ratio, training])
    session = qrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    draws = [session.run(None, {})[0] for _ in range(3)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])
