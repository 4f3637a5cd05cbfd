"""Cross-checks of the CUDA provider against the CPU provider, shared by the simulator tests
(``tests/cuda``) and the real-GPU script (``benchmarks/gpu_check.py``).

:func:`op_cases` lists one case per device kernel path (op, attributes, inputs, which inputs are
constants); :func:`run_case` runs the CUDA op class and its CPU twin (onnxruntime for com.microsoft
ops without a CPU kernel) on the same inputs and compares: integer outputs exactly, float32 within
``rtol=1e-5, atol=1e-6`` (float32 sums in another order; transcendental functions within a few
ulps). ``scale`` enlarges the shapes for a real GPU. :func:`int8_cnn` and :func:`int8_mlp` build
QOperator models by hand (QuantizeLinear, QLinearConv, MaxPool on uint8, QLinearMatMul,
DequantizeLinear), so the model checks do not depend on calibration.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ... import registry

F32 = np.float32
MS = "com.microsoft"


class Case:
    def __init__(self, name, op_type, inputs, consts=(), attrs=None, opset=17, domain="", n_outputs=1, exact=False):
        self.name, self.op_type, self.inputs = name, op_type, inputs
        self.consts = set(consts)
        self.attrs = attrs or {}
        self.opset, self.domain, self.n_outputs, self.exact = opset, domain, n_outputs, exact


def op_cases(scale=1, seed=0):
    """Every device path with small shapes (``scale`` multiplies the spatial and matrix sizes)."""
    rng = np.random.default_rng(seed)
    s = int(scale)

    def f(*shape):
        return rng.standard_normal(shape).astype(F32)

    def u8(*shape):
        return rng.integers(0, 256, shape).astype(np.uint8)

    def i8(*shape):
        return rng.integers(-128, 128, shape).astype(np.int8)

    x = f(2, 3, 4 * s)
    cases = []
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "LessOrEqual"):
        cases.append(Case(f"{op} broadcast", op, [x, f(3, 1)]))
    cases.append(Case("Pow", "Pow", [np.abs(x) + F32(0.5), f(4 * s)]))
    cases.append(Case("Sum 3 inputs", "Sum", [x, f(4 * s), f(1, 3, 1)]))
    cases.append(Case("Mean", "Mean", [x, f(2, 1, 4 * s)]))
    ints = rng.integers(-50, 50, (2, 3, 4 * s)).astype(np.int32)
    for op in ("Add", "Div", "Mod", "Mul"):
        cases.append(Case(f"{op} int32", op, [ints, rng.integers(1, 9, (3, 1)).astype(np.int32)], exact=True))
    cases.append(Case("Add uint8 wraps", "Add", [u8(2, 5), u8(5)], exact=True))
    cases.append(Case("And", "And", [x > 0, f(3, 1) > 0], exact=True))
    cases.append(Case("Not", "Not", [x > 0], exact=True))
    cases.append(Case("Where", "Where", [f(3, 1) > 0, x, f(4 * s)]))
    for op in ("Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Abs", "Neg", "HardSwish", "Softplus", "Softsign", "Floor",
               "Ceil", "Round", "Sign", "Reciprocal"):
        cases.append(Case(op, op, [x * F32(3)]))
    cases.append(Case("Log", "Log", [np.abs(x) + F32(0.1)]))
    cases.append(Case("Sqrt", "Sqrt", [np.abs(x)]))
    cases.append(Case("LeakyRelu", "LeakyRelu", [x], attrs={"alpha": 0.2}))
    cases.append(Case("Elu", "Elu", [x], attrs={"alpha": 0.7}))
    cases.append(Case("Selu", "Selu", [x]))
    cases.append(Case("HardSigmoid", "HardSigmoid", [x], attrs={"alpha": 0.3, "beta": 0.4}))
    cases.append(Case("Gelu erf", "Gelu", [x], opset=20))
    cases.append(Case("Gelu tanh", "Gelu", [x], opset=20, attrs={"approximate": "tanh"}))
    cases.append(Case("Clip", "Clip", [x, np.array(-0.5, F32), np.array(0.7, F32)], consts=(1, 2)))
    cases.append(Case("Clip int8", "Clip", [i8(3, 7), np.array(-20, np.int8), None], consts=(1,), exact=True))
    cases.append(Case("Clip-6", "Clip", [x], opset=6, attrs={"min": -0.3, "max": 0.4}))
    cases.append(Case("PRelu", "PRelu", [x, f(3, 1)], consts=(1,)))
    cases.append(Case("Cast float->int32", "Cast", [x * F32(10)], attrs={"to": TensorProto.INT32}, exact=True))
    cases.append(Case("Cast uint8->float", "Cast", [u8(3, 4)], attrs={"to": TensorProto.FLOAT}, exact=True))
    # data movement
    y = f(2, 3, 4, 5)
    cases.append(Case("Transpose", "Transpose", [y], attrs={"perm": [2, 0, 3, 1]}, exact=True))
    cases.append(Case("Reshape", "Reshape", [y, np.array([0, -1, 5])], consts=(1,), exact=True))
    cases.append(Case("Flatten", "Flatten", [y], attrs={"axis": 2}, exact=True))
    cases.append(Case("Squeeze", "Squeeze", [f(2, 1, 3), np.array([1])], consts=(1,), exact=True))
    cases.append(Case("Unsqueeze", "Unsqueeze", [f(2, 3), np.array([0, 3])], consts=(1,), exact=True))
    cases.append(Case("Concat", "Concat", [y, f(2, 1, 4, 5), f(2, 2, 4, 5)], attrs={"axis": 1}, exact=True))
    cases.append(Case("Slice steps", "Slice", [y, np.array([3, 0, 1]), np.array([-100, 4, 5]),
                                               np.array([2, 1, 3]), np.array([-1, 2, 2])], consts=(1, 2, 3, 4),
                      exact=True))
    cases.append(Case("Gather", "Gather", [y, np.array([[2, -1], [0, 1]])], consts=(1,), attrs={"axis": 2},
                      exact=True))
    cases.append(Case("Split", "Split", [y, np.array([1, 3])], consts=(1,), attrs={"axis": 2}, n_outputs=2,
                      exact=True))
    cases.append(Case("Expand", "Expand", [f(3, 1), np.array([2, 3, 4])], consts=(1,), exact=True))
    cases.append(Case("Tile", "Tile", [f(2, 3), np.array([2, 1])], consts=(1,), exact=True))
    cases.append(Case("Pad constant", "Pad", [y, np.array([0, 1, 0, 2, 0, 0, 1, 0]), np.array(0.5, F32)],
                      consts=(1, 2), exact=True))
    cases.append(Case("DepthToSpace", "DepthToSpace", [f(1, 8, 2, 3)], attrs={"blocksize": 2, "mode": "CRD"},
                      exact=True))
    cases.append(Case("Shape", "Shape", [y], exact=True))
    # matrix products
    m, k, n = 3 * s, 5 * s, 6 * s
    cases.append(Case("MatMul batched broadcast", "MatMul", [f(2, 1, m, k), f(3, k, n)], consts=(1,)))
    cases.append(Case("MatMul vector", "MatMul", [f(k), f(k, n)]))
    cases.append(Case("Gemm transA transB", "Gemm", [f(k, m), f(n, k), f(m, 1)], consts=(1, 2),
                      attrs={"alpha": 0.5, "beta": 2.0, "transA": 1, "transB": 1}))
    cases.append(Case("Gemm bias", "Gemm", [f(m, k), f(k, n), f(n)], consts=(1, 2)))
    # convolution and pooling
    img = f(1, 4, 5 * s, 5 * s)
    cases.append(Case("Conv grouped strided", "Conv", [img, f(6, 2, 3, 3), f(6)], consts=(1, 2),
                      attrs={"group": 2, "pads": [1, 0, 1, 1], "strides": [2, 1]}))
    cases.append(Case("Conv depthwise dilated", "Conv", [img, f(8, 1, 3, 3), f(8)], consts=(1, 2),
                      attrs={"group": 4, "pads": [2, 1, 2, 1], "dilations": [2, 1]}))
    cases.append(Case("Conv 1-D same", "Conv", [f(2, 3, 7 * s), f(2, 3, 2)], consts=(1,),
                      attrs={"auto_pad": "SAME_UPPER"}))
    cases.append(Case("Conv 3-D", "Conv", [f(1, 2, 3, 4, 4), f(2, 2, 2, 2, 2)], consts=(1,)))
    cases.append(Case("MaxPool", "MaxPool", [img], attrs={"kernel_shape": [3, 2], "strides": [2, 2],
                                                         "pads": [1, 0, 1, 1]}, exact=True))
    cases.append(Case("MaxPool uint8", "MaxPool", [u8(1, 2, 4, 4)], attrs={"kernel_shape": [2, 2],
                                                                          "strides": [2, 2]}, exact=True))
    cases.append(Case("AveragePool pads", "AveragePool", [img], attrs={"kernel_shape": [3, 3], "strides": [2, 2],
                                                                      "pads": [1, 1, 1, 1], "count_include_pad": 1}))
    cases.append(Case("AveragePool ceil", "AveragePool", [img], attrs={"kernel_shape": [3, 3], "strides": [2, 2],
                                                                      "pads": [1, 1, 1, 1], "ceil_mode": 1}))
    cases.append(Case("GlobalAveragePool", "GlobalAveragePool", [img]))
    cases.append(Case("GlobalMaxPool", "GlobalMaxPool", [img], exact=True))
    # normalization, softmax, resize
    cases.append(Case("Softmax axis 1", "Softmax", [y], attrs={"axis": 1}, opset=13))
    cases.append(Case("Softmax-11 coerced", "Softmax", [y], attrs={"axis": 2}, opset=11))
    cases.append(Case("LogSoftmax", "LogSoftmax", [y], opset=13))
    cases.append(Case("LayerNormalization", "LayerNormalization", [y, f(4, 5), f(5)], consts=(1, 2),
                      attrs={"axis": -2}, n_outputs=3))
    cases.append(Case("BatchNormalization", "BatchNormalization",
                      [y, f(3), f(3), f(3), np.abs(f(3)) + F32(0.1)], consts=(1, 2, 3, 4)))
    cases.append(Case("Resize linear", "Resize", [y, None, np.array([1, 1, 2, 1.5], F32)], consts=(1, 2),
                      attrs={"mode": "linear"}, opset=19))
    cases.append(Case("Resize nearest", "Resize", [y, None, np.array([1, 1, 0.5, 2], F32)], consts=(1, 2),
                      attrs={"mode": "nearest"}, opset=19, exact=True))
    cases.append(Case("Resize cubic sizes", "Resize", [y, None, None, np.array([2, 3, 7, 3])], consts=(1, 2, 3),
                      attrs={"mode": "cubic", "coordinate_transformation_mode": "align_corners"}, opset=13))
    # quantization
    cases.append(Case("QuantizeLinear uint8", "QuantizeLinear", [img * F32(3), F32(0.05), np.uint8(128)],
                      consts=(1, 2), exact=True))
    cases.append(Case("QuantizeLinear per-axis int8", "QuantizeLinear",
                      [img, np.array([0.1, 0.02, 0.05, 0.03], F32), np.array([0, 3, -5, 1], np.int8)],
                      consts=(1, 2), exact=True))
    cases.append(Case("DequantizeLinear uint8", "DequantizeLinear", [u8(1, 4, 5), F32(0.05), np.uint8(128)],
                      consts=(1, 2), exact=True))
    cases.append(Case("DequantizeLinear per-axis", "DequantizeLinear",
                      [i8(2, 3, 4), np.array([0.1, 0.02, 0.05, 0.03], F32), np.array([0, 3, -5, 1], np.int8)],
                      consts=(1, 2), attrs={"axis": -1}, exact=True))
    cases.append(Case("QLinearMatMul per-column", "QLinearMatMul",
                      [u8(2, m, k), F32(0.02), np.uint8(120), i8(k, n), (rng.random(n) * 0.01 + 0.001).astype(F32),
                       np.zeros(n, np.int8), F32(0.05), np.uint8(100)], consts=(1, 2, 3, 4, 5, 6, 7), exact=True))
    cases.append(Case("QLinearMatMul int8 activations", "QLinearMatMul",
                      [i8(m, k), F32(0.02), np.int8(-3), u8(k, n), F32(0.004), np.uint8(128), F32(0.05),
                       np.int8(2)], consts=(1, 2, 4, 5, 6, 7), exact=True))
    cases.append(Case("MatMulInteger", "MatMulInteger", [u8(2, m, k), i8(k, n), np.uint8(120), np.int8(3)],
                      consts=(1, 2, 3), exact=True))
    cases.append(Case("QLinearConv grouped per-channel", "QLinearConv",
                      [u8(1, 4, 5 * s, 5 * s), F32(0.02), np.uint8(120), i8(6, 2, 3, 3),
                       (rng.random(6) * 0.01 + 0.001).astype(F32), np.zeros(6, np.int8), F32(0.5), np.uint8(100),
                       rng.integers(-500, 500, 6).astype(np.int32)], consts=(1, 2, 3, 4, 5, 6, 7, 8),
                      attrs={"group": 2, "pads": [1, 1, 1, 1], "strides": [2, 1]}, exact=True))
    cases.append(Case("QLinearConv depthwise int8", "QLinearConv",
                      [i8(1, 4, 5 * s, 5 * s), F32(0.02), np.int8(-3), u8(8, 1, 3, 3), F32(0.004), np.uint8(128),
                       F32(0.3), np.int8(5)], consts=(1, 2, 3, 4, 5, 6, 7), attrs={"group": 4, "pads": [1, 1, 1, 1]},
                      exact=True))
    cases.append(Case("QLinearConv int8 activations", "QLinearConv",
                      [i8(1, 3, 4 * s, 4 * s), F32(0.02), np.int8(-5),
                       rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8), F32(0.004), np.int8(2), F32(0.3),
                       np.int8(5), rng.integers(-500, 500, 4).astype(np.int32)],
                      consts=(1, 2, 3, 4, 5, 6, 7, 8), attrs={"pads": [0, 1, 1, 0]}, exact=True))
    cases.append(Case("ConvInteger", "ConvInteger", [u8(1, 4, 4, 4), i8(6, 2, 3, 3), np.uint8(120), np.int8(1)],
                      consts=(1, 2, 3), attrs={"group": 2}, exact=True))
    cases.append(Case("QLinearAdd broadcast", "QLinearAdd",
                      [u8(2, 3, 4), F32(0.05), np.uint8(120), u8(3, 1), F32(0.03), np.uint8(110), F32(0.07),
                       np.uint8(128)], consts=(1, 2, 4, 5, 6, 7), domain=MS, opset=1, exact=True))
    cases.append(Case("QLinearMul", "QLinearMul",
                      [i8(2, 3, 4), F32(0.05), np.int8(-2), i8(4), F32(0.03), np.int8(3), F32(0.07), np.int8(1)],
                      consts=(1, 2, 4, 5, 6, 7), domain=MS, opset=1, exact=True))
    cases.append(Case("QGemm transB per-column bias", "QGemm",
                      [u8(m, k), F32(0.02), np.uint8(120), i8(n, k), (rng.random(n) * 0.01 + 0.001).astype(F32),
                       np.zeros(n, np.int8), rng.integers(-500, 500, n).astype(np.int32), F32(0.05), np.uint8(100)],
                      consts=(1, 2, 3, 4, 5, 6, 7, 8), attrs={"transB": 1, "alpha": 0.5}, domain=MS, opset=1,
                      exact=True))
    cases.append(Case("QGemm int8 float output", "QGemm",
                      [i8(m, k), F32(0.02), np.int8(-3), u8(k, n), F32(0.004), np.uint8(128),
                       np.int32(77)], consts=(1, 2, 3, 4, 5, 6), domain=MS, opset=1, exact=True))
    cases.append(Case("QLinearSigmoid", "QLinearSigmoid", [u8(2, 3, 5), F32(0.05), np.uint8(128), F32(1 / 256),
                                                           np.uint8(0)], consts=(1, 2, 3, 4), domain=MS, opset=1,
                      exact=True))
    cases.append(Case("QLinearLeakyRelu int8", "QLinearLeakyRelu", [i8(3, 7), F32(0.05), np.int8(-4), F32(0.04),
                                                                     np.int8(3)], consts=(1, 2, 3, 4), domain=MS,
                      opset=1, attrs={"alpha": 0.1}, exact=True))
    cases.append(Case("QLinearConcat requantized and copied", "QLinearConcat",
                      [F32(0.05), np.uint8(120), u8(2, 3, 4), F32(0.03), np.uint8(110), u8(2, 2, 4), F32(0.05),
                       np.uint8(120), u8(2, 1, 4), F32(0.08), np.uint8(128)], consts=(0, 1, 3, 4, 6, 7, 9, 10),
                      attrs={"axis": 1}, domain=MS, opset=1, exact=True))
    cases.append(Case("QLinearAveragePool padded strided", "QLinearAveragePool",
                      [u8(2, 3, 5, 6), F32(0.05), np.uint8(120), F32(0.04), np.uint8(110)], consts=(1, 2, 3, 4),
                      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 0]}, domain=MS, opset=1,
                      exact=True))
    cases.append(Case("QLinearAveragePool int8 count_include_pad ceil", "QLinearAveragePool",
                      [i8(1, 2, 7), F32(0.05), np.int8(-3), F32(0.03), np.int8(2)], consts=(1, 2, 3, 4),
                      attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1], "count_include_pad": 1,
                             "ceil_mode": 1}, domain=MS, opset=1, exact=True))
    cases.append(Case("QLinearGlobalAveragePool", "QLinearGlobalAveragePool",
                      [i8(2, 3, 4, 5), F32(0.05), np.int8(-3), F32(0.01), np.int8(4)], consts=(1, 2, 3, 4), domain=MS,
                      opset=1, exact=True))
    cases.append(Case("QLinearGlobalAveragePool channels_last", "QLinearGlobalAveragePool",
                      [u8(2, 4, 5, 3), F32(0.05), np.uint8(3), F32(0.01), np.uint8(4)], consts=(1, 2, 3, 4),
                      domain=MS, opset=1, attrs={"channels_last": 1}, exact=True))
    # 4-bit blocks of 16 over K = 40 (a partial last block), packed zero points, and 8-bit without
    n_cols = 5 * s
    cases.append(Case("MatMulNBits 4-bit", "MatMulNBits",
                      [f(2, 3, 40), u8(n_cols, 3, 8), np.abs(f(n_cols * 3)) * F32(0.1), u8(n_cols * 2)],
                      consts=(1, 2, 3), domain=MS, opset=1, attrs={"K": 40, "N": n_cols, "bits": 4, "block_size": 16}))
    cases.append(Case("MatMulNBits 8-bit", "MatMulNBits", [f(3, 32), u8(n_cols, 2, 16), np.abs(f(n_cols * 2))],
                      consts=(1, 2), domain=MS, opset=1, attrs={"K": 32, "N": n_cols, "bits": 8, "block_size": 16}))
    return cases


def _reference(case):
    """Outputs of the CPU twin, or of onnxruntime where qrt has no CPU kernel."""
    cls = registry.lookup(case.op_type, case.domain, case.opset, registry.CPU)
    if cls is not None:
        op = cls(**case.attrs)
        op.n_inputs, op.n_outputs, op.node_name = len(case.inputs), case.n_outputs, case.name
        if hasattr(op, "prepare"):
            op.prepare([x if i in case.consts else None for i, x in enumerate(case.inputs)])
        out = op.run(*case.inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]
    import onnxruntime
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(case.inputs)]
    outputs = [f"out{i}" for i in range(case.n_outputs)]
    node = helper.make_node(case.op_type, names, outputs, domain=case.domain, **case.attrs)
    feeds = {n: x for n, x in zip(names, case.inputs) if n}
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(x).dtype), np.shape(x))
              for n, x in feeds.items()]
    graph = helper.make_graph([node], "case", inputs, [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                                                       for o in outputs])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(case.domain, case.opset)] if case.domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: np.asarray(x) for n, x in feeds.items()})


def run_case(case):
    """Runs ``case`` on the CUDA op; returns (max abs error, max allowed, host fallbacks, message)."""
    import qrt.ops.cuda  # noqa: F401  (registers the CUDA op classes)

    from . import device as dev
    cls = registry.lookup(case.op_type, case.domain, case.opset, registry.CUDA)
    if cls is None:
        return None, None, 0, f"no CUDA kernel for {case.op_type}"
    op = cls(**case.attrs)
    op.n_inputs, op.n_outputs, op.node_name = len(case.inputs), case.n_outputs, case.name
    op.prepare([x if i in case.consts else None for i, x in enumerate(case.inputs)])
    feeds = [x if (x is None or i in case.consts) else dev.upload(x) for i, x in enumerate(case.inputs)]
    got = op.run(*feeds)
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    expected = _reference(case)
    worst, message = 0.0, ""
    for g, e in zip(got, expected):
        g = np.asarray(dev.download(g))
        e = np.asarray(e)
        if g.shape != e.shape or g.dtype != e.dtype:
            return np.inf, 0.0, op.host_fallbacks, f"got {g.dtype}{list(g.shape)}, expected {e.dtype}{list(e.shape)}"
        if case.exact:
            bad = np.count_nonzero((g != e) & ~(np.isnan(g.astype(float)) & np.isnan(e.astype(float))))
            worst = max(worst, float(bad))
            if bad:
                message = f"{bad} values differ"
        else:
            err = np.abs(g.astype(np.float64) - e) - (1e-6 + 1e-5 * np.abs(e))
            worst = max(worst, float(np.nanmax(err, initial=-1.0)) if err.size else -1.0)
            if worst > 0:
                message = f"max excess error {worst:.3g} over rtol 1e-5, atol 1e-6"
    return worst, 0.0, op.host_fallbacks, message


# --------------------------------------------------------------------------- models


def _q(values, scale, zero, dtype):
    info = np.iinfo(dtype)
    return np.clip(np.rint(values / scale) + zero, info.min, info.max).astype(dtype)


def float_cnn(channels=4, size=8, classes=5, seed=0):
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> MaxPool -> Flatten -> Gemm, input (N, 1, size, size)."""
    rng = np.random.default_rng(seed)
    c2 = channels * 2
    w = {"w1": rng.standard_normal((channels, 1, 3, 3)).astype(F32) * F32(0.5),
         "b1": rng.standard_normal(channels).astype(F32) * F32(0.1),
         "w2": rng.standard_normal((c2, channels, 3, 3)).astype(F32) * F32(0.3),
         "b2": rng.standard_normal(c2).astype(F32) * F32(0.1),
         "fc": rng.standard_normal((classes, c2 * (size // 4) ** 2)).astype(F32) * F32(0.2),
         "fcb": rng.standard_normal(classes).astype(F32) * F32(0.1)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["r2"], name="relu2"),
             n("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             n("Flatten", ["p2"], ["flat"], name="flatten"),
             n("Gemm", ["flat", "fc", "fcb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "float_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 ["N", 1, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def int8_cnn(channels=4, size=8, classes=5, seed=0):
    """The float CNN's QOperator form: QuantizeLinear, QLinearConv (+ folded Relu), MaxPool on uint8,
    Flatten, QLinearMatMul, DequantizeLinear; per-channel int8 weights, uint8 activations."""
    _, w = float_cnn(channels, size, classes, seed)
    s_x, s_a1, s_a2, s_y = 0.02, 0.05, 0.08, 0.1
    inits = {"sx": F32(s_x), "zx": np.uint8(128), "sa1": F32(s_a1), "sa2": F32(s_a2), "za": np.uint8(0),
             "sy": F32(s_y), "zy": np.uint8(128)}
    for name, bias, s_in in (("w1", "b1", s_x), ("w2", "b2", s_a1)):
        ws = (np.abs(w[name]).reshape(w[name].shape[0], -1).max(axis=1) / 127).astype(F32)
        inits[name] = _q(w[name], ws.reshape(-1, 1, 1, 1), 0, np.int8)
        inits[name + "s"] = ws
        inits[name + "z"] = np.zeros(ws.size, np.int8)
        inits[bias] = np.rint(w[bias] / (s_in * ws)).astype(np.int32)
    fs = F32(np.abs(w["fc"]).max() / 127)
    inits["fc"] = _q(w["fc"].T.copy(), fs, 0, np.int8)
    inits["fcs"], inits["fcz"] = fs, np.int8(0)
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="quant"),
             n("QLinearConv", ["xq", "sx", "zx", "w1", "w1s", "w1z", "sa1", "za", "b1"], ["c1"], name="qconv1",
               pads=[1, 1, 1, 1]),
             n("MaxPool", ["c1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             n("QLinearConv", ["p1", "sa1", "za", "w2", "w2s", "w2z", "sa2", "za", "b2"], ["c2"], name="qconv2",
               pads=[1, 1, 1, 1]),
             n("MaxPool", ["c2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             n("Flatten", ["p2"], ["flat"], name="flatten"),
             n("QLinearMatMul", ["flat", "sa2", "za", "fc", "fcs", "fcz", "sy", "zy"], ["yq"], name="qfc"),
             n("DequantizeLinear", ["yq", "sy", "zy"], ["y"], name="dequant")]
    graph = helper.make_graph(nodes, "int8_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["N", 1, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantizable_cnn(channels=4, size=6, classes=3, seed=0):
    """A float CNN with the ops a quantizer turns into every int8 kernel family: Conv (+Relu), MaxPool,
    SiLU (Sigmoid, Mul), LeakyRelu, a residual Add, Concat, AveragePool, GlobalAveragePool, Flatten, Gemm.
    Returns (model, calibration feeds generator ``feeds(count, seed)``), input ``x`` (N, 1, size, size)."""
    rng = np.random.default_rng(seed)
    c = channels

    def w(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(F32)

    inits = {"w1": w(c, 1, 3, 3), "b1": w(c), "w2": w(c, c, 3, 3), "b2": w(c), "w3": w(c, c, 1, 1), "b3": w(c),
             "fc": w(classes, 2 * c), "fcb": w(classes)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("Sigmoid", ["c2"], ["s2"], name="sigmoid"),
             n("Mul", ["c2", "s2"], ["m2"], name="silu"),
             n("Conv", ["m2", "w3", "b3"], ["c3"], name="conv3"),
             n("LeakyRelu", ["c3"], ["l3"], name="leaky", alpha=0.1),
             n("Add", ["l3", "p1"], ["a3"], name="residual"),
             n("Concat", ["a3", "m2"], ["cat"], name="concat", axis=1),
             n("AveragePool", ["cat"], ["avg"], name="avgpool", kernel_shape=[2, 2]),
             n("GlobalAveragePool", ["avg"], ["g"], name="gap"),
             n("Flatten", ["g"], ["f"], name="flatten"),
             n("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "quantizable_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                       ["N", 1, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])

    def feeds(count, feed_seed=1, batch=1):
        r = np.random.default_rng(feed_seed)
        return [{"x": r.standard_normal((batch, 1, size, size)).astype(F32)} for _ in range(count)]

    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feeds


def float_mlp(sizes=(16, 24, 8), seed=1):
    rng = np.random.default_rng(seed)
    n = helper.make_node
    nodes, inits, prev = [], {}, "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits[f"w{i}"] = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(F32)
        inits[f"b{i}"] = (rng.standard_normal(b) * 0.1).astype(F32)
        last = i == len(sizes) - 2
        nodes += [n("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                  n("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"], name=f"add{i}")]
        if not last:
            nodes.append(n("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "float_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 ["N", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inits


def int8_mlp(sizes=(16, 24, 8), seed=1):
    """The MLP with QLinearMatMul layers (int8 weights), QLinearAdd biases (com.microsoft) and a
    Relu folded into the activation range."""
    _, w = float_mlp(sizes, seed)
    n = helper.make_node
    inits = {"sx": F32(0.03), "zx": np.uint8(128)}
    nodes = [n("QuantizeLinear", ["x", "sx", "zx"], ["q_in"], name="quant")]
    prev, s_prev, z_prev = "q_in", "sx", "zx"
    for i in range(len(sizes) - 1):
        ws = F32(np.abs(w[f"w{i}"]).max() / 127)
        inits[f"w{i}"] = _q(w[f"w{i}"], ws, 0, np.int8)
        inits[f"w{i}s"], inits[f"w{i}z"] = ws, np.int8(0)
        inits[f"b{i}"] = _q(w[f"b{i}"], F32(0.01), 128, np.uint8)
        inits[f"b{i}s"], inits[f"b{i}z"] = F32(0.01), np.uint8(128)
        inits[f"m{i}s"], inits[f"m{i}z"] = F32(0.06), np.uint8(128)
        last = i == len(sizes) - 2
        inits[f"a{i}s"], inits[f"a{i}z"] = F32(0.06), np.uint8(128 if last else 0)
        nodes += [n("QLinearMatMul", [prev, s_prev, z_prev, f"w{i}", f"w{i}s", f"w{i}z", f"m{i}s", f"m{i}z"],
                    [f"m{i}"], name=f"qmatmul{i}"),
                  n("QLinearAdd", [f"m{i}", f"m{i}s", f"m{i}z", f"b{i}", f"b{i}s", f"b{i}z", f"a{i}s", f"a{i}z"],
                    [f"a{i}"], name=f"qadd{i}", domain=MS)]
        prev, s_prev, z_prev = f"a{i}", f"a{i}s", f"a{i}z"
    nodes.append(n("DequantizeLinear", [prev, s_prev, z_prev], ["y"], name="dequant"))
    graph = helper.make_graph(nodes, "int8_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["N", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def compare_sessions(model, feeds, exact=False):
    """Runs ``model`` with CUDA (then CPU) and with CPU only; returns (cuda outputs, cpu outputs,
    profile node -> provider, host fallbacks of the CUDA kernels)."""
    import json
    import os

    import qrt
    options = qrt.SessionOptions()
    options.enable_profiling = True
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    gpu = qrt.InferenceSession(data, options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    cpu = qrt.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = gpu.run(None, feeds)
    expected = cpu.run(None, feeds)
    path = gpu.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    placement = {e["name"]: e["args"]["provider"] for e in events if e.get("cat") == "Node"}
    fallbacks = sum(getattr(step.kernel, "host_fallbacks", 0) for step in gpu._plan.steps)
    return got, expected, placement, fallbacks
