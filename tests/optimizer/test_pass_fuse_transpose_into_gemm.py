import numpy as np
import pytest
from onnx import helper

from optimizer_helpers import FLOAT, assert_same_outputs, make_model, ops, optimize_checked, random_feeds


def _model(m, k, n, transpose_a, transpose_b, trans_a=0, trans_b=0, default_perm=False):
    nodes, a, b = [], "a", "b"
    a_shape = [m, k] if not trans_a else [k, m]
    b_shape = [k, n] if not trans_b else [n, k]
    perm = {} if default_perm else {"perm": [1, 0]}
    if transpose_a:
        nodes.append(helper.make_node("Transpose", ["a"], ["at"], **perm))
        a, a_shape = "at", a_shape[::-1]
    if transpose_b:
        nodes.append(helper.make_node("Transpose", ["b"], ["bt"], **perm))
        b, b_shape = "bt", b_shape[::-1]
    nodes.append(helper.make_node("Gemm", [a, b, "c"], ["y"], transA=trans_a, transB=trans_b, alpha=0.5))
    return make_model(nodes, [("a", FLOAT, a_shape), ("b", FLOAT, b_shape), ("c", FLOAT, [n])],
                      [("y", FLOAT, [m, n])])


def test_transposed_operands_become_gemm_flags():
    model = _model(3, 4, 5, True, True)
    out = optimize_checked(model, ["fuse_transpose_into_gemm"])
    assert ops(out) == {"Gemm": 1}
    (gemm,) = out.graph.node
    assert list(gemm.input[:2]) == ["a", "b"]
    flags = {a.name: a.i for a in gemm.attribute if a.name in ("transA", "transB")}
    assert flags == {"transA": 1, "transB": 1}
    assert_same_outputs(model, out, random_feeds(model, np.random.default_rng(0)))


def test_transpose_with_another_reader_stays_for_it():
    model = _model(3, 4, 5, True, False)
    model.graph.node.append(helper.make_node("Neg", ["at"], ["z"]))
    model.graph.output.append(helper.make_tensor_value_info("z", FLOAT, [3, 4]))
    out = optimize_checked(model, ["fuse_transpose_into_gemm"])
    assert ops(out) == {"Gemm": 1, "Transpose": 1, "Neg": 1}
    assert [n for n in out.graph.node if n.op_type == "Gemm"][0].input[0] == "a"


@pytest.mark.parametrize("seed", range(8))
def test_property_flags_flip_and_outputs_match(seed):
    rng = np.random.default_rng(seed)
    m, k, n = (int(d) for d in rng.integers(1, 6, size=3))
    ta, tb = (bool(v) for v in rng.integers(0, 2, size=2))
    model = _model(m, k, n, ta, tb, int(rng.integers(2)), int(rng.integers(2)), bool(rng.random() < 0.5))
    out = optimize_checked(model, ["fuse_transpose_into_gemm"])
    assert ops(out) == {"Gemm": 1}
    # Gemm transposes by indexing, so the result is bit-identical.
    assert_same_outputs(model, out, random_feeds(model, rng), rtol=1e-6)
