"""Plan-time fusion of the float residual connections a quantized model keeps: ``DequantizeLinear``
of one or both operands, ``Add`` (or a two-input ``Sum``), an optional ``Relu`` and the
``QuantizeLinear`` of the result, as one qrt ``DequantizeAdd`` node.

onnxruntime's quantizer (and qrt's, which keeps parity with it) quantizes ``Add`` but not ``Sum``, so
zoo resnet50 runs each of its 16 residual joins as DequantizeLinear -> Sum -> Relu -> QuantizeLinear:
four passes over memory, three of them writing float32 (about a quarter of its int8 time). The fused
node reads the 8-bit operand(s) once and writes the float sum (where anything still reads it, e.g. the
next join) and the 8-bit result, with the float32 operations of the separate kernels in their order,
so the same bits.

An operand is absorbed when its DequantizeLinear is per-tensor with a constant float32 scale and an
8-bit zero point and nothing else reads its output; the Relu and the QuantizeLinear likewise. The
node keeps the covered nodes' names joined by ``+``. Only qrt runs ``qrt::DequantizeAdd``, so the pass
runs at ``ORT_ENABLE_ALL`` like :mod:`qrt.fusion.elementwise`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, splice_nodes

DOMAIN = "qrt"
_EIGHT_BIT = {TensorProto.UINT8, TensorProto.INT8}


def fuse_dequantize_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with its DequantizeLinear -> Add [-> Relu] [-> QuantizeLinear] groups fused."""
    graph = model.graph
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    if opset < 8:
        return model
    listed = {i.name for i in graph.input}
    constants = {t.name: t for t in graph.initializer if t.name not in listed}
    readers = consumers_by_name(graph)
    protected = {o.name for o in graph.output} | names_read_by_subgraphs(graph)
    producer = {o: node for node in graph.node for o in node.output if o}

    def onnx_op(node, op_type):
        return node.op_type == op_type and node.domain in ("", "ai.onnx")

    def only_reader(name, node):
        return name not in protected and [id(r) for r in readers.get(name, ())] == [id(node)]

    def per_tensor(scale, zero_point):
        s, z = constants.get(scale), constants.get(zero_point)
        return s is not None and z is not None and s.data_type == TensorProto.FLOAT \
            and int(np.prod(s.dims)) == 1 and z.data_type in _EIGHT_BIT and int(np.prod(z.dims)) == 1

    def absorbed_dequantize(name, add):
        dq = producer.get(name)
        if dq is None or not onnx_op(dq, "DequantizeLinear") or len(dq.input) != 3 or attr(dq, "block_size", 0) \
                or not per_tensor(dq.input[1], dq.input[2]) or not only_reader(name, add):
            return None
        return dq

    replaced, removed = {}, set()
    for node in graph.node:
        if not (onnx_op(node, "Add") or onnx_op(node, "Sum")) or len(node.input) != 2 or len(node.output) != 1 \
                or node.input[0] == node.input[1]:
            continue
        dqs = [absorbed_dequantize(name, node) for name in node.input]
        if not any(dqs):
            continue
        covered, out = [d for d in dqs if d] + [node], node.output[0]
        relu = next(iter(readers.get(out, ())), None)
        if relu is not None and onnx_op(relu, "Relu") and only_reader(out, relu):
            covered.append(relu)
            out = relu.output[0]
        else:
            relu = None
        quantize = next((r for r in readers.get(out, ()) if onnx_op(r, "QuantizeLinear") and len(r.input) == 3
                         and per_tensor(r.input[1], r.input[2]) and not attr(r, "saturate", 1) == 0
                         and not attr(r, "output_dtype", 0) and not attr(r, "block_size", 0)), None)
        float_output = out in protected or any(r is not quantize for r in readers.get(out, ()))
        inputs = []
        for name, dq in zip(node.input, dqs):
            inputs += list(dq.input) if dq else [name, "", ""]
        outputs = [out] if float_output else []
        if quantize is not None:
            covered.append(quantize)
            inputs += list(quantize.input[1:])
            outputs.append(quantize.output[0])
        fused = helper.make_node("DequantizeAdd", inputs, outputs, name="+".join(n.name for n in covered),
                                 domain=DOMAIN, relu=int(relu is not None), float_output=int(float_output),
                                 quantized_output=int(quantize is not None))
        # At the Relu (or the Add): every input is ready there, and the QuantizeLinear's readers come later.
        at = relu or node
        replaced[id(at)] = fused
        removed.update(id(n) for n in covered if n is not at)
    if not replaced:
        return model
    return splice_nodes(model, replaced, removed, DOMAIN)
