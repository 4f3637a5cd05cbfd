"""Plan-time fusion of an activation into the Conv or Gemm that feeds it.

Conv -> {Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, Tanh, HardSwish} becomes com.microsoft FusedConv and
Gemm -> activation (but Clip and HardSwish, which onnxruntime's FusedGemm lacks) becomes com.microsoft FusedGemm: the kernel applies the activation in the pass
that adds the bias, saving a full read and write of the output and one intermediate. These are the
ops (and attribute names) onnxruntime's own fusion emits, so a model saved after fusion still runs
there. The output keeps the activation's tensor name; nothing else in the graph changes.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, prune_after_rewrite

_FUSABLE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish"}
_MS = "com.microsoft"


def _activation_params(act, constants, opset):
    """The activation's parameters as FusedConv's ``activation_params``, or None when they are not constant."""
    if act.op_type == "Clip":
        if opset < 11:
            return [float(attr(act, "min", -3.402823e38)), float(attr(act, "max", 3.402823e38))]
        bounds = []
        for i, default in ((1, -np.inf), (2, np.inf)):
            name = act.input[i] if len(act.input) > i else ""
            if not name:
                bounds.append(default)
            elif name in constants:
                bounds.append(float(constants[name].reshape(())))
            else:
                return None
        return bounds
    if act.op_type == "LeakyRelu":
        return [float(attr(act, "alpha", 0.01))]
    if act.op_type == "HardSigmoid":
        return [float(attr(act, "alpha", 0.2)), float(attr(act, "beta", 0.5))]
    return []


def fuse_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with Conv/Gemm + activation pairs fused (float32 tensors only)."""
    graph = model.graph
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = attr(node, "value")
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value)
    consumers = consumers_by_name(graph)
    subgraph_reads = names_read_by_subgraphs(graph)
    outputs = {o.name for o in graph.output}
    float_tensors = {v.name for v in list(graph.value_info) + list(graph.output)
                     if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}

    fused_nodes, removed = {}, set()
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        if out in outputs or out in subgraph_reads or len(users) != 1 or out not in float_tensors:
            continue
        act = users[0]
        if act.op_type not in _FUSABLE or act.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Gemm" and act.op_type in ("Clip", "HardSwish"):
            continue   # onnxruntime's FusedGemm has neither; keep the fused model runnable there
        params = _activation_params(act, constants, opset)
        if params is None:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            attrs.update(activation=act.op_type, activation_params=params) if params else \
                attrs.update(activation=act.op_type)
            fused = helper.make_node("FusedConv", list(node.input), [act.output[0]], name=node.name or act.name,
                                     domain=_MS, **attrs)
        else:
            if params:
                attrs["activation_alpha"] = params[0]
            if len(params) > 1:
                attrs["activation_beta"] = params[1]
            fused = helper.make_node("FusedGemm", list(node.input), [act.output[0]], name=node.name or act.name,
                                     domain=_MS, activation=act.op_type, **attrs)
        fused_nodes[id(node)] = fused
        removed.add(id(act))
    if not fused_nodes:
        return model

    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    for node in graph.node:
        if id(node) in removed:
            continue
        result.graph.node.append(fused_nodes.get(id(node), node))
    used = {i for n in result.graph.node for i in n.input} | subgraph_reads | outputs
    prune_after_rewrite(result, used, {n.output[0] for n in graph.node if id(n) in fused_nodes}, _MS)
    return result
