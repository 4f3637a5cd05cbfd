"""Plan-time layout pass: 8-bit activations stay channels-last (NHWC) through chains of int8 ops.

A QLinearConv reads and writes NCHW, but its kernel works channels-last; converting at every node
cost a transposing copy in and out per convolution. This pass rewrites, in one walk in graph
order, every 2-D QLinearConv into com.microsoft QLinearConv with ``channels_last=1`` and lets the
NHWC tensors flow on through the ops that can take them as they are:

==========================  ======================================================================
uint8/int8 MaxPool          com.microsoft NhwcMaxPool (when its input is already channels-last)
QLinearConcat on channels   the same op on the last axis (all data inputs channels-last)
QLinearGlobalAveragePool    ``channels_last=1`` (output (N, 1, 1, C), itself channels-last)
QLinearAveragePool          ``channels_last=1`` (2-D windows)
QLinearAdd, QLinearMul      layout-agnostic when both operands are channels-last (same rank, same
                            permutation, so broadcasting is unchanged)
QLinearSigmoid, ...         element-wise on one tensor (:data:`ELEMENTWISE_UNARY`)
DequantizeLinear,           per tensor as they are; per axis with ``axis`` moved to where the axis
QuantizeLinear              lands channels-last
float element-wise ops      Add, Sum, Relu, Clip, ... (:data:`LAYOUT_FREE`) when every input is
                            channels-last or a constant: a one-value constant is read as it is, any
                            other is stored permuted once at plan time (so broadcasting is unchanged)
Concat on channels          the same op on the last axis (all inputs channels-last)
qrt DequantizeAdd           when both operands are channels-last (:mod:`qrt.fusion.residual`)
==========================  ======================================================================

DequantizeLinear, QuantizeLinear, Concat, DequantizeAdd and the float element-wise ops are
layout-free: any layout gives the same values. They go channels-last only where that carries the
layout on to a reader that takes it (a convolution, a pooling, an int8 op, or another layout-free op
that does), found in one backward walk before the forward rewrite; otherwise the conversion back to
NCHW stays on the 8-bit tensor, a quarter of the float one's bytes. So zoo resnet50's residual
``QLinearConv -> DequantizeLinear -> Sum -> Relu -> QuantizeLinear -> QLinearConv`` runs without a
Transpose (17 + 16 Transposes, a quarter of its int8 time, gone).

A Transpose to NHWC is inserted before a convolution whose input is NCHW, and one back to NCHW,
under the tensor's original name, before the first reader that needs NCHW (any other op, a graph
output, a subgraph). These are the ops and attributes onnxruntime's own NHWC transformer emits,
so the rewritten model still runs there. Node names are kept, and each inserted Transpose is named
after the node it serves, so a profile still maps onto the original graph.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
# ai.onnx ops computing each output element from the same element of every (broadcast) input, in
# any element type that keeps its input's: they give the same values on permuted inputs.
LAYOUT_FREE = {"Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Tanh", "Erf",
               "Sigmoid", "Relu", "Softplus", "Softsign", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid",
               "HardSwish", "Mish", "Gelu", "ThresholdedRelu", "Identity", "Clip", "PRelu",
               "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"}
# Before opset 8 the variadic and binary ops had their legacy broadcasting rules.
_LAYOUT_FREE_SINCE = 8
_EIGHT_BIT = {TensorProto.UINT8, TensorProto.INT8}
# qrt.fusion.residual's node: element-wise on its operands at inputs 0 and 3 (a float sum at output 0
# with ``float_output``, its 8-bit quantization after it with ``quantized_output``).
_DEQUANTIZE_ADD = ("qrt", "DequantizeAdd")
_AXIS_NHWC = {axis: TO_NHWC.index(axis) for axis in range(4)}   # NCHW axis -> where it lands channels-last


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
        or kind in ELEMENTWISE_BINARY or _is_average_pool2d(node) \
        or kind in ((_MS, "QLinearConcat"), (_MS, "QLinearGlobalAveragePool"))


def _is_average_pool2d(node):
    return _is(node, "QLinearAveragePool", _MS) and not attr(node, "channels_last", 0) \
        and len(attr(node, "kernel_shape", ())) == 2


def _is_layout_free(node, opset):
    """Whether ``node`` computes the same values in any layout (its inputs permuted alike)."""
    if (node.domain, node.op_type) == _DEQUANTIZE_ADD:
        return True
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or opset < _LAYOUT_FREE_SINCE:
        return False
    if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
        return not attr(node, "block_size", 0)
    if node.op_type == "Concat":
        return attr(node, "axis") in (1, -3)
    return node.op_type in LAYOUT_FREE


def _wanted_channels_last(graph, shapes, opset):
    """Names of the tensors that a reader takes channels-last: one that converts or runs NHWC
    (:func:`_may_take_nhwc`), or a layout-free op whose own output is wanted so."""
    readers = consumers_by_name(graph)
    wanted = set()
    for node in reversed(graph.node):
        for name in node.output:
            if any(_may_take_nhwc(r, shapes) or _is_layout_free(r, opset) and any(o in wanted for o in r.output)
                   for r in readers.get(name, ())):
                wanted.add(name)
    return wanted


def _set_attr(node, name, value):
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def to_channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with its 2-D QLinearConv chains channels-last (module doc)."""
    graph = model.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    if not any(_is_conv2d(n, shapes) for n in graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    wanted = _wanted_channels_last(graph, shapes, opset)
    listed = {i.name for i in graph.input}     # an initializer listed as an input may be fed: not constant
    constants = {t.name: t for t in graph.initializer if t.name not in listed}
    must_be_nchw = {o.name for o in graph.output} | names_read_by_subgraphs(graph)
    twin = {}          # NCHW name -> name of the same tensor channels-last
    restored = set()   # NCHW names a Transpose back has produced
    produced_nhwc = set()
    eight_bit = set()  # NCHW names whose channels-last twin holds 8-bit values
    permuted = {}      # constant name -> name of its channels-last copy
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
            nodes.append(helper.make_node("Transpose", [twin[name]], [name], name=f"{for_node or name}/to_nchw",
                                          perm=TO_NCHW))

    def publish(node, new, is_eight_bit=True):
        """Appends ``new``, which computes ``node``'s outputs channels-last under ``<name>_nhwc``."""
        for o in node.output:
            twin[o] = f"{o}_nhwc"
            produced_nhwc.add(o)
            if is_eight_bit is True or is_eight_bit and o in is_eight_bit:
                eight_bit.add(o)
        nodes.append(new)
        for o in node.output:
            if o in must_be_nchw:
                need_nchw(o, node.name)

    def emit(node, op_type, domain, inputs, **attrs):
        publish(node, helper.make_node(op_type, inputs, [f"{o}_nhwc" for o in node.output], name=node.name,
                                       domain=domain, **attrs))

    def rename(node, inputs, is_eight_bit=True, **attrs):
        """``node`` itself (attributes, subgraphs and all) on channels-last inputs and outputs."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in inputs.items():
            new.input[i] = name
        for i, o in enumerate(node.output):
            new.output[i] = f"{o}_nhwc"
        for name, value in attrs.items():
            _set_attr(new, name, value)
        publish(node, new, is_eight_bit)

    def permute_constant(name):
        """The channels-last copy of a constant that broadcasts against rank-4 tensors; None when
        there is none (rank above 4). One value needs no copy."""
        tensor = constants[name]
        if np.prod(tensor.dims, dtype=np.int64) == 1:
            return name
        if len(tensor.dims) > 4:
            return None
        if name not in permuted:
            value = numpy_helper.to_array(tensor)
            value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(TO_NHWC)
            permuted[name] = f"{name}_nhwc"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), permuted[name]))
        return permuted[name]

    def layout_free_inputs(node):
        """{input index: channels-last name} for a layout-free ``node``, or None when an input is
        NCHW and not a constant that can be permuted."""
        op, ins = node.op_type, list(node.input)
        if (node.domain, op) == _DEQUANTIZE_ADD:
            return {0: twin[ins[0]], 3: twin[ins[3]]} if nhwc(ins[0]) and nhwc(ins[3]) else None
        if op in ("DequantizeLinear", "QuantizeLinear"):
            if not nhwc(ins[0]) or any(n and n not in constants for n in ins[1:]):
                return None
            if len(constants[ins[1]].dims) > 1:
                return None
            return {0: twin[ins[0]]}
        if op == "Concat":
            return {i: twin[n] for i, n in enumerate(ins)} if all(nhwc(n) for n in ins) else None
        if not any(nhwc(n) for n in ins):
            return None
        inputs = {}
        for i, name in enumerate(ins):
            if not name:
                continue
            if nhwc(name):
                inputs[i] = twin[name]
            elif name in constants:
                if op == "Clip" and i > 0:        # min and max are scalars whatever the layout
                    continue
                inputs[i] = permute_constant(name)
                if inputs[i] is None:
                    return None
            else:
                return None
        return inputs

    def rewrite_layout_free(node):
        """``node`` channels-last when its inputs allow (:func:`layout_free_inputs`); False if not."""
        inputs = layout_free_inputs(node)
        if inputs is None:
            return False
        op, attrs = node.op_type, {}
        if op == "Concat":
            attrs["axis"] = 3
        elif op in ("DequantizeLinear", "QuantizeLinear") and len(constants[node.input[1]].dims) == 1 and opset >= 13:
            attrs["axis"] = _AXIS_NHWC[attr(node, "axis", 1) % 4]
        if (node.domain, op) == _DEQUANTIZE_ADD:
            is_eight_bit = {node.output[-1]} if attr(node, "quantized_output", 0) else False
        elif op == "DequantizeLinear":
            is_eight_bit = False
        elif op == "QuantizeLinear":
            zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            is_eight_bit = (zero_point.data_type if zero_point is not None
                            else attr(node, "output_dtype", TensorProto.UINT8) or TensorProto.UINT8) in _EIGHT_BIT
        else:
            is_eight_bit = all(n in eight_bit for n in node.input if nhwc(n))
        rename(node, inputs, is_eight_bit, **attrs)
        return True

    def attrs_of(node, drop=()):
        return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}

    def nhwc(name):
        return name in produced_nhwc

    for node in graph.node:
        ins = list(node.input)
        if _is_conv2d(node, shapes) and (nhwc(ins[0]) or node.output[0] in wanted):
            # (A convolution between two layout-sensitive ops stays NCHW: its kernel converts on the
            # fly more cheaply than two Transposes.)
            emit(node, "QLinearConv", _MS, [to_nhwc(ins[0], node)] + ins[1:], **attrs_of(node, ("channels_last",)),
                 channels_last=1)
        elif _is(node, "MaxPool", "") and ins[0] in eight_bit and len(node.output) == 1:
            emit(node, "NhwcMaxPool", _MS, [twin[ins[0]]], **attrs_of(node, ("storage_order",)))
        elif _is(node, "QLinearConcat", _MS) and attr(node, "axis") in (1, -3) \
                and all(nhwc(n) for n in ins[2::3]):
            emit(node, "QLinearConcat", _MS, [twin[n] if i >= 2 and (i - 2) % 3 == 0 else n for i, n in enumerate(ins)],
                 axis=3)
        elif _is(node, "QLinearGlobalAveragePool", _MS) and not attr(node, "channels_last", 0) and nhwc(ins[0]):
            emit(node, "QLinearGlobalAveragePool", _MS, [twin[ins[0]]] + ins[1:], channels_last=1)
        elif _is_average_pool2d(node) and nhwc(ins[0]):
            emit(node, "QLinearAveragePool", _MS, [twin[ins[0]]] + ins[1:], **attrs_of(node, ("channels_last",)),
                 channels_last=1)
        elif (node.domain, node.op_type) in ELEMENTWISE_BINARY and nhwc(ins[0]) and nhwc(ins[3]):
            rename(node, {0: twin[ins[0]], 3: twin[ins[3]]})
        elif (node.domain, node.op_type) in ELEMENTWISE_UNARY and nhwc(ins[0]):
            per_channel = attr(node, "axis")    # a table per channel (qrt::QLinearTable)
            rename(node, {0: twin[ins[0]]}, **({} if per_channel is None else {"axis": _AXIS_NHWC[per_channel]}))
        elif not (_is_layout_free(node, opset) and any(o in wanted for o in node.output)
                  and rewrite_layout_free(node)):
            for name in ins:
                need_nchw(name, node.name)
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {n for node in graph.node for n in node.input} | names_read_by_subgraphs(graph)
    prune_after_rewrite(model, used, set(produced_nhwc) - restored, domain=_MS)
    return model
