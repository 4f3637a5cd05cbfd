"""Quantized models from onnxruntime's and qrt's quantizers, run in qrt and in onnxruntime.

For each model (tests/model_builders' CNN and MLP), format (QOperator, QDQ), activation type
(uint8, int8) and weight granularity (per tensor, per channel):

* QDQ models: qrt (on its integer kernels, after the rewrite) is within one output quantization step
  of onnxruntime's literal float simulation of the same model (graph optimizations off, so every
  DequantizeLinear -> float op -> QuantizeLinear runs as written) -- the spec's arithmetic;
* qrt agrees with onnxruntime's integer kernels within one step where those are exact: always with
  VNNI; without it onnxruntime's u8 x s8 AVX2 kernels saturate int16 pair sums on full-range data
  (tests/int8/test_int8_kernels.py shows the mechanism), so on such hosts only the next check holds;
* qrt's output is at least as close to the float model's as onnxruntime's (mean absolute error,
  with a twentieth of a step of slack for rounding ties decided the other way).
"""
import numpy as np
import pytest

from int8_helpers import run_ort, run_qrt
from qrt.fusion import fuse_qdq_groups
from quantized_models import eval_input, float_model, ort_quantized, output_step, qrt_quantized

CONFIGS = [(name, fmt, act, pc) for name in ("cnn", "mlp") for fmt in ("QOperator", "QDQ")
           for act in ("QUInt8", "QInt8") for pc in (False, True)]


def _steps(a, b, step):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / step)


def _run_qrt(model, fmt, x):
    # QDQ models run on the integer kernels through the rewrite (what enable_qdq_integer_execution does).
    return run_qrt(fuse_qdq_groups(model) if fmt == "QDQ" else model, x)[0]


_EXACT = []


def _onnxruntime_exact_on_this_host():
    """Whether onnxruntime's MatMulInteger is exact on full-range u8 x s8 data here (VNNI) or saturates."""
    if not _EXACT:
        from int8_helpers import node_model, random_q
        rng = np.random.default_rng(0)
        a, b = random_q(rng, (32, 256), np.uint8), random_q(rng, (256, 32), np.int8)
        model = node_model("MatMulInteger", dict(a=a), dict(b=b), [("y", np.int32)], opset=10, input_order=["a", "b"])
        _EXACT.append(bool((run_ort(model, dict(a=a))[0] == a.astype(np.int64) @ b.astype(np.int64)).all()))
    return _EXACT[0]


def _check(name, model, fmt):
    x = {"input": eval_input(name)}
    step = output_step(model)
    reference = run_ort(float_model(name), x)[0]
    ours = _run_qrt(model, fmt, x)
    theirs = run_ort(model, x)[0]
    if fmt == "QDQ":
        assert _steps(ours, run_ort(model, x, optimize=False)[0], step) <= 1.0 + 1e-3
    if _onnxruntime_exact_on_this_host():
        assert _steps(ours, theirs, step) <= 1.0 + 1e-3
    err_ours = np.abs(ours - reference).mean()
    err_theirs = np.abs(theirs - reference).mean()
    assert err_ours <= err_theirs + 0.05 * step, (err_ours, err_theirs, step)


@pytest.mark.parametrize("name, fmt, act, per_channel", CONFIGS,
                         ids=[f"{n}-{f}-{a}-{'pc' if p else 'pt'}" for n, f, a, p in CONFIGS])
def test_onnxruntime_quantized_model(name, fmt, act, per_channel):
    _check(name, ort_quantized(name, fmt, act, per_channel=per_channel), fmt)


def test_onnxruntime_quantized_reduce_range_uint8_weights():
    """7-bit activations/weights (reduce_range) with uint8 weights (the U8U8 combination)."""
    for fmt in ("QOperator", "QDQ"):
        _check("cnn", ort_quantized("cnn", fmt, "QUInt8", weight="QUInt8", per_channel=True, reduce_range=True), fmt)


QRT_CONFIGS = [(name, fmt, act) for name in ("cnn", "mlp") for fmt in ("QOperator", "QDQ") for act in ("QUInt8", "QInt8")]


@pytest.mark.parametrize("name, fmt, act", QRT_CONFIGS, ids=[f"{n}-{f}-{a}" for n, f, a in QRT_CONFIGS])
def test_qrt_quantized_model(name, fmt, act):
    _check(name, qrt_quantized(name, fmt, act, per_channel=True), fmt)


def test_one_session_from_several_threads():
    """Packed weights and tables are built at session creation and only read while running."""
    import threading

    import qrt
    model = ort_quantized("cnn", "QOperator", "QUInt8", per_channel=True)
    session = qrt.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(12)
    feeds = [{"input": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    expected = [session.run(None, f)[0] for f in feeds]
    results = [None] * 4

    def work(i):
        for _ in range(3):
            results[i] = session.run(None, feeds[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
