"""Shape ops: Shape, Size, Reshape, Flatten, Squeeze, Unsqueeze, Transpose.

These only reinterpret or reorder an array; numpy does the work as views where the layout allows
and as one copy where it does not (Transpose, except a short axis moved to the end, which a Numba
loop copies several times faster), so every output is C-contiguous for the kernels downstream.
"""
import functools
import math

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import movement as kmove
from ..kernels.cpu.threads import WORK_PER_THREAD, threads_for
from ..registry import register
from .base import Op, ShapeCache


def contiguous(x):
    """``x`` itself when C-contiguous, else a C-contiguous copy (0-d arrays keep their rank)."""
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def normalize_axis(axis, rank, what="axis"):
    """``axis`` in ``[-rank, rank)`` as a non-negative int, or InvalidArgument."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise InvalidArgument(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(axes, rank, what="axes"):
    """A list of distinct non-negative axes, or InvalidArgument on a repeat or an out-of-range value."""
    result = [normalize_axis(a, rank, what) for a in axes]
    if len(set(result)) != len(result):
        raise InvalidArgument(f"{what} {list(axes)} repeat an axis")
    return result


def int_list(values, what):
    """A 1-D integer tensor (or attribute list) as a list of Python ints."""
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must be an integer tensor, got {array.dtype}")
    if array.ndim > 1:
        raise InvalidArgument(f"{what} must be 1-D, got shape {list(array.shape)}")
    return array.reshape(-1).tolist()


@register("Shape", 1)
class Shape(Op):
    def run(self, data):
        return np.array(data.shape, dtype=np.int64)


@register("Shape", 15)
class Shape15(Op):
    def __init__(self, start=0, end=None):
        self.start = int(start)
        self.end = None if end is None else int(end)

    def run(self, data):
        rank = data.ndim
        # Out-of-range start/end clamp to [0, rank] rather than fail (spec, opset 15).
        start = min(max(self.start + rank if self.start < 0 else self.start, 0), rank)
        end = rank if self.end is None else self.end
        end = min(max(end + rank if end < 0 else end, 0), rank)
        return np.array(data.shape[start:end], dtype=np.int64)


@register("Size", 1)
class Size(Op):
    def run(self, data):
        return np.array(data.size, dtype=np.int64)


def reshaped_shape(in_shape, requested, allowzero):
    """The output shape of Reshape: 0 copies the input dim (unless ``allowzero``), -1 is inferred."""
    out = []
    infer = None
    for i, dim in enumerate(requested):
        if dim == -1:
            if infer is not None:
                raise InvalidArgument(f"shape {requested} has more than one -1")
            infer = i
            out.append(1)
        elif dim == 0 and not allowzero:
            if i >= len(in_shape):
                raise InvalidArgument(f"shape {requested} copies dimension {i} (0) but the input "
                                      f"{list(in_shape)} has rank {len(in_shape)}")
            out.append(in_shape[i])
        elif dim < 0:
            raise InvalidArgument(f"shape {requested} has a negative dimension {dim}")
        else:
            out.append(dim)
    total = math.prod(in_shape)
    if infer is not None:
        known = math.prod(out)
        if known == 0 or total % known:
            raise InvalidArgument(f"cannot reshape input of shape {list(in_shape)} to {requested}")
        out[infer] = total // known
    if math.prod(out) != total:
        raise InvalidArgument(f"cannot reshape input of shape {list(in_shape)} ({total} elements) "
                              f"to {requested}")
    return tuple(out)


@register("Reshape", 5)
class Reshape(Op):
    allowzero = 0
    _constant_shape = None     # the shape input when it is a constant (prepare); its checks are done

    def __init__(self):
        self._out_shapes = ShapeCache()   # input shape -> output shape, for the constant shape input

    def prepare(self, constants):
        shape = constants[1] if len(constants) > 1 else None
        if shape is not None:
            try:
                self._requested(shape)
            except InvalidArgument:
                return           # reported when the node runs, like a computed bad shape
            self._constant_shape = shape

    def _requested(self, shape):
        requested = int_list(shape, "shape")
        if self.allowzero and 0 in requested and -1 in requested:
            raise InvalidArgument(f"shape {requested} has both 0 and -1, which allowzero=1 forbids")
        return requested

    def run(self, data, shape):
        if shape is self._constant_shape:
            out_shape = self._out_shapes.get(data.shape)
            if out_shape is None:
                out_shape = self._out_shapes.put(
                    data.shape, reshaped_shape(data.shape, self._requested(shape), self.allowzero))
        else:
            out_shape = reshaped_shape(data.shape, self._requested(shape), self.allowzero)
        return contiguous(data).reshape(out_shape)


@register("Reshape", 14)
class Reshape14(Reshape):
    def __init__(self, allowzero=0):
        super().__init__()
        self.allowzero = int(allowzero)


@register("Flatten", 1)
class Flatten(Op):
    def __init__(self, axis=1):
        self.axis = int(axis)

    def run(self, x):
        rank = x.ndim
        # The axis may equal the rank (everything goes to the outer dimension).
        if not -rank <= self.axis <= rank:
            raise InvalidArgument(f"axis {self.axis} is out of range for rank {rank}")
        axis = self.axis + rank if self.axis < 0 else self.axis
        return contiguous(x).reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _squeeze(x, axes):
    if axes is None:
        return x.reshape(tuple(d for d in x.shape if d != 1))
    axes = normalize_axes(axes, x.ndim)
    bad = [a for a in axes if x.shape[a] != 1]
    if bad:
        raise InvalidArgument(f"cannot squeeze axes {bad} of shape {list(x.shape)}: their size is not 1")
    return x.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))


def _unsqueeze(x, axes):
    rank = x.ndim + len(axes)
    axes = set(normalize_axes(axes, rank))
    dims = iter(x.shape)
    return x.reshape(tuple(1 if i in axes else next(dims) for i in range(rank)))


@register("Squeeze", 1)
class Squeeze(Op):
    def __init__(self, axes=None):
        self.axes = None if axes is None else [int(a) for a in axes]

    def run(self, data):
        return _squeeze(contiguous(data), self.axes)


@register("Squeeze", 13)
class Squeeze13(Op):
    def run(self, data, axes=None):
        return _squeeze(contiguous(data), None if axes is None else int_list(axes, "axes"))


@register("Unsqueeze", 1)
class Unsqueeze(Op):
    def __init__(self, axes=None):
        if axes is None:
            raise InvalidModel("Unsqueeze needs the 'axes' attribute before opset 13")
        self.axes = [int(a) for a in axes]

    def run(self, data):
        return _unsqueeze(contiguous(data), self.axes)


@register("Unsqueeze", 13)
class Unsqueeze13(Op):
    def run(self, data, axes):
        return _unsqueeze(contiguous(data), int_list(axes, "axes"))


@register("Transpose", 1)
class Transpose(Op):
    def __init__(self, perm=None):
        self.perm = None if perm is None else [int(p) for p in perm]
        # The perm's length is the only rank it fits, so it is checked and normalised once, here.
        try:
            self._axes = None if perm is None else tuple(normalize_axes(self.perm, len(self.perm), "perm"))
        except InvalidArgument:
            self._axes = None   # a bad perm is reported when the node runs, with the input's shape

    def run(self, data):
        axes = self._axes
        if axes is None or len(axes) != data.ndim:
            if self.perm is None:
                axes = tuple(range(data.ndim))[::-1]
            else:
                if len(self.perm) != data.ndim:
                    raise InvalidArgument(f"perm {self.perm} does not match the rank of shape {list(data.shape)}")
                axes = normalize_axes(self.perm, data.ndim, "perm")
        moved = _rotation(tuple(axes))
        if moved is not None and data.dtype in _BY_ITEMSIZE and data.size >= _KERNEL_MIN_SIZE:
            lead, split = moved
            shape = data.shape
            rows = math.prod(shape[lead:split])
            if 1 < rows <= kmove.SHORT_AXIS:
                # A short axis (an image's channels) moved to the end: numpy's copy is slow at this one.
                n, cols = math.prod(shape[:lead]), math.prod(shape[split:])
                out = np.empty(tuple(shape[a] for a in axes), data.dtype)
                view = _BY_ITEMSIZE[data.dtype]
                kmove.short_axis_to_end(contiguous(data).reshape(n, rows, cols).view(view),
                                        out.reshape(n, cols, rows).view(view))
                return out
        elif data.size >= WORK_PER_THREAD and data.dtype in _BY_ITEMSIZE and threads_for(data.size) > 1:
            swap = _block_swap(tuple(axes))
            if swap is not None and math.prod(data.shape[swap[2]:]) >= _MIN_BLOCK:
                # Two axis groups swapped above trailing axes that stay (ShuffleNet's channel
                # shuffle): whole trailing blocks copied, split across threads; numpy's copy is serial.
                lead, split, trail = swap
                shape = data.shape
                n, rows = math.prod(shape[:lead]), math.prod(shape[lead:split])
                cols, block = math.prod(shape[split:trail]), math.prod(shape[trail:])
                out = np.empty(tuple(shape[a] for a in axes), data.dtype)
                view = _BY_ITEMSIZE[data.dtype]
                kmove.swap_middle_axes(contiguous(data).reshape(n, rows, cols, block).view(view),
                                       out.reshape(n, cols, rows, block).view(view))
                return out
        return contiguous(data.transpose(axes))


# Fixed-size types moved as unsigned integers of their width: one compiled copy per width.
_BY_ITEMSIZE = {np.dtype(t): np.dtype(f"u{np.dtype(t).itemsize}")
                for t in (np.uint8, np.int8, np.bool_, np.uint16, np.int16, np.float16, np.uint32, np.int32,
                          np.float32, np.uint64, np.int64, np.float64)}
_KERNEL_MIN_SIZE = 4096
# Trailing blocks shorter than this are left to numpy's copy (a block is one vectorized copy loop).
_MIN_BLOCK = 16


@functools.lru_cache(maxsize=256)
def _block_swap(axes):
    """(lead, split, trail) when ``axes`` keeps [trail, rank) in place and rotates [0, trail) as
    :func:`_rotation` describes; else None."""
    trail = len(axes)
    while trail and axes[trail - 1] == trail - 1:
        trail -= 1
    if trail == len(axes):
        return None
    moved = _rotation(axes[:trail])
    return None if moved is None else moved + (trail,)


@functools.lru_cache(maxsize=256)
def _rotation(axes):
    """(lead, split) when ``axes`` keeps axes [0, lead) in place and moves the group [lead, split)
    after [split, rank) (NCHW -> NHWC is (1, 2)); else None."""
    lead = 0
    while lead < len(axes) and axes[lead] == lead:
        lead += 1
    if lead == len(axes):
        return None
    split = axes[lead]
    if axes[lead:] != tuple(range(split, len(axes))) + tuple(range(lead, split)):
        return None
    return lead, split
