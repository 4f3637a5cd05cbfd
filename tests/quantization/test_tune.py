"""qrt.quantization.tune and per-tensor mixed precision, on a small residual CNN built to fail int8.

The model's stem writes two channels that sit near 40 (a large bias, as pretrained nets grow) and the
next conv reads them through weights 40x smaller than the rest: per-tensor int8 leaves that activation's
ordinary channels about 2 bits and those weights about 3 levels, so the int8 model sits near 17 dB SQNR
with onnxruntime's per-tensor weights. qrt's default gives Conv weights per-channel scales (27 dB here),
so the searches start from OnnxruntimeParity (PARITY), which keeps them per tensor. Every check of a tuned model reruns it, in onnxruntime and in qrt, on held-out feeds.
"""
from __future__ import annotations

import importlib
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.errors import QuantizationError
from qrt.quantization import QuantType, quantize_static, tune
from qrt.quantization.cli import main
from quant_models import run_ort, sqnr_db

# The package exports the function ``tune``, which shadows the module of the same name.
tune_module = importlib.import_module("qrt.quantization.tune")
TARGET = 30.0
PARITY = {"OnnxruntimeParity": True}


def outlier_resnet(seed=0, channels=8, size=12, blocks=6, outlier_channels=(2, 5), offset=40.0):
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv(name, x, cin, cout, bias=None, relu=True, quiet=()):
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        w[:, list(quiet)] /= offset
        b = rng.standard_normal(cout) * 0.1 if bias is None else bias
        nodes.append(helper.make_node("Conv", [x, const(name + "_w", w), const(name + "_b", b)], [name + "_out"],
                                      name=name, kernel_shape=[3, 3], pads=[1] * 4))
        if not relu:
            return name + "_out"
        nodes.append(helper.make_node("Relu", [name + "_out"], [name + "_relu"], name=name + "_relu"))
        return name + "_relu"

    stem_bias = rng.standard_normal(channels) * 0.1
    stem_bias[list(outlier_channels)] = offset
    x = conv("stem", "x", 3, channels, bias=stem_bias)
    x = conv("mix", x, channels, channels, quiet=outlier_channels)
    for i in range(blocks):
        h = conv(f"block{i}_a", x, channels, channels)
        h = conv(f"block{i}_b", h, channels, channels, relu=False)
        nodes.append(helper.make_node("Add", [x, h], [f"block{i}_sum"], name=f"block{i}_add"))
        x = f"block{i}_sum"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    fc_w = rng.standard_normal((10, channels)) * np.sqrt(2.0 / channels)
    nodes.append(helper.make_node("Gemm", ["flat", const("fc_w", fc_w), const("fc_b", rng.standard_normal(10) * 0.1)],
                                  ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "outlier_resnet",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(n, seed, size=12):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(n)]


def run_qrt(model, feed_list):
    session = qrt.InferenceSession(model.SerializeToString())
    return [np.concatenate([session.run(None, f)[0] for f in feed_list])]


@pytest.fixture(scope="module")
def outlier_model():
    return outlier_resnet()


@pytest.fixture(scope="module")
def tuned(outlier_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "tuned.onnx"
    # Cross-layer equalization alone fixes this model (test_equalization_alone_meets_the_target); without
    # it the per-node search (sensitivity, calibration method, 16-bit weights) has to, which is what these
    # tests exercise. Scored on its own eval feeds: on the calibration feeds themselves, clipping ranges
    # (Percentile, Entropy) look better than they are on new data.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune_module, "_find_equalizer", lambda: None)
        result = tune(outlier_model, feeds(32, 0), out, target=TARGET, eval_reader=feeds(16, 5), max_seconds=120,
                      verbose=False, extra_options=PARITY)
    return result, out


def test_equalization_alone_meets_the_target(outlier_model):
    result = tune(outlier_model, feeds(32, 0), None, target=TARGET, eval_reader=feeds(16, 5), max_seconds=120,
                  verbose=False, extra_options=PARITY)
    assert result.met and result.default_metric < TARGET - 5
    assert [s.change for s in result.steps if s.kept] == ["cross-layer equalization"]
    assert result.int8_share == 1.0


def test_default_int8_fails_and_tune_meets_the_target(outlier_model, tuned):
    result, out = tuned
    held_out = feeds(6, 1)
    reference = run_ort(outlier_model, held_out)[0]
    default = quantize_static(outlier_model, None, feeds(32, 0), extra_options=PARITY).model
    assert sqnr_db(reference, run_ort(default, held_out)[0]) < TARGET - 5
    assert result.met and result.metric >= TARGET and result.default_metric < TARGET - 5
    written = onnx.load(out)
    onnx.checker.check_model(written)
    # The target holds on data the search never saw, in both runtimes.
    assert sqnr_db(reference, run_ort(written, held_out)[0]) >= TARGET
    assert sqnr_db(reference, run_qrt(written, held_out)[0]) >= TARGET
    assert result.compute_nodes == 22 and result.int8_share >= 0.9
    assert 0 < result.size_ratio < 1 and result.latency_ratio > 0
    text = str(result)
    assert "met" in text and "int8 compute nodes" in text and "-> " in text
    kept = [s for s in result.steps if s.kept]
    assert kept and all(s.change for s in kept)
    # The choices name what differs from the all-int8 default; every node they name is in the model.
    names = {n.name for n in written.graph.node}
    assert result.choices and all(k == "model" or k in names for k in result.choices)


def test_scan_ranks_the_built_sensitive_layer_first(tuned):
    # ``mix`` is the layer this model is built to make sensitive: it reads the two outlier channels
    # through weights 40x smaller than the rest. The scan probes every int8 compute node; swapping
    # ``mix`` alone lifts the SQNR ~9.5 dB (27.0 -> 36.5), no other node more than ~1 dB. The noise
    # budget then swaps that one node, and the last pass keeps only its weight 16-bit.
    result, _ = tuned
    assert len(result.sensitivity) == result.compute_nodes == 22
    ranked = sorted(result.sensitivity, key=lambda n: -result.sensitivity[n])
    assert ranked[0] == "mix"
    assert result.sensitivity["mix"] - result.sensitivity_base >= 7
    assert all(result.sensitivity[n] - result.sensitivity_base <= 2 for n in ranked[1:])
    groups = [s.change for s in result.steps if s.kept and "holding the most measured noise" in s.change]
    assert [g.split()[0] for g in groups] == ["1"]
    assert result.choices.get("mix") == "QInt16 weight" and result.int8_nodes == 21


class _NoTimeLimit:
    def out_of_time(self):
        return False

    def weight_of(self, name):
        return None


def test_noise_budget_swaps_the_fewest_nodes_whose_noise_shares_reach_the_target():
    # From 20 dB (noise 1e-2 of the signal) to 30 dB (1e-3), 9e-3 of noise must go. Swapping a alone
    # leaves 4e-3 (a holds 6e-3), b alone 6.5e-3 (3.5e-3), c alone 9.8e-3 (2e-4): a and b together
    # remove 9.5e-3, so the budget tries those two (and only those: a group that falls short is
    # not grown here, the per-node options and the doubling groups take over).
    search = tune_module._Search.__new__(tune_module._Search)
    search.tuner, search.objective, search.target = _NoTimeLimit(), "sqnr", 30.0
    search.plan, search.current, search.wide_ok = tune_module._Plan(), 20.0, False
    search.sensitivity_base = 20.0
    search.sensitivity = {n: -10 * np.log10(left) for n, left in (("c", 9.8e-3), ("a", 4e-3), ("b", 6.5e-3))}
    search.sensitivity["d"] = 19.5    # its swap made things worse: it holds no noise to remove
    tried = []

    def attempt(candidate, change):
        tried.append(sorted(candidate.float_nodes))
        return False

    search.attempt = attempt
    assert search.budget_group() is False
    assert tried == [["a", "b"]]


def test_result_metric_is_what_qrt_measures(outlier_model, tuned):
    result, out = tuned
    scored = feeds(16, 5)
    reference = run_qrt(outlier_model, scored)[0]
    assert sqnr_db(reference, run_qrt(onnx.load(out), scored)[0]) == pytest.approx(result.metric, abs=1e-6)


def test_time_bound(outlier_model, tuned, monkeypatch):
    monkeypatch.setattr(tune_module, "_find_equalizer", lambda: None)   # as in ``tuned``: the long search
    bound = 1.0
    start = time.perf_counter()
    result = tune(outlier_model, feeds(32, 0), None, target=TARGET, max_seconds=bound, verbose=False)
    elapsed = time.perf_counter() - start
    # The search stops at the first check after the bound: the candidate under evaluation (a rewrite
    # and 32 runs of a 12x12 net, a fraction of a second) finishes, and the final latency timing
    # follows. The margins allow for a loaded 2-core machine; the unbounded search (``tuned``) takes ~10 s.
    assert result.seconds <= bound + 4.0
    assert elapsed <= bound + 12.0
    assert len(result.steps) < len(tuned[0].steps)
    assert result.model is not None and np.isfinite(result.metric)


def test_user_metric_top1(outlier_model):
    calls = []

    def top1(float_outputs, quantized_outputs):
        calls.append((len(float_outputs), len(float_outputs[0])))
        agree = [np.argmax(f[0]) == np.argmax(q[0]) for f, q in zip(float_outputs, quantized_outputs)]
        return float(np.mean(agree))

    eval_feeds = feeds(20, 2)
    result = tune(outlier_model, feeds(32, 0), None, metric=top1, target=1.0, eval_reader=eval_feeds,
                  max_seconds=120, verbose=False)
    assert calls and all(c == (20, 1) for c in calls)
    assert result.objective == "metric" and result.met
    reference = run_qrt(outlier_model, eval_feeds)[0]
    tuned_out = run_qrt(result.model, eval_feeds)[0]
    assert np.mean(reference.argmax(1) == tuned_out.argmax(1)) == 1.0 == result.metric


def test_cosine_objective_and_bad_arguments(outlier_model):
    result = tune(outlier_model, feeds(4, 0), None, objective="cosine", target=0.999, max_seconds=60,
                  verbose=False)
    assert result.objective == "cosine" and result.met and 0.999 <= result.metric <= 1.0
    with pytest.raises(QuantizationError, match="objective"):
        tune(outlier_model, feeds(2, 0), None, objective="psnr")
    with pytest.raises(QuantizationError, match="max_seconds"):
        tune(outlier_model, feeds(2, 0), None, max_seconds=0)
    with pytest.raises(QuantizationError, match="calibration"):
        tune(outlier_model, [], None)


def test_equalization_is_tried_when_present(outlier_model, monkeypatch):
    calls = []

    def stand_in(model):
        calls.append(model)
        return model

    monkeypatch.setattr(tune_module, "_find_equalizer", lambda: stand_in)
    result = tune(outlier_model, feeds(4, 0), None, target=TARGET, max_seconds=60, verbose=False)
    assert len(calls) == 1
    step = result.steps[0]
    # The stand-in changes nothing, so the equalized candidate scores the default and is dropped.
    assert step.change == "cross-layer equalization" and not step.kept
    assert step.metric == pytest.approx(result.default_metric, abs=1e-9)


def test_mixed_precision_per_tensor(outlier_model):
    """TensorQuantOverrides quant_type: one activation and one weight 16-bit, the rest int8, one node
    float; qrt runs it as onnxruntime does."""
    calib = feeds(32, 0)
    overrides = {"stem_relu": [{"quant_type": QuantType.QInt16}], "mix_w": [{"quant_type": QuantType.QInt16}]}
    summary = quantize_static(outlier_model, None, calib, nodes_to_exclude=["block0_a"],
                              extra_options={"TensorQuantOverrides": overrides})
    model = summary.model
    inits = {t.name: t for t in model.graph.initializer}
    stored = {node.output[0].removesuffix("_quantized"): inits[node.input[2]].data_type
              for node in model.graph.node if node.op_type == "QuantizeLinear"}
    stored.update({node.input[0].removesuffix("_quantized"): inits[node.input[0]].data_type
                   for node in model.graph.node if node.op_type == "DequantizeLinear" and node.input[0] in inits
                   and len(node.input) > 2})
    assert stored.pop("stem_relu") == TensorProto.INT16 and stored.pop("mix_w") == TensorProto.INT16
    assert set(stored.values()) == {TensorProto.INT8}
    assert "block0_a" in [r.name for r in summary.float_nodes]
    held_out = feeds(4, 3)
    # onnxruntime's WeightBiasQuantization pass would quantize block0_a's float weights (it reads a
    # DequantizeLinear); with it disabled onnxruntime computes what the file says.
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["WeightBiasQuantization"])
    ort_out = np.concatenate([session.run(None, f)[0] for f in held_out])
    qrt_out = run_qrt(model, held_out)[0]
    # Between Q/DQ pairs both runtimes compute in float32 in their own summation order, so a value at a
    # rounding tie may land one step apart in an int8 tensor; measured: identical here (340 dB).
    assert sqnr_db(ort_out, qrt_out) > 60
    reference = run_ort(outlier_model, held_out)[0]
    default = run_ort(quantize_static(outlier_model, None, calib).model, held_out)[0]
    assert sqnr_db(reference, qrt_out) > sqnr_db(reference, default) + 10


def test_cli_target_sqnr(outlier_model, tmp_path, capsys):
    onnx.save(outlier_model, tmp_path / "float.onnx")
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in feeds(32, 0)]))
    out = tmp_path / "tuned.onnx"
    args = [str(tmp_path / "float.onnx"), str(out), "--calibration", str(tmp_path / "calib.npz"), "--batch-size", "1"]
    assert main(args + ["--target-sqnr", str(TARGET)]) == 0
    printed = capsys.readouterr().out
    assert f"target sqnr >= {TARGET:g} dB: met" in printed
    held_out = feeds(4, 1)
    assert sqnr_db(run_ort(outlier_model, held_out)[0], run_ort(onnx.load(out), held_out)[0]) >= TARGET
    # A target nothing reaches in the time given: the best model found is written, exit status 2.
    assert main(args + ["--target-sqnr", "200", "--tune-seconds", "3"]) == 2
    assert "NOT met" in capsys.readouterr().out
    assert main(args[:2] + ["--target-cosine", "0.99"]) == 1
    assert "need --calibration" in capsys.readouterr().err


