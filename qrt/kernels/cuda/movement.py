"""Data movement on the device: the CUDA twin of :mod:`qrt.kernels.cpu.movement`.

Nearly every movement op is one strided copy: Transpose, Slice (any steps, negative included),
Concat and Split (copies into or out of a window of a larger tensor), Expand and Tile (stride-0
axes), Pad (a fill, then a copy into the interior), DepthToSpace/SpaceToDepth (a transpose of a
reshaped view). :func:`copy_strided` walks an iteration shape with one element stride per axis for
the source and one for the destination, both flat contiguous device arrays with an element
offset. :func:`gather` picks rows of an ``(outer, dim, inner)`` tensor by index.
"""
from __future__ import annotations

from numba import cuda

from . import config
from . import device as dev


@dev.kernel_factory
def _strided_copy():
    @cuda.jit
    def kernel(src, src_offset, dst, dst_offset, n, ndim, dims, src_strides, dst_strides):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            rem = i
            s = src_offset
            t = dst_offset
            for d in range(ndim - 1, -1, -1):
                size = dims[d]
                q = rem // size
                idx = rem - q * size
                rem = q
                s += idx * src_strides[d]
                t += idx * dst_strides[d]
            dst[t] = src[s]
            i += step

    return kernel


@dev.kernel_factory
def _fill():
    @cuda.jit
    def kernel(out, value, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            out[i] = value
            i += step

    return kernel


@dev.kernel_factory
def _gather():
    @cuda.jit
    def kernel(data, index, out, outer, dim, n_index, inner):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        n = outer * n_index * inner
        while i < n:
            c = i % inner
            rest = i // inner
            j = rest % n_index
            o = rest // n_index
            out[i] = data[(o * dim + index[j]) * inner + c]
            i += step

    return kernel


def copy_strided(src, src_offset, src_strides, dst, dst_offset, dst_strides, shape):
    """``dst[dst_offset + sum(i_d * dst_strides[d])] = src[src_offset + sum(i_d * src_strides[d])]``
    over every index of ``shape``; strides in elements, ``src``/``dst`` contiguous device arrays."""
    n = 1
    for s in shape:
        n *= int(s)
    if n == 0:
        return dst
    ndim, dims, (ss, ds) = dev.merge_dims(shape, [src_strides, dst_strides])
    dev.launch(_strided_copy(), dev.blocks_for(n), config.THREADS, dev.flat(src), int(src_offset), dev.flat(dst),
               int(dst_offset), n, ndim, dims, ss, ds)
    return dst


def transpose(x, perm, out):
    strides = dev.contiguous_strides(x.shape)
    return copy_strided(x, 0, [strides[p] for p in perm], out, 0, dev.contiguous_strides(out.shape), out.shape)


def fill(out, value):
    n = out.size
    if n:
        dev.launch(_fill(), dev.blocks_for(n), config.THREADS, dev.flat(out), out.dtype.type(value), n)
    return out


def gather(data, index, out, outer, dim, inner):
    """``out (outer, n, inner)[o, j, c] = data (outer, dim, inner)[o, index[j], c]``; ``index`` int64 in range."""
    n = out.size
    if n:
        dev.launch(_gather(), dev.blocks_for(n), config.THREADS, dev.flat(data), dev.flat(index), dev.flat(out),
                   int(outer), int(dim), int(index.size), int(inner))
    return out
