"""Plan-time fusion of dynamically quantized MatMuls into one quantize-and-multiply step.

``quantize_dynamic`` (qrt's and onnxruntime's) writes every MatMul/Gemm with constant weights as

    DynamicQuantizeLinear(X) -> MatMulInteger(X_q, B, X_zp, B_zp) -> Cast(float)
        -> Mul(·, Mul(X_scale, B_scale)) [-> Add(·, bias)]

five to six nodes, an int32 and a float32 intermediate the size of the output, and a pass each.
:func:`fuse_dynamic_matmuls` replaces each chain by the com.microsoft op onnxruntime's own
optimizer uses for it, whose kernel scales the exact int32 sums in the GEMM's epilogue and writes
float32 directly:

* a DynamicQuantizeLinear read by one chain only, with the chain: ``DynamicQuantizeMatMul(X, B,
  B_scale, B_zp, bias)``, which quantizes X straight into the GEMM's row buffer;
* a DynamicQuantizeLinear shared by several chains (Q, K and V projections of one input) stays, so
  X is quantized once, and each chain becomes ``MatMulIntegerToFloat(X_q, B, X_scale, B_scale,
  X_zp, B_zp, bias)``.

The epilogue computes ``float32(acc) * float32(X_scale * B_scale) + bias`` with the same float32
roundings, in the same order, as the Cast, Mul and Add it replaces, so results are bit-identical to
the unfused graph. A chain fuses only when B, B_zp, B_scale and the bias are constants of the shapes
these ops take (B 2-D; scale and zero point per tensor or per column; bias one value per column)
and no intermediate result is read outside it. The fused node is named after the nodes it covers.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, splice_nodes

_MS = "com.microsoft"
_EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


class _Chain:
    """One matched MatMulInteger -> Cast -> Mul [-> Add] with its constant operands."""

    __slots__ = ("nodes", "b", "b_zero_point", "b_scale", "bias", "output")

    def __init__(self, nodes, b, b_zero_point, b_scale, bias, output):
        self.nodes, self.b, self.b_zero_point, self.b_scale = nodes, b, b_zero_point, b_scale
        self.bias, self.output = bias, output


class _Matcher:
    def __init__(self, model):
        graph = model.graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = attr(node, "value")
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value)
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers = consumers_by_name(graph)
        self.protected = {o.name for o in graph.output} | names_read_by_subgraphs(graph)

    def only_reader(self, name, op_type):
        """The single ai.onnx ``op_type`` node reading ``name`` when nothing else (graph outputs included) does."""
        users = self.consumers.get(name, [])
        if name in self.protected or len(users) != 1:
            return None
        user = users[0]
        return user if user.op_type == op_type and user.domain in ("", "ai.onnx") else None

    def per_column(self, name, n, dtype):
        """``name`` when it is a constant of ``dtype`` with one value or one per column (rank <= 1)."""
        value = self.constants.get(name)
        if value is None or value.dtype != dtype or value.ndim > 1 or value.size not in (1, n):
            return None
        return name

    def chain(self, matmul, q, scale, zero_point):
        """The chain ``matmul`` starts when it reads (q, ·, zero_point) and ends in float, else None."""
        if matmul.op_type != "MatMulInteger" or matmul.domain not in ("", "ai.onnx") or len(matmul.input) < 3:
            return None
        if matmul.input[0] != q or matmul.input[2] != zero_point or matmul.input[1] == q:
            return None
        b = self.constants.get(matmul.input[1])
        if b is None or b.ndim != 2 or b.dtype not in _EIGHT_BIT:
            return None
        n = b.shape[1]
        b_zero_point = matmul.input[3] if len(matmul.input) > 3 else ""
        if b_zero_point and self.per_column(b_zero_point, n, b.dtype) is None:
            return None
        cast = self.only_reader(matmul.output[0], "Cast")
        if cast is None or attr(cast, "to") != TensorProto.FLOAT:
            return None
        mul = self.only_reader(cast.output[0], "Mul")
        if mul is None or mul.input[0] == mul.input[1]:
            return None
        combined = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        scale_mul = self.producer.get(combined)
        if scale_mul is None or scale_mul.op_type != "Mul" or scale_mul.domain not in ("", "ai.onnx") \
                or self.only_reader(combined, "Mul") is not mul or scale_mul.input[0] == scale_mul.input[1]:
            return None
        if scale_mul.input[0] == scale:
            b_scale = scale_mul.input[1]
        elif scale_mul.input[1] == scale:
            b_scale = scale_mul.input[0]
        else:
            return None
        if self.per_column(b_scale, n, np.float32) is None:
            return None
        nodes = [matmul, cast, scale_mul, mul]
        output, bias = mul.output[0], ""
        add = self.only_reader(output, "Add")
        if add is not None and add.input[0] != add.input[1]:
            other = add.input[1] if add.input[0] == output else add.input[0]
            value = self.constants.get(other)
            if value is not None and value.dtype == np.float32 and value.shape == (n,):
                nodes.append(add)
                output, bias = add.output[0], other
        return _Chain(nodes, matmul.input[1], b_zero_point, b_scale, bias, output)


def _name(nodes):
    return "+".join(n.name or f"{n.op_type}({n.output[0]})" for n in nodes)


def fuse_dynamic_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every recognised dynamic-quantization chain fused (module doc)."""
    m = _Matcher(model)
    replaced, removed = {}, set()
    for dql in model.graph.node:
        if dql.op_type != "DynamicQuantizeLinear" or dql.domain not in ("", "ai.onnx") or len(dql.output) != 3:
            continue
        q, scale, zero_point = dql.output
        if not (q and scale and zero_point):
            continue
        chains, whole = [], not ({q, scale, zero_point} & m.protected)
        for user in m.consumers.get(q, []):
            chain = m.chain(user, q, scale, zero_point)
            if chain is None or any(id(n) in removed for n in chain.nodes):
                whole = False
            elif not any(chain.nodes[0] is c.nodes[0] for c in chains):
                chains.append(chain)
        if not chains:
            continue
        covered = {id(n) for c in chains for n in c.nodes}
        whole = whole and all(id(u) in covered for name in (scale, zero_point) for u in m.consumers.get(name, []))
        if whole and len(chains) == 1:
            c = chains[0]
            nodes = [dql] + c.nodes
            inputs = [dql.input[0], c.b, c.b_scale, c.b_zero_point, c.bias]
            fused = helper.make_node("DynamicQuantizeMatMul", _trim(inputs), [c.output], name=_name(nodes),
                                     domain=_MS)
            removed.add(id(dql))
        else:
            fused = None
        for c in chains:
            if fused is None:
                inputs = [q, c.b, scale, c.b_scale, zero_point, c.b_zero_point, c.bias]
                node = helper.make_node("MatMulIntegerToFloat", _trim(inputs), [c.output], name=_name(c.nodes),
                                        domain=_MS)
            else:
                node = fused
            replaced[id(c.nodes[-1])] = node
            removed.update(id(n) for n in c.nodes[:-1])
    if not replaced:
        return model
    return splice_nodes(model, replaced, removed, _MS)


def _trim(inputs):
    """Drops trailing omitted optional inputs."""
    while inputs and not inputs[-1]:
        inputs.pop()
    return inputs
