"""Plan-time fusion of per-row (per-token) dynamic quantization into one quantize-and-multiply node.

``quantize_dynamic(per_row=True)`` writes each activation ``X`` read by MatMuls with constant
weights in standard ops (:mod:`qrt.quantization.dynamic` has the pattern): 17 nodes compute a uint8
``X_q`` with one float32 scale and int32 zero point per row (ReduceMin/ReduceMax over the last axis,
Min/Max with 0, Sub, Div by 255, Max with FLT_MIN, Div, Neg, Round, Clip, Div, Round, Add, Clip,
Cast, Cast), and each MatMul becomes ``MatMulInteger(X_q, B, "", B_zp) -> Sub(·, Mul(zp, colsum))
-> Cast(float) -> Mul(·, Mul(scale, B_scale))`` [``-> Add(·, bias)``]: ~20 nodes, a pass over the
activation per element-wise node and an int32 and a float32 intermediate the size of each output.

:func:`fuse_per_row_matmuls` matches each MatMulInteger whose A is that pattern's ``X_q``, walking
back through the quantization chain to the ReduceMin/ReduceMax and forward through the zero-point
correction and the scales, and replaces all products reading one ``X_q`` (the Q, K and V
projections of one input) by one ``qrt::PerRowDynamicQuantizeMatMul(X, B_1, B_scale_1, B_zp_1,
bias_1, B_2, ...)`` with one output per product: X is quantized once, straight into the GEMM's row
buffer. Its kernel repeats every float32 operation of the pattern in the pattern's order, so the
outputs are the unfused graph's bit for bit.

A product fuses when B, its zero point and scale (one value or one per column), the column sums
(which must equal B's, the only value for which the correction is exact) and the bias are
constants, every constant of the quantization chain has the pattern's value (0, 255, FLT_MIN),
the reductions are over the last axis with keepdims, and no intermediate of the product is read
outside it. The quantization chain's nodes are removed when nothing else reads what they compute;
else they stay for those readers and the fused node quantizes X again. The fused node is named
after the MatMulIntegers it covers (``quantize_dynamic`` gives them the original MatMuls' names), so
a profile shows one event per group under the names the user knows. Only qrt runs the node: the
session applies this pass at ``ORT_ENABLE_ALL``, before the element-wise fusions.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graphs import attr, splice_nodes
from .dynamic_matmul import _EIGHT_BIT, _Matcher, _name, _trim

DOMAIN = "qrt"
_ONNX = ("", "ai.onnx")
_TINY = float(np.finfo(np.float32).tiny)


class _Rows:
    """The per-row quantization of one activation: X, its uint8 rows, scale, float zero point and nodes."""

    __slots__ = ("x", "q", "scale", "zero_point", "nodes")

    def __init__(self, x, q, scale, zero_point, nodes):
        self.x, self.q, self.scale, self.zero_point, self.nodes = x, q, scale, zero_point, nodes


class _Product:
    """One MatMulInteger -> Sub(Mul(zp, colsum)) -> Cast -> Mul(Mul(scale, B_scale)) [-> Add] chain."""

    __slots__ = ("nodes", "zero_point_cast", "b", "b_scale", "b_zero_point", "bias", "output")

    def __init__(self, nodes, zero_point_cast, b, b_scale, b_zero_point, bias, output):
        self.nodes, self.zero_point_cast, self.b, self.b_scale = nodes, zero_point_cast, b, b_scale
        self.b_zero_point, self.bias, self.output = b_zero_point, bias, output


class _PerRowMatcher(_Matcher):
    def op(self, name, op_type):
        """The ai.onnx ``op_type`` node producing ``name``, else None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type and node.domain in _ONNX else None

    def is_value(self, name, value):
        c = self.constants.get(name)
        return c is not None and c.dtype == np.float32 and c.ndim <= 1 and c.size == 1 and float(c.reshape(())) == value

    def with_constant(self, node, value):
        """The other input of commutative binary ``node`` when one input is the float32 constant ``value``."""
        if len(node.input) != 2:
            return None
        a, b = node.input
        if self.is_value(b, value):
            return a
        return b if self.is_value(a, value) else None

    def clipped(self, node):
        """Clip(·, 0, 255)'s data input."""
        if node is None or len(node.input) != 3 or not self.is_value(node.input[1], 0.0) \
                or not self.is_value(node.input[2], 255.0):
            return None
        return node.input[0]

    def last_axis_reduction(self, name, op_type):
        node = self.op(name, op_type)
        if node is None or attr(node, "keepdims", 1) != 1:
            return None
        axes = attr(node, "axes")
        if len(node.input) > 1 and node.input[1]:
            if axes is not None:
                return None
            axes = self.constants.get(node.input[1])
        if axes is None or np.asarray(axes).reshape(-1).tolist() != [-1]:
            return None
        return node

    def rows(self, q):
        """The per-row quantization chain that produces ``q``, or None."""
        cast_q = self.op(q, "Cast")
        if cast_q is None or attr(cast_q, "to") != TensorProto.UINT8:
            return None
        shifted = self.clipped(self.op(cast_q.input[0], "Clip"))
        add = self.op(shifted, "Add") if shifted else None
        if add is None or len(add.input) != 2:
            return None
        for rounded, zero_point in (add.input, reversed(add.input)):
            round_x = self.op(rounded, "Round")
            div_x = self.op(round_x.input[0], "Div") if round_x is not None else None
            if div_x is not None:
                break
        else:
            return None
        x, scale = div_x.input
        clip_zp = self.op(zero_point, "Clip")
        round_zp = self.op(self.clipped(clip_zp), "Round") if clip_zp is not None else None
        neg = self.op(round_zp.input[0], "Neg") if round_zp is not None else None
        div_lo = self.op(neg.input[0], "Div") if neg is not None else None
        if div_lo is None or div_lo.input[1] != scale:
            return None
        lo = div_lo.input[0]
        max_scale = self.op(scale, "Max")
        raw = self.with_constant(max_scale, _TINY) if max_scale is not None else None
        div_raw = self.op(raw, "Div") if raw else None
        if div_raw is None or not self.is_value(div_raw.input[1], 255.0):
            return None
        sub = self.op(div_raw.input[0], "Sub")
        if sub is None or sub.input[1] != lo:
            return None
        max_hi, min_lo = self.op(sub.input[0], "Max"), self.op(lo, "Min")
        if max_hi is None or min_lo is None:
            return None
        x_max, x_min = self.with_constant(max_hi, 0.0), self.with_constant(min_lo, 0.0)
        reduce_max = self.last_axis_reduction(x_max, "ReduceMax") if x_max else None
        reduce_min = self.last_axis_reduction(x_min, "ReduceMin") if x_min else None
        if reduce_max is None or reduce_min is None or reduce_max.input[0] != x or reduce_min.input[0] != x:
            return None
        nodes = [reduce_min, reduce_max, min_lo, max_hi, sub, div_raw, max_scale, div_lo, neg, round_zp, clip_zp,
                 div_x, round_x, add, self.op(cast_q.input[0], "Clip"), cast_q]
        return _Rows(x, q, scale, zero_point, nodes)

    def product(self, matmul, rows):
        """The chain ``matmul`` starts on ``rows``, ending in float, or None."""
        if matmul.op_type != "MatMulInteger" or matmul.domain not in _ONNX or matmul.input[0] != rows.q \
                or (len(matmul.input) > 2 and matmul.input[2]):
            return None
        b = self.constants.get(matmul.input[1])
        if b is None or b.ndim != 2 or b.dtype not in _EIGHT_BIT or not b.shape[0]:
            return None
        n = b.shape[1]
        b_zero_point = matmul.input[3] if len(matmul.input) > 3 else ""
        if b_zero_point and self.per_column(b_zero_point, n, b.dtype) is None:
            return None
        sub = self.only_reader(matmul.output[0], "Sub")
        if sub is None or sub.input[0] != matmul.output[0] or sub.input[1] == sub.input[0]:
            return None
        correction = self.op(sub.input[1], "Mul")
        if correction is None or self.only_reader(sub.input[1], "Sub") is not sub or len(correction.input) != 2:
            return None
        for zp_int, sums in (correction.input, reversed(correction.input)):
            zero_point_cast = self.op(zp_int, "Cast")
            if zero_point_cast is not None and attr(zero_point_cast, "to") == TensorProto.INT32 \
                    and zero_point_cast.input[0] == rows.zero_point:
                break
        else:
            return None
        if not self.exact_column_sums(sums, b, self.constants.get(b_zero_point) if b_zero_point else None):
            return None
        cast = self.only_reader(sub.output[0], "Cast")
        if cast is None or attr(cast, "to") != TensorProto.FLOAT:
            return None
        mul = self.only_reader(cast.output[0], "Mul")
        if mul is None or mul.input[0] == mul.input[1]:
            return None
        combined = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        scale_mul = self.op(combined, "Mul")
        if scale_mul is None or self.only_reader(combined, "Mul") is not mul or len(scale_mul.input) != 2:
            return None
        if scale_mul.input[0] == rows.scale and scale_mul.input[1] != rows.scale:
            b_scale = scale_mul.input[1]
        elif scale_mul.input[1] == rows.scale and scale_mul.input[0] != rows.scale:
            b_scale = scale_mul.input[0]
        else:
            return None
        if self.per_column(b_scale, n, np.float32) is None:
            return None
        nodes = [matmul, correction, sub, cast, scale_mul, mul]
        output, bias = mul.output[0], ""
        add = self.only_reader(output, "Add")
        if add is not None and add.input[0] != add.input[1]:
            other = add.input[1] if add.input[0] == output else add.input[0]
            value = self.constants.get(other)
            if value is not None and value.dtype == np.float32 and value.shape == (n,):
                nodes.append(add)
                output, bias = add.output[0], other
        return _Product(nodes, zero_point_cast, matmul.input[1], b_scale, b_zero_point, bias, output)

    def exact_column_sums(self, name, b, b_zero_point):
        """``name`` is an int32 constant equal to every column's int32 sum of (B - B_zp)."""
        sums = self.constants.get(name)
        if sums is None or sums.dtype != np.int32 or sums.ndim > 1 or sums.size not in (1, b.shape[1]):
            return False
        zp = 0 if b_zero_point is None else np.asarray(b_zero_point, np.int64).reshape(-1)
        exact = (b.astype(np.int64) - zp).sum(axis=0)
        wrapped = ((exact + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)
        return bool(np.array_equal(np.broadcast_to(sums.reshape(-1), wrapped.shape), wrapped))


def fuse_per_row_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every recognised per-row quantized product fused (module doc)."""
    m = _PerRowMatcher(model)
    groups: dict[str, tuple[_Rows, list[_Product]]] = {}
    claimed = set()
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or node.domain not in _ONNX or not node.input:
            continue
        q = node.input[0]
        if q not in groups:
            rows = m.rows(q)
            if rows is None:
                continue
            groups[q] = (rows, [])
        rows, products = groups[q]
        product = m.product(node, rows)
        if product is not None and not any(id(n) in claimed for n in product.nodes):
            claimed.update(id(n) for n in product.nodes)
            products.append(product)
    replaced, removed = {}, set()
    for rows, products in groups.values():
        if not products:
            continue
        quantizing = rows.nodes + list({id(p.zero_point_cast): p.zero_point_cast for p in products}.values())
        covered = {id(n) for n in quantizing} | {id(n) for p in products for n in p.nodes}
        produced = {o for n in quantizing for o in n.output}
        whole = not (produced & m.protected) and all(id(u) in covered for name in produced
                                                     for u in m.consumers.get(name, []))
        nodes = (quantizing if whole else []) + [n for p in products for n in p.nodes]
        inputs = [rows.x]
        for p in products:
            inputs += [p.b, p.b_scale, p.b_zero_point, p.bias]
        fused = helper.make_node("PerRowDynamicQuantizeMatMul", _trim(inputs), [p.output for p in products],
                                 name=_name([p.nodes[0] for p in products]), domain=DOMAIN)
        # The fused node takes the place of the first product's last node: every product's inputs
        # (X and constants) exist by then, and its outputs come no later than the ones it replaces.
        first = min(products, key=lambda p: _position(model, p.nodes[-1]))
        replaced[id(first.nodes[-1])] = fused
        removed.update(id(n) for n in nodes)
    if not replaced:
        return model
    return splice_nodes(model, replaced, removed, DOMAIN)


def _position(model, node):
    for i, n in enumerate(model.graph.node):
        if n is node:
            return i
    return len(model.graph.node)
