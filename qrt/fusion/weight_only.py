"""Plan-time rewrites around the com.microsoft weight-only ops ``MatMulNBits`` and ``GatherBlockQuantized``.

:func:`infer_weight_only_shapes`: onnx's shape inference knows no com.microsoft op, so it leaves the
outputs of these two (and everything computed from them) without shapes, and the transformer fusions,
which match on ranks and dimensions, then fuse nothing in a 4-bit model (measured on a 2-layer BERT:
no MultiHeadAttention, SkipLayerNormalization or fused GELU, against 2, 4 and 2 in its float model).
It runs onnx's inference once on a stand-in graph where each of them is a standard node of the same
output type (``MatMul`` by a ``[K, N]`` input, ``Gather`` from an input shaped like the codes), and
copies the shapes back.

:func:`fuse_nbits_bias`: a bias Add into the ``MatMulNBits`` before it.

Weight-only quantizers (qrt's and onnxruntime's ``matmul_nbits_quantizer``) replace a MatMul and keep
the model's bias ``Add`` after it: a pass over the output per projection (12 of them in a 2-layer BERT,
each over up to 128 x 3072 floats). ``MatMulNBits`` takes the bias as its sixth input and its kernels
add it while storing each output tile, so :func:`fuse_nbits_bias` moves a constant float32 bias of one
value per column there. The kernel computes ``y + bias`` with the single float32 rounding the Add
did, so results are bit-identical to the unfused graph; onnxruntime runs the fused node too. The
MatMulNBits output must be read by the Add only, and the node must not have a bias already.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, splice_nodes

_MS = "com.microsoft"
_WEIGHT_ONLY = ("MatMulNBits", "GatherBlockQuantized")
# Initializers larger than this leave the stand-in graph (their type and shape stay, as graph inputs);
# shape constants that Reshape reads are far smaller.
_KEEP_BYTES = 1 << 12


def _stand_in(node, types, counter):
    """A standard node onnx infers to the weight-only ``node``'s output type, and the typed graph input
    it reads in place of the weights, or None: ``MatMul(A, W[K, N])`` for MatMulNBits, ``Gather(data,
    indices)`` (data shaped like the unpacked codes, typed like the scales) for GatherBlockQuantized."""
    name = f"qrt_weights_stand_in_{counter}"
    scales = types.get(node.input[2]) if len(node.input) > 2 else None
    if scales is None or not scales.elem_type:
        return None
    if node.op_type == "MatMulNBits":
        K, N = attr(node, "K"), attr(node, "N")
        if K is None or N is None:
            return None
        return (helper.make_node("MatMul", [node.input[0], name], [node.output[0]]),
                helper.make_tensor_value_info(name, scales.elem_type, [K, N]))
    data = types.get(node.input[0])
    if data is None or not data.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in data.shape.dim]
    if data.elem_type == TensorProto.UINT8 and attr(node, "bits", 4) == 4 and dims and dims[-1]:
        dims[-1] *= 2   # two codes a byte
    return (helper.make_node("Gather", [name, node.input[1]], [node.output[0]], axis=attr(node, "gather_axis", 0)),
            helper.make_tensor_value_info(name, scales.elem_type, dims))


def infer_weight_only_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with value_info for the weight-only ops' outputs and everything computed from them.

    One onnx inference over a stand-in graph: each weight-only node replaced by the standard node of
    the same output type (:func:`_stand_in`), the large initializers by typed inputs (no data copied).
    """
    graph = model.graph
    if not any(n.domain == _MS and n.op_type in _WEIGHT_ONLY for n in graph.node):
        return model
    types = {v.name: v.type.tensor_type for v in list(graph.input) + list(graph.value_info)
             if v.type.HasField("tensor_type")}
    for t in graph.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims)).tensor_type
    stand_in = onnx.ModelProto()
    stand_in.ir_version, stand_in.producer_name = model.ir_version, model.producer_name
    stand_in.opset_import.extend(model.opset_import)
    g = stand_in.graph
    g.name = graph.name
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    listed = {i.name for i in graph.input}
    for t in graph.initializer:
        if len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * len(t.int64_data) <= _KEEP_BYTES:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for counter, node in enumerate(graph.node):
        if node.domain == _MS and node.op_type in _WEIGHT_ONLY:
            replacement = _stand_in(node, types, counter)
            if replacement is None:
                return model
            g.node.append(replacement[0])
            g.input.append(replacement[1])
        else:
            g.node.append(node)
    try:
        inferred = onnx.shape_inference.infer_shapes(stand_in, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    known = {v.name for v in result.graph.value_info} | {o.name for o in graph.output}
    result.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in known)
    return result


def fuse_nbits_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    constants = {t.name: t for t in graph.initializer if t.name}
    consumers = consumers_by_name(graph)
    protected = {o.name for o in graph.output} | names_read_by_subgraphs(graph)
    replaced, removed = {}, set()
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.domain != _MS or (len(node.input) > 5 and node.input[5]):
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        if out in protected or len(users) != 1:
            continue
        add = users[0]
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or list(add.input).count(out) != 1:
            continue
        other = add.input[1] if add.input[0] == out else add.input[0]
        bias = constants.get(other)
        if bias is None or bias.data_type != onnx.TensorProto.FLOAT or list(bias.dims) != [attr(node, "N")]:
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input)) + [other]
        fused = helper.make_node("MatMulNBits", inputs, [add.output[0]], name=node.name or add.name, domain=_MS)
        fused.attribute.extend(node.attribute)
        replaced[id(add)] = fused
        removed.add(id(node))
    if not replaced:
        return model
    return splice_nodes(model, replaced, removed)
