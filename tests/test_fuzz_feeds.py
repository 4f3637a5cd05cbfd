"""Hostile feeds: every run ends in results or a QrtError, and the session answers correctly after.

Three models (a shipped CNN, an encoder block, a bidirectional LSTM) each get NaN/Inf, empty
tensors, zero-sized and oversized dimensions, wrong ranks and dtypes, non-contiguous and
broadcast views, scalars, lists and non-arrays. Values are not compared for the hostile feeds
(NaN propagation through Max/Relu is implementation-defined); the point is the outcome kind and
that no state leaks: the clean feed's outputs afterwards equal the clean outputs before, exactly.
"""
import os

import numpy as np
import onnx
import pytest

import qrt
from model_builders import lstm_model, transformer_block
from qrt.errors import QrtError

DIGITS = os.path.join(os.path.dirname(qrt.__file__), "data", "digits_cnn.onnx")
MODELS = {"digits_cnn": lambda: onnx.load(DIGITS), "encoder": transformer_block, "lstm": lstm_model}


def _shape(arg, free=2):
    return tuple(d if isinstance(d, int) else free for d in arg.shape)


def _clean(arg, dtype, rng):
    shape = _shape(arg)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return np.ones(shape, dtype)        # integer inputs (sequence lengths) of 1 are valid everywhere


def _hostile(arg, dtype, clean, rng):
    """(label, feed) pairs for one input."""
    shape = clean.shape
    if dtype.kind == "f":
        nan, inf, mixed = clean.copy(), clean.copy(), clean.copy()
        nan.flat[::3] = np.nan
        inf.flat[::2] = np.inf
        mixed.flat[1::2] = -np.inf
        mixed.flat[::5] = np.nan
        extremes = [("nan", nan), ("inf", inf), ("mixed", mixed),
                    ("max", np.full(shape, np.finfo(dtype).max, dtype)), ("denormal", np.full(shape, 1e-42, dtype))]
    else:
        extremes = [("max", np.full(shape, np.iinfo(dtype).max, dtype)),
                    ("min", np.full(shape, np.iinfo(dtype).min, dtype)), ("negative", np.full(shape, -1, dtype))]
    other = np.float32 if dtype.kind != "f" else np.int32
    cases = extremes + [
             ("float64", clean.astype(np.float64)), ("other-type", clean.astype(other)),
             ("rank-1", clean[0]), ("rank+1", clean[None]), ("scalar", np.float32(1.0)),
             ("list", clean.tolist()), ("none", None), ("string", np.array(["x"] * clean.size).reshape(shape)),
             ("object", clean.astype(object)),
             ("transposed", np.ascontiguousarray(clean.T).T if clean.ndim > 1 else clean),
             ("reversed", clean[..., ::-1]),
             ("broadcast", np.broadcast_to(clean[:1], shape)),
             ("huge-declared", np.broadcast_to(clean.flat[0], (1 << 40,) + shape[1:]))]
    for axis in range(len(shape)):
        for size in (0, 1, 3, 7):
            if size != shape[axis]:
                resized = list(shape)
                resized[axis] = size
                cases.append((f"dim{axis}={size}", np.resize(clean, resized)))
    return cases


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hostile_feeds_end_in_results_or_qrt_errors_and_leave_the_session_sound(name):
    rng = np.random.default_rng(7)
    sess = qrt.InferenceSession(MODELS[name]().SerializeToString())
    args = sess.get_inputs()
    dtypes = {a.name: {"tensor(float)": np.dtype(np.float32), "tensor(int32)": np.dtype(np.int32)}[a.type]
              for a in args}
    clean = {a.name: _clean(a, dtypes[a.name], rng) for a in args}
    before = sess.run(None, clean)
    outcomes = {}
    for arg in args:
        for label, value in _hostile(arg, dtypes[arg.name], clean[arg.name], rng):
            feeds = dict(clean, **{arg.name: value})
            try:
                results = sess.run(None, feeds)
            except QrtError as exc:
                assert str(exc), label
                outcomes[arg.name, label] = "error"
                continue
            assert all(isinstance(r, np.ndarray) for r in results), label
            outcomes[arg.name, label] = "ran"
    for arg in args:
        assert outcomes[arg.name, "rank+1"] == outcomes[arg.name, "float64"] == outcomes[arg.name, "none"] == "error"
    after = sess.run(None, clean)
    for got, want in zip(after, before):
        np.testing.assert_array_equal(got, want)
