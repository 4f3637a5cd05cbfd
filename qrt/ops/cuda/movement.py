"""Data-movement CUDA ops: Concat, Split, Slice, Gather, Expand, Tile, Pad (constant mode),
DepthToSpace and SpaceToDepth, each a strided copy or a gather on the device
(:mod:`qrt.kernels.cuda.movement`). Index and shape inputs are read on the host. The CPU twins
are :mod:`qrt.ops.movement` and :mod:`qrt.ops.resize`."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import movement as k
from ..movement import checked_indices
from ..shape import int_list, normalize_axes, normalize_axis
from .base import CudaOp, twin
from .elementwise import require_device_dtypes


def _window_copy(x, starts, steps, out_shape):
    """The contiguous copy of x[start_d :: step_d] (out_shape elements per axis)."""
    strides = dev.contiguous_strides(x.shape)
    offset = sum(s * st for s, st in zip(starts, strides))
    out = dev.empty(out_shape, x.dtype)
    return k.copy_strided(x, offset, [st * sp for st, sp in zip(strides, steps)], out, 0,
                          dev.contiguous_strides(out_shape), out_shape)


@twin("Concat")
class Concat(CudaOp):
    def run_device(self, *inputs):
        require_device_dtypes(*inputs)
        first = inputs[0]
        if first.ndim == 0:
            raise InvalidArgument("Concat inputs must have rank >= 1, got a scalar")
        axis = normalize_axis(self.axis, first.ndim)
        for i, x in enumerate(inputs[1:], 1):
            if x.dtype != first.dtype:
                raise InvalidArgument(f"input {i} has dtype {x.dtype}, input 0 has {first.dtype}")
            if x.ndim != first.ndim or any(a != b for d, (a, b) in enumerate(zip(x.shape, first.shape)) if d != axis):
                raise InvalidArgument(f"input {i} of shape {list(x.shape)} does not match input 0 of shape "
                                      f"{list(first.shape)} outside axis {axis}")
        return concatenate([self.device(i, x) for i, x in enumerate(inputs)], axis)


def concatenate(arrays, axis):
    """Device arrays of one dtype, equal outside ``axis``, joined along it (one copy per array)."""
    if len(arrays) == 1:
        return arrays[0]
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    out = dev.empty(shape, arrays[0].dtype)
    out_strides = dev.contiguous_strides(shape)
    begin = 0
    for a in arrays:
        k.copy_strided(a, 0, dev.contiguous_strides(a.shape), out, begin * out_strides[axis], out_strides, a.shape)
        begin += a.shape[axis]
    return out


def split_sizes(dim, axis, sizes, num_outputs, n_outputs):
    """Chunk lengths of Split, as the CPU op computes them (``qrt.ops.movement.split_array``)."""
    if sizes is not None:
        if len(sizes) != n_outputs or any(s < 0 for s in sizes) or sum(sizes) != dim:
            raise InvalidArgument(f"split {sizes} does not divide axis {axis} of size {dim} into {n_outputs} outputs")
        return sizes
    if num_outputs is not None:
        if num_outputs != n_outputs:
            raise InvalidArgument(f"num_outputs={num_outputs} but the node has {n_outputs} outputs")
        chunk = -(-dim // num_outputs)
        sizes = [chunk] * (num_outputs - 1) + [dim - chunk * (num_outputs - 1)]
        if sizes[-1] < 0:
            raise InvalidArgument(f"axis {axis} of size {dim} cannot be split into {num_outputs} chunks of {chunk}")
        return sizes
    if dim % n_outputs:
        raise InvalidArgument(f"axis {axis} of size {dim} cannot be split evenly into {n_outputs} outputs")
    return [dim // n_outputs] * n_outputs


@twin("Split")
class Split(CudaOp):
    device_inputs = (0,)

    def run_device(self, x, split=None):
        if self.since_version < 13:
            sizes = self.split
        else:
            sizes = None if split is None else int_list(self.host(split), "split")
        num_outputs = getattr(self, "num_outputs", None)
        if sizes is not None and num_outputs is not None:
            raise InvalidArgument("Split takes either the 'split' input or 'num_outputs', not both")
        a = self.device(0, x)
        axis = normalize_axis(self.axis, a.ndim)
        sizes = split_sizes(a.shape[axis], axis, sizes, num_outputs, self.n_outputs)
        outputs, begin = [], 0
        for size in sizes:
            starts = [0] * a.ndim
            starts[axis] = begin
            shape = list(a.shape)
            shape[axis] = size
            outputs.append(_window_copy(a, starts, [1] * a.ndim, shape))
            begin += size
        return tuple(outputs)


def slice_window(shape, starts, ends, axes=None, steps=None):
    """(starts, steps, out_shape) per axis of ONNX Slice, clamped as the spec says (opset 10+)."""
    if len(starts) != len(ends):
        raise InvalidArgument(f"starts {starts} and ends {ends} differ in length")
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else normalize_axes(axes, rank)
    steps = [1] * len(starts) if steps is None else steps
    if len(axes) != len(starts) or len(steps) != len(starts):
        raise InvalidArgument(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    first, stride, out_shape = [0] * rank, [1] * rank, list(shape)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise InvalidArgument(f"slice step on axis {axis} is 0")
        dim = shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        first[axis], stride[axis] = start, step
        out_shape[axis] = len(range(start, end, step))
    return first, stride, out_shape


@twin("Slice")
class Slice(CudaOp):
    device_inputs = (0,)

    def run_device(self, data, starts=None, ends=None, axes=None, steps=None):
        if self.since_version < 10:
            starts, ends, axes, steps = self.starts, self.ends, self.axes, None
        else:
            starts, ends = int_list(self.host(starts), "starts"), int_list(self.host(ends), "ends")
            axes = None if axes is None else int_list(self.host(axes), "axes")
            steps = None if steps is None else int_list(self.host(steps), "steps")
        x = self.device(0, data)
        first, stride, out_shape = slice_window(list(x.shape), starts, ends, axes, steps)
        return _window_copy(x, first, stride, out_shape)


@twin("Gather")
class Gather(CudaOp):
    device_inputs = (0,)

    def run_device(self, data, indices):
        x = self.device(0, data)
        axis = normalize_axis(self.axis, x.ndim)
        index = checked_indices(self.host(indices), x.shape[axis])
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
        out = dev.empty(tuple(x.shape[:axis]) + tuple(index.shape) + tuple(x.shape[axis + 1:]), x.dtype)
        return k.gather(x, dev.upload(index.astype(np.int64).reshape(-1)), out, outer, x.shape[axis], inner)


@twin("Expand")
class Expand(CudaOp):
    device_inputs = (0,)

    def run_device(self, x, shape):
        requested = int_list(self.host(shape), "shape")
        a = self.device(0, x)
        try:
            out_shape = np.broadcast_shapes(tuple(a.shape), tuple(requested))
        except ValueError:
            raise InvalidArgument(f"input of shape {list(a.shape)} cannot expand to {requested}") from None
        out = dev.empty(out_shape, a.dtype)
        return k.copy_strided(a, 0, dev.broadcast_strides(out_shape, a.shape), out, 0,
                              dev.contiguous_strides(out_shape), out_shape)


@twin("Tile")
class Tile(CudaOp):
    device_inputs = (0,)

    def run_device(self, x, repeats):
        reps = int_list(self.host(repeats), "repeats")
        a = self.device(0, x)
        if len(reps) != a.ndim or any(r < 0 for r in reps):
            raise InvalidArgument(f"repeats {reps} must be {a.ndim} non-negative values for shape {list(a.shape)}")
        # Tile is Expand of the interleaved shape (r0, d0, r1, d1, ...) read with stride 0 on the r axes.
        strides = dev.contiguous_strides(a.shape)
        iter_shape, src = [], []
        for r, d, st in zip(reps, a.shape, strides):
            iter_shape += [r, d]
            src += [0, st]
        out_shape = [r * d for r, d in zip(reps, a.shape)]
        out = dev.empty(out_shape, a.dtype)
        return k.copy_strided(a, 0, src, out, 0, dev.contiguous_strides(iter_shape), iter_shape)


@twin("Pad", since_min=11)
class Pad(CudaOp):
    device_inputs = (0,)

    def run_device(self, data, pads, constant_value=None, axes=None):
        if self.mode != "constant":
            raise dev.Unsupported(f"Pad mode {self.mode!r}")
        require_device_dtypes(data)
        x = self.device(0, data)
        rank = x.ndim
        values = int_list(self.host(pads), "pads")
        axes = list(range(rank)) if axes is None else normalize_axes(int_list(self.host(axes), "axes"), rank)
        if len(values) != 2 * len(axes):
            raise InvalidArgument(f"pads {values} must have 2 values per padded axis ({len(axes)} axes)")
        begin, end = [0] * rank, [0] * rank
        for i, a in enumerate(axes):
            begin[a], end[a] = values[i], values[len(axes) + i]
        if any(v < 0 for v in begin + end):
            raise dev.Unsupported("negative pads (cropping)")
        value = 0 if constant_value is None else self.host(constant_value).reshape(-1)
        value = value[0] if np.ndim(value) else value
        out_shape = [d + b + e for d, b, e in zip(x.shape, begin, end)]
        out = k.fill(dev.empty(out_shape, x.dtype), value)
        out_strides = dev.contiguous_strides(out_shape)
        offset = sum(b * s for b, s in zip(begin, out_strides))
        return k.copy_strided(x, 0, dev.contiguous_strides(x.shape), out, offset, out_strides, x.shape)


def _reshape_transpose(x, shape6, perm, out_shape):
    strides = dev.contiguous_strides(shape6)
    iter_shape = [shape6[p] for p in perm]
    out = dev.empty(out_shape, x.dtype)
    return k.copy_strided(x, 0, [strides[p] for p in perm], out, 0, dev.contiguous_strides(iter_shape), iter_shape)


@twin("DepthToSpace")
class DepthToSpace(CudaOp):
    def run_device(self, input):
        if input.ndim != 4 or input.shape[1] % (self.blocksize ** 2):
            raise InvalidArgument(f"DepthToSpace input has shape {list(input.shape)}; expected (N, C, H, W) with C "
                                  f"divisible by blocksize^2 = {self.blocksize ** 2}")
        n, c, h, w = input.shape
        b = self.blocksize
        depth = c // (b * b)
        if self.mode == "DCR":
            shape6, perm = [n, b, b, depth, h, w], [0, 3, 4, 1, 5, 2]
        else:
            shape6, perm = [n, depth, b, b, h, w], [0, 1, 4, 2, 5, 3]
        return _reshape_transpose(self.device(0, input), shape6, perm, [n, depth, h * b, w * b])


@twin("SpaceToDepth")
class SpaceToDepth(CudaOp):
    def run_device(self, input):
        b = self.blocksize
        if input.ndim != 4 or input.shape[2] % b or input.shape[3] % b:
            raise InvalidArgument(f"SpaceToDepth input has shape {list(input.shape)}; expected (N, C, H, W) with H "
                                  f"and W divisible by blocksize = {b}")
        n, c, h, w = input.shape
        perm = [0, 3, 5, 1, 2, 4] if self.mode == "DCR" else [0, 1, 3, 5, 2, 4]
        return _reshape_transpose(self.device(0, input), [n, c, h // b, b, w // b, b], perm,
                                  [n, c * b * b, h // b, w // b])