def test_probes_run_the_feeds_that_carry_the_noise():
    # Per feed, its share of the noise the SQNR counts: for one output they add up to noise/signal.
    rng = np.random.default_rng(3)
    reference = [[rng.standard_normal((2, 5))] for _ in range(4)]
    approx = [[r[0] + rng.standard_normal((2, 5)) * scale] for r, scale in zip(reference, (0.01, 0.3, 0.02, 0.01))]
    shares = tune_module._sample_noise(reference, approx)
    assert 10 * np.log10(1 / sum(shares)) == pytest.approx(tune_module.sqnr_db(reference, approx), abs=1e-9)
    assert int(np.argmax(shares)) == 1
    # One feed carries 96% of the noise: the probes run it alone. Spread evenly, the noise needs more
    # than half the feeds for 95%: the probes run them all.
    tuner = tune_module._Tuner.__new__(tune_module._Tuner)
    tuner.eval_feeds = [{}] * 8
    tuner.build = lambda plan: type("Built", (), {"model": None})  # sample_noise here ignores the model
    tuner.sample_noise = lambda model: [0.01, 0.01, 0.96, 0.01, 0.01, 0.0, 0.0, 0.0]
    assert tuner.probe_samples(tune_module._Plan()) == (2,)
    tuner.sample_noise = lambda model: [1.0] * 8
    assert tuner.probe_samples(tune_module._Plan()) is None
