"""onnx's backend node test cases of the quantization ops, bit for bit, including the float8 / 4-bit /
2-bit ones whose inputs and expected outputs onnx keeps as TensorProto (converted here with
numpy_helper.to_array, as onnx's own file-based runner does).

Tolerance: integer and float8 outputs exact (compared as bit patterns); float outputs rtol 1e-5.
"""
import warnings

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

import qrt.backend

OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
       "MatMulInteger", "ConvInteger"}


def _cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [c for c in cases if c.model is not None and c.model.graph.node and c.model.graph.node[0].op_type in OPS]


CASES = _cases()


def _array(value):
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def test_every_quantization_op_has_cases():
    assert {c.model.graph.node[0].op_type for c in CASES} == OPS
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case):
    rep = qrt.backend.prepare(case.model)
    for inputs, expected in case.data_sets:
        outputs = rep.run([_array(i) for i in inputs])
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            got, want = np.asarray(got), _array(want)
            assert got.dtype == want.dtype, (got.dtype, want.dtype)
            assert got.shape == want.shape
            if want.dtype.kind == "f":
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            else:
                # float8/float4/int4/int2 compare as bit patterns (NaN == NaN, -0 != +0).
                np.testing.assert_array_equal(got.view(np.uint8) if got.dtype.itemsize == 1 else got,
                                              want.view(np.uint8) if want.dtype.itemsize == 1 else want)
