"""Models quantized by onnxruntime's and qrt's quantizers for the int8 cross-checks, cached per process.

The float models are tests/model_builders.py's classic CNN (Conv/Relu/MaxPool/Flatten/Gemm) and MLP
(MatMul/Add/Relu), plus a small "zoo" with the other ops onnxruntime's QDQ quantizer wraps. Each
is calibrated on a few random batches; the evaluation batch comes from another seed.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_builders import classic_cnn, mlp

SHAPES = {"cnn": (2, 3, 32, 32), "mlp": (4, 64), "zoo": (1, 8, 12, 12)}


def zoo(seed=3):
    """Conv, Add (residual), Mul, Sigmoid, LeakyRelu, AveragePool, Concat, Resize, Transpose, Reshape,
    GlobalAveragePool, Softmax: every pattern the QDQ fusion rewrites, in one model."""
    rng = np.random.default_rng(seed)

    def init(name, shape, std):
        return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name)

    inits = [init("w1", [8, 8, 3, 3], 0.15), init("b1", [8], 0.1), init("w2", [8, 1, 3, 3], 0.3),
             init("w3", [16, 16, 1, 1], 0.25), init("b3", [16], 0.1),
             numpy_helper.from_array(np.array([1, 16, 6, 6], np.int64), "shape4"),
             numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"),
             numpy_helper.from_array(np.array([1, 16], np.int64), "shape2"),
             numpy_helper.from_array(np.linspace(0.5, 2.0, 16, dtype=np.float32).reshape(1, 16), "gain16")]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Add", ["r1", "input"], ["res"], name="residual"),
        n("Conv", ["res", "w2"], ["dw"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
        n("Sigmoid", ["dw"], ["sig"], name="sigmoid"),
        n("Mul", ["sig", "res"], ["gated"], name="gate"),
        n("LeakyRelu", ["gated"], ["lr"], name="leaky", alpha=0.1),
        n("AveragePool", ["lr"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
        n("MaxPool", ["res"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Concat", ["ap", "mp"], ["cat"], name="concat", axis=1),
        n("Conv", ["cat", "w3", "b3"], ["c3"], name="conv3"),
        n("Transpose", ["c3"], ["tr"], name="transpose", perm=[0, 1, 3, 2]),
        n("Reshape", ["tr", "shape4"], ["rs"], name="reshape"),
        n("Resize", ["rs", "", "scales"], ["up"], name="resize", mode="nearest"),
        n("GlobalAveragePool", ["up"], ["gap"], name="gap"),
        n("Reshape", ["gap", "shape2"], ["flat"], name="flatten"),
        n("Mul", ["flat", "gain16"], ["scaled"], name="gain"),
        n("Softmax", ["scaled"], ["output"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "zoo", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


FLOAT_MODELS = {"cnn": classic_cnn, "mlp": mlp, "zoo": zoo}


def batches(name, seed, count):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPES[name]).astype(np.float32) for _ in range(count)]


def eval_input(name):
    return batches(name, 99, 1)[0]


@functools.lru_cache(maxsize=None)
def float_model(name) -> onnx.ModelProto:
    return FLOAT_MODELS[name]()


class _Reader:
    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


@functools.lru_cache(maxsize=None)
def ort_quantized(name, fmt, activation, weight="QInt8", per_channel=False, reduce_range=False) -> onnx.ModelProto:
    """``name`` quantized by onnxruntime.quantization.quantize_static (MinMax on 4 random batches)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    logging.getLogger().setLevel(logging.ERROR)
    feeds = [{"input": b} for b in batches(name, 0, 4)]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(float_model(name), src)
        quantize_static(src, dst, _Reader(feeds), quant_format=QuantFormat[fmt],
                        activation_type=QuantType[activation], weight_type=QuantType[weight],
                        per_channel=per_channel, reduce_range=reduce_range)
        return onnx.load(dst)


@functools.lru_cache(maxsize=None)
def qrt_quantized(name, fmt, activation, weight="QInt8", per_channel=False) -> onnx.ModelProto:
    """``name`` quantized by qrt.quantization.quantize_static with the same arguments."""
    from qrt.quantization import QuantFormat, QuantType, quantize_static
    feeds = [{"input": b} for b in batches(name, 0, 4)]
    summary = quantize_static(float_model(name), None, feeds, quant_format=QuantFormat[fmt],
                              activation_type=QuantType[activation], weight_type=QuantType[weight],
                              per_channel=per_channel)
    return summary.model


def output_step(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear producing the graph output (one quantization step)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[model.graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[0]]
    return float(np.asarray(inits[node.input[1]]).reshape(-1)[0])
