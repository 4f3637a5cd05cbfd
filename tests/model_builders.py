"""Small real-shaped models built with onnx.helper, shared by the cross-check tests.

Weights are random with a fixed seed and scaled like trained layers (He init), so activations stay
in a realistic range through the depth of the model.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(rng, name, shape, fan_in=None, scale=None):
    fan_in = fan_in or int(np.prod(shape[1:])) or 1
    std = scale if scale is not None else np.sqrt(2.0 / fan_in)
    return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name)


def classic_cnn(opset=17, seed=0):
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> MaxPool -> Flatten -> Gemm, dynamic batch, 3x32x32 input."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "c1_w", [16, 3, 3, 3]), _init(rng, "c1_b", [16], scale=0.1),
             _init(rng, "c2_w", [32, 16, 3, 3]), _init(rng, "c2_b", [32], scale=0.1),
             _init(rng, "fc_w", [10, 32 * 8 * 8]), _init(rng, "fc_b", [10], scale=0.1)]
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2_w", "c2_b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "classic_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mlp(opset=17, seed=1, sizes=(64, 128, 128, 10)):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "input"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [_init(rng, f"w{i}", [n_in, n_out], fan_in=n_in), _init(rng, f"b{i}", [n_out], scale=0.1)]
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], ["output" if last else f"a{i}"], name=f"add{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def transformer_block(opset=17, seed=2, d_model=64, heads=4, d_ff=128):
    """One post-norm encoder block: self-attention (MatMul, Reshape, Transpose, Softmax), LayerNorm, Erf-GELU MLP."""
    rng = np.random.default_rng(seed)
    dh = d_model // heads
    inits = [_init(rng, n, [d_model, d_model], fan_in=d_model, scale=d_model ** -0.5) for n in ("wq", "wk", "wv", "wo")]
    inits += [_init(rng, "w1", [d_model, d_ff], fan_in=d_model), _init(rng, "w2", [d_ff, d_model], fan_in=d_ff),
              _init(rng, "b1", [d_ff], scale=0.1), _init(rng, "b2", [d_model], scale=0.1),
              numpy_helper.from_array(np.ones(d_model, np.float32), "g1"),
              numpy_helper.from_array(np.zeros(d_model, np.float32), "be1"),
              numpy_helper.from_array(np.ones(d_model, np.float32) * 0.9, "g2"),
              numpy_helper.from_array(np.full(d_model, 0.05, np.float32), "be2"),
              numpy_helper.from_array(np.array([0, 0, heads, dh], np.int64), "split_heads"),
              numpy_helper.from_array(np.array([0, 0, d_model], np.int64), "merge_heads"),
              numpy_helper.from_array(np.array(1 / np.sqrt(dh), np.float32), "scale"),
              numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
              numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    n = helper.make_node
    nodes = []
    for t in ("q", "k", "v"):
        nodes += [n("MatMul", ["x", f"w{t}"], [f"{t}_proj"]),
                  n("Reshape", [f"{t}_proj", "split_heads"], [f"{t}_4d"]),
                  n("Transpose", [f"{t}_4d"], [f"{t}_h"], perm=[0, 2, 3, 1] if t == "k" else [0, 2, 1, 3])]
    nodes += [
        n("MatMul", ["q_h", "k_h"], ["scores_raw"]), n("Mul", ["scores_raw", "scale"], ["scores"]),
        n("Softmax", ["scores"], ["probs"], axis=-1), n("MatMul", ["probs", "v_h"], ["ctx_h"]),
        n("Transpose", ["ctx_h"], ["ctx_t"], perm=[0, 2, 1, 3]), n("Reshape", ["ctx_t", "merge_heads"], ["ctx"]),
        n("MatMul", ["ctx", "wo"], ["attn"]), n("Add", ["x", "attn"], ["res1"]),
        n("LayerNormalization", ["res1", "g1", "be1"], ["ln1"], axis=-1, epsilon=1e-5),
        n("MatMul", ["ln1", "w1"], ["ff1_mm"]), n("Add", ["ff1_mm", "b1"], ["ff1"]),
        n("Div", ["ff1", "sqrt2"], ["ff1_s"]), n("Erf", ["ff1_s"], ["ff1_erf"]), n("Add", ["ff1_erf", "one"], ["ff1_e1"]),
        n("Mul", ["ff1", "ff1_e1"], ["ff1_g"]), n("Mul", ["ff1_g", "half"], ["gelu"]),
        n("MatMul", ["gelu", "w2"], ["ff2_mm"]), n("Add", ["ff2_mm", "b2"], ["ff2"]), n("Add", ["ln1", "ff2"], ["res2"]),
        n("LayerNormalization", ["res2", "g2", "be2"], ["output"], axis=-1, epsilon=1e-5),
    ]
    for i, node in enumerate(nodes):
        node.name = f"{node.op_type.lower()}_{i}"
    graph = helper.make_graph(
        nodes, "encoder_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d_model])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "seq", d_model])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def lstm_model(opset=14, seed=3, input_size=16, hidden=32, direction="bidirectional"):
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    inits = [_init(rng, "W", [dirs, 4 * hidden, input_size], scale=0.2), _init(rng, "R", [dirs, 4 * hidden, hidden], scale=0.2),
             _init(rng, "B", [dirs, 8 * hidden], scale=0.1)]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "seq_lens"], ["Y", "Y_h", "Y_c"], name="lstm",
                              hidden_size=hidden, direction=direction)]
    graph = helper.make_graph(
        nodes, "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", input_size]),
         helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["batch"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", dirs, "batch", hidden]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [dirs, "batch", hidden]),
         helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [dirs, "batch", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _decomposed_layer_norm(x, gamma, beta, out, prefix, epsilon):
    """LayerNormalization over the last axis as exporters before opset 17 write it (ReduceMean with ``axes``)."""
    n = helper.make_node
    p = prefix
    return [n("ReduceMean", [x], [p + "mean"], axes=[-1]), n("Sub", [x, p + "mean"], [p + "d"]),
            n("Pow", [p + "d", "two"], [p + "d2"]), n("ReduceMean", [p + "d2"], [p + "var"], axes=[-1]),
            n("Add", [p + "var", epsilon], [p + "var_eps"]), n("Sqrt", [p + "var_eps"], [p + "std"]),
            n("Div", [p + "d", p + "std"], [p + "normed"]), n("Mul", [p + "normed", gamma], [p + "scaled"]),
            n("Add", [p + "scaled", beta], [out])]


def bert_encoder(opset=17, seed=4, layers=2, d_model=64, heads=4, d_ff=128, decomposed_layer_norm=False):
    """BERT-style post-norm encoder layers as exported from PyTorch: biased Q/K/V projections, keys transposed
    with perm [0, 1, 3, 2], scores divided by sqrt(head size), an additive (batch, 1, 1, seq) mask input, Erf-GELU;
    ``decomposed_layer_norm`` writes the layer norms out as exporters before opset 17 did (use opset <= 17).
    BERT-base is ``layers=12, d_model=768, heads=12, d_ff=3072``."""
    rng = np.random.default_rng(seed)
    dh = d_model // heads
    inits = [numpy_helper.from_array(np.array([0, 0, heads, dh], np.int64), "split_heads"),
             numpy_helper.from_array(np.array([0, 0, d_model], np.int64), "merge_heads"),
             numpy_helper.from_array(np.array(np.sqrt(dh), np.float32), "sqrt_dh"),
             numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    if decomposed_layer_norm:
        inits += [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                  numpy_helper.from_array(np.array(1e-12, np.float32), "ln_eps")]
    n = helper.make_node
    nodes = []
    x = "x"

    def _layer_norm(x, gamma, beta, out, prefix):
        if decomposed_layer_norm:
            return _decomposed_layer_norm(x, gamma, beta, out, prefix, "ln_eps")
        return [n("LayerNormalization", [x, gamma, beta], [out], axis=-1, epsilon=1e-12)]

    for i in range(layers):
        p = f"l{i}_"
        for t in ("q", "k", "v", "o"):
            inits += [_init(rng, p + "w" + t, [d_model, d_model], fan_in=d_model, scale=d_model ** -0.5),
                      _init(rng, p + "b" + t, [d_model], scale=0.02)]
        inits += [_init(rng, p + "w1", [d_model, d_ff], fan_in=d_model), _init(rng, p + "b1", [d_ff], scale=0.1),
                  _init(rng, p + "w2", [d_ff, d_model], fan_in=d_ff), _init(rng, p + "b2", [d_model], scale=0.1),
                  numpy_helper.from_array((1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32), p + "g1"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(d_model)).astype(np.float32), p + "be1"),
                  numpy_helper.from_array((1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32), p + "g2"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(d_model)).astype(np.float32), p + "be2")]
        for t in ("q", "k", "v"):
            nodes += [n("MatMul", [x, p + "w" + t], [p + t + "_mm"]),
                      n("Add", [p + t + "_mm", p + "b" + t], [p + t + "_proj"]),
                      n("Reshape", [p + t + "_proj", "split_heads"], [p + t + "_4d"]),
                      n("Transpose", [p + t + "_4d"], [p + t + "_h"], perm=[0, 2, 1, 3])]
        nodes += [
            n("Transpose", [p + "k_h"], [p + "k_t"], perm=[0, 1, 3, 2]),
            n("MatMul", [p + "q_h", p + "k_t"], [p + "scores_raw"]),
            n("Div", [p + "scores_raw", "sqrt_dh"], [p + "scores"]),
            n("Add", [p + "scores", "mask"], [p + "scores_masked"]),
            n("Softmax", [p + "scores_masked"], [p + "probs"], axis=-1),
            n("MatMul", [p + "probs", p + "v_h"], [p + "ctx_h"]),
            n("Transpose", [p + "ctx_h"], [p + "ctx_t"], perm=[0, 2, 1, 3]),
            n("Reshape", [p + "ctx_t", "merge_heads"], [p + "ctx"]),
            n("MatMul", [p + "ctx", p + "wo"], [p + "attn_mm"]), n("Add", [p + "attn_mm", p + "bo"], [p + "attn"]),
            n("Add", [p + "attn", x], [p + "res1"]),
        ]
        nodes += _layer_norm(p + "res1", p + "g1", p + "be1", p + "ln1", p + "n1_")
        nodes += [
            n("MatMul", [p + "ln1", p + "w1"], [p + "ff1_mm"]), n("Add", [p + "ff1_mm", p + "b1"], [p + "ff1"]),
            n("Div", [p + "ff1", "sqrt2"], [p + "ff1_s"]), n("Erf", [p + "ff1_s"], [p + "ff1_erf"]),
            n("Add", [p + "ff1_erf", "one"], [p + "ff1_e1"]), n("Mul", [p + "ff1", p + "ff1_e1"], [p + "ff1_g"]),
            n("Mul", [p + "ff1_g", "half"], [p + "gelu"]),
            n("MatMul", [p + "gelu", p + "w2"], [p + "ff2_mm"]), n("Add", [p + "ff2_mm", p + "b2"], [p + "ff2"]),
            n("Add", [p + "ff2", p + "ln1"], [p + "res2"]),
        ]
        nodes += _layer_norm(p + "res2", p + "g2", p + "be2", p + "out", p + "n2_")
        x = p + "out"
    nodes[-1].output[0] = "output"
    for i, node in enumerate(nodes):
        node.name = f"{node.op_type.lower()}_{i}"
    graph = helper.make_graph(
        nodes, "bert_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d_model]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "seq"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "seq", d_model])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
