"""Data-movement ops: Concat, Split, Slice, Gather*, Scatter*, Tile, Expand, Pad, Compress, OneHot,
and the tensor generators Range, ConstantOfShape, EyeLike, Trilu.

Pure copies run in numpy (take, concatenate, pad, fancy indexing); index arithmetic on index
tensors is glue done in numpy too. Loops whose results depend on earlier updates (scatter
reductions) or that compute values (Range) are Numba kernels in :mod:`qrt.kernels.cpu.movement`.
Every output is C-contiguous and keeps the exact ONNX output dtype.
"""
import math

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import movement as k
from ..model import numpy_dtype
from ..registry import register
from .base import Op
from .shape import contiguous, int_list, normalize_axes, normalize_axis


def _scalar(value, what):
    array = np.asarray(value)
    if array.size != 1:
        raise InvalidArgument(f"{what} must hold one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _zero_of(dtype):
    return "" if dtype == object else np.zeros((), dtype=dtype)[()]


def checked_indices(indices, dim, what="indices"):
    """``indices`` as int64 in ``[0, dim)``: negatives count from the end; out-of-range is an error."""
    if indices.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must be an integer tensor, got {indices.dtype}")
    idx = indices.astype(np.int64, copy=False)
    if idx.size:
        low, high = int(idx.min()), int(idx.max())
        if low < -dim or high >= dim:
            bad = low if low < -dim else high
            raise InvalidArgument(f"{what} value {bad} is out of range for a dimension of size {dim}")
        if low < 0:
            idx = np.where(idx < 0, idx + dim, idx)
    return idx


# --- Concat / Split ---------------------------------------------------------------------------------------


def concat_arrays(inputs, axis, what="input"):
    """``inputs`` joined along ``axis``; shared by Concat and ConcatFromSequence (``what`` names the parts)."""
    first = inputs[0]
    if first.ndim == 0:
        raise InvalidArgument(f"{what} 0 must have rank >= 1 to be concatenated, got a scalar")
    axis = normalize_axis(axis, first.ndim)
    for i, x in enumerate(inputs[1:], 1):
        if x.dtype != first.dtype:
            raise InvalidArgument(f"{what} {i} has dtype {x.dtype}, {what} 0 has {first.dtype}")
        if x.ndim != first.ndim or any(a != b for d, (a, b) in enumerate(zip(x.shape, first.shape)) if d != axis):
            raise InvalidArgument(f"{what} {i} of shape {list(x.shape)} does not match {what} 0 of shape "
                                  f"{list(first.shape)} outside axis {axis}")
    if len(inputs) == 1:
        return first
    return np.concatenate(inputs, axis=axis)


@register("Concat", 4)
class Concat(Op):
    def __init__(self, axis=None):
        if axis is None:
            raise InvalidModel("Concat needs the 'axis' attribute")
        self.axis = int(axis)

    def run(self, *inputs):
        return concat_arrays(inputs, self.axis)


def split_array(x, axis, sizes, num_outputs, n_outputs):
    axis = normalize_axis(axis, x.ndim)
    dim = x.shape[axis]
    if sizes is not None:
        if len(sizes) != n_outputs or any(s < 0 for s in sizes) or sum(sizes) != dim:
            raise InvalidArgument(f"split {sizes} does not divide axis {axis} of size {dim} "
                                  f"into {n_outputs} outputs")
    elif num_outputs is not None:
        if num_outputs != n_outputs:
            raise InvalidArgument(f"num_outputs={num_outputs} but the node has {n_outputs} outputs")
        # Uneven splits give every chunk ceil(dim / n) and the last one what is left (opset 18).
        chunk = -(-dim // num_outputs)
        sizes = [chunk] * (num_outputs - 1) + [dim - chunk * (num_outputs - 1)]
        if sizes[-1] < 0:
            raise InvalidArgument(f"axis {axis} of size {dim} cannot be split into {num_outputs} chunks of "
                                  f"{chunk}")
    else:
        if dim % n_outputs:
            raise InvalidArgument(f"axis {axis} of size {dim} cannot be split evenly into {n_outputs} outputs")
        sizes = [dim // n_outputs] * n_outputs
    outputs = []
    begin = 0
    index = [slice(None)] * x.ndim
    for size in sizes:
        index[axis] = slice(begin, begin + size)
        outputs.append(np.ascontiguousarray(x[tuple(index)]))
        begin += size
    return tuple(outputs)


@register("Split", 2)
class Split(Op):
    def __init__(self, axis=0, split=None):
        self.axis = int(axis)
        self.split = None if split is None else [int(s) for s in split]

    def run(self, x):
        return split_array(x, self.axis, self.split, None, self.n_outputs)


@register("Split", 13)
class Split13(Op):
    def __init__(self, axis=0):
        self.axis = int(axis)

    def run(self, x, split=None):
        sizes = None if split is None else int_list(split, "split")
        return split_array(x, self.axis, sizes, None, self.n_outputs)


@register("Split", 18)
class Split18(Op):
    def __init__(self, axis=0, num_outputs=None):
        self.axis = int(axis)
        self.num_outputs = None if num_outputs is None else int(num_outputs)

    def run(self, x, split=None):
        sizes = None if split is None else int_list(split, "split")
        if sizes is not None and self.num_outputs is not None:
            raise InvalidArgument("Split takes either the 'split' input or 'num_outputs', not both")
        return split_array(x, self.axis, sizes, self.num_outputs, self.n_outputs)


# --- Slice ------------------------------------------------------------------------------------------------


def slice_array(x, starts, ends, axes=None, steps=None):
    """ONNX Slice: negative starts/ends count from the end, then clamp to the axis (spec, opset 10+)."""
    if len(starts) != len(ends):
        raise InvalidArgument(f"starts {starts} and ends {ends} differ in length")
    axes = list(range(len(starts))) if axes is None else normalize_axes(axes, x.ndim)
    steps = [1] * len(starts) if steps is None else steps
    if len(axes) != len(starts) or len(steps) != len(starts):
        raise InvalidArgument(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise InvalidArgument(f"slice step on axis {axis} is 0")
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start = min(max(start, 0), dim)
            end = min(max(end, 0), dim)
        else:
            # A backward slice may run down to index 0 inclusive, which Python spells end=None.
            start = min(max(start, 0), dim - 1)
            end = min(max(end, -1), dim - 1)
        index[axis] = slice(start, end if end >= 0 else None, step)
    return contiguous(x[tuple(index)])


@register("Slice", 1)
class Slice(Op):
    def __init__(self, starts=None, ends=None, axes=None):
        if starts is None or ends is None:
            raise InvalidModel("Slice needs the 'starts' and 'ends' attributes before opset 10")
        self.starts = [int(v) for v in starts]
        self.ends = [int(v) for v in ends]
        self.axes = None if axes is None else [int(v) for v in axes]

    def run(self, data):
        return slice_array(data, self.starts, self.ends, self.axes)


@register("Slice", 10)
class Slice10(Op):
    def run(self, data, starts, ends, axes=None, steps=None):
        return slice_array(data, int_list(starts, "starts"), int_list(ends, "ends"),
                           None if axes is None else int_list(axes, "axes"),
                           None if steps is None else int_list(steps, "steps"))


# --- Gather -----------------------------------------------------------------------------------------------


@register("Gather", 1)
class Gather(Op):
    def __init__(self, axis=0):
        self.axis = int(axis)

    def run(self, data, indices):
        axis = normalize_axis(self.axis, data.ndim)
        idx = checked_indices(indices, data.shape[axis])
        return np.take(data, idx, axis=axis)


def _leading_block(data, shape, axis):
    """``data`` cut to ``shape`` on every axis but ``axis`` (GatherElements/ScatterElements indices
    may be smaller than the data outside the axis)."""
    if len(shape) != data.ndim:
        raise InvalidArgument(f"indices of shape {list(shape)} must have the rank of data {list(data.shape)}")
    for d, (i, n) in enumerate(zip(shape, data.shape)):
        if d != axis and i > n:
            raise InvalidArgument(f"indices of shape {list(shape)} exceed data of shape {list(data.shape)} "
                                  f"on axis {d}")
    return data[tuple(slice(None) if d == axis else slice(0, i) for d, i in enumerate(shape))]


@register("GatherElements", 11)
class GatherElements(Op):
    def __init__(self, axis=0):
        self.axis = int(axis)

    def run(self, data, indices):
        axis = normalize_axis(self.axis, data.ndim)
        idx = checked_indices(indices, data.shape[axis])
        block = _leading_block(data, indices.shape, axis)
        return contiguous(np.take_along_axis(block, idx, axis=axis))


def _nd_offsets(indices, dims, what="indices"):
    """Row-major offsets into a block of shape ``dims`` for the index tuples in ``indices[..., :]``."""
    k = indices.shape[-1]
    if k == 0:
        return np.zeros(indices.shape[:-1], dtype=np.int64)
    if indices.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must be an integer tensor, got {indices.dtype}")
    idx = indices.astype(np.int64, copy=False)
    columns = [checked_indices(idx[..., j], dims[j], what) for j in range(k)]
    return np.ravel_multi_index(tuple(columns), tuple(dims))


@register("GatherND", 11)
class GatherND(Op):
    def __init__(self, batch_dims=0):
        self.batch_dims = int(batch_dims)

    def run(self, data, indices):
        b = self.batch_dims
        if indices.ndim < 1 or b < 0 or b >= min(data.ndim, indices.ndim):
            raise InvalidArgument(f"batch_dims={b} does not fit data {list(data.shape)} and indices "
                                  f"{list(indices.shape)}")
        if data.shape[:b] != indices.shape[:b]:
            raise InvalidArgument(f"data {list(data.shape)} and indices {list(indices.shape)} differ in the "
                                  f"first {b} (batch) dimensions")
        k = indices.shape[-1]
        if k > data.ndim - b:
            raise InvalidArgument(f"index tuples of length {k} are too long for data {list(data.shape)} "
                                  f"with batch_dims={b}")
        batch = int(np.prod(data.shape[:b], dtype=np.int64))
        dims = data.shape[b:b + k]
        rest = data.shape[b + k:]
        offsets = _nd_offsets(indices, dims).reshape(batch, -1)
        blocks = contiguous(data).reshape((batch, int(np.prod(dims, dtype=np.int64))) + rest)
        out = blocks[np.arange(batch)[:, None], offsets]
        return out.reshape(data.shape[:b] + indices.shape[b:-1] + rest)


# --- Scatter ----------------------------------------------------------------------------------------------

_REDUCTIONS = {"none": 0, "add": k.REDUCE_ADD, "mul": k.REDUCE_MUL, "max": k.REDUCE_MAX, "min": k.REDUCE_MIN}


def _reduction_code(reduction, allowed):
    if reduction not in allowed:
        raise InvalidModel(f"reduction {reduction!r} is not one of {sorted(allowed)} at this opset")
    return _REDUCTIONS[reduction]


def _scatter_rows(data, rows, width, updates, code):
    """A copy of ``data`` seen as (-1, ``width``) rows, with row ``rows[i]`` replaced by (or reduced
    with) row ``i`` of ``updates``, in index order."""
    out = np.array(data, order="C", copy=True)
    if width == 0 or rows.size == 0:
        return out
    table = out.reshape(-1, width)
    values = contiguous(updates).reshape(-1, width)
    rows = rows.reshape(-1)
    if code == 0:
        # numpy assigns repeated indices in order, so the last update wins as in the spec's loop.
        table[rows] = values
        return out
    if out.dtype == object or out.dtype == np.bool_:
        raise InvalidArgument(f"reduction is not defined on {out.dtype} tensors")
    if out.dtype.itemsize == 2 and out.dtype.kind in "fV":
        # Numba has no float16/bfloat16 arithmetic: reduce in float32 and round once at the end.
        wide = table.astype(np.float32)
        k.scatter_reduce(wide, rows, values.astype(np.float32), code)
        return wide.astype(out.dtype).reshape(out.shape)
    k.scatter_reduce(table, rows, values, code)
    return out


class _ScatterElements(Op):
    allowed = ("none",)

    def __init__(self, axis=0, reduction="none"):
        self.axis = int(axis)
        self.code = _reduction_code(reduction, self.allowed)

    def run(self, data, indices, updates):
        axis = normalize_axis(self.axis, data.ndim)
        if indices.shape != updates.shape:
            raise InvalidArgument(f"indices {list(indices.shape)} and updates {list(updates.shape)} differ in shape")
        _leading_block(data, indices.shape, axis)
        idx = checked_indices(indices, data.shape[axis])
        strides = [int(np.prod(data.shape[d + 1:], dtype=np.int64)) for d in range(data.ndim)]
        offsets = idx * strides[axis]
        for d in range(data.ndim):
            if d != axis:
                along = np.arange(indices.shape[d], dtype=np.int64) * strides[d]
                offsets = offsets + along.reshape([-1 if e == d else 1 for e in range(data.ndim)])
        return _scatter_rows(data, offsets, 1, updates.astype(data.dtype, copy=False), self.code)


@register("Scatter", 9)
class Scatter(_ScatterElements):
    def __init__(self, axis=0):
        super().__init__(axis)


@register("ScatterElements", 11)
class ScatterElements(_ScatterElements):
    def __init__(self, axis=0):
        super().__init__(axis)


@register("ScatterElements", 16)
class ScatterElements16(_ScatterElements):
    allowed = ("none", "add", "mul")


@register("ScatterElements", 18)
class ScatterElements18(_ScatterElements):
    allowed = ("none", "add", "mul", "max", "min")


class _ScatterND(Op):
    allowed = ("none",)

    def __init__(self, reduction="none"):
        self.code = _reduction_code(reduction, self.allowed)

    def run(self, data, indices, updates):
        if indices.ndim < 1:
            raise InvalidArgument("ScatterND indices must have rank >= 1")
        k_len = indices.shape[-1]
        if k_len > data.ndim:
            raise InvalidArgument(f"index tuples of length {k_len} are too long for data {list(data.shape)}")
        expected = indices.shape[:-1] + data.shape[k_len:]
        if updates.shape != expected:
            raise InvalidArgument(f"updates have shape {list(updates.shape)}, expected {list(expected)} for "
                                  f"data {list(data.shape)} and indices {list(indices.shape)}")
        slice_size = int(np.prod(data.shape[k_len:], dtype=np.int64))
        rows = _nd_offsets(indices, data.shape[:k_len])
        return _scatter_rows(data, rows, slice_size, updates.astype(data.dtype, copy=False), self.code)


@register("ScatterND", 11)
class ScatterND(_ScatterND):
    def __init__(self):
        super().__init__()


@register("ScatterND", 16)
class ScatterND16(_ScatterND):
    allowed = ("none", "add", "mul")


@register("ScatterND", 18)
class ScatterND18(_ScatterND):
    allowed = ("none", "add", "mul", "max", "min")


# --- Tile / Expand / Pad ----------------------------------------------------------------------------------


@register("Tile", 6)
class Tile(Op):
    def run(self, x, repeats):
        reps = int_list(repeats, "repeats")
        if len(reps) != x.ndim or any(r < 0 for r in reps):
            raise InvalidArgument(f"repeats {reps} must be {x.ndim} non-negative values for shape {list(x.shape)}")
        return np.tile(x, reps)


@register("Expand", 8)
class Expand(Op):
    def run(self, x, shape):
        requested = int_list(shape, "shape")
        try:
            out_shape = np.broadcast_shapes(x.shape, tuple(requested))
        except ValueError:
            raise InvalidArgument(f"input of shape {list(x.shape)} cannot be expanded to {requested}") from None
        return np.array(np.broadcast_to(x, out_shape), order="C", copy=True)


def pad_array(x, pads, mode, value, axes=None):
    """ONNX Pad: ``pads`` is all begins then all ends for ``axes``; negative pads crop."""
    axes = list(range(x.ndim)) if axes is None else normalize_axes(axes, x.ndim)
    if len(pads) != 2 * len(axes):
        raise InvalidArgument(f"pads {pads} must hold 2 values per padded axis ({len(axes)} axes)")
    begin = [0] * x.ndim
    end = [0] * x.ndim
    for i, axis in enumerate(axes):
        begin[axis] = pads[i]
        end[axis] = pads[i + len(axes)]
    if any(p < 0 for p in begin + end):
        crop = tuple(slice(max(-b, 0), x.shape[d] - max(-e, 0)) for d, (b, e) in enumerate(zip(begin, end)))
        if any(s.start > s.stop for s in crop):
            raise InvalidArgument(f"pads {pads} crop more than the input shape {list(x.shape)}")
        x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if not any(b or e for b, e in widths):
        return contiguous(x)
    if mode == "constant":
        fill = _zero_of(x.dtype) if value is None else value
        return np.pad(x, widths, mode="constant", constant_values=fill)
    for d, (b, e) in enumerate(widths):
        if (b or e) and x.shape[d] == 0:
            raise InvalidArgument(f"{mode} padding needs a non-empty axis {d}, shape is {list(x.shape)}")
        if mode == "reflect" and (b or e) and x.shape[d] < 2:
            raise InvalidArgument(f"reflect padding needs at least 2 values on axis {d}, shape is "
                                  f"{list(x.shape)}")
    return np.pad(x, widths, mode=mode)     # ONNX's reflect/edge/wrap are numpy's modes of those names


class _PadBase(Op):
    modes = ("constant", "reflect", "edge")

    def _check_mode(self, mode):
        mode = str(mode)
        if mode not in self.modes:
            raise InvalidModel(f"Pad mode {mode!r} is not one of {list(self.modes)} at this opset")
        return mode


@register("Pad", 2)
class Pad(_PadBase):
    def __init__(self, pads=None, mode="constant", value=0.0):
        if pads is None:
            raise InvalidModel("Pad needs the 'pads' attribute before opset 11")
        self.pads = [int(p) for p in pads]
        self.mode = self._check_mode(mode)
        self.value = float(value)

    def run(self, data):
        return pad_array(data, self.pads, self.mode, np.asarray(self.value).astype(data.dtype)[()])


@register("Pad", 11)
class Pad11(_PadBase):
    def __init__(self, mode="constant"):
        self.mode = self._check_mode(mode)

    def run(self, data, pads, constant_value=None, axes=None):
        value = None if constant_value is None or constant_value.size == 0 \
            else _scalar(constant_value, "constant_value")
        return pad_array(data, int_list(pads, "pads"), self.mode, value,
                         None if axes is None else int_list(axes, "axes"))


@register("Pad", 19)
class Pad19(Pad11):
    modes = ("constant", "reflect", "edge", "wrap")


# --- Generators -------------------------------------------------------------------------------------------

# Numba computes these directly; float16 and bfloat16 go through float32 and are rounded once.
_RANGE_NATIVE = {np.dtype(t) for t in (np.float32, np.float64, np.int16, np.int32, np.int64)}


def _range(start, limit, delta):
    for name, value in (("limit", limit), ("delta", delta)):
        if value.dtype != start.dtype:
            raise InvalidArgument(f"{name} has dtype {value.dtype}, start has {start.dtype}")
    dtype = start.dtype
    s, l, d = (_scalar(v, n) for v, n in ((start, "start"), (limit, "limit"), (delta, "delta")))
    if dtype.kind in "iu":
        s, l, d = int(s), int(l), int(d)
        if d == 0:
            raise InvalidArgument("Range delta is 0")
        count = max(-((s - l) // d), 0)
    else:
        s, l, d = float(s), float(l), float(d)
        if d == 0 or not all(math.isfinite(v) for v in (s, l, d)):
            raise InvalidArgument(f"Range needs finite start/limit and a non-zero delta, got {s}, {l}, {d}")
        count = max(math.ceil((l - s) / d), 0)
    if dtype in _RANGE_NATIVE:
        compute = dtype
    elif dtype.name in ("float16", "bfloat16"):
        compute = np.dtype(np.float32)
    else:
        raise InvalidArgument(f"Range is not defined for {dtype}")
    values = k.range_values(s, d, count, compute)
    return values if compute == dtype else values.astype(dtype)


@register("Range", 11)
class Range(Op):
    def run(self, start, limit, delta):
        return _range(start, limit, delta)


@register("Range", 27)
class Range27(Op):
    def __init__(self, stash_type=1):
        # float16/bfloat16 always accumulate in float32 here, which is what stash_type=1 asks for and
        # at least as exact for stash_type=0.
        self.stash_type = int(stash_type)

    def run(self, start, limit, delta):
        return _range(start, limit, delta)


@register("ConstantOfShape", 9)
class ConstantOfShape(Op):
    def __init__(self, value=None):
        if value is None:
            self.value = np.zeros(1, dtype=np.float32)
        else:
            self.value = np.asarray(value).reshape(-1)
            if self.value.size != 1:
                raise InvalidModel(f"ConstantOfShape value must hold one element, got {self.value.size}")

    def run(self, input):
        shape = int_list(input, "shape")
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"shape {shape} has a negative dimension")
        return np.full(shape, self.value[0], dtype=self.value.dtype)


@register("EyeLike", 9)
class EyeLike(Op):
    def __init__(self, dtype=None, k=0):
        self.dtype = None
        if dtype is not None:
            self.dtype = numpy_dtype(int(dtype))
            if self.dtype is None or self.dtype == object:
                raise InvalidModel(f"EyeLike dtype {dtype} is not supported")
        self.k = int(k)

    def run(self, input):
        if input.ndim != 2:
            raise InvalidArgument(f"EyeLike input must be 2-D, got shape {list(input.shape)}")
        return np.eye(input.shape[0], input.shape[1], self.k, dtype=self.dtype or input.dtype)


@register("Trilu", 14)
class Trilu(Op):
    def __init__(self, upper=1):
        self.upper = int(upper)

    def run(self, input, k=None):
        if input.ndim < 2:
            raise InvalidArgument(f"Trilu input must have rank >= 2, got shape {list(input.shape)}")
        diagonal = 0 if k is None else int(_scalar(k, "k"))
        rows, cols = input.shape[-2:]
        lower = np.tri(rows, cols, diagonal if not self.upper else diagonal - 1, dtype=bool)
        keep = ~lower if self.upper else lower
        return np.where(keep, input, _zero_of(input.dtype)).astype(input.dtype, copy=False)


@register("Compress", 9)
class Compress(Op):
    def __init__(self, axis=None):
        self.axis = None if axis is None else int(axis)

    def run(self, input, condition):
        if condition.ndim != 1:
            raise InvalidArgument(f"condition must be 1-D, got shape {list(condition.shape)}")
        chosen = np.flatnonzero(condition)
        data = input.reshape(-1) if self.axis is None else input
        axis = 0 if self.axis is None else normalize_axis(self.axis, input.ndim)
        if chosen.size and chosen[-1] >= data.shape[axis]:
            raise InvalidArgument(f"condition selects index {int(chosen[-1])} beyond axis {axis} of size "
                                  f"{data.shape[axis]}")
        return np.take(data, chosen, axis=axis)


@register("OneHot", 9)
class OneHot(Op):
    def __init__(self, axis=-1):
        self.axis = int(axis)

    def run(self, indices, depth, values):
        depth = _scalar(depth, "depth")
        depth = int(depth)
        if depth < 0:
            raise InvalidArgument(f"depth must be non-negative, got {depth}")
        if values.size != 2:
            raise InvalidArgument(f"values must be [off_value, on_value], got shape {list(values.shape)}")
        off, on = values.reshape(-1)
        rank = indices.ndim + 1
        if not -rank <= self.axis < rank:
            raise InvalidArgument(f"axis {self.axis} is out of range for output rank {rank}")
        axis = self.axis + rank if self.axis < 0 else self.axis
        idx = indices.astype(np.int64)
        idx = np.where(idx < 0, idx + depth, idx)   # out-of-range indices match no position: all off
        hot = idx[..., None] == np.arange(depth, dtype=np.int64)
        out = np.where(hot, on, off).astype(values.dtype, copy=False)
        return contiguous(np.moveaxis(out, -1, axis))
