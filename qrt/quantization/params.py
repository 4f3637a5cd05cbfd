"""Scale/zero-point parameters of one tensor, and the constant quantization the rewrites share.

All the arithmetic goes through :mod:`qrt.qmath`, so a scale or zero point computed here is the
one qrt's kernels (and onnxruntime's) will use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from qrt import qmath

from .types import QuantType

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


@dataclass(frozen=True)
class QParams:
    """Quantization of one tensor: per-tensor (0-d scale) or per-axis (1-D scale along ``axis``)."""

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: QuantType
    axis: int | None = None

    @property
    def per_axis(self) -> bool:
        return self.scale.ndim == 1

    def representable(self) -> tuple[float, float]:
        """The smallest and largest real values the quantized type can hold with these parameters."""
        qmin, qmax = qmath.qrange(self.qtype.tensor_type)
        zp = self.zero_point.astype(np.float64)
        scale = self.scale.astype(np.float64)
        return float(np.max((qmin - zp) * scale)), float(np.min((qmax - zp) * scale))


def params_for_range(rmin, rmax, qtype: QuantType, symmetric=False, reduce_range=False, axis=None) -> QParams:
    scale, zero_point = qmath.compute_scale_zero_point(rmin, rmax, qtype.tensor_type, symmetric=symmetric,
                                                       reduce_range=reduce_range)
    return QParams(np.asarray(scale, np.float32), np.asarray(zero_point), qtype, axis)


def params_for_values(values: np.ndarray, qtype: QuantType, symmetric=False, reduce_range=False,
                      axis=None) -> QParams:
    """Parameters covering a constant's values, per tensor or per slice along ``axis``."""
    values = np.asarray(values, np.float32)
    if values.size == 0:
        return params_for_range(0.0, 0.0, qtype, symmetric, reduce_range)
    if axis is None:
        return params_for_range(values.min(), values.max(), qtype, symmetric, reduce_range)
    other = tuple(i for i in range(values.ndim) if i != axis)
    return params_for_range(values.min(axis=other), values.max(axis=other), qtype, symmetric, reduce_range,
                            axis=axis)


def quantize_values(values: np.ndarray, params: QParams) -> np.ndarray:
    return qmath.quantize(np.asarray(values, np.float32), params.scale, params.zero_point,
                          params.qtype.tensor_type, axis=params.axis)


def quantize_bias(bias: np.ndarray, scale: np.ndarray, axis: int | None):
    """int32 bias for a scale that is (input scale * weight scale), zero point 0.

    Returns (int32 values, number of values that had to be clipped to the int32 range).
    ``qmath.quantize`` covers the 8/16-bit storage types only; int32 needs no storage type, just the
    spec's round-half-to-even and saturation.
    """
    bias = np.asarray(bias, np.float64)
    scale64 = np.asarray(scale, np.float64)
    if axis is not None and scale64.ndim == 1:
        shape = [1] * bias.ndim
        shape[axis] = scale64.size
        scale64 = scale64.reshape(shape)
    q = np.rint(bias / scale64)
    clipped = int(np.count_nonzero((q < INT32_MIN) | (q > INT32_MAX)))
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32), clipped


def scale_tensor(params: QParams, name: str):
    return numpy_helper.from_array(np.asarray(params.scale, np.float32), name)


def zero_point_tensor(params: QParams, name: str):
    return numpy_helper.from_array(np.asarray(params.zero_point), name)
