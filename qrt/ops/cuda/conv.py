"""Conv on the device: implicit GEMM (grouped included) or the direct depthwise kernel
(:mod:`qrt.kernels.cuda.conv`). Geometry is the CPU twin's (:mod:`qrt.ops.conv`); tensors are
reshaped, never copied, to the canonical (N, C, D, H, W) layout. ConvTranspose stays on the CPU."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import conv as k
from ..conv import MAX_SPATIAL_AXES, _check_ranks, pack_geometry, spatial_list, window_geometry
from .base import CudaOp, twin

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def canonical5(a):
    """``(N, C, *spatial)`` device array as the (N, C, D, H, W) view with unit axes in front."""
    lead = (1,) * (MAX_SPATIAL_AXES - (a.ndim - 2))
    return a.reshape(tuple(a.shape[:2]) + lead + tuple(a.shape[2:]))


@twin("Conv")
class Conv(CudaOp):
    def run_device(self, X, W, B=None):
        _check_ranks("Conv", X, W)
        if X.dtype not in _FLOATS or W.dtype != X.dtype or (B is not None and B.dtype != X.dtype):
            raise dev.Unsupported(f"device Conv of {X.dtype}")
        n_axes = X.ndim - 2
        n_images, channels = X.shape[:2]
        n_out, c_group = W.shape[:2]
        group = self.group
        if c_group * group != channels or n_out % group:
            raise InvalidArgument(f"Conv with group={group}: input X {list(X.shape)} and weight W {list(W.shape)} "
                                  f"disagree (need C = W.shape[1] * group and M divisible by group)")
        kernel = self._kernel(W)
        strides = spatial_list(self.strides, n_axes, 1, "strides")
        dilations = spatial_list(self.dilations, n_axes, 1, "dilations")
        begins, _, out_sizes = window_geometry(list(X.shape[2:]), kernel, strides, dilations, self.auto_pad,
                                               self.pads)
        if any(o < 1 for o in out_sizes):
            raise InvalidArgument(f"Conv output would be empty: input {list(X.shape)}, kernel {kernel}, strides "
                                  f"{strides}, dilations {dilations}, pads {self.pads}")
        if X.size == 0 or W.size == 0:
            raise dev.Unsupported("empty Conv operands")
        if B is not None and tuple(B.shape) != (n_out,):
            raise InvalidArgument(f"Conv bias B has shape {list(B.shape)}; expected ({n_out},)")
        x5 = canonical5(self.device(0, X))
        w = self.device(1, W)
        bias = self.device(2, B)
        geom = pack_geometry(kernel, strides, dilations, begins)
        out_shape = (n_images, n_out) + tuple(out_sizes)
        out = dev.empty(out_shape, X.dtype)
        out5 = canonical5(out)
        if c_group == 1 and group > 1:
            k.conv_depthwise(x5, canonical5(w), bias, geom, out5)
        else:
            k.conv_gemm(x5, w.reshape(n_out, w.size // n_out), bias, geom, group, out5)
        return out
