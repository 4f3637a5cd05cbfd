"""onnx's own backend node test cases, run through qrt.backend.

The cases and their expected outputs come from ``onnx.backend.test.case.node.collect_testcases``.
Which ops must pass is listed in ``node_test_ops.py``; the only skips are in
``node_test_exclusions.txt``, each with its reason.

Tolerance: float32 results are compared at rtol=1e-5, atol=1e-6 — a few ulps of float32 over
the handful of roundings these small cases involve — unless the case itself declares a looser
tolerance (its author's statement that the op's math needs it, e.g. float16 or iterative ops).
Integer and bool results must match exactly.
"""
import os
import warnings

import glob
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qrt.backend
from node_test_ops import FLOAT_RUNTIME, INT8, LONG_TAIL, SEQUENCES

HERE = os.path.dirname(__file__)
TARGET_OPS = set(FLOAT_RUNTIME) | set(INT8) | set(LONG_TAIL) | set(SEQUENCES)


def _exclusions():
    excluded = {}
    with open(os.path.join(HERE, "node_test_exclusions.txt")) as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition("#")
            excluded[name.strip()] = reason.strip()
    return excluded


def _cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    by_name = {c.name: c for c in cases}
    selected = []
    for case in cases:
        base = by_name.get(re.sub(r"_expanded(_ver\d+)?$", "", case.name), case)
        if base.model is None or not base.model.graph.node:
            continue
        if base.model.graph.node[0].op_type in TARGET_OPS:
            selected.append(case)
    return selected


def _model_set_cases():
    """onnx's model-level backend cases: models exported from PyTorch (opset 6-9) and small 'simple' models."""
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    cases = []
    for kind in ("pytorch-converted", "pytorch-operator", "simple"):
        for path in sorted(glob.glob(os.path.join(root, kind, "test_*"))):
            if os.path.exists(os.path.join(path, "model.onnx")):
                cases.append(path)
    return cases


CASES = _cases()
MODEL_SET_CASES = _model_set_cases()
EXCLUDED = _exclusions()


def test_exclusions_name_real_cases():
    names = {c.name for c in CASES} | {os.path.basename(p) for p in MODEL_SET_CASES}
    stale = sorted(n for n in EXCLUDED if n not in names)
    assert not stale, f"exclusions that match no selected node test: {stale}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node(case):
    if case.name in EXCLUDED:
        pytest.skip(EXCLUDED[case.name])
    rep = qrt.backend.prepare(case.model)
    for inputs, expected in case.data_sets:
        outputs = rep.run([_array(a) for a in inputs])
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            _assert_same_value(got, want, case)


def _numbered(paths):
    return sorted(paths, key=lambda p: int(os.path.basename(p).rsplit("_", 1)[1].split(".")[0]))


@pytest.mark.parametrize("path", MODEL_SET_CASES, ids=[os.path.basename(p) for p in MODEL_SET_CASES])
def test_model_set(path):
    name = os.path.basename(path)
    if name in EXCLUDED:
        pytest.skip(EXCLUDED[name])
    rep = qrt.backend.prepare(onnx.load(os.path.join(path, "model.onnx")))
    data_sets = sorted(glob.glob(os.path.join(path, "test_data_set_*")))
    assert data_sets
    for data in data_sets:
        inputs = [numpy_helper.to_array(onnx.load_tensor(p)) for p in _numbered(glob.glob(os.path.join(data, "input_*.pb")))]
        expected = [numpy_helper.to_array(onnx.load_tensor(p)) for p in _numbered(glob.glob(os.path.join(data, "output_*.pb")))]
        outputs = rep.run(inputs)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            # These expected outputs were computed by PyTorch (other summation orders): onnx's runner
            # compares them at rtol 1e-3, atol 1e-7; qrt is held to rtol 1e-3, atol 1e-5 for values near 0.
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def _array(value):
    # Cases with types numpy lacks (bfloat16, float8, int4, ...) store their data as TensorProtos.
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _assert_same_value(got, want, case):
    """Sequences come as lists of arrays, empty optionals as None, as onnx's cases store them."""
    if want is None:
        assert got is None, f"expected an empty optional (None), got {type(got).__name__}"
    elif isinstance(want, list):
        assert isinstance(got, list), f"expected a sequence (list), got {type(got).__name__}"
        assert len(got) == len(want), f"sequence of {len(got)}, expected {len(want)}"
        for got_item, want_item in zip(got, want):
            _assert_same(got_item, np.asarray(_array(want_item)), case)
    else:
        _assert_same(got, np.asarray(_array(want)), case)


def _assert_same(got, want, case):
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    if want.dtype.kind == "V" and "float" in want.dtype.name:
        # ml_dtypes floats (bfloat16, float8, float4): numpy's testing helpers cannot spot their NaNs.
        got, want = got.astype(np.float32), want.astype(np.float32)
    if want.dtype.kind in "fc":
        rtol = case.rtol if case.rtol != 1e-3 else 1e-5
        atol = max(case.atol, 1e-6)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)
