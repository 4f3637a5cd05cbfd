"""Pooling: MaxPool, AveragePool, LpPool and their Global forms, 1 to 3 spatial axes.

Inputs become the canonical ``(planes, D, H, W)`` layout (planes = N*C) so one compiled kernel per
dtype covers every rank. Averages and Lp norms compute in float32/float64 (narrower floats in
float32); MaxPool on int8, uint8 and float16 runs in float32, which holds those values exactly, so
it stays a pure selection of input values.
"""
import math

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import pool as k
from ..kernels.cpu.threads import call_with_threads, num_threads, threads_for
from ..registry import register
from .base import Op, ShapeCache, is_half_float
from .conv import MAX_SPATIAL_AXES, check_auto_pad, compute_dtype, pack_geometry, spatial_list, window_geometry


def _planes(x, dtype, op_type):
    if x.ndim < 3 or x.ndim - 2 > MAX_SPATIAL_AXES:
        raise InvalidArgument(f"{op_type} input X has shape {x.shape}; qrt supports (N, C, spatial...) with "
                              f"1 to {MAX_SPATIAL_AXES} spatial axes")
    lead = (1,) * (MAX_SPATIAL_AXES - (x.ndim - 2))
    return np.ascontiguousarray(x.reshape((-1,) + lead + x.shape[2:]), dtype=dtype)


class _WindowPool(Op):
    """Attribute parsing and window geometry shared by the windowed pools."""

    op_name = ""

    def __init__(self, kernel_shape=None, auto_pad="NOTSET", pads=None, strides=None, dilations=None,
                 ceil_mode=0):
        if kernel_shape is None:
            raise InvalidModel("kernel_shape is required")
        self.kernel_shape = [int(v) for v in kernel_shape]
        if any(v < 1 for v in self.kernel_shape):
            raise InvalidModel(f"kernel_shape must be >= 1, got {self.kernel_shape}")
        self.auto_pad = check_auto_pad(auto_pad)
        self.pads = pads
        self.strides = strides
        self.dilations = dilations
        self.ceil_mode = int(ceil_mode)
        for name, values in (("dilations", dilations), ("strides", strides)):
            if values is not None and any(int(v) < 1 for v in values):
                raise InvalidModel(f"{name} must be >= 1, got {list(values)}")
        self._geometries = ShapeCache()

    def _bound_geometry(self, x):
        """:meth:`_geometry`, worked out once per input shape (the kernels only read it)."""
        return self._bound_shape_geometry(x.shape)

    def _bound_shape_geometry(self, shape):
        bound = self._geometries.get(shape)
        if bound is None:
            bound = self._geometries.put(shape, self._shape_geometry(shape))
        return bound

    def _geometry(self, x):
        return self._shape_geometry(x.shape)

    def _shape_geometry(self, shape):
        """(geom, pads_end, output sizes) of an (N, C, spatial...) input shape."""
        n_axes = len(shape) - 2
        if len(self.kernel_shape) != n_axes:
            raise InvalidArgument(f"kernel_shape {self.kernel_shape} does not fit input {shape}")
        strides = spatial_list(self.strides, n_axes, 1, "strides")
        dilations = spatial_list(self.dilations, n_axes, 1, "dilations")
        begins, ends, outs = window_geometry(shape[2:], self.kernel_shape, strides, dilations, self.auto_pad,
                                             self.pads, bool(self.ceil_mode))
        if any(o < 1 for o in outs):
            raise InvalidArgument(f"{self.op_type} output would be empty: input {shape}, kernel "
                                  f"{self.kernel_shape}, strides {strides}, pads {self.pads}")
        geom = pack_geometry(self.kernel_shape, strides, dilations, begins)
        ends3 = np.array([0] * (MAX_SPATIAL_AXES - n_axes) + ends, dtype=np.int64)
        return geom, ends3, tuple(outs)

    def _output(self, x, outs, dtype):
        return np.empty((x.shape[0] * x.shape[1],) + (1,) * (MAX_SPATIAL_AXES - len(outs)) + outs,
                        dtype=dtype)


def _max_pool_dtype(x):
    if x.dtype in (np.float32, np.float64):
        return x.dtype
    if x.dtype in (np.int8, np.uint8) or is_half_float(x.dtype):
        return np.dtype(np.float32)
    raise InvalidArgument(f"MaxPool takes float, int8 or uint8 tensors, got {x.dtype}")


