"""Resize and Upsample on the device: tap tables from the CPU twin's geometry
(:mod:`qrt.ops.resize`), then one gather (nearest) or one weighted pass (linear, cubic) per resized
axis on the device (:mod:`qrt.kernels.cuda.resize`). Integer data and tf_crop_and_resize
extrapolation run the CPU twin."""
from __future__ import annotations

import numpy as np

from ...kernels.cpu import resize as cpu_k
from ...kernels.cuda import device as dev
from ...kernels.cuda import elementwise as ke
from ...kernels.cuda import movement as km
from ...kernels.cuda import resize as k
from .base import CudaOp, twin

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class _Resize(CudaOp):
    device_inputs = (0,)

    def _resample_device(self, X, targets):
        if X.dtype not in _FLOATS or X.size == 0:
            raise dev.Unsupported(f"device Resize of {X.dtype} or an empty input")
        y = self.device(0, X)
        interpolate = self.mode != "nearest"
        if interpolate:
            y = ke.apply_unary("identity", y, dev.empty(y.shape, np.float64))
        for axis, (scale, out_len, target_len, roi_start, roi_end) in enumerate(targets):
            length = y.shape[axis]
            if self._is_identity(length, scale, out_len, roi_start, roi_end):
                continue
            if out_len == 0:
                raise dev.Unsupported("empty Resize output")
            coords = np.empty(out_len)
            outside = np.empty(out_len, dtype=np.bool_)
            cpu_k.source_coordinates(out_len, length, scale, target_len, self.coordinate_mode, roi_start, roi_end,
                                     coords, outside)
            if outside.any():
                raise dev.Unsupported("tf_crop_and_resize extrapolation")
            outer = int(np.prod(y.shape[:axis], dtype=np.int64))
            inner = int(np.prod(y.shape[axis + 1:], dtype=np.int64))
            shape = tuple(y.shape[:axis]) + (out_len,) + tuple(y.shape[axis + 1:])
            out = dev.empty(shape, y.dtype)
            if not interpolate:
                index = np.empty(out_len, dtype=np.int64)
                cpu_k.nearest_indices(coords, length, self.nearest_mode, scale < 1.0, index)
                km.gather(y, dev.upload(index), out, outer, length, inner)
            else:
                index, weight = self._taps(coords, length, scale)
                k.resample_axis(y.reshape(outer, length, inner), dev.upload(index), dev.upload(weight),
                                out.reshape(outer, out_len, inner))
            y = out
        if y.dtype != X.dtype:
            y = ke.apply_unary("identity", y, dev.empty(y.shape, X.dtype))
        elif y is self.device(0, X):
            y = ke.apply_unary("identity", y, dev.empty(y.shape, X.dtype))
        return y


@twin("Resize")
class Resize(_Resize):
    def run_device(self, X, roi=None, scales=None, sizes=None):
        if self.since_version < 11:
            return self._resample_device(X, self._targets(X.shape, None, self.host(roi), None))
        return self._resample_device(X, self._targets(X.shape, self.host(roi), self.host(scales), self.host(sizes)))


@twin("Upsample")
class Upsample(_Resize):
    def run_device(self, X, scales=None):
        scales = self.scales if self.since_version < 9 else self.host(scales)
        scales = np.asarray(scales, dtype=np.float64).ravel()
        if scales.size != X.ndim or np.any(scales < 1):
            raise dev.Unsupported("invalid Upsample scales (the CPU twin reports them)")
        return self._resample_device(X, self._targets(X.shape, None, scales, None))
