"""Plan-time fusion of element-wise functions of one 8-bit tensor into qrt QLinearTable nodes.

An 8-bit tensor has 256 possible values, so any chain of element-wise nodes whose only varying
input is one 8-bit tensor ``x`` and which ends at an 8-bit tensor ``y`` is a 256-entry table:
``y[i] = table[x[i]]``. That covers the QOperator forms of activations that have no QLinear op of
their own: SiLU as ``QLinearMul(x, QLinearSigmoid(x))``, a decomposed HardSwish
``QLinearAdd(x, 3) -> Clip(0, 6) -> QLinearMul(x, .) -> DequantizeLinear -> Div 6 -> QuantizeLinear``,
GELU between DequantizeLinear and QuantizeLinear, and single QLinearAdd/QLinearMul nodes with a
constant operand.

Members are quantized element-wise ops (com.microsoft QLinearAdd/Mul/Sigmoid/LeakyRelu),
QuantizeLinear/DequantizeLinear, inference BatchNormalization, and float or integer element-wise ops
(Add, Div, Clip, Sigmoid, Erf, HardSwish, ...). Every input of a member is either derived from ``x``
or a constant holding one value (so it broadcasts identically to every element) or one value per
channel (axis 1: BatchNormalization's statistics, a per-axis scale, a (C, 1, 1) operand). A chain
with per-channel constants is a table per channel, (C, 256) bytes: densenet121's pre-activation
``DequantizeLinear -> BatchNormalization -> QuantizeLinear -> QLinearMul -> QLinearAdd`` (five
passes over memory, two of them float) becomes one lookup that also runs channels-last. The table node keeps the
covered nodes in its ``body`` graph attribute and :class:`qrt.ops.contrib_quantized.QLinearTable`
builds the table by running that body, on qrt's own kernels, over the 256 values: the table equals
the nodes run one by one, bit for bit, by construction.

Every tensor of the chain that is read outside it (a graph output, another consumer) stays
available: an 8-bit one gets a table of its own from ``x``, a float one keeps the nodes that
compute it. Only qrt runs ``qrt::QLinearTable``, so the pass runs at ``ORT_ENABLE_ALL`` like
:mod:`qrt.fusion.elementwise`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, prune_after_rewrite

DOMAIN = "qrt"
MS = "com.microsoft"
_EIGHT_BIT = {TensorProto.UINT8, TensorProto.INT8}

# ai.onnx ops computing each output element from the same element of every input, with the opset
# from which their semantics are numpy broadcasting (no legacy ``broadcast`` attribute).
_ONNX_OPS = {
    **{op: 6 for op in ("Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Tanh", "Sigmoid",
                        "Relu", "Softplus", "Softsign", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "Identity",
                        "Cast", "Clip")},
    **{op: 7 for op in ("Add", "Sub", "Mul", "Div", "Pow")},
    "Max": 8, "Min": 8, "Erf": 9, "Sign": 9, "Round": 11, "Celu": 12, "HardSwish": 14, "Mish": 18, "Gelu": 20,
    "QuantizeLinear": 10, "DequantizeLinear": 10, "BatchNormalization": 9,
}
_MS_OPS = {"QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QuantizeLinear", "DequantizeLinear"}
# Ops that keep their input's element type.
_SAME_TYPE = {"Abs", "Neg", "Relu", "Clip", "Max", "Min", "Identity", "Sign", "BatchNormalization", "QLinearAdd",
              "QLinearMul",
              "QLinearSigmoid", "QLinearLeakyRelu"}
# Ops whose output has their first input's element type (for typing what shape inference left untyped).
_MOVEMENT = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat", "MaxPool",
             "Resize", "Pad", "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "GlobalMaxPool"}
# Index of the output zero point of the quantized ops (its type is the output's; uint8 when omitted).
_OUTPUT_ZERO_POINT = {"QLinearConv": 7, "QLinearMatMul": 7, "QLinearAdd": 7, "QLinearMul": 7, "QLinearSigmoid": 4,
                      "QLinearLeakyRelu": 4, "QLinearSoftmax": 4, "QLinearGlobalAveragePool": 4,
                      "QLinearAveragePool": 4, "QLinearConcat": 1, "QLinearWhere": 8, "QGemm": 8}
# Ops whose output has the rank of the input at this index (for the per-channel tables' rank check
# where shape inference stopped at a com.microsoft op).
_RANK_FROM = {**{op: 0 for op in _SAME_TYPE | {"QLinearConv", "QLinearSigmoid", "QLinearLeakyRelu", "MaxPool",
                                                "AveragePool", "QLinearAveragePool", "QLinearGlobalAveragePool",
                                                "QuantizeLinear", "DequantizeLinear", "Conv", "QLinearTable"}},
              "QLinearConcat": 2, "Concat": 0}
# Left alone: a group of one op that is a table already, or of integer min/max ops (vectorized).
_TABLE_ALREADY = {"QLinearSigmoid", "QLinearLeakyRelu"}
_MIN_MAX = {"Clip", "Relu", "Max", "Min", "Identity"}


def fuse_qlinear_tables(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with every element-wise function of one 8-bit tensor as a table node."""
    graph = model.graph
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    # name -> TensorProto; only shapes and types are read here, values never.
    constants = {t.name: t for t in graph.initializer if t.name}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.domain in ("", "ai.onnx"):
            value = attr(node, "value")
            if value is not None:
                constants[node.output[0]] = value
    infos = {v.name: v for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    elem = {name: v.type.tensor_type.elem_type for name, v in infos.items()
            if v.type.WhichOneof("value") == "tensor_type" and v.type.tensor_type.elem_type}
    rank = {name: len(v.type.tensor_type.shape.dim) for name, v in infos.items()
            if v.type.WhichOneof("value") == "tensor_type" and v.type.tensor_type.HasField("shape")}
    consumers = consumers_by_name(graph)
    protected = {o.name for o in graph.output} | names_read_by_subgraphs(graph)

    def member_kind(node):
        if node.domain == MS:
            return node.op_type in _MS_OPS
        if node.domain not in ("", "ai.onnx") or opset < _ONNX_OPS.get(node.op_type, 10 ** 6):
            return False
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return not attr(node, "block_size", 0)
        if node.op_type == "BatchNormalization":
            return not attr(node, "training_mode", 0)
        return node.op_type != "Gelu" or attr(node, "approximate", "none") in ("none", "tanh")

    def output_type(node):
        """The element type of ``node``'s first output where its inputs decide it, else 0.

        onnx's shape inference stops at the first com.microsoft op, so everything downstream of a
        QLinearAdd would be untyped without this.
        """
        op = node.op_type
        if not node.input:
            return 0
        if op in _SAME_TYPE or op in _MOVEMENT:
            return elem.get(node.input[0], 0)
        if op == "Cast":
            return attr(node, "to", 0)
        zp = None
        if op == "QuantizeLinear":
            zp = node.input[2] if len(node.input) > 2 else ""
            if not zp:
                return attr(node, "output_dtype", 0) or TensorProto.UINT8
        elif op in _OUTPUT_ZERO_POINT:
            index = _OUTPUT_ZERO_POINT[op]
            zp = node.input[index] if len(node.input) > index else ""
            if not zp:
                return TensorProto.UINT8
        return constants[zp].data_type if zp in constants else 0

    for node in graph.node:
        if node.output and node.output[0] and node.output[0] not in elem:
            t = output_type(node)
            if t:
                elem[node.output[0]] = t
        if node.output and node.output[0] and node.output[0] not in rank:
            data = node.input[_RANK_FROM[node.op_type]] if node.op_type in _RANK_FROM and \
                len(node.input) > _RANK_FROM[node.op_type] else None
            if data in rank:
                rank[node.output[0]] = rank[data]

    def channel_count(node, value, source, source_rank):
        """C when constant input ``index`` of ``node`` holds one value per channel (axis 1) of a
        rank-``source_rank`` source and is constant along every other axis, else None."""
        dims = list(value.dims)
        if source_rank is None or source_rank < 3 or len(dims) > source_rank:
            return None
        count = _per_channel_count(node, dims, source_rank, opset)
        # A source known to have another count on axis 1 (1, widened by the constant) is no table's.
        known = source_dims.get(source)
        return None if count is None or known is not None and known != count else count

    def source_channels(name):
        info = infos.get(name)
        if info is None or info.type.WhichOneof("value") != "tensor_type" or \
                not info.type.tensor_type.HasField("shape") or len(info.type.tensor_type.shape.dim) < 2:
            return None
        dim = info.type.tensor_type.shape.dim[1]
        return dim.dim_value if dim.HasField("dim_value") else None

    source_dims = {}

    # root[name]: the 8-bit tensor whose element-wise function ``name`` is; member nodes in graph order.
    # channels[name]: C where ``name`` is a function of its root with a different table per channel.
    root, channels, members = {}, {}, []
    for node in graph.node:
        if len(node.output) != 1 or not member_kind(node):
            continue
        sources, per_channel, fits = set(), set(), True
        for name in node.input:
            if not name or name in constants:
                continue
            if name in root:
                sources.add(root[name])
                if channels.get(name):
                    per_channel.add(channels[name])
            elif elem.get(name) in _EIGHT_BIT:
                sources.add(name)
            else:
                fits = False
                break
        if not fits or len(sources) != 1:
            continue
        source = sources.pop()
        if source not in source_dims:
            source_dims[source] = source_channels(source)
        for name in node.input:
            if name in constants:
                value = constants[name]
                if value.data_type == TensorProto.STRING:
                    fits = False
                elif int(np.prod(value.dims)) != 1:
                    count = channel_count(node, value, source, rank.get(source))
                    fits = count is not None
                    per_channel.add(count)
            if not fits:
                break
        if not fits or len(per_channel) > 1 or node.op_type == "BatchNormalization" and not per_channel:
            continue
        # A constant of higher rank than the source would widen the output (the op checks at run time
        # when the source's rank is unknown).
        if source in rank and any(len(constants[n].dims) > rank[source] for n in node.input if n in constants):
            continue
        root[node.output[0]] = source
        channels[node.output[0]] = per_channel.pop() if per_channel else None
        members.append(node)
    if not members:
        return model

    producer = {node.output[0]: node for node in members}
    member_ids = {id(n) for n in members}

    def read_outside(name):
        if name in protected:
            return True
        return any(id(c) not in member_ids or root.get(c.output[0]) != root[name] for c in consumers.get(name, []))

    order = {id(n): i for i, n in enumerate(graph.node)}

    def covered_by(out):
        """The member nodes computing ``out`` from its root, in graph order; None where a table would not pay."""
        covered, stack, seen = [], [producer[out]], set()
        while stack:
            m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            covered.append(m)
            stack.extend(producer[n] for n in m.input if n in producer and n != root[out])
        if (len(covered) == 1 and covered[0].op_type in _TABLE_ALREADY) or all(m.op_type in _MIN_MAX for m in covered):
            return None
        return sorted(covered, key=lambda m: order[id(m)])

    # Endpoints: 8-bit member outputs read outside their chain. Walking back from the graph outputs, a
    # member that must still run (its float output is read elsewhere, e.g. a final DequantizeLinear)
    # makes each 8-bit member output it reads an endpoint too, so it reads a table instead of a chain.
    tables = {}   # endpoint name -> covered nodes in graph order
    for node in members:
        out = node.output[0]
        if elem.get(out) in _EIGHT_BIT and read_outside(out):
            covered = covered_by(out)
            if covered:
                tables[out] = covered
    needed = set(protected)
    kept = []
    for node in reversed(graph.node):
        if id(node) in member_ids:
            out = node.output[0]
            if out not in needed:
                continue
            if out in tables:
                needed.add(root[out])
                kept.append(node)
                continue
            for name in node.input:
                if name in producer and name not in tables and elem.get(name) in _EIGHT_BIT:
                    covered = covered_by(name)
                    if covered:
                        tables[name] = covered
        kept.append(node)
        needed.update(n for n in node.input if n)
    if not tables:
        return model
    kept.reverse()
    replaced = {id(producer[out]): _table_node(out, root[out], covered, constants, elem, order, channels[out],
                                               rank.get(root[out]))
                for out, covered in tables.items()}
    kept = [replaced.get(id(n), n) for n in kept]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    used = needed
    kept = [n for n in kept if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                                    and n.output[0] not in used)]
    result.graph.node.extend(kept)
    dropped = {n.output[0] for n in members} - {o for n in kept for o in n.output}
    prune_after_rewrite(result, used, dropped, DOMAIN)
    return result