class _MaxPool(_WindowPool):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", pads=None, strides=None, dilations=None,
                 ceil_mode=0, storage_order=0):
        super().__init__(kernel_shape, auto_pad, pads, strides, dilations, ceil_mode)
        if storage_order not in (0, 1):
            raise InvalidModel(f"storage_order must be 0 (row major) or 1 (column major), got {storage_order}")
        self.storage_order = int(storage_order)

    def run(self, X):
        geom, _, outs = self._bound_geometry(X)
        dtype = _max_pool_dtype(X)
        out_shape = X.shape[:2] + outs
        if X.size == 0:
            y = np.empty(out_shape, dtype=X.dtype)
            return (y, np.empty(out_shape, dtype=np.int64)) if self.n_outputs > 1 else y
        planes = _planes(X, dtype, "MaxPool")
        out = self._output(X, outs, dtype)
        if self.n_outputs > 1:
            indices = np.empty(out.shape, dtype=np.int64)
            k.max_pool_indices(planes, geom, self.storage_order == 1, out, indices)
            return out.reshape(out_shape).astype(X.dtype, copy=False), indices.reshape(out_shape)
        parallel = out.size * math.prod(self.kernel_shape) >= k.PARALLEL_MIN_WORK and num_threads() > 1
        (k.max_pool if parallel else k.max_pool_serial)(planes, geom, out)
        return out.reshape(out_shape).astype(X.dtype, copy=False)


@register("MaxPool", 1)
class MaxPool1(_MaxPool):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", pads=None, strides=None):
        super().__init__(kernel_shape, auto_pad, pads, strides)


@register("MaxPool", 8)
class MaxPool8(_MaxPool):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", pads=None, strides=None, storage_order=0):
        super().__init__(kernel_shape, auto_pad, pads, strides, storage_order=storage_order)


@register("MaxPool", 10)
class MaxPool(_MaxPool):
    pass


@register("NhwcMaxPool", 1, domain="com.microsoft")
class NhwcMaxPool(_WindowPool):
    """com.microsoft NhwcMaxPool: MaxPool of a channels-last (N, spatial..., C) int8 or uint8 tensor,
    as onnxruntime's layout pass emits it; the maximum runs on the bytes, vectorized over channels."""

    def __init__(self, kernel_shape=None, auto_pad="NOTSET", pads=None, strides=None, dilations=None,
                 ceil_mode=0, storage_order=0):
        super().__init__(kernel_shape, auto_pad, pads, strides, dilations, ceil_mode)

    def run(self, x):
        if x.dtype not in (np.uint8, np.int8):
            raise InvalidArgument(f"NhwcMaxPool takes int8 or uint8 tensors, got {x.dtype}")
        if x.ndim < 3 or x.ndim - 2 > MAX_SPATIAL_AXES:
            raise InvalidArgument(f"NhwcMaxPool input has shape {x.shape}; qrt supports (N, spatial..., C) with "
                                  f"1 to {MAX_SPATIAL_AXES} spatial axes")
        n, C = x.shape[0], x.shape[-1]
        geom, _, outs = self._bound_shape_geometry((n, C) + x.shape[1:-1])
        lead = (1,) * (MAX_SPATIAL_AXES - len(outs))
        out = np.empty((n,) + lead + outs + (C,), x.dtype)
        if out.size:
            x5 = np.ascontiguousarray(x).reshape((n,) + lead + x.shape[1:-1] + (C,))
            # Small pools on one thread: waking the others costs more than their share.
            threads = num_threads() if out.size * math.prod(self.kernel_shape) >= k.PARALLEL_MIN_WORK else 1
            call_with_threads(threads, k.max_pool_nhwc, x5, geom, _LOWEST[x.dtype], out)
        return out.reshape((n,) + outs + (C,))


# The pool's starting value per 8-bit type (np.iinfo costs ~1 us a call).
_LOWEST = {np.dtype(t): t(np.iinfo(t).min) for t in (np.uint8, np.int8)}


class _SumPool(_WindowPool):
    """AveragePool and LpPool: a windowed sum, then a divide or a p-th root."""

    mode = k.MODE_AVERAGE

    def __init__(self, kernel_shape=None, auto_pad="NOTSET", pads=None, strides=None, dilations=None,
                 ceil_mode=0, count_include_pad=0, p=2):
        super().__init__(kernel_shape, auto_pad, pads, strides, dilations, ceil_mode)
        self.count_include_pad = int(count_include_pad)
        self.p = _lp_exponent(p)

    def run(self, X):
        geom, ends, outs = self._bound_geometry(X)
        dtype = compute_dtype(X, self.op_type)
        out_shape = X.shape[:2] + outs
        if X.size == 0:
            return np.empty(out_shape, dtype=X.dtype)
        if self._covers_plane(X, geom, ends, outs):
            # One window over each whole plane (a classifier head's 7x7 average): the global kernel
            # sums the plane in one vectorized sweep where the windowed one walks it row by row.
            planes = X.shape[0] * X.shape[1]
            out = np.empty(planes, dtype=dtype)
            _global_pool(np.ascontiguousarray(X.reshape(planes, -1), dtype=dtype), _GLOBAL_MODE[self.mode], self.p,
                         out)
            return out.reshape(out_shape).astype(X.dtype, copy=False)
        out = self._output(X, outs, dtype)
        planes = _planes(X, dtype, self.op_type)
        small_2d = self.mode == k.MODE_AVERAGE and planes.shape[1] == 1 and \
            planes.shape[2] * planes.shape[3] <= SMALL_PLANE
        # Small pools on one thread: waking the others costs more than their share.
        threads = threads_for(out.size * math.prod(self.kernel_shape))
        if small_2d:
            call_with_threads(threads, k.average_pool_small, planes, geom, ends, self.count_include_pad, out)
        else:
            call_with_threads(threads, k.sum_pool, planes, geom, ends, self.mode, self.p, self.count_include_pad, out)
        return out.reshape(out_shape).astype(X.dtype, copy=False)

    def _covers_plane(self, X, geom, ends, outs):
        return all(o == 1 for o in outs) and tuple(self.kernel_shape) == X.shape[2:] and \
            not any(geom[9:12]) and not any(ends) and all(d == 1 for d in geom[6:9])


