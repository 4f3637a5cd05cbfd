"""Plan-time layout pass: 8-bit activations stay channels-last (NHWC) through chains of int8 ops.

A QLinearConv reads and writes NCHW, but its kernel works channels-last; converting at every node
cost a transposing copy in and out per convolution. This pass rewrites, in one walk in graph
order, every 2-D QLinearConv into com.microsoft QLinearConv with ``channels_last=1`` and lets the
NHWC tensors flow on through the ops that can take them as they are:

==========================  ======================================================================
uint8/int8 MaxPool          com.microsoft NhwcMaxPool (when its input is already channels-last)
QLinearConcat on channels   the same op on the last axis (all data inputs channels-last)
QLinearGlobalAveragePool    ``channels_last=1`` (output (N, 1, 1, C), itself channels-last)
QLinearAdd, QLinearMul      layout-agnostic when both operands are channels-last (same rank, same
                            permutation, so broadcasting is unchanged)
QLinearSigmoid, ...         element-wise on one tensor (:data:`ELEMENTWISE_UNARY`)
==========================  ======================================================================

A Transpose to NHWC is inserted before a convolution whose input is NCHW, and one back to NCHW,
under the tensor's original name, before the first reader that needs NCHW (any other op, a graph
output, a subgraph). These are the ops and attributes onnxruntime's own NHWC transformer emits,
so the rewritten model still runs there. Node names are kept, and each inserted Transpose is named
after the node it serves, so a profile still maps onto the original graph.
"""
from __future__ import annotations

import onnx
from onnx import helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, prune_after_rewrite

_MS = "com.microsoft"
TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]

# Element-wise ops of one 8-bit tensor (input 0; the others are constant scales, zero points or a
# table's body): they compute the same values in any layout. (domain, op_type); an op added to the
# int8 element-wise family is listed here. qrt::QLinearTable is the int8 table fusion's node.
ELEMENTWISE_UNARY = {(_MS, "QLinearSigmoid"), (_MS, "QLinearLeakyRelu"), ("qrt", "QLinearTable")}
# Element-wise ops of two 8-bit tensors at input positions 0 and 3.
ELEMENTWISE_BINARY = {(_MS, "QLinearAdd"), (_MS, "QLinearMul")}


def _is(node, op_type, domain):
    return node.op_type == op_type and node.domain in ((domain,) if domain == _MS else ("", "ai.onnx"))


def _weight_rank(node, shapes):
    return len(shapes[node.input[3]]) if node.input[3] in shapes else None


def _is_conv2d(node, shapes):
    return (_is(node, "QLinearConv", "") or _is(node, "QLinearConv", _MS) and not attr(node, "channels_last", 0)) \
        and len(node.input) > 3 and _weight_rank(node, shapes) == 4


def _may_take_nhwc(node, shapes):
    """Whether ``node`` can read a channels-last input, if its other inputs allow."""
    kind = (node.domain, node.op_type)
    return _is_conv2d(node, shapes) or _is(node, "MaxPool", "") or kind in ELEMENTWISE_UNARY \
        or kind in ELEMENTWISE_BINARY or kind in ((_MS, "QLinearConcat"), (_MS, "QLinearGlobalAveragePool"))


def to_channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with its 2-D QLinearConv chains channels-last (module doc)."""
    graph = model.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    if not any(_is_conv2d(n, shapes) for n in graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    must_be_nchw = {o.name for o in graph.output} | names_read_by_subgraphs(graph)
    twin = {}          # NCHW name -> name of the same tensor channels-last
    restored = set()   # NCHW names a Transpose back has produced
    produced_nhwc = set()
    nodes = []

    def to_nhwc(name, for_node):
        if name not in twin:
            twin[name] = f"{name}_nhwc"
            nodes.append(helper.make_node("Transpose", [name], [twin[name]], name=f"{for_node.name}/to_nhwc",
                                          perm=TO_NHWC))
        return twin[name]

    def need_nchw(name, for_node):
        if name in produced_nhwc and name not in restored:
            restored.add(name)
            nodes.append(helper.make_node("Transpose", [twin[name]], [name], name=f"{for_node}/to_nchw",
                                          perm=TO_NCHW))

    def publish(node, new):
        """Appends ``new``, which computes ``node``'s outputs channels-last under ``<name>_nhwc``."""
        for o in node.output:
            twin[o] = f"{o}_nhwc"
            produced_nhwc.add(o)
        nodes.append(new)
        for o in node.output:
            if o in must_be_nchw:
                need_nchw(o, node.name)

    def emit(node, op_type, domain, inputs, **attrs):
        publish(node, helper.make_node(op_type, inputs, [f"{o}_nhwc" for o in node.output], name=node.name,
                                       domain=domain, **attrs))

    def rename(node, inputs):
        """``node`` itself (attributes, subgraphs and all) on channels-last inputs and outputs."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in inputs.items():
            new.input[i] = name
        for i, o in enumerate(node.output):
            new.output[i] = f"{o}_nhwc"
        publish(node, new)

    def attrs_of(node, drop=()):
        return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}

    def nhwc(name):
        return name in produced_nhwc

    readers = consumers_by_name(graph)

    for node in graph.node:
        ins = list(node.input)
        if _is_conv2d(node, shapes) and (nhwc(ins[0]) or any(_may_take_nhwc(r, shapes) for r in readers.get(
                node.output[0], ()))):
            # (A convolution between two layout-sensitive ops stays NCHW: its kernel converts on the
            # fly more cheaply than two Transposes.)
            emit(node, "QLinearConv", _MS, [to_nhwc(ins[0], node)] + ins[1:], **attrs_of(node, ("channels_last",)),
                 channels_last=1)
        elif _is(node, "MaxPool", "") and nhwc(ins[0]) and len(node.output) == 1:
            emit(node, "NhwcMaxPool", _MS, [twin[ins[0]]], **attrs_of(node, ("storage_order",)))
        elif _is(node, "QLinearConcat", _MS) and attr(node, "axis") in (1, -3) \
                and all(nhwc(n) for n in ins[2::3]):
            emit(node, "QLinearConcat", _MS, [twin[n] if i >= 2 and (i - 2) % 3 == 0 else n for i, n in enumerate(ins)],
                 axis=3)
        elif _is(node, "QLinearGlobalAveragePool", _MS) and not attr(node, "channels_last", 0) and nhwc(ins[0]):
            emit(node, "QLinearGlobalAveragePool", _MS, [twin[ins[0]]] + ins[1:], channels_last=1)
        elif (node.domain, node.op_type) in ELEMENTWISE_BINARY and nhwc(ins[0]) and nhwc(ins[3]):
            rename(node, {0: twin[ins[0]], 3: twin[ins[3]]})
        elif (node.domain, node.op_type) in ELEMENTWISE_UNARY and nhwc(ins[0]):
            rename(node, {0: twin[ins[0]]})
        else:
            for name in ins:
                need_nchw(name, node.name)
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {n for node in graph.node for n in node.input} | names_read_by_subgraphs(graph)
    prune_after_rewrite(model, used, set(produced_nhwc) - restored, domain=_MS)
    return model
