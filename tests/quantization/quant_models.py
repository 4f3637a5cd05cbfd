"""Small float models for the quantizer tests, built with onnx.helper from seeded random weights.

Weights use He initialisation so activations keep a realistic scale through Relu stacks; inputs
look like normalised images (per-channel offset and spread, clipped tails) or token embeddings.
Each builder returns ``(model, make_feeds)`` where ``make_feeds(n, seed)`` gives ``n`` feed dicts.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng, n, spread=0.1):
    return (rng.standard_normal(n) * spread).astype(np.float32)


class Builder:
    """Collects nodes and weights; weights go to initializers or, with ``constants=True``, Constant nodes."""

    def __init__(self, seed, constants=False):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.constants = constants
        self.count = 0

    def name(self, base):
        self.count += 1
        return f"{base}{self.count}"

    def weight(self, array, base):
        name = self.name(base)
        if self.constants:
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const",
                                               value=numpy_helper.from_array(array, name)))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, inputs, n_out=1, domain="", **attrs):
        base = op_type.lower()
        outs = [self.name(base + "_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, cin, cout, k=3, stride=1, bias=True, group=1):
        w = self.weight(_he(self.rng, (cout, cin // group, k, k), cin // group * k * k), "conv_w")
        inputs = [x, w] + ([self.weight(_bias(self.rng, cout), "conv_b")] if bias else [])
        return self.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride],
                       group=group)

    def gemm(self, x, n_in, n_out, trans_b=True):
        shape = (n_out, n_in) if trans_b else (n_in, n_out)
        w = self.weight(_he(self.rng, shape, n_in), "fc_w")
        b = self.weight(_bias(self.rng, n_out), "fc_b")
        return self.op("Gemm", [x, w, b], transB=int(trans_b))

    def model(self, inputs, outputs, name):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def image_feeds(name, channels, size, batch=1):
    mean = np.linspace(-0.3, 0.4, channels, dtype=np.float32).reshape(1, channels, 1, 1)
    spread = np.linspace(0.8, 1.2, channels, dtype=np.float32).reshape(1, channels, 1, 1)

    def make(n, seed):
        rng = np.random.default_rng(seed)
        feeds = []
        for _ in range(n):
            # Smooth images: low-resolution noise upsampled, as neighbouring pixels correlate in photos.
            coarse = rng.standard_normal((batch, channels, size // 4, size // 4)).astype(np.float32)
            img = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)
            img += 0.3 * rng.standard_normal(img.shape).astype(np.float32)
            feeds.append({name: np.clip(img * spread + mean, -2.5, 2.5).astype(np.float32)})
        return feeds
    return make


def build_cnn(constants=False, seed=0):
    """Conv/Relu stack with a residual Add, MaxPool, GlobalAveragePool and a Gemm head (Conv-heavy)."""
    b = Builder(seed, constants)
    x = b.op("Relu", [b.conv("input", 3, 32)])
    x = b.op("Relu", [b.conv(x, 32, 32, stride=2)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Relu", [b.conv(x, 32, 64)])
    y = b.conv(y, 64, 32, k=1)
    x = b.op("Relu", [b.op("Add", [x, y])])
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x])
    out = b.gemm(x, 32, 10)
    b.nodes[-1].output[0] = "logits"
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], "cnn")
    assert out
    return model, image_feeds("input", 3, 16)


def build_cnn_bn(seed=1):
    """Conv (no bias) + BatchNormalization + Relu blocks, as exporters emit them before folding."""
    b = Builder(seed)
    x = "input"
    for cin, cout in ((3, 16), (16, 32)):
        x = b.conv(x, cin, cout, bias=False)
        scale = b.weight((1.0 + 0.2 * b.rng.standard_normal(cout)).astype(np.float32), "bn_scale")
        shift = b.weight((0.1 * b.rng.standard_normal(cout)).astype(np.float32), "bn_shift")
        mean = b.weight((0.2 * b.rng.standard_normal(cout)).astype(np.float32), "bn_mean")
        var = b.weight((0.5 + b.rng.random(cout)).astype(np.float32), "bn_var")
        x = b.op("Relu", [b.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    b.gemm(x, 32, 10)
    b.nodes[-1].output[0] = "logits"
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], "cnn_bn")
    return model, image_feeds("input", 3, 16)


def build_mlp(seed=2, constants=False):
    """Token MLP on [batch, seq, 64]: MatMul + Add(bias) + Relu layers (3-D, so no Gemm fusion)."""
    b = Builder(seed, constants)
    x, width = "tokens", 64
    for n_out in (128, 128, 32):
        w = b.weight(_he(b.rng, (width, n_out), width), "mm_w")
        x = b.op("Add", [b.op("MatMul", [x, w]), b.weight(_bias(b.rng, n_out), "mm_b")])
        if n_out != 32:
            x = b.op("Relu", [x])
        width = n_out
    b.nodes[-1].output[0] = "features"
    model = b.model([helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", 8, 64])],
                    [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, 32])], "mlp")

    def make(n, seed):
        rng = np.random.default_rng(seed)
        return [{"tokens": (rng.standard_normal((1, 8, 64)) * np.linspace(0.5, 1.5, 64)).astype(np.float32)}
                for _ in range(n)]
    return model, make


def build_zoo(seed=3):
    """Every op family the QOperator rewrite handles, in one graph."""
    b = Builder(seed)
    x = b.conv("input", 3, 16)
    x = b.op("LeakyRelu", [x], alpha=0.1)
    gate = b.op("Sigmoid", [x])
    x = b.op("Mul", [x, gate])                                   # SiLU-style gating
    x = b.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])       # 16 x 8 x 8
    six = b.weight(np.float32(6.0), "six")
    zero = b.weight(np.float32(0.0), "zero")
    left = b.op("Clip", [b.conv(x, 16, 16), zero, six])           # Relu6
    pads = b.weight(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    right = b.op("Pad", [x, pads])                                # 16 x 10 x 10
    starts = b.weight(np.array([1, 1], np.int64), "starts")
    ends = b.weight(np.array([9, 9], np.int64), "ends")
    axes = b.weight(np.array([2, 3], np.int64), "axes")
    right = b.op("Slice", [right, starts, ends, axes])            # 16 x 8 x 8
    x = b.op("Concat", [left, right], axis=1)                     # 32 x 8 x 8
    a, c = b.op("Split", [x], n_out=2, axis=1)                    # 2 x (16 x 8 x 8)
    a = b.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])            # 16 x 4 x 4
    scales = b.weight(np.array([1, 1, 2, 2], np.float32), "scales")
    a = b.op("Resize", [a, "", scales], mode="nearest")      # 16 x 8 x 8
    x = b.op("Add", [a, c])
    wt = b.weight(_he(b.rng, (16, 8, 2, 2), 16 * 4), "deconv_w")
    bt = b.weight(_bias(b.rng, 8), "deconv_b")
    x = b.op("ConvTranspose", [x, wt, bt], kernel_shape=[2, 2], strides=[2, 2])   # 8 x 16 x 16
    x = b.op("GlobalAveragePool", [b.op("Relu", [x])])              # 1 x 8 x 1 x 1
    shape = b.weight(np.array([0, 8], np.int64), "shape")
    x = b.op("Reshape", [x, shape])                                 # 1 x 8
    x = b.op("Unsqueeze", [x, b.weight(np.array([1], np.int64), "ax1")])          # 1 x 1 x 8
    x = b.op("Transpose", [x], perm=[0, 2, 1])                      # 1 x 8 x 1
    x = b.op("Squeeze", [x, b.weight(np.array([2], np.int64), "ax2")])            # 1 x 8
    w = b.weight(_he(b.rng, (8, 12), 8), "head_w")
    x = b.op("MatMul", [x, w])
    b.op("Softmax", [x], axis=-1)
    b.nodes[-1].output[0] = "probs"
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                    [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 12])], "zoo")
    return model, image_feeds("input", 3, 16)


def build_embedding_encoder(seed=4):
    """BERT-flavoured: Gather from an embedding table, MatMul layers with Gemm-free 3-D activations."""
    b = Builder(seed)
    table = b.weight((0.5 * b.rng.standard_normal((500, 64))).astype(np.float32), "embedding")
    x = b.op("Gather", [table, "ids"], axis=0)                       # batch x seq x 64
    for n_in, n_out in ((64, 256), (256, 64)):
        w = b.weight(_he(b.rng, (n_in, n_out), n_in), "w")
        x = b.op("Add", [b.op("MatMul", [x, w]), b.weight(_bias(b.rng, n_out), "b")])
        if n_out == 256:
            x = b.op("Relu", [x])
    b.nodes[-1].output[0] = "hidden"
    model = b.model([helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                    [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", 64])], "encoder")

    def make(n, seed):
        rng = np.random.default_rng(seed)
        return [{"ids": rng.integers(0, 500, (1, 12)).astype(np.int64)} for _ in range(n)]
    return model, make


def build_elementwise(seed=5):
    """Only ops qrt's runtime already runs, so calibration goes through qrt end to end."""
    b = Builder(seed)
    scale = b.weight((1.0 + 0.5 * b.rng.standard_normal(16)).astype(np.float32), "scale")
    shift = b.weight((0.2 * b.rng.standard_normal(16)).astype(np.float32), "shift")
    x = b.op("Add", [b.op("Mul", ["x", scale]), shift])
    x = b.op("LeakyRelu", [x], alpha=0.2)
    gated = b.op("Mul", [x, b.op("Sigmoid", [x])])
    x = b.op("Concat", [gated, "y"], axis=1)                      # batch x 24
    x = b.op("Reshape", [x, b.weight(np.array([-1, 4, 6], np.int64), "shape")])
    b.op("Transpose", [x], perm=[0, 2, 1])
    b.nodes[-1].output[0] = "out"
    model = b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
                     helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                    [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6, 4])], "elementwise")

    def make(n, seed):
        rng = np.random.default_rng(seed)
        return [{"x": rng.standard_normal((2, 16)).astype(np.float32),
                 "y": rng.uniform(-1, 3, (2, 8)).astype(np.float32)} for _ in range(n)]
    return model, make


