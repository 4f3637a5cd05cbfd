"""Index and scan ops: ArgMax, ArgMin, CumSum, TopK, NonZero.

Axis-wise ops view their input as (O, R, I) around the op's axis (a reshape, no copy) and call one
kernel from :mod:`qrt.kernels.cpu.index`. Inputs of 16-bit float types are widened to float32, which
preserves order and sums them more exactly; results are cast back.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import index as k
from ..registry import register
from .base import Op, is_half_float


def _axis(axis, ndim, what="axis"):
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise InvalidArgument(f"{what} {axis} is out of range for a tensor of rank {ndim}")
    return axis + ndim if axis < 0 else axis


def _around(x, axis):
    """``x`` as a C-contiguous (O, R, I) view with ``axis`` in the middle."""
    shape = x.shape
    return np.ascontiguousarray(x).reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def _numeric(x, op_type):
    """``x`` in a dtype the kernels compile for (16-bit floats widen to float32)."""
    if is_half_float(x.dtype):
        return x.astype(np.float32)
    if x.dtype.kind not in "iuf":
        raise InvalidArgument(f"{op_type} does not accept {x.dtype} tensors")
    return x


def _flag(value, name):
    if value not in (0, 1):
        raise InvalidModel(f"{name} must be 0 or 1, got {value}")
    return bool(value)


def _scalar_input(t, name):
    t = np.asarray(t)
    if t.size != 1 or t.dtype.kind not in "iu":
        raise InvalidArgument(f"{name} must hold one integer, got {t.dtype} {t.shape}")
    return int(t.reshape(-1)[0])


class _ArgExtreme(Op):
    want_max = True

    def __init__(self, axis=0, keepdims=1, select_last_index=0):
        self.axis = int(axis)
        self.keepdims = _flag(keepdims, "keepdims")
        self.select_last_index = _flag(select_last_index, "select_last_index")

    def run(self, data):
        axis = _axis(self.axis, data.ndim)
        if data.shape[axis] == 0:
            raise InvalidArgument(f"{self.op_type} over axis {axis} of size 0 (shape {data.shape}) has no answer")
        x3 = _around(_numeric(data, self.op_type), axis)
        out = np.empty((x3.shape[0], x3.shape[2]), dtype=np.int64)
        k.arg_extreme(x3, out, self.want_max, self.select_last_index)
        shape = list(data.shape)
        if self.keepdims:
            shape[axis] = 1
        else:
            del shape[axis]
        return out.reshape(shape)


def _arg_versions(op_type, want_max):
    # select_last_index appears at opset 12; earlier models must not carry it.
    @register(op_type, 1)
    class Before12(_ArgExtreme):
        def __init__(self, axis=0, keepdims=1):
            super().__init__(axis, keepdims, 0)

    @register(op_type, 12)
    class From12(_ArgExtreme):
        pass

    for cls, since in ((Before12, 1), (From12, 12)):
        cls.want_max = want_max
        cls.__name__ = cls.__qualname__ = f"{op_type}_{since}"
    return Before12, From12


ArgMax_1, ArgMax_12 = _arg_versions("ArgMax", True)
ArgMin_1, ArgMin_12 = _arg_versions("ArgMin", False)


@register("CumSum", 11)
class CumSum(Op):
    def __init__(self, exclusive=0, reverse=0):
        self.exclusive = _flag(exclusive, "exclusive")
        self.reverse = _flag(reverse, "reverse")

    def run(self, x, axis):
        if x.ndim == 0:
            raise InvalidArgument("CumSum needs an input of rank >= 1")
        ax = _axis(_scalar_input(axis, "axis"), x.ndim)
        work = _numeric(x, "CumSum")
        x3 = _around(work, ax)
        out = np.empty_like(x3)
        k.cumulative_sum(x3, out, self.exclusive, self.reverse)
        return out.reshape(x.shape).astype(x.dtype, copy=False)


class _TopK(Op):
    def _init(self, axis, largest, sorted_):
        self.axis = int(axis)
        self.largest = _flag(largest, "largest")
        # Unsorted output may come in any order; the kernel's sorted order is one of them.
        _flag(sorted_, "sorted")

    def top_k(self, x, k_value):
        if x.ndim == 0:
            raise InvalidArgument("TopK needs an input of rank >= 1")
        axis = _axis(self.axis, x.ndim)
        if not 0 <= k_value <= x.shape[axis]:
            raise InvalidArgument(f"k = {k_value} is outside [0, {x.shape[axis]}] for axis {axis} of shape {x.shape}")
        x3 = _around(_numeric(x, "TopK"), axis)
        values = np.empty((x3.shape[0], k_value, x3.shape[2]), dtype=x3.dtype)
        indices = np.empty(values.shape, dtype=np.int64)
        k.top_k(x3, k_value, self.largest, values, indices)
        shape = list(x.shape)
        shape[axis] = k_value
        return values.reshape(shape).astype(x.dtype, copy=False), indices.reshape(shape)


@register("TopK", 1)
class TopK_1(_TopK):
    def __init__(self, k, axis=-1):
        self._init(axis, 1, 1)
        self.k = int(k)

    def run(self, x):
        return self.top_k(x, self.k)


@register("TopK", 10)
class TopK_10(_TopK):
    def __init__(self, axis=-1):
        self._init(axis, 1, 1)

    def run(self, x, k_input):
        return self.top_k(x, _scalar_input(k_input, "K"))


@register("TopK", 11)
class TopK_11(_TopK):
    def __init__(self, axis=-1, largest=1, sorted=1):  # noqa: A002  (the ONNX attribute's name)
        self._init(axis, largest, sorted)

    def run(self, x, k_input):
        return self.top_k(x, _scalar_input(k_input, "K"))


@register("NonZero", 9)
class NonZero(Op):
    def run(self, x):
        # A scalar counts as a one-element vector, as onnxruntime returns (1, count) for it.
        flat = np.ascontiguousarray(x).reshape(-1)
        shape = np.asarray(x.shape if x.ndim else (1,), dtype=np.int64)
        if flat.dtype == np.bool_:
            flat = flat.view(np.uint8)
        elif flat.dtype == object:
            # Strings: a non-empty string is "non-zero", as numpy's truth value has it.
            flat = np.fromiter((bool(s) for s in flat), dtype=np.uint8, count=flat.size)
        elif flat.dtype.kind == "c":
            flat = (flat != 0).view(np.uint8)
        else:
            flat = _numeric(flat, "NonZero")
        return k.nonzero(flat, shape)