_GLOBAL_MODE = {k.MODE_AVERAGE: k.GLOBAL_AVERAGE, k.MODE_LP: k.GLOBAL_LP}
# Plane size (H * W) up to which a 2-D AveragePool sweeps whole planes (k.average_pool_small): the
# row-by-row kernel's dozen short loops per output row were most of its time on 7-28 wide planes.
SMALL_PLANE = 64 * 64


def _lp_exponent(p):
    # LpPool-1 declared p a float; every later version an int. Integral values are all that models use.
    if float(p) != int(p) or int(p) < 1:
        raise InvalidModel(f"p must be a positive integer, got {p}")
    return int(p)


@register("AveragePool", 1)
class AveragePool1(_SumPool):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", pads=None, strides=None):
        super().__init__(kernel_shape, auto_pad, pads, strides)


@register("AveragePool", 7)
class AveragePool7(_SumPool):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", count_include_pad=0, pads=None, strides=None):
        super().__init__(kernel_shape, auto_pad, pads, strides, count_include_pad=count_include_pad)


@register("AveragePool", 10)
class AveragePool10(_SumPool):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, pads=None,
                 strides=None):
        super().__init__(kernel_shape, auto_pad, pads, strides, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad)


@register("AveragePool", 19)
class AveragePool(_SumPool):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                 pads=None, strides=None):
        super().__init__(kernel_shape, auto_pad, pads, strides, dilations, ceil_mode, count_include_pad)


@register("LpPool", 1)
class LpPool1(_SumPool):
    mode = k.MODE_LP

    def __init__(self, kernel_shape=None, auto_pad="NOTSET", p=2.0, pads=None, strides=None):
        super().__init__(kernel_shape, auto_pad, pads, strides, p=p)


@register("LpPool", 2)
class LpPool2(LpPool1):
    def __init__(self, kernel_shape=None, auto_pad="NOTSET", p=2, pads=None, strides=None):
        super().__init__(kernel_shape, auto_pad, p, pads, strides)


@register("LpPool", 18)
class LpPool(_SumPool):
    mode = k.MODE_LP

    def __init__(self, kernel_shape=None, auto_pad="NOTSET", ceil_mode=0, dilations=None, p=2, pads=None,
                 strides=None):
        super().__init__(kernel_shape, auto_pad, pads, strides, dilations, ceil_mode, p=p)


class _GlobalPool(Op):
    mode = k.GLOBAL_AVERAGE
    p = 2

    def run(self, X):
        if X.ndim < 3:
            raise InvalidArgument(f"{self.op_type} input X has shape {X.shape}; expected (N, C, spatial...)")
        dtype = compute_dtype(X, self.op_type)
        out_shape = X.shape[:2] + (1,) * (X.ndim - 2)
        planes = X.shape[0] * X.shape[1]
        if X.size == 0:
            if planes and self.mode == k.GLOBAL_MAX:
                raise InvalidArgument(f"{self.op_type} of an empty spatial extent: input {X.shape}")
            return np.zeros(out_shape, dtype=X.dtype)
        out = np.empty(planes, dtype=dtype)
        _global_pool(np.ascontiguousarray(X.reshape(planes, -1), dtype=dtype), self.mode, self.p, out)
        return out.reshape(out_shape).astype(X.dtype, copy=False)


def _global_pool(x2, mode, p, out):
    """``k.global_pool`` over the rows of ``x2``, the rows split across threads when there is enough work."""
    kernel = k.global_pool_parallel if x2.shape[0] > 1 and threads_for(x2.size) > 1 else k.global_pool
    kernel(x2, mode, p, out)


@register("GlobalAveragePool", 1)
class GlobalAveragePool(_GlobalPool):
    mode = k.GLOBAL_AVERAGE


@register("GlobalMaxPool", 1)
class GlobalMaxPool(_GlobalPool):
    mode = k.GLOBAL_MAX


@register("GlobalLpPool", 1)
class GlobalLpPool1(_GlobalPool):
    mode = k.GLOBAL_LP

    def __init__(self, p=2.0):
        self.p = _lp_exponent(p)


@register("GlobalLpPool", 2)
class GlobalLpPool(GlobalLpPool1):
    def __init__(self, p=2):
        super().__init__(p)
