"""MatMul, Gemm and Einsum against onnxruntime (numpy where onnxruntime has no kernel), plus the
python-level ``qrt.kernels.cpu.gemm`` functions that Conv and the int8 kernels call.

Tolerance: float32 at rtol=1e-5, atol=1e-5 * sqrt(K) scaled by the operands' size: both sides sum K
products of O(1) numbers in different orders (BLAS blocking), so results agree to a few ulps of the
largest partial sum. float64 at rtol=1e-12. Integer results are exact (wrapping like numpy).
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import qrt
from qrt.errors import InvalidModel, QrtError
from qrt.kernels.cpu import gemm as kernels
from qrt.ops.linalg import EinsumEquation, einsum

RNG = np.random.default_rng(5)


def _out_rank(op_type, inputs, attrs):
    arrays = [v for _, v in inputs]
    if op_type == "MatMul":
        return np.matmul(*arrays).ndim
    if op_type == "Einsum":
        return np.einsum(attrs["equation"], *arrays).ndim
    return 2


def _model(op_type, inputs, attrs, opset, rank=None):
    rank = _out_rank(op_type, inputs, attrs) if rank is None else rank
    graph = helper.make_graph(
        [helper.make_node(op_type, [n for n, _ in inputs], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in inputs],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(inputs[0][1].dtype),
                                       [f"d{i}" for i in range(rank)])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _qrt(model, inputs):
    return qrt.InferenceSession(model).run(None, dict(inputs))[0]


def _ort(model, inputs):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, dict(inputs))[0]


def _close(got, want, depth=1):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want)
    elif want.dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(max(depth, 1)))


def _rand(shape, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(-50 if np.dtype(dtype).kind == "i" else 0, 50, size=shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- MatMul

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((4,), (4, 5)),              # 1-D left operand: promoted to a row, the row axis removed
    ((3, 4), (4,)),              # 1-D right operand
    ((4,), (4,)),                # dot product -> scalar
    ((2, 3, 4), (4, 5)),         # stacked rows times one matrix (linear layer)
    ((3, 4), (2, 4, 5)),         # one matrix times a stack
    ((2, 1, 3, 4), (5, 4, 6)),   # broadcast batch axes on both sides
    ((2, 12, 7, 16), (2, 12, 16, 7)),  # attention scores, BERT-like heads
    ((1, 1, 4), (3, 4, 2)),
    ((0, 4), (4, 3)),            # empty rows
    ((2, 0), (0, 3)),            # empty reduction: zeros
]


@pytest.mark.parametrize("a_shape,b_shape", MATMUL_SHAPES)
def test_matmul_float32_against_onnxruntime(a_shape, b_shape):
    inputs = [("a", _rand(a_shape)), ("b", _rand(b_shape))]
    model = _model("MatMul", inputs, {}, 13)
    _close(_qrt(model, inputs), _ort(model, inputs), depth=a_shape[-1])


def test_matmul_float64_and_transposed_operands():
    a = _rand((6, 5), np.float64)
    b = _rand((7, 5), np.float64).T           # an F-contiguous view goes to BLAS without a copy
    np.testing.assert_allclose(kernels.matmul(a, b), a @ b, rtol=1e-12)
    strided = _rand((8, 10), np.float64)[::2, 1::2]   # neither C nor F contiguous
    np.testing.assert_allclose(kernels.matmul(strided, b), strided @ b, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64])
def test_matmul_integers_exact(dtype):
    inputs = [("a", _rand((2, 3, 7), dtype)), ("b", _rand((7, 4), dtype))]
    model = _model("MatMul", inputs, {}, 13)
    got = _qrt(model, inputs)
    np.testing.assert_array_equal(got, inputs[0][1] @ inputs[1][1])
    assert got.dtype == np.dtype(dtype)
    if dtype in (np.int32, np.int64):
        _close(got, _ort(model, inputs))


@pytest.mark.parametrize("a_shape,b_shape", [
    ((3, 1024), (1024, 1000)),      # few rows: streams B in Numba (split over k when large)
    ((1, 1100), (1100, 1000)),      # one row, large enough to split across threads
    ((16, 300), (300, 20)),
    ((40, 200), (200, 300)),        # bands of rows, one BLAS call each
    ((4, 128, 64), (4, 64, 128)),   # batches split across threads
    ((1, 96, 64), (3, 64, 200)),    # a few broadcast batches, split into row bands
])
@pytest.mark.parametrize("transposed_b", [False, True])
def test_matmul_kernel_choices(a_shape, b_shape, transposed_b):
    # Each shape takes another path of kernels.matmul (few rows, parallel bands, parallel batches);
    # a transposed (F-contiguous) weight goes through the dot-product variant without a copy.
    a, b = _rand(a_shape), _rand(b_shape)
    if transposed_b and b.ndim == 2:
        b = np.ascontiguousarray(b.T).T
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(kernels.matmul(a, b), want, rtol=1e-5, atol=1e-5 * np.sqrt(a_shape[-1]))


def test_matmul_int32_wraps_like_numpy():
    a = np.full((2, 3), 2 ** 20, dtype=np.int32)
    b = np.full((3, 2), 2 ** 12, dtype=np.int32)
    np.testing.assert_array_equal(kernels.matmul(a, b), a @ b)


def test_matmul_float16_rounds_once():
    a, b = _rand((5, 33), np.float16), _rand((33, 6), np.float16)
    got = kernels.matmul(a, b)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16))


def test_matmul_bad_shapes_name_the_node():
    inputs = [("a", _rand((3, 4))), ("b", _rand((5, 6)))]
    model = _model("MatMul", [("a", inputs[0][1]), ("b", _rand((4, 6)))], {}, 13)
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "k"
    with pytest.raises(QrtError, match="inner dimensions"):
        qrt.InferenceSession(model).run(None, dict(inputs))
    with pytest.raises(QrtError, match="batch dimensions"):
        kernels.matmul(_rand((2, 3, 4)), _rand((3, 4, 5)))


# ---------------------------------------------------------------- Gemm

@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (1, 5), (3, 1), (3, 5)])
def test_gemm_against_onnxruntime(trans_a, trans_b, c_shape):
    a = _rand((4, 3) if trans_a else (3, 4))
    b = _rand((5, 4) if trans_b else (4, 5))
    inputs = [("a", a), ("b", b)] + ([] if c_shape is None else [("c", _rand(c_shape))])
    model = _model("Gemm", inputs, dict(alpha=0.75, beta=-1.5, transA=trans_a, transB=trans_b), 13)
    _close(_qrt(model, inputs), _ort(model, inputs), depth=4)


@pytest.mark.parametrize("opset", [7, 9, 11])
def test_gemm_older_opsets(opset):
    inputs = [("a", _rand((2, 6))), ("b", _rand((6, 3))), ("c", _rand((3,)))]
    model = _model("Gemm", inputs, dict(beta=0.5), opset)
    _close(_qrt(model, inputs), _ort(model, inputs), depth=6)


def test_gemm_bert_linear_layer_with_transposed_weight():
    # PyTorch exports nn.Linear as Gemm(transB=1) with the (out, in) weight as an initializer.
    x, w, bias = _rand((16, 96)), _rand((48, 96)), _rand((48,))
    inputs = [("x", x), ("w", w), ("bias", bias)]
    model = _model("Gemm", inputs, dict(transB=1), 13)
    _close(_qrt(model, inputs), _ort(model, inputs), depth=96)


def test_gemm_integers_and_non_integral_factors():
    a, b, c = _rand((3, 4), np.int32), _rand((4, 2), np.int32), _rand((2,), np.int32)
    np.testing.assert_array_equal(kernels.gemm(a, b, c), a @ b + c)
    np.testing.assert_array_equal(kernels.gemm(a, b, c, alpha=2, beta=3), 2 * (a @ b) + 3 * c)
    scaled = kernels.gemm(a, b, c, alpha=0.5, beta=0.25)
    np.testing.assert_array_equal(scaled, (0.5 * (a @ b) + 0.25 * c).astype(np.int32))


def test_gemm_epilogue_relu_and_column_bias():
    # The layout Conv's im2col uses: (out_channels, K) @ (K, pixels) plus a per-row bias.
    w, cols, bias = _rand((6, 10)), _rand((10, 7)), _rand((6, 1))
    got = kernels.gemm(w, cols, bias, activation="Relu")
    np.testing.assert_allclose(got, np.maximum(w @ cols + bias, 0), rtol=1e-5, atol=1e-5)
    no_bias = kernels.gemm(w, cols, alpha=2.0, activation="Relu")
    np.testing.assert_allclose(no_bias, np.maximum(2 * (w @ cols), 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(QrtError, match="activation"):
        kernels.gemm(w, cols, activation="Swish")


def test_gemm_bad_bias_shape():
    inputs = [("a", _rand((3, 4))), ("b", _rand((4, 5))), ("c", _rand((2, 5)))]
    model = _model("Gemm", [("a", inputs[0][1]), ("b", inputs[1][1]), ("c", _rand((3, 5)))], {}, 13)
    model.graph.input[2].type.tensor_type.shape.dim[0].dim_param = "m"
    with pytest.raises(QrtError, match="does not broadcast"):
        qrt.InferenceSession(model).run(None, dict(inputs))


# ---------------------------------------------------------------- Einsum

EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 8), (2, 3, 6, 8)]),     # attention scores
    ("bhqk,bhkd->bhqd", [(2, 3, 5, 6), (2, 3, 6, 8)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 5, 4, 2)]),  # ellipsis broadcasting
    ("ij,jk", [(3, 4), (4, 5)]),                          # implicit output: ik
    ("ba,ca", [(3, 4), (2, 4)]),                          # implicit output sorted: bc
    ("ijk->kji", [(2, 3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(4, 4)]),                                     # trace
    ("bii->b", [(3, 4, 4)]),
    ("iij->j", [(3, 3, 5)]),
    ("i,j->ij", [(3,), (4,)]),                            # outer product
    ("i,i", [(6,), (6,)]),
    ("ij,ij->ij", [(3, 4), (3, 4)]),                      # elementwise: batch indices only
    ("ij,ij->i", [(3, 4), (3, 4)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),      # three operands
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),       # bilinear
    ("ik,jk->ij", [(3, 5), (4, 5)]),
    ("Ab,bC->AC", [(2, 3), (3, 4)]),                      # upper-case labels
    ("...ii->...i", [(2, 3, 3)]),
    ("i...->...", [(3, 2, 4)]),
    ("ij, jk -> ik", [(2, 3), (3, 2)]),                   # spaces
]


@pytest.mark.parametrize("equation,shapes", EINSUM_CASES, ids=[c[0] for c in EINSUM_CASES])
def test_einsum_against_onnxruntime(equation, shapes):
    inputs = [(f"x{i}", _rand(s)) for i, s in enumerate(shapes)]
    model = _model("Einsum", inputs, dict(equation=equation), 12)
    depth = max(max(s) if s else 1 for s in shapes)
    _close(_qrt(model, inputs), _ort(model, inputs), depth=depth)


@pytest.mark.parametrize("equation,shapes", [("ij,jk->ik", [(3, 4), (4, 5)]), ("ii->i", [(4, 4)]),
                                             ("bij->bj", [(2, 3, 4)]), ("i,i->", [(5,), (5,)])])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_einsum_integers_exact(equation, shapes, dtype):
    inputs = [(f"x{i}", _rand(s, dtype)) for i, s in enumerate(shapes)]
    model = _model("Einsum", inputs, dict(equation=equation), 12)
    got = _qrt(model, inputs)
    np.testing.assert_array_equal(got, np.einsum(equation, *[v for _, v in inputs]))
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("equation,shapes", [
    ("ki,ki->i", [(1, 4), (3, 4)]),                  # a size-1 index summed against size 3 broadcasts
    ("ki,ki->ki", [(3, 1), (3, 4)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),  # ellipses of different ranks align on the right
])
def test_einsum_broadcasting_like_numpy(equation, shapes):
    arrays = [_rand(s) for s in shapes]
    inputs = [(f"x{i}", a) for i, a in enumerate(arrays)]
    model = _model("Einsum", inputs, dict(equation=equation), 12)
    np.testing.assert_allclose(_qrt(model, inputs), np.einsum(equation, *arrays), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation", ["ij,jk->ikk", "ij->k", "ij->i->j", "i1->i"])
def test_einsum_bad_equations_are_rejected_at_load(equation):
    inputs = [("a", _rand((2, 2))), ("b", _rand((2, 2)))][: equation.split("->")[0].count(",") + 1]
    model = _model("Einsum", inputs, dict(equation=equation), 12, rank=2)
    with pytest.raises(InvalidModel, match="Einsum"):
        qrt.InferenceSession(model)


@pytest.mark.parametrize("equation", ["i.j->ij", "i...j...->ij", "ij->ii", "ij->x"])
def test_einsum_parser_rejects(equation):
    # Checked on the parser directly: onnx 1.23's Einsum shape inference never returns on a stray '.'.
    with pytest.raises(InvalidModel, match="Einsum equation"):
        EinsumEquation(equation)


def test_einsum_shape_mismatch_is_an_error():
    inputs = [("a", _rand((2, 3))), ("b", _rand((4, 5)))]
    model = _model("Einsum", inputs, dict(equation="ij,jk->ik"), 12, rank=2)
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "j"
    with pytest.raises(QrtError, match="index 'j'"):
        qrt.InferenceSession(model).run(None, dict(inputs))
    with pytest.raises(QrtError, match="3 indices"):
        einsum(EinsumEquation("ijk->i"), [inputs[0][1]])
    with pytest.raises(QrtError, match="2 term"):
        einsum(EinsumEquation("ij,jk->ik"), [inputs[0][1]])
