"""BatchNormalization, InstanceNormalization, GroupNormalization and LRN against onnxruntime and the spec.

Tolerance: float32 at rtol=1e-5, atol=1e-5 (outputs are O(1): a normalized value is a difference
of two float32 numbers times a reciprocal square root, a few ulps apart between implementations).
float64 at rtol=1e-12.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import qrt
from qrt.errors import InvalidModel

RNG = np.random.default_rng(11)


def _model(op_type, inputs, attrs, opset, out_specs):
    """``out_specs``: (dtype, rank) per output."""
    outs = [f"y{i}" for i in range(len(out_specs))]
    graph = helper.make_graph(
        [helper.make_node(op_type, [n for n, _ in inputs], outs, **attrs)], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in inputs],
        [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(t)), [f"{o}{d}" for d in
                                                                                        range(r)])
         for o, (t, r) in zip(outs, out_specs)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_both(op_type, inputs, attrs, opset, out_specs=None):
    out_specs = out_specs or [(inputs[0][1].dtype, inputs[0][1].ndim)]
    model = _model(op_type, inputs, attrs, opset, out_specs)
    feeds = dict(inputs)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = qrt.InferenceSession(model).run(None, feeds)
    return got, want


def assert_close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    tol = 1e-12 if want.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _bn_inputs(shape, dtype=np.float32, param_shape=None):
    channels = param_shape or (shape[1],)
    return [("x", RNG.standard_normal(shape).astype(dtype)), ("scale", RNG.standard_normal(channels).astype(dtype)),
            ("bias", RNG.standard_normal(channels).astype(dtype)),
            ("mean", RNG.standard_normal(channels).astype(dtype)),
            ("var", (RNG.random(channels) + 0.5).astype(dtype))]


@pytest.mark.parametrize("shape", [(2, 3), (2, 4, 7), (1, 8, 5, 6), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("opset", [7, 9, 14, 15])
def test_batch_norm_inference(shape, opset):
    got, want = run_both("BatchNormalization", _bn_inputs(shape), dict(epsilon=1e-3), opset)
    assert_close(got[0], want[0])


def test_batch_norm_float64():
    got, want = run_both("BatchNormalization", _bn_inputs((2, 3, 4, 5), np.float64), {}, 15)
    assert_close(got[0], want[0])


def test_batch_norm_opset9_single_output_uses_given_statistics_despite_momentum():
    # Opsets 9-13 decide training vs inference by the number of outputs: a node with only Y is in
    # inference mode and must use the given mean/var, momentum attribute or not. onnx.reference
    # (1.23) switches to batch statistics whenever momentum is present; onnxruntime follows the spec,
    # and so does qrt.
    inputs = _bn_inputs((2, 3, 4, 4))
    got, want = run_both("BatchNormalization", inputs, dict(momentum=0.8), 9)
    assert_close(got[0], want[0])
    x, scale, bias, mean, var = (v for _, v in inputs)
    spec = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * scale[:, None, None] + \
        bias[:, None, None]
    np.testing.assert_allclose(got[0], spec, rtol=1e-5, atol=1e-5)
    model = _model("BatchNormalization", inputs, dict(momentum=0.8), 9, [(np.float32, 4)])
    reference = ReferenceEvaluator(model).run(None, dict(inputs))[0]
    assert np.abs(reference - spec).max() > 0.1  # the reference's deviation this test documents


def test_batch_norm_opset7_per_activation():
    # spatial=0: scale, bias, mean and var hold one value per (channel, position).
    inputs = _bn_inputs((2, 3, 4, 5), param_shape=(3, 4, 5))
    got, want = run_both("BatchNormalization", inputs, dict(spatial=0), 7)
    assert_close(got[0], want[0])


@pytest.mark.parametrize("opset", [14, 15])
def test_batch_norm_training_mode(opset):
    inputs = _bn_inputs((4, 3, 5, 5))
    got, want = run_both("BatchNormalization", inputs, dict(training_mode=1, momentum=0.7), opset,
                         [(np.float32, 4), (np.float32, 1), (np.float32, 1)])
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("opset", [7, 9])
def test_batch_norm_training_outputs_opset9(opset):
    inputs = _bn_inputs((4, 3, 5, 5))
    specs = [(np.float32, 4)] + [(np.float32, 1)] * 4
    got, want = run_both("BatchNormalization", inputs, dict(momentum=0.7), opset, specs)
    for g, w in zip(got[:4], want[:4]):
        assert_close(g, w)
    # saved_var: the spec calls it the saved variance, and so does onnx.reference; onnxruntime stores
    # the inverse standard deviation there instead. qrt gives the batch (population) variance.
    x = inputs[0][1]
    np.testing.assert_allclose(got[4], x.var(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(want[4], 1 / np.sqrt(x.var(axis=(0, 2, 3)) + 1e-5), rtol=1e-5)


def test_batch_norm_15_keeps_statistics_type():
    # Opset 15 lets the statistics have their own float type; the running outputs keep it.
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    inputs = [("x", x), ("scale", np.ones(3, np.float32)), ("bias", np.zeros(3, np.float32)),
              ("mean", np.zeros(3, np.float64)), ("var", np.ones(3, np.float64))]
    model = _model("BatchNormalization", inputs, dict(training_mode=1), 15,
                   [(np.float32, 3), (np.float64, 1), (np.float64, 1)])
    y, running_mean, running_var = qrt.InferenceSession(model).run(None, dict(inputs))
    assert y.dtype == np.float32 and running_mean.dtype == np.float64 and running_var.dtype == np.float64
    np.testing.assert_allclose(running_mean, 0.1 * x.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(running_var, 0.9 + 0.1 * x.var(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(y, (x - x.mean(axis=(0, 2))[:, None]) / np.sqrt(x.var(axis=(0, 2))[:, None] + 1e-5),
                               rtol=1e-5, atol=1e-5)


def test_batch_norm_extra_outputs_outside_training_are_invalid():
    inputs = _bn_inputs((2, 3, 4))
    model = _model("BatchNormalization", inputs, dict(training_mode=0), 15,
                   [(np.float32, 3), (np.float32, 1), (np.float32, 1)])
    with pytest.raises(InvalidModel, match="training"):
        qrt.InferenceSession(model)


@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 4, 6, 5), (2, 2, 3, 4, 5)])
def test_instance_norm(shape):
    inputs = [("x", RNG.standard_normal(shape).astype(np.float32)),
              ("scale", RNG.standard_normal(shape[1]).astype(np.float32)),
              ("bias", RNG.standard_normal(shape[1]).astype(np.float32))]
    got, want = run_both("InstanceNormalization", inputs, dict(epsilon=1e-4), 6)
    assert_close(got[0], want[0])


def test_instance_norm_large_offset():
    # A large common offset: a one-pass E[x^2] - E[x]^2 variance would lose every digit here (onnxruntime's
    # float32 statistics lose about half of them: its outputs land on a 1/128 grid). The oracle is the
    # exact statistics of the float32 inputs, computed in float64.
    x = (RNG.standard_normal((1, 2, 64)) * 0.01 + 1000.0).astype(np.float32)
    inputs = [("x", x), ("scale", np.ones(2, np.float32)), ("bias", np.zeros(2, np.float32))]
    model = _model("InstanceNormalization", inputs, {}, 6, [(np.float32, 3)])
    got = qrt.InferenceSession(model).run(None, dict(inputs))[0]
    x64 = x.astype(np.float64)
    exact = (x64 - x64.mean(axis=2, keepdims=True)) / np.sqrt(x64.var(axis=2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, groups", [((2, 6, 5), 3), ((1, 8, 4, 4), 2), ((1, 8, 4, 4), 8), ((2, 4, 2, 3, 2), 1)])
def test_group_norm_opset21(shape, groups):
    inputs = [("x", RNG.standard_normal(shape).astype(np.float32)),
              ("scale", RNG.standard_normal(shape[1]).astype(np.float32)),
              ("bias", RNG.standard_normal(shape[1]).astype(np.float32))]
    got, want = run_both("GroupNormalization", inputs, dict(num_groups=groups, epsilon=1e-3), 21)
    assert_close(got[0], want[0])


def test_group_norm_opset18_per_group_parameters():
    # onnx's checker refuses GroupNormalization-18 models (deprecated), so the op is checked directly.
    from qrt.ops.normalization import GroupNormalization18
    x = RNG.standard_normal((2, 6, 3, 3)).astype(np.float32)
    scale, bias = RNG.standard_normal(3).astype(np.float32), RNG.standard_normal(3).astype(np.float32)
    got = GroupNormalization18(num_groups=3).run(x, scale, bias)
    groups = x.reshape(2, 3, -1).astype(np.float64)
    normalized = (groups - groups.mean(axis=2, keepdims=True)) / np.sqrt(groups.var(axis=2, keepdims=True) + 1e-5)
    want = (normalized * scale[:, None] + bias[:, None]).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    x = RNG.standard_normal((2, 7, 3, 4)).astype(np.float32)
    got, want = run_both("LRN", [("x", x)], dict(size=size, alpha=0.01, beta=0.6, bias=1.5), 13)
    assert_close(got[0], want[0])


@pytest.mark.parametrize("size, shape", [(2, (2, 7, 3, 4)), (4, (1, 6, 5)), (3, (1, 5, 2, 2, 3))])
def test_lrn_even_sizes_and_other_ranks(size, shape):
    # onnxruntime takes only odd sizes on 4-D inputs; the spec's formula (window floor((size-1)/2) channels
    # below, ceil((size-1)/2) above) is the oracle, evaluated in float64.
    x = RNG.standard_normal(shape).astype(np.float32)
    model = _model("LRN", [("x", x)], dict(size=size, alpha=0.01, beta=0.6, bias=1.5), 13, [(np.float32, x.ndim)])
    got = qrt.InferenceSession(model).run(None, {"x": x})[0]
    x64 = x.astype(np.float64)
    square_sum = np.zeros_like(x64)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - (size - 1) // 2), min(x.shape[1] - 1, c + size // 2)
        square_sum[:, c] = (x64[:, lo:hi + 1] ** 2).sum(axis=1)
    want = x64 / (1.5 + 0.01 / size * square_sum) ** 0.6
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
