"""Numpy evaluation of the few ONNX ops constant folding may compute at optimization time.

The set is deliberately small: shape plumbing (Shape, Gather, Unsqueeze, Concat, Reshape, ...),
casts and element-wise arithmetic whose numpy result is bit-identical to any IEEE runtime
(+ − × ÷ √ on one dtype). Anything else is left for the runtime's kernels. Each evaluator takes
``(node, inputs, opset)`` with ``None`` for omitted optional inputs and returns an array, or None
when it declines (an unsupported variant, or a node that would fail at run time: the runtime, not
the optimizer, should report that).
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from .graph import attr

MAX_FOLDED_ELEMENTS = 1 << 20

_NUMERIC_KINDS = "biuf"
_CASTABLE = {
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BOOL,
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
}


def _numeric(*arrays):
    return all(a is not None and a.dtype.kind in _NUMERIC_KINDS for a in arrays)


def _same_dtype(*arrays):
    return _numeric(*arrays) and len({a.dtype for a in arrays}) == 1


def _ints(array):
    return [int(v) for v in np.asarray(array).reshape(-1)]


def _axes(node, inputs, opset, since_input):
    """Axes from the attribute (before opset ``since_input``) or from input 1 (from it on)."""
    if opset < since_input:
        axes = attr(node, "axes")
        return None if axes is None else list(axes)
    if len(inputs) > 1 and inputs[1] is not None:
        return _ints(inputs[1])
    return None


def _identity(node, inputs, opset):
    return inputs[0]


def _cast(node, inputs, opset):
    (x,) = inputs[:1]
    to = attr(node, "to")
    if to not in _CASTABLE or not _numeric(x):
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if x.dtype.kind == "f" and dtype.kind in "iu":
        if not np.all(np.isfinite(x)):
            return None
        truncated = np.trunc(x)
        limits = np.iinfo(dtype)
        if truncated.size and (truncated.min() < limits.min or truncated.max() > limits.max):
            return None
        return truncated.astype(dtype)
    return x.astype(dtype)


def _reshape(node, inputs, opset):
    x = inputs[0]
    target = _ints(inputs[1]) if opset >= 5 else list(attr(node, "shape", []))
    if not attr(node, "allowzero", 0):
        if any(d == 0 and i >= x.ndim for i, d in enumerate(target)):
            return None
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        return None
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        if known == 0 or x.size % known:
            return None
        target[target.index(-1)] = x.size // known
    if math.prod(target) != x.size:
        return None
    return x.reshape(target)


def _flatten(node, inputs, opset):
    x = inputs[0]
    axis = attr(node, "axis", 1)
    if axis < 0:
        axis += x.ndim
    if not 0 <= axis <= x.ndim:
        return None
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _squeeze(node, inputs, opset):
    x = inputs[0]
    axes = _axes(node, inputs, opset, 13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = [a + x.ndim if a < 0 else a for a in axes]
    if len(set(axes)) != len(axes) or any(not 0 <= a < x.ndim or x.shape[a] != 1 for a in axes):
        return None
    return np.squeeze(x, axis=tuple(axes))


def _unsqueeze(node, inputs, opset):
    x = inputs[0]
    axes = _axes(node, inputs, opset, 13)
    if axes is None:
        return None
    out_rank = x.ndim + len(axes)
    axes = [a + out_rank if a < 0 else a for a in axes]
    if len(set(axes)) != len(axes) or any(not 0 <= a < out_rank for a in axes):
        return None
    return np.expand_dims(x, tuple(sorted(axes)))


def _transpose(node, inputs, opset):
    x = inputs[0]
    perm = attr(node, "perm")
    if perm is not None and sorted(perm) != list(range(x.ndim)):
        return None
    return np.transpose(x, None if perm is None else list(perm))


def _concat(node, inputs, opset):
    arrays = [a for a in inputs if a is not None]
    axis = attr(node, "axis")
    if not arrays or axis is None or len({a.dtype for a in arrays}) != 1 or len({a.ndim for a in arrays}) != 1:
        return None
    rank = arrays[0].ndim
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        return None
    return np.concatenate(arrays, axis=axis)


def _gather(node, inputs, opset):
    data, indices = inputs[:2]
    axis = attr(node, "axis", 0)
    axis = axis + data.ndim if axis < 0 else axis
    if indices.dtype.kind not in "iu" or not 0 <= axis < data.ndim:
        return None
    dim = data.shape[axis]
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        return None
    return np.take(data, indices.astype(np.int64), axis=axis)


def slice_indices(dim, start, end, step):
    """The indices ONNX Slice picks along an axis of size ``dim`` (clamping rules of the spec)."""
    if step == 0:
        return None
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return np.arange(start, end, step, dtype=np.int64)


def _slice(node, inputs, opset):
    x = inputs[0]
    if opset < 10:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes, steps = attr(node, "axes"), None
    else:
        starts, ends = inputs[1], inputs[2]
        axes = inputs[3] if len(inputs) > 3 else None
        steps = inputs[4] if len(inputs) > 4 else None
    if starts is None or ends is None:
        return None
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    axes = [a + x.ndim if a < 0 else a for a in axes]
    if len(set(axes)) != len(axes) or any(not 0 <= a < x.ndim for a in axes):
        return None
    for start, end, axis, step in zip(starts, ends, axes, steps):
        picked = slice_indices(x.shape[axis], start, end, step)
        if picked is None:
            return None
        x = np.take(x, picked, axis=axis)
    return x


def _range(node, inputs, opset):
    start, limit, delta = inputs[:3]
    if not _same_dtype(start, limit, delta) or start.dtype.kind not in "iu":
        return None
    start, limit, delta = int(start), int(limit), int(delta)
    if delta == 0:
        return None
    count = max(-(-(limit - start) // delta), 0)
    if count > MAX_FOLDED_ELEMENTS:
        return None
    return np.arange(start, start + count * delta, delta, dtype=inputs[0].dtype)[:count]


def _expand(node, inputs, opset):
    x, shape = inputs[:2]
    try:
        out_shape = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    except ValueError:
        return None
    if math.prod(out_shape) > MAX_FOLDED_ELEMENTS:
        return None
    return np.broadcast_to(x, out_shape).copy()


def _elementwise(fn, kinds=_NUMERIC_KINDS):
    def evaluate(node, inputs, opset):
        if opset < 7 and attr(node, "broadcast") is not None:
            return None
        arrays = [a for a in inputs if a is not None]
        if len(arrays) != len(inputs) or not _same_dtype(*arrays) or arrays[0].dtype.kind not in kinds:
            return None
        try:
            np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError:
            return None
        with np.errstate(all="ignore"):
            result = fn(*arrays)
        return None if result is None else np.asarray(result)
    return evaluate


def _divide(a, b):
    if a.dtype.kind == "f":
        return np.divide(a, b)
    if np.any(b == 0):
        return None
    quotient = np.floor_divide(a, b)
    # ONNX integer Div truncates toward zero; floor differs when the signs differ and it is inexact.
    inexact = (quotient * b) != a
    return np.where(inexact & ((a < 0) != (b < 0)), quotient + 1, quotient)


def _min_max(fn):
    def reduce(*arrays):
        if arrays[0].dtype.kind == "f" and any(np.isnan(a).any() for a in arrays):
            return None  # runtimes disagree on NaN propagation in Min/Max
        result = arrays[0]
        for a in arrays[1:]:
            result = fn(result, a)
        return result
    return reduce


def _where(node, inputs, opset):
    cond, x, y = inputs[:3]
    if cond.dtype != np.bool_ or not _same_dtype(x, y):
        return None
    try:
        return np.where(cond, x, y)
    except ValueError:
        return None


EVALUATORS = {
    "Identity": _identity,
    "Cast": _cast,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Concat": _concat,
    "Gather": _gather,
    "Slice": _slice,
    "Range": _range,
    "Expand": _expand,
    "Add": _elementwise(np.add),
    "Sub": _elementwise(np.subtract),
    "Mul": _elementwise(np.multiply),
    "Div": _elementwise(_divide),
    "Neg": _elementwise(np.negative, "if"),
    "Abs": _elementwise(np.abs, "iuf"),
    "Sqrt": _elementwise(np.sqrt, "f"),
    "Min": _elementwise(_min_max(np.minimum)),
    "Max": _elementwise(_min_max(np.maximum)),
    "Equal": _elementwise(np.equal),
    "Not": _elementwise(np.logical_not, "b"),
    "Where": _where,
}


def evaluate(node, inputs, opset):
    """Evaluate ``node`` on constant ``inputs``; None when the op or this form of it is not folded."""
    evaluator = EVALUATORS.get(node.op_type)
    if evaluator is None or len(node.output) != 1 or not inputs or inputs[0] is None:
        return None
    try:
        result = evaluator(node, inputs, opset)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if result is None or result.size > MAX_FOLDED_ELEMENTS:
        return None
    return np.array(result, order="C")
