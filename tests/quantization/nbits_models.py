"""Transformer stacks built with onnx.helper for the weight-only quantization tests and benchmark.

* :func:`bert_encoder`: BERT-base-shaped (hidden 768, 12 heads, FFN 3072, vocabulary 30522 by
  default) post-norm encoder: word and position embeddings (Gather), LayerNorm, ``layers`` blocks of
  self-attention and Erf-GELU MLP, every projection a MatMul + bias Add.
* :func:`decoder_stack`: a Llama-style decoder: RMSNorm (written out as Pow/ReduceMean/Sqrt/Div),
  rotary position embedding on q and k (rotate-half form with Slice/Neg/Concat), causal attention
  (additive mask), SwiGLU MLP, a final RMSNorm and an LM head.

Weights are Gaussian with BERT's init (std 0.02) plus a few large "outlier" input channels per
projection, as trained transformers have; that is what makes per-block 4-bit rounding lossy and
error-aware rounding (GPTQ) worth its calibration.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name, shape, std=0.02, outliers=4):
        w = self.rng.standard_normal(shape).astype(np.float32) * std
        if outliers and len(shape) == 2:
            rows = self.rng.choice(shape[0], size=outliers, replace=False)
            w[rows] *= 8.0
        return self.const(name, w)

    def op(self, op_type, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{output}_{op_type.lower()}", **attrs))
        return output

    def linear(self, x, name, k, n, bias=True):
        y = self.op("MatMul", [x, self.weight(f"{name}.weight", [k, n])], f"{name}.mm")
        if bias:
            y = self.op("Add", [y, self.const(f"{name}.bias", self.rng.standard_normal(n).astype(np.float32) * 0.02)],
                        f"{name}.out")
        return y

    def model(self, name, inputs, outputs, opset=17):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _heads(b, x, prefix, heads, dh, transpose_perm):
    shaped = b.op("Reshape", [x, b.const(f"{prefix}.split_shape", np.array([0, 0, heads, dh], np.int64))],
                  f"{prefix}.split")
    return b.op("Transpose", [shaped], f"{prefix}.heads", perm=transpose_perm)


def _merge(b, x, prefix, hidden):
    t = b.op("Transpose", [x], f"{prefix}.merged_t", perm=[0, 2, 1, 3])
    shape = b.const(f"{prefix}.merge_shape", np.array([0, 0, hidden], np.int64))
    return b.op("Reshape", [t, shape], f"{prefix}.merged")


# Hugging Face's Linear layers store weight [out, in]; MatMul takes [in, out].
_LINEAR_WEIGHTS = ("query.weight", "key.weight", "value.weight", "dense.weight")


def bert_encoder(layers=2, hidden=768, heads=12, ffn=3072, vocab=30522, seed=0, weights=None):
    """BERT's encoder with Hugging Face's parameter names; ``weights`` (name -> array, as in a BertModel
    checkpoint) gives pretrained values, random ones otherwise. Input ``input_ids [batch, seq]``, one
    unpadded sequence length per batch; output ``last_hidden_state``."""
    b = _Builder(seed)
    dh = hidden // heads

    def param(name, shape, std=0.02, outliers=4):
        if weights is None:
            return b.weight(name, shape, std=std, outliers=outliers)
        value = np.asarray(weights[name], np.float32)
        return b.const(name, value.T.copy() if name.endswith(_LINEAR_WEIGHTS) else value)

    def vector(name, size, fill):
        return b.const(name, np.asarray(weights[name], np.float32) if weights is not None
                       else np.full(size, fill, np.float32))

    def linear(x, name, k, n):
        y = b.op("MatMul", [x, param(f"{name}.weight", [k, n])], f"{name}.mm")
        return b.op("Add", [y, vector(f"{name}.bias", n, 0.01)], f"{name}.out")

    def layer_norm(x, name, output):
        return b.op("LayerNormalization", [x, vector(f"{name}.weight", hidden, 1.0),
                                           vector(f"{name}.bias", hidden, 0.0)], output, epsilon=1e-12)

    seq_len = b.op("Slice", [b.op("Shape", ["input_ids"], "ids_shape"), b.const("one_i", np.array([1], np.int64)),
                             b.const("two_i", np.array([2], np.int64))], "seq_len")
    position_ids = b.op("Slice", [b.const("all_positions", np.arange(512, dtype=np.int64)),
                                  b.const("zero_i", np.array([0], np.int64)), seq_len], "position_ids")
    words = b.op("Gather", [param("embeddings.word_embeddings.weight", [vocab, hidden], outliers=0), "input_ids"],
                 "emb.words")
    positions = b.op("Gather", [param("embeddings.position_embeddings.weight", [512, hidden], outliers=0),
                                position_ids], "emb.positions")
    x = b.op("Add", [words, positions], "emb.sum")
    if weights is not None:  # every token of type 0
        x = b.op("Add", [x, b.const("token_type_0", np.asarray(weights["embeddings.token_type_embeddings.weight"][0],
                                                                np.float32))], "emb.typed")
    x = layer_norm(x, "embeddings.LayerNorm", "emb.out")
    scale = b.const("attn.scale", np.array(dh ** -0.5, np.float32))
    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = _heads(b, linear(x, f"{p}.attention.self.query", hidden, hidden), f"{p}.q", heads, dh, [0, 2, 1, 3])
        k = _heads(b, linear(x, f"{p}.attention.self.key", hidden, hidden), f"{p}.k", heads, dh, [0, 2, 3, 1])
        v = _heads(b, linear(x, f"{p}.attention.self.value", hidden, hidden), f"{p}.v", heads, dh, [0, 2, 1, 3])
        scores = b.op("Mul", [b.op("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        ctx = b.op("MatMul", [b.op("Softmax", [scores], f"{p}.probs", axis=-1), v], f"{p}.ctx")
        attn = linear(_merge(b, ctx, p, hidden), f"{p}.attention.output.dense", hidden, hidden)
        x = layer_norm(b.op("Add", [x, attn], f"{p}.res1"), f"{p}.attention.output.LayerNorm", f"{p}.ln1")
        h = linear(x, f"{p}.intermediate.dense", hidden, ffn)
        erf = b.op("Erf", [b.op("Div", [h, b.const(f"{p}.sqrt2", np.array(np.sqrt(2), np.float32))], f"{p}.hs")],
                   f"{p}.erf")
        gelu = b.op("Mul", [b.op("Mul", [h, b.op("Add", [erf, b.const(f"{p}.one", np.array(1, np.float32))],
                                                f"{p}.erf1")], f"{p}.hg"),
                            b.const(f"{p}.half", np.array(0.5, np.float32))], f"{p}.gelu")
        out = linear(gelu, f"{p}.output.dense", ffn, hidden)
        x = layer_norm(b.op("Add", [x, out], f"{p}.res2"), f"{p}.output.LayerNorm",
                       "last_hidden_state" if i == layers - 1 else f"{p}.ln2")
    return b.model("bert_encoder", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                   [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])])


def _rms_norm(b, x, name, dim):
    mean_square = b.op("ReduceMean", [b.op("Mul", [x, x], f"{name}.sq")], f"{name}.ms", axes=[-1], keepdims=1)
    rms = b.op("Sqrt", [b.op("Add", [mean_square, b.const(f"{name}.eps", np.array(1e-6, np.float32))], f"{name}.mse")],
               f"{name}.rms")
    gain = b.const(f"{name}.g", (1.0 + 0.1 * b.rng.standard_normal(dim)).astype(np.float32))
    return b.op("Mul", [b.op("Div", [x, rms], f"{name}.normed"), gain], f"{name}.out")


def _rotary(b, x, name, dh, cos, sin):
    half = dh // 2
    first = b.op("Slice", [x, b.const(f"{name}.s0", np.array([0], np.int64)),
                           b.const(f"{name}.e0", np.array([half], np.int64)),
                           b.const(f"{name}.ax", np.array([-1], np.int64))], f"{name}.x1")
    second = b.op("Slice", [x, b.const(f"{name}.s1", np.array([half], np.int64)),
                            b.const(f"{name}.e1", np.array([dh], np.int64)), f"{name}.ax"], f"{name}.x2")
    rotated = b.op("Concat", [b.op("Neg", [second], f"{name}.neg"), first], f"{name}.rot", axis=-1)
    return b.op("Add", [b.op("Mul", [x, cos], f"{name}.xcos"), b.op("Mul", [rotated, sin], f"{name}.rsin")],
                f"{name}.out")


def decoder_stack(layers=2, hidden=256, heads=4, ffn=688, vocab=1024, seq=16, seed=1):
    b = _Builder(seed)
    dh = hidden // heads
    inv_freq = 1.0 / (10000 ** (np.arange(0, dh, 2) / dh))
    angles = np.outer(np.arange(seq), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    cos = b.const("rope.cos", np.cos(angles).astype(np.float32))
    sin = b.const("rope.sin", np.sin(angles).astype(np.float32))
    mask = b.const("causal_mask", np.triu(np.full((seq, seq), -1e9, np.float32), k=1))
    scale = b.const("attn.scale", np.array(dh ** -0.5, np.float32))
    x = b.op("Gather", [b.weight("embed_tokens", [vocab, hidden], outliers=0), "input_ids"], "embeds")
    for i in range(layers):
        p = f"layer{i}"
        h = _rms_norm(b, x, f"{p}.input_norm", hidden)
        q = _rotary(b, _heads(b, b.linear(h, f"{p}.q", hidden, hidden, bias=False), f"{p}.q", heads, dh, [0, 2, 1, 3]),
                    f"{p}.q_rope", dh, cos, sin)
        k = _rotary(b, _heads(b, b.linear(h, f"{p}.k", hidden, hidden, bias=False), f"{p}.k", heads, dh, [0, 2, 1, 3]),
                    f"{p}.k_rope", dh, cos, sin)
        v = _heads(b, b.linear(h, f"{p}.v", hidden, hidden, bias=False), f"{p}.v", heads, dh, [0, 2, 1, 3])
        k_t = b.op("Transpose", [k], f"{p}.k_t", perm=[0, 1, 3, 2])
        scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, k_t], f"{p}.qk"), scale], f"{p}.scaled"), mask],
                      f"{p}.masked")
        ctx = b.op("MatMul", [b.op("Softmax", [scores], f"{p}.probs", axis=-1), v], f"{p}.ctx")
        x = b.op("Add", [x, b.linear(_merge(b, ctx, p, hidden), f"{p}.o", hidden, hidden, bias=False)], f"{p}.res1")
        h = _rms_norm(b, x, f"{p}.post_norm", hidden)
        gate = b.linear(h, f"{p}.gate", hidden, ffn, bias=False)
        silu = b.op("Mul", [gate, b.op("Sigmoid", [gate], f"{p}.sig")], f"{p}.silu")
        up = b.linear(h, f"{p}.up", hidden, ffn, bias=False)
        down = b.linear(b.op("Mul", [silu, up], f"{p}.glu"), f"{p}.down", ffn, hidden, bias=False)
        x = b.op("Add", [x, down], f"{p}.res2")
    logits = b.op("MatMul", [_rms_norm(b, x, "final_norm", hidden), b.weight("lm_head", [hidden, vocab])], "logits")
    return b.model("decoder_stack", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
                   [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", seq, vocab])])
