"""Fold Shape -> Gather -> Unsqueeze -> Concat chains (and their Slice/Squeeze/Cast/arithmetic
relatives) when the dims they pick are known.

Exports compute reshape targets from ``Shape(x)`` at run time even when most dims are static. Each
small int tensor is evaluated symbolically: an entry is an int (known), ``Dim(x, i)`` (dim i of x,
unknown statically) or None (unknown). Then:

* a tensor whose entries are all ints becomes an initializer;
* the shape input of ``Reshape(x, s)`` becomes a constant when every entry of ``s`` is an int, is
  ``Dim(x, i)`` at position i (written 0, "copy", unless ``allowzero``), or is the one entry left
  unknown (written -1, allowed when every other entry is a positive int).
"""
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..graph import attr, is_op
from ..numpy_ops import slice_indices

_MAX_ENTRIES = 64
_MAX_DEPTH = 32
_CHAIN_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity",
              "Add", "Sub", "Mul", "Div")


@dataclass(frozen=True)
class Dim:
    tensor: str
    axis: int


@dataclass(frozen=True)
class ShapeValue:
    entries: tuple  # int | Dim | None each
    scalar: bool
    dtype: np.dtype

    @property
    def known(self):
        return all(isinstance(e, int) for e in self.entries)

    def as_array(self):
        array = np.array(self.entries, dtype=self.dtype)
        return array.reshape(()) if self.scalar else array


def _const_list(graph, name):
    value = graph.constant(name, max_elements=_MAX_ENTRIES) if name else None
    if value is None or value.dtype.kind not in "iu" or value.ndim > 1 or value.size > _MAX_ENTRIES:
        return None
    return [int(v) for v in value.reshape(-1)]


def shape_value(graph, name, memo=None, depth=0):
    """Symbolic value of a small int tensor (scalar or 1-D), or None when it cannot be tracked."""
    memo = {} if memo is None else memo
    if name not in memo:
        memo[name] = _shape_value(graph, name, memo, depth) if depth <= _MAX_DEPTH and name else None
    return memo[name]


def _shape_value(graph, name, memo, depth):
    if graph.elem_type(name) not in (None, TensorProto.INT64, TensorProto.INT32):
        return None
    value = graph.constant(name, max_elements=_MAX_ENTRIES)
    if value is not None:
        if value.dtype.kind not in "iu" or value.ndim > 1 or value.size > _MAX_ENTRIES:
            return None
        return ShapeValue(tuple(int(v) for v in value.reshape(-1)), value.ndim == 0, value.dtype)
    node = graph.producer(name)
    if node is None or not is_op(node, *_CHAIN_OPS) or len(node.output) != 1:
        return None
    opset = graph.opset()
    if node.op_type == "Shape":
        info = graph.info(node.input[0])
        if info is None or info.dims is None:
            return None
        entries = [d if isinstance(d, int) else Dim(node.input[0], i) for i, d in enumerate(info.dims)]
        rank = len(entries)
        start, end = attr(node, "start", 0), attr(node, "end", rank)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        return ShapeValue(tuple(entries[start:end]), False, np.dtype(np.int64))
    operands = [shape_value(graph, n, memo, depth + 1) if n else None for n in node.input]
    first = operands[0]
    if first is None:
        return None
    if node.op_type == "Identity":
        return first
    if node.op_type == "Cast":
        to = {TensorProto.INT64: np.dtype(np.int64), TensorProto.INT32: np.dtype(np.int32)}.get(attr(node, "to"))
        return None if to is None else ShapeValue(first.entries, first.scalar, to)
    if node.op_type == "Gather":
        indices = _const_list(graph, node.input[1])
        index_value = graph.constant(node.input[1])
        if first.scalar or indices is None or attr(node, "axis", 0) not in (0, -1):
            return None
        n = len(first.entries)
        if any(not -n <= i < n for i in indices):
            return None
        picked = tuple(first.entries[i] for i in indices)
        return ShapeValue(picked, index_value.ndim == 0, first.dtype)
    if node.op_type == "Unsqueeze":
        axes = attr(node, "axes") if opset < 13 else _const_list(graph, node.input[1] if len(node.input) > 1 else "")
        if not first.scalar or axes is None or list(axes) not in ([0], [-1]):
            return None
        return ShapeValue(first.entries, False, first.dtype)
    if node.op_type == "Squeeze":
        axes = attr(node, "axes") if opset < 13 else _const_list(graph, node.input[1] if len(node.input) > 1 else "")
        if first.scalar or len(first.entries) != 1 or (axes is not None and list(axes) not in ([0], [-1])):
            return None
        return ShapeValue(first.entries, True, first.dtype)
    if node.op_type == "Concat":
        if any(op is None or op.scalar for op in operands) or len({op.dtype for op in operands}) != 1:
            return None
        return ShapeValue(sum((op.entries for op in operands), ()), False, first.dtype)
    if node.op_type == "Slice":
        return _slice_value(graph, node, first, opset)
    return _arithmetic(node.op_type, operands)


