"""Reduce* ops: Sum, Mean, Max, Min, Prod, L1, L2, LogSum, LogSumExp, SumSquare.

Each op reduces through one canonical layout (see :mod:`qrt.kernels.cpu.reduce`): axes of size one are
ignored, runs of adjacent kept or reduced axes are merged, and when the reduced axes then form one
block the input is viewed as (O, R, I) without a copy. Reduced runs separated by kept axes are
reduced one run per stage, the last run first (a transposing copy of the input would cost more than
the reduction): only the first stage applies the element map (|x|, x*x) and only the last finishes
(mean, sqrt, log); max, min, product and log-sum-exp compose as they are.

Versions: ``axes`` is an attribute before opset 18 (13 for ReduceSum) and an optional input after,
where ``noop_with_empty_axes`` also appears. Reducing over no axes (noop with empty axes) is the
reduction of each element alone: the element map (|x|, x*x, log x, ...) as onnxruntime computes it.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import reduce as k
from ..kernels.cpu.threads import num_threads
from ..registry import register
from .base import Op, is_half_float

# Reductions large enough (4 MiB of float32) that splitting them across threads pays for waking the
# thread pool: qrt runs OpenMP with a passive wait policy, where a launch costs tens of microseconds.
PARALLEL_MIN_ELEMENTS = 1 << 20


def normalize_axes(axes, ndim, what="axes"):
    """Axes as sorted non-negative ints; InvalidArgument when out of [-ndim, ndim) or repeated."""
    result = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < max(ndim, 1):
            raise InvalidArgument(f"{what} {a} is out of range for a tensor of rank {ndim}")
        result.append(a + ndim if a < 0 else a)
    if len(set(result)) != len(result):
        raise InvalidArgument(f"{what} {list(axes)} repeats an axis")
    return sorted(result)


def merged_groups(shape, reduced):
    """[is_reduced, size] runs of adjacent kept or reduced axes; axes of size one are left out."""
    groups = []
    for axis, size in enumerate(shape):
        if size == 1:
            continue
        is_reduced = axis in reduced
        if groups and groups[-1][0] == is_reduced:
            groups[-1][1] *= size
        else:
            groups.append([is_reduced, size])
    return groups


def _around(groups, index):
    """(O, R, I) sizes around group ``index`` (R = 1 when index is None)."""
    if index is None:
        return math.prod(size for _, size in groups), 1, 1
    return (math.prod(size for _, size in groups[:index]), groups[index][1],
            math.prod(size for _, size in groups[index + 1:]))


def _parallel_chunks(outer, inner):
    """Column blocks per row so that every thread has work when there are fewer rows than threads."""
    threads = num_threads()
    if inner == 1 or outer >= threads:
        return 1
    return max(1, min(-(-threads // max(outer, 1)), inner // 64))


class _Reduce(Op):
    """Shared driver: subclasses define ``run_kernel(x3, out, first, last, count)`` (one stage; see
    ``reduce``) and the dtypes they accept."""

    accepts_bool = False
    float_only = False       # compute integer inputs in float64 and cast back (exp/log maps)

    def _init(self, keepdims, noop_with_empty_axes):
        _check(keepdims, "keepdims")
        _check(noop_with_empty_axes, "noop_with_empty_axes")
        self.keepdims = bool(keepdims)
        self.noop_with_empty_axes = bool(noop_with_empty_axes)

    def reduce(self, data, axes):
        data = np.asarray(data)
        if axes is None or len(axes) == 0:
            reduced = [] if self.noop_with_empty_axes else list(range(data.ndim))
        else:
            reduced = normalize_axes(axes, data.ndim)
        if self.keepdims or not reduced:
            out_shape = tuple(1 if a in reduced else s for a, s in enumerate(data.shape))
        else:
            out_shape = tuple(s for a, s in enumerate(data.shape) if a not in reduced)

        dtype = data.dtype
        work = data
        if dtype == np.bool_:
            if not self.accepts_bool:
                raise InvalidArgument(f"{self.op_type} does not accept bool tensors")
            work = data.view(np.uint8)
        elif is_half_float(dtype):
            work = data.astype(np.float32)
        elif self.float_only and dtype.kind in "iu":
            work = data.astype(np.float64)
        elif dtype.kind not in "iuf":
            raise InvalidArgument(f"{self.op_type} does not accept {dtype} tensors")

        # Reduced runs that are not adjacent are reduced one at a time, last first, each stage a
        # smaller contiguous array; only the first applies the element map, only the last finishes.
        groups = merged_groups(work.shape, set(reduced))
        count = math.prod(data.shape[a] for a in reduced)
        current = np.ascontiguousarray(work)
        first = True
        while True:
            runs = [i for i, (is_reduced, _) in enumerate(groups) if is_reduced]
            index = runs[-1] if runs else None
            outer, depth, inner = _around(groups, index)
            out = np.empty((outer, inner), dtype=work.dtype)
            last = len(runs) <= 1
            self.run_kernel(current.reshape(outer, depth, inner), out, first, last, count)
            if last:
                break
            del groups[index]
            if 0 < index < len(groups) and groups[index - 1][0] == groups[index][0]:
                groups[index - 1][1] *= groups.pop(index)[1]
            current, first = out, False
        if work.dtype != dtype:
            out = out.astype(dtype)
        return out.reshape(out_shape)


class _SumLike(_Reduce):
    term = k.SUM
    finish = k.FINISH_NONE

    def run_kernel(self, x3, out, first, last, count):
        zero = out.dtype.type(0)
        term = self.term if first else k.SUM
        finish = self.finish if last else k.FINISH_NONE
        if x3.size >= PARALLEL_MIN_ELEMENTS:
            chunks = _parallel_chunks(x3.shape[0], x3.shape[2])
            k.reduce_sum_parallel(x3, out, term, finish, zero, count, chunks)
        else:
            k.reduce_sum(x3, out, term, finish, zero, count)


class _Extreme(_Reduce):
    want_max = True
    accepts_bool = True

    def run_kernel(self, x3, out, first, last, count):
        dtype = out.dtype
        if dtype.kind == "f":
            empty = -np.inf if self.want_max else np.inf
        else:
            info = np.iinfo(dtype)
            empty = info.min if self.want_max else info.max
        empty = dtype.type(empty)
        if x3.size >= PARALLEL_MIN_ELEMENTS:
            chunks = _parallel_chunks(x3.shape[0], x3.shape[2])
            k.reduce_extreme_parallel(x3, out, self.want_max, empty, chunks)
        else:
            k.reduce_extreme(x3, out, self.want_max, empty)


class _Prod(_Reduce):
    def run_kernel(self, x3, out, first, last, count):
        k.reduce_prod(x3, out, out.dtype.type(1))


class _LogSumExp(_Reduce):
    float_only = True

    def run_kernel(self, x3, out, first, last, count):
        k.reduce_log_sum_exp(x3, out, out.dtype.type(0))


def _versions(op_type, base, attr_since, input_since, **class_attrs):
    """Register ``op_type`` with ``axes`` as an attribute from ``attr_since`` and as an input later."""

    @register(op_type, attr_since)
    class AxesAttribute(base):
        def __init__(self, axes=None, keepdims=1):
            self._init(keepdims, 0)
            self.axes = None if axes is None else [int(a) for a in axes]

        def run(self, data):
            return self.reduce(data, self.axes)

    @register(op_type, input_since)
    class AxesInput(base):
        def __init__(self, keepdims=1, noop_with_empty_axes=0):
            self._init(keepdims, noop_with_empty_axes)

        def run(self, data, axes=None):
            if axes is not None:
                if axes.dtype.kind not in "iu" or axes.ndim > 1:
                    raise InvalidArgument(f"axes must be a 1-D integer tensor, got {axes.dtype} {axes.shape}")
                axes = axes.reshape(-1).tolist()
            return self.reduce(data, axes)

    for cls, since in ((AxesAttribute, attr_since), (AxesInput, input_since)):
        for name, value in class_attrs.items():
            setattr(cls, name, value)
        cls.__name__ = cls.__qualname__ = f"{op_type}_{since}"
    return AxesAttribute, AxesInput


def _check(value, name):
    if value not in (0, 1):
        raise InvalidModel(f"{name} must be 0 or 1, got {value}")


ReduceSum_1, ReduceSum_13 = _versions("ReduceSum", _SumLike, 1, 13)
ReduceMean_1, ReduceMean_18 = _versions("ReduceMean", _SumLike, 1, 18, finish=k.FINISH_MEAN)
ReduceSumSquare_1, ReduceSumSquare_18 = _versions("ReduceSumSquare", _SumLike, 1, 18, term=k.SUM_SQUARE)
ReduceL1_1, ReduceL1_18 = _versions("ReduceL1", _SumLike, 1, 18, term=k.SUM_ABS)
ReduceL2_1, ReduceL2_18 = _versions("ReduceL2", _SumLike, 1, 18, term=k.SUM_SQUARE, finish=k.FINISH_SQRT)
ReduceLogSum_1, ReduceLogSum_18 = _versions("ReduceLogSum", _SumLike, 1, 18, finish=k.FINISH_LOG)
ReduceMax_1, ReduceMax_18 = _versions("ReduceMax", _Extreme, 1, 18, want_max=True)
ReduceMin_1, ReduceMin_18 = _versions("ReduceMin", _Extreme, 1, 18, want_max=False)
ReduceProd_1, ReduceProd_18 = _versions("ReduceProd", _Prod, 1, 18)
ReduceLogSumExp_1, ReduceLogSumExp_18 = _versions("ReduceLogSumExp", _LogSumExp, 1, 18)
