"""Softmax, LogSoftmax and Hardmax.

Opsets 1-12 coerce the input to 2-D at ``axis`` (default 1): rows are the dimensions before ``axis``,
and the op normalizes over everything from ``axis`` on. Opset 13 normalizes along the single ``axis``
(default -1). Both reduce to the kernels' (rows, n) or (outer, n, inner) layouts by reshaping.
float16/bfloat16 inputs are computed in float32, rounded to their own type after every step of the
formula (as the reference implementation computes in that type).
"""
from __future__ import annotations

import math
import numpy as np

from ..errors import InvalidArgument
from ..kernels.cpu import softmax as k
from ..kernels.cpu.threads import threads_for
from ..registry import register
from .base import Op, ShapeCache

_WORK_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _normalize_axis(axis, rank, op_type):
    if not -rank <= axis < max(rank, 1):
        raise InvalidArgument(f"{op_type} axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _work(x):
    if x.dtype in _WORK_DTYPES:
        return np.ascontiguousarray(x)
    if x.dtype.kind in "iub" or x.dtype == object:
        raise InvalidArgument(f"softmax-family ops take floating-point input, got {x.dtype}")
    return x.astype(np.float32)


def _rows_view(shape, axis):
    rows = math.prod(shape[:axis])
    return rows, math.prod(shape[axis:])


def _strided_view(shape, axis):
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:])
    return outer, shape[axis], inner


def _run_softmax(x, layout, log, strided_sum=False):
    rounding = k.rounding_for(x.dtype)
    if rounding != k.ROUND_NONE and len(layout) == 3:
        # Narrow types take the rounded row kernel: move the axis last, then move it back.
        outer, n, inner = layout
        moved = np.ascontiguousarray(x.reshape(layout).transpose(0, 2, 1))
        result = _run_softmax(moved, (outer * inner, n), log, strided_sum=True)
        return np.ascontiguousarray(result.reshape(outer, inner, n).transpose(0, 2, 1)).reshape(x.shape)
    work = _work(x)
    out = np.empty(x.shape, dtype=work.dtype)
    if work.size:
        if len(layout) == 2:
            x2, out2 = work.reshape(layout), out.reshape(layout)
            if threads_for(work.size) > 1 and layout[0] > 1 and rounding == k.ROUND_NONE:
                k.softmax_rows_parallel(x2, out2, log)
            else:
                # numpy sums float16 in float32 along a contiguous axis but in float16 along a
                # strided one, and bfloat16 always in bfloat16; the reference results follow suit.
                sequential = rounding == k.ROUND_BFLOAT16 or strided_sum
                k.softmax_rows(x2, out2, log, rounding, sequential)
        else:
            k.softmax_strided(work.reshape(layout), out.reshape(layout), log)
    return out if out.dtype == x.dtype else out.astype(x.dtype)


def _run_hardmax(x, layout):
    work = _work(x)
    out = np.empty(x.shape, dtype=work.dtype)
    if work.size:
        if len(layout) == 2:
            k.hardmax_rows(work.reshape(layout), out.reshape(layout))
        else:
            k.hardmax_strided(work.reshape(layout), out.reshape(layout))
    return out if out.dtype == x.dtype else out.astype(x.dtype)


class _Coerced2D(Op):
    """Opsets 1-12: normalize over the flattened dimensions from ``axis`` on."""

    log = False
    hard = False

    def __init__(self, axis=1):
        self.axis = int(axis)
        self._layouts = ShapeCache()

    def run(self, x):
        layout = self._layouts.get(x.shape)
        if layout is None:
            axis = _normalize_axis(self.axis, x.ndim, self.op_type) if x.ndim else 0
            layout = self._layouts.put(x.shape, _rows_view(x.shape, axis))
        return _run_hardmax(x, layout) if self.hard else _run_softmax(x, layout, self.log)


class _SingleAxis(Op):
    """Opset 13+: normalize along one axis; the last axis is the contiguous (rows, n) case."""

    log = False
    hard = False

    def __init__(self, axis=-1):
        self.axis = int(axis)
        self._layouts = ShapeCache()

    def run(self, x):
        layout = self._layouts.get(x.shape)
        if layout is None:
            if x.ndim == 0:
                raise InvalidArgument(f"{self.op_type} needs an input of rank >= 1")
            axis = _normalize_axis(self.axis, x.ndim, self.op_type)
            layout = _rows_view(x.shape, axis) if axis == x.ndim - 1 else _strided_view(x.shape, axis)
            self._layouts.put(x.shape, layout)
        return _run_hardmax(x, layout) if self.hard else _run_softmax(x, layout, self.log)


@register("Softmax", 1)
class Softmax(_Coerced2D):
    pass


@register("Softmax", 13)
class Softmax13(_SingleAxis):
    pass


@register("LogSoftmax", 1)
class LogSoftmax(_Coerced2D):
    log = True


@register("LogSoftmax", 13)
class LogSoftmax13(_SingleAxis):
    log = True


@register("Hardmax", 1)
class Hardmax(_Coerced2D):
    hard = True


@register("Hardmax", 13)
class Hardmax13(_SingleAxis):
    hard = True