def _slice_value(graph, node, first, opset):
    if first.scalar:
        return None
    if opset < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    else:
        names = list(node.input[1:]) + [""] * (4 - len(node.input[1:]))
        starts, ends, axes, steps = (_const_list(graph, n) if n else None for n in names)
        if any(n and v is None for n, v in zip(names, (starts, ends, axes, steps))):
            return None
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
        return None
    if (axes is not None and list(axes) not in ([0], [-1])) or (steps is not None and len(steps) != 1):
        return None
    picked = slice_indices(len(first.entries), starts[0], ends[0], 1 if steps is None else steps[0])
    if picked is None:
        return None
    return ShapeValue(tuple(first.entries[i] for i in picked), False, first.dtype)


def _combine(op_type, a, b):
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    if op_type == "Add":
        return a + b
    if op_type == "Sub":
        return a - b
    if op_type == "Mul":
        return a * b
    if b == 0:
        return None
    quotient = abs(a) // abs(b)  # ONNX integer Div truncates toward zero
    return quotient if (a < 0) == (b < 0) else -quotient


def _arithmetic(op_type, operands):
    if len(operands) != 2 or any(op is None for op in operands) or operands[0].dtype != operands[1].dtype:
        return None
    a, b = operands
    if len(a.entries) != len(b.entries) and 1 not in (len(a.entries), len(b.entries)):
        return None
    n = max(len(a.entries), len(b.entries))
    left = a.entries * n if len(a.entries) == 1 else a.entries
    right = b.entries * n if len(b.entries) == 1 else b.entries
    entries = tuple(_combine(op_type, x, y) for x, y in zip(left, right))
    return ShapeValue(entries, a.scalar and b.scalar, a.dtype)


def _reshape_target(value, data, allowzero):
    """The constant target equivalent to ``value`` for Reshape(``data``), or None."""
    target, unknown = [], []
    for position, entry in enumerate(value.entries):
        if isinstance(entry, int):
            target.append(entry)
        elif entry == Dim(data, position) and not allowzero:
            target.append(0)
        else:
            target.append(None)
            unknown.append(position)
    if unknown:
        others = [t for t in target if t is not None]
        if len(unknown) > 1 or not all(t > 0 for t in others):
            return None
        target[unknown[0]] = -1
    return target


def fold_shape_ops(graph):
    changed = 0
    memo = {}
    for node in graph.live_nodes():
        if is_op(node, "Reshape") and graph.opset() >= 5 and len(node.input) == 2:
            if graph.constant(node.input[1]) is not None:
                continue
            value = shape_value(graph, node.input[1], memo)
            if value is None or value.scalar:
                continue
            target = _reshape_target(value, node.input[0], attr(node, "allowzero", 0))
            if target is None:
                continue
            name = graph.add_initializer(np.array(target, dtype=np.int64), f"{node.input[1]}_folded")
            graph.set_input(node, 1, name)
            changed += 1
        elif is_op(node, *_CHAIN_OPS) and len(node.output) == 1:
            out = node.output[0]
            if not out or out in graph.output_names or graph.constant(out) is not None:
                continue
            value = shape_value(graph, out, memo)
            if value is None or not value.known:
                continue
            graph.remove_node(node)
            graph.make_initializer(out, value.as_array())
            changed += 1
    return changed
