"""Plan-time fusion of float32 element-wise node groups into qrt FusedElementwise nodes.

A group is a set of element-wise nodes whose intermediate results are read only inside the group
and whose one output is the last node's (SiLU's Sigmoid+Mul, the Erf-GELU's five nodes with the
bias Add before them, Mul/Add chains of a decomposed normalization). It runs as one generated
kernel (:mod:`qrt.kernels.cpu.fused_elementwise`): one pass over memory instead of one per node,
bit-identical to the unfused ops. Constant inputs must be scalars, a block spanning the output's
trailing axes, or one value per channel of an axis (all of one group's broadcast constants alike);
other inputs must have the output's shape, or the node stays out of the group.

The fused node keeps the original nodes (names included) in its ``body`` graph attribute. Only qrt
runs ``qrt::FusedElementwise``: a model saved after this fusion (``optimized_model_filepath`` at
``ORT_ENABLE_ALL``) is qrt-only, like onnxruntime's own layout-specific output at that level.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, prune_after_rewrite
from ..kernels.cpu import fused_elementwise as fe

DOMAIN = "qrt"
_UNARY = {"Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Tanh", "Erf", "Sigmoid",
          "Relu", "Softplus", "Softsign", "HardSwish", "Mish", "LeakyRelu", "Elu", "HardSigmoid"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
# The opset from which each op has the semantics the generated kernel reproduces (numpy broadcasting,
# no legacy ``broadcast``/``consumed_inputs`` attributes).
_SINCE = {**{op: 6 for op in _UNARY}, **{op: 7 for op in _BINARY}, "Max": 8, "Min": 8, "Clip": 6, "Gelu": 20,
          "Erf": 9, "HardSwish": 14, "Mish": 18}


def _dims(value_info):
    if not value_info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def _same_shape(a, b):
    """False when the known shapes show that a and b may differ (optimistic where nothing is known)."""
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if (x is None or y is None) and 1 not in (x, y):
            continue
        return False   # different sizes, or a size-1 axis that may broadcast
    return True


def fuse_elementwise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with its fusable element-wise groups as qrt FusedElementwise nodes."""
    graph = model.graph
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name}
    constant_nodes = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.domain in ("", "ai.onnx"):
            value = attr(node, "value")
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value)
                constant_nodes[node.output[0]] = node
    infos = {v.name: v for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    elem = {name: v.type.tensor_type.elem_type for name, v in infos.items()}
    elem.update({name: helper.np_dtype_to_tensor_dtype(a.dtype) for name, a in constants.items()})
    dims = {name: _dims(v) for name, v in infos.items()}
    consumers = consumers_by_name(graph)
    subgraph_reads = names_read_by_subgraphs(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: node for node in graph.node for o in node.output if o}

    def fusable(node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or opset < _SINCE.get(op, 10 ** 6):
            return False
        if op == "Gelu" and attr(node, "approximate", "none") not in ("none", "tanh"):
            return False
        tensors = [n for n in node.input if n] + [node.output[0]]
        if any(elem.get(n) != TensorProto.FLOAT for n in tensors):
            return False
        if op in _BINARY:
            return len(node.input) == 2
        if op == "Clip":
            return all(not n or (n in constants and constants[n].size == 1) for n in node.input[1:])
        return len(node.input) == 1

    def layouts_fit(members, out):
        names = {n for m in members for n in m.input if n and n in constants}
        shapes = {n: constants[n].shape for n in names}
        out_dims = dims.get(out)
        if fe.group_layouts(shapes, None if out_dims is None else len(out_dims)) is None:
            return False
        # Non-constant inputs must have the output's shape (the kernel reads them element by element).
        return all(_same_shape(dims.get(n), out_dims) for m in members for n in m.input
                   if n and n not in constants)

    assigned = {}
    groups = []
    for node in reversed(graph.node):
        if id(node) in assigned or not fusable(node):
            continue
        out = node.output[0]
        if not layouts_fit([node], out):
            continue
        members = [node]
        grew = True
        while grew:
            grew = False
            for member in list(members):
                for name in member.input:
                    p = producer.get(name)
                    if p is None or id(p) in assigned or any(p is m for m in members) or not fusable(p):
                        continue
                    if name in outputs or name in subgraph_reads or name in constants:
                        continue
                    if not all(any(c is m for m in members) for c in consumers.get(name, [])):
                        continue
                    if layouts_fit(members + [p], out):
                        members.append(p)
                        grew = True
        if len(members) < 2:
            continue
        for m in members:
            assigned[id(m)] = len(groups)
        groups.append(members)
    if not groups:
        return model

    order = {id(n): i for i, n in enumerate(graph.node)}
    fused_at = {}
    for members in groups:
        members.sort(key=lambda m: order[id(m)])
        fused_at[id(members[-1])] = _fused_node(members, constants, infos, order)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    internal = set()
    for node in graph.node:
        if id(node) in fused_at:
            result.graph.node.append(fused_at[id(node)])
        elif id(node) not in assigned:
            result.graph.node.append(node)
        else:
            internal.add(node.output[0])
    used = {i for n in result.graph.node for i in n.input} | subgraph_reads | outputs
    kept_nodes = [n for n in result.graph.node
                  if not (n.op_type == "Constant" and n.output[0] in constant_nodes and n.output[0] not in used)]
    del result.graph.node[:]
    result.graph.node.extend(kept_nodes)
    prune_after_rewrite(result, used, internal, DOMAIN)
    return result


def _fused_node(members, constants, infos, order):
    """The FusedElementwise node for ``members`` (in graph order), its body holding them unchanged."""
    produced = {m.output[0] for m in members}
    external, initializers = [], {}
    for m in members:
        for name in m.input:
            if not name or name in produced:
                continue
            if name in constants:
                initializers.setdefault(name, numpy_helper.from_array(np.asarray(constants[name]), name))
            elif name not in external:
                external.append(name)
    out = members[-1].output[0]

    def info(name):
        return infos[name] if name in infos else helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    body = helper.make_graph(
        [_named(m, order) for m in members], "fused_elementwise", [info(n) for n in external], [info(out)],
        list(initializers.values()), value_info=[infos[n] for n in sorted(produced - {out}) if n in infos])
    name = "+".join(_named(m, order).name for m in members)
    return helper.make_node("FusedElementwise", external, [out], name=name, domain=DOMAIN, body=body)


def _named(node, order):
    if node.name:
        return node
    named = onnx.NodeProto()
    named.CopyFrom(node)
    named.name = f"{node.op_type}_{order[id(node)]}"
    return named
