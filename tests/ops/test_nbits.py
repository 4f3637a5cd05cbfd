"""com.microsoft MatMulNBits and GatherBlockQuantized against onnxruntime.

Random codes, scales and zero points in every storage form the contrib spec allows (packed uint8 or
float zero points, none, 2/4/8 bits, K not a multiple of the block, bias), for few rows (the
streaming kernel) and many rows (dequantized panels + BLAS). Both runtimes sum float32 products in
different orders over K <= 200 terms of magnitude ~1, so results agree to ~1e-5 relative of the
output scale; we assert atol = 1e-4 * max|y|. The int8 path (accuracy_level=4) quantizes
activations to 127 levels per block, in both runtimes, but their roundings of a * (127 / amax) may
differ by one code on ties, so it is held to 1e-2 of the output scale and separately to its own
definition. Gathers copy dequantized values (one multiply), so they match exactly.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.errors import QrtError

RNG = np.random.default_rng(17)
OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]


def _model(node, inputs, initializers):
    graph = helper.make_graph([node], "nbits", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=OPSETS)


def _pack(codes, bits):
    """codes [..., n] (n a multiple of 8 / bits) -> uint8 [..., n * bits / 8], lowest bits first."""
    per = 8 // bits
    codes = codes.astype(np.uint8).reshape(codes.shape[:-1] + (-1, per))
    return sum((codes[..., i] << (bits * i)) for i in range(per)).astype(np.uint8)


def _matmul_nbits(K, N, bits, block, zero="packed", bias=False, accuracy_level=0):
    kb = -(-K // block)
    codes = RNG.integers(0, 2 ** bits, (N, kb * block))
    codes[:, K:] = 0
    inits = [numpy_helper.from_array(_pack(codes, bits).reshape(N, kb, -1), "B"),
             numpy_helper.from_array((RNG.random(N * kb) * 0.1 + 0.01).astype(np.float32), "S")]
    names = ["A", "B", "S"]
    if zero == "packed":
        zp = RNG.integers(0, 2 ** bits, (N, -(-kb * bits // 8) * 8 // bits))
        inits.append(numpy_helper.from_array(_pack(zp, bits).reshape(-1), "Z"))
        names.append("Z")
    elif zero == "float":
        inits.append(numpy_helper.from_array((RNG.random(N * kb) * (2 ** bits - 1)).astype(np.float32), "Z"))
        names.append("Z")
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(N).astype(np.float32), "bias"))
        names += [""] * (5 - len(names)) + ["bias"]
    node = helper.make_node("MatMulNBits", names, ["Y"], domain="com.microsoft", K=K, N=N, bits=bits,
                            block_size=block, accuracy_level=accuracy_level)
    return _model(node, [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)], inits)


def _both(model, feeds):
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = qrt.InferenceSession(model).run(None, feeds)[0]
    assert got.dtype == want.dtype and got.shape == want.shape, (got.shape, want.shape)
    return got, want


@pytest.mark.parametrize("bits,block,zero,bias", [
    (4, 32, "packed", False), (4, 16, None, True), (4, 64, "float", False),
    (8, 32, "packed", True), (2, 16, "packed", False), (4, 32, "packed", True)])
@pytest.mark.parametrize("rows", [(1,), (3,), (2, 9)])
def test_matmul_nbits_matches_onnxruntime(bits, block, zero, bias, rows):
    K, N = (200, 40) if block != 64 else (128, 33)
    model = _matmul_nbits(K, N, bits, block, zero, bias)
    got, want = _both(model, {"A": RNG.standard_normal(rows + (K,)).astype(np.float32)})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_matmul_nbits_accuracy_level_4_quantizes_activations_per_block():
    model = _matmul_nbits(128, 48, 4, 32, "packed", accuracy_level=4)
    a = RNG.standard_normal((2, 128)).astype(np.float32)
    got, want = _both(model, {"A": a})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())
    # the same weights at accuracy_level 0 differ from it by the activation rounding only
    exact = qrt.InferenceSession(_with_accuracy(model, 0)).run(None, {"A": a})[0]
    assert 0 < np.abs(got - exact).max() < 2e-2 * np.abs(exact).max()


def _with_accuracy(model, level):
    model = type(model).FromString(model.SerializeToString())
    for attr in model.graph.node[0].attribute:
        if attr.name == "accuracy_level":
            attr.i = level
    return model


def test_matmul_nbits_rejects_wrong_shapes_with_a_qrt_error():
    model = _matmul_nbits(64, 16, 4, 32)
    sess = qrt.InferenceSession(model)
    with pytest.raises(QrtError, match="last dimension must be K=64"):
        sess.run(None, {"A": np.zeros((2, 63), np.float32)})
    bad = _matmul_nbits(64, 16, 4, 32)
    bad.graph.node[0].attribute[1].i = 17  # N, so B no longer has N * k_blocks * 16 bytes
    with pytest.raises(QrtError, match="B must be uint8"):
        qrt.InferenceSession(bad)


def _gather(data_tensor, scales, zero_tensor=None, **attrs):
    inits = [data_tensor, numpy_helper.from_array(scales, "S")]
    names = ["D", "I", "S"]
    if zero_tensor is not None:
        inits.append(zero_tensor)
        names.append("Z")
    node = helper.make_node("GatherBlockQuantized", names, ["Y"], domain="com.microsoft", **attrs)
    return _model(node, [helper.make_tensor_value_info("I", TensorProto.INT64, None)], inits)


def _four_bit(name, values, elem):
    flat = values.reshape(-1).astype(np.uint8) & 15
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return helper.make_tensor(name, elem, values.shape, (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes(),
                              raw=True)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("with_zero", [False, True])
def test_gather_block_quantized_int4_matches_onnxruntime(signed, with_zero):
    V, D, block = 11, 96, 32
    elem = TensorProto.INT4 if signed else TensorProto.UINT4
    codes = RNG.integers(-8, 8, (V, D)) if signed else RNG.integers(0, 16, (V, D))
    scales = (RNG.random((V, D // block)) * 0.1).astype(np.float32)
    zero = None
    if with_zero:
        zp = RNG.integers(-8, 8, (V, D // block)) if signed else RNG.integers(0, 16, (V, D // block))
        zero = _four_bit("Z", zp, elem)
    model = _gather(_four_bit("D", codes, elem), scales, zero, gather_axis=0, quantize_axis=1, block_size=block)
    got, want = _both(model, {"I": np.array([[0, 10, -1], [3, 3, 5]], np.int64)})
    np.testing.assert_array_equal(got, want)


def test_gather_block_quantized_packed_uint8_and_inner_axes():
    V, D, block = 7, 64, 16
    codes = RNG.integers(0, 16, (V, D))
    scales = (RNG.random((V, D // block)) * 0.1).astype(np.float32)
    model = _gather(numpy_helper.from_array(_pack(codes, 4), "D"), scales, gather_axis=0, quantize_axis=1,
                    block_size=block, bits=4)
    got, want = _both(model, {"I": np.array([6, 0, 2], np.int64)})
    np.testing.assert_array_equal(got, want)
    # rank 3, gather along axis 1, blocks along the last axis
    codes3 = RNG.integers(0, 16, (2, 5, 32))
    scales3 = (RNG.random((2, 5, 2)) * 0.1).astype(np.float32)
    model = _gather(_four_bit("D", codes3, TensorProto.UINT4), scales3, gather_axis=1, quantize_axis=2,
                    block_size=16)
    got, want = _both(model, {"I": np.array([[4], [1]], np.int64)})
    np.testing.assert_array_equal(got, want)


def test_gather_block_quantized_rejects_out_of_range_indices():
    codes = RNG.integers(0, 16, (4, 32))
    model = _gather(_four_bit("D", codes, TensorProto.UINT4), np.ones((4, 1), np.float32), gather_axis=0,
                    quantize_axis=1, block_size=32)
    with pytest.raises(QrtError, match=r"indices must lie in \[-4, 3\]"):
        qrt.InferenceSession(model).run(None, {"I": np.array([4], np.int64)})