def _per_channel_count(node, dims, source_rank, opset):
    """C when a constant of shape ``dims`` read by ``node`` holds one value per channel (axis 1) of a
    rank-``source_rank`` source and is constant along every other axis, else None."""
    if node.op_type == "BatchNormalization" or node.op_type in ("QuantizeLinear", "DequantizeLinear") \
            and opset >= 13 and attr(node, "axis", 1) % source_rank == 1:
        return dims[0] if len(dims) == 1 else None
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return None
    aligned = [1] * (source_rank - len(dims)) + dims
    return aligned[1] if all(d == 1 for i, d in enumerate(aligned) if i != 1) else None


def _table_node(out, source, covered, constants, elem, order, channels, rank):
    """The QLinearTable node computing ``out`` from ``source``, its body holding ``covered`` unchanged;
    with ``channels``, one table per channel of axis 1 of the rank-``rank`` source."""
    initializers = {}
    for m in covered:
        for name in m.input:
            if name in constants and name not in initializers:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(constants[name])
                tensor.name = name
                initializers[name] = tensor
    produced = {m.output[0] for m in covered}

    def info(name):
        # Shapes are dropped: the body runs on a vector of the 256 values, not on the model's tensors.
        return helper.make_tensor_value_info(name, elem.get(name, 0), None)

    named = [_named(m, order) for m in covered]
    body = helper.make_graph(named, "qlinear_table", [info(source)], [info(out)], list(initializers.values()),
                             value_info=[info(n) for n in sorted(produced - {out}) if n in elem])
    per_channel = {} if channels is None else dict(axis=1, channels=channels, rank=rank)
    return helper.make_node("QLinearTable", [source], [out], name="+".join(m.name for m in named),
                            domain=DOMAIN, body=body, **per_channel)


def _named(node, order):
    if node.name:
        return node
    named = onnx.NodeProto()
    named.CopyFrom(node)
    named.name = f"{node.op_type}_{order[id(node)]}"
    return named