def reference_ranges(model, feeds):
    """Min/max of every float tensor of the pre-processed model, computed in onnxruntime.

    Tests pass these as ``tensor_ranges`` where qrt's runtime cannot run the float model yet; they
    equal what MinMax calibration computes (same data, same float results up to rounding).
    """
    from qrt.quantization.preprocess import preprocess

    prepared, _ = preprocess(model)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(prepared)
    known = {o.name for o in exposed.graph.output}
    for info in prepared.graph.value_info:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT and info.name not in known:
            exposed.graph.output.append(info)
    for info in prepared.graph.input:
        if info.name not in known:
            exposed.graph.output.append(info)
    names = [o.name for o in exposed.graph.output]
    outputs = run_ort(exposed, feeds)
    return {name: (float(v.min()), float(v.max())) for name, v in zip(names, outputs)
            if v.dtype == np.float32 and v.size}


def run_ort(model, feeds):
    """Outputs of ``model`` in onnxruntime for each feed, concatenated per output."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    results = [session.run(None, feed) for feed in feeds]
    return [np.concatenate([np.atleast_1d(r[i]) for r in results]) for i in range(len(results[0]))]


def sqnr_db(reference, approx):
    reference = np.asarray(reference, np.float64)
    noise = reference - np.asarray(approx, np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum(noise ** 2), 1e-30)))


class ListReader:
    """onnxruntime-style CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds):
        self._it = iter(list(feeds))

    def get_next(self):
        return next(self._it, None)
