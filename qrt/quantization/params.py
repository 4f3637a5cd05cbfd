"""Scale/zero-point parameters of one tensor, and the constant quantization the rewrites share.

All the arithmetic goes through :mod:`qrt.qmath`, so a scale or zero point computed here is the
one qrt's kernels (and onnxruntime's) will use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

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
    block_size: int = 0     # blocked (opset 21): the scale has ceil(n / block_size) entries along axis

    @property
    def per_axis(self) -> bool:
        return self.scale.ndim == 1

    def axis_attributes(self) -> dict:
        """The ``axis`` / ``block_size`` attributes of the DequantizeLinear that reads these parameters."""
        if self.block_size:
            return {"axis": self.axis, "block_size": self.block_size}
        return {"axis": self.axis} if self.per_axis else {}

    def representable(self) -> tuple[float, float]:
        """The smallest and largest real values the quantized type can hold with these parameters."""
        qmin, qmax = qmath.qrange(self.qtype.tensor_type)
        zp = self.zero_point.astype(np.float64)
        scale = self.scale.astype(np.float64)
        return float(np.max((qmin - zp) * scale)), float(np.min((qmax - zp) * scale))


def params_for_range(rmin, rmax, qtype: QuantType, symmetric=False, reduce_range=False, axis=None,
                     min_real_range=None, restricted=False) -> QParams:
    """Parameters mapping [rmin, rmax] onto ``qtype``.

    ``min_real_range`` is onnxruntime's MinimumRealRange; ``restricted`` its
    ActivationRestrictedAsymmetric (uint8 only: the zero point snaps to 0, or to the middle of the
    range when rmin < 0, and the scale grows to keep [rmin, rmax] representable).
    """
    if restricted and qtype == QuantType.QUInt8 and not symmetric and axis is None:
        return _snapped_uint8(float(rmin), float(rmax), reduce_range, min_real_range)
    scale, zero_point = qmath.compute_scale_zero_point(rmin, rmax, qtype.tensor_type, symmetric=symmetric,
                                                       reduce_range=reduce_range, min_real_range=min_real_range)
    return QParams(np.asarray(scale, np.float32), np.asarray(zero_point), qtype, axis)


def _snapped_uint8(rmin, rmax, reduce_range, min_real_range) -> QParams:
    qmin, qmax = qmath.qrange(QuantType.QUInt8.tensor_type, reduce_range=reduce_range)
    middle = (qmin + qmax + 1) // 2
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    if min_real_range:
        rmax = max(rmax, rmin + float(min_real_range))
    if rmax <= rmin:
        zero_point = qmin if rmin >= 0.0 else middle
        levels = (qmax - qmin) if zero_point == qmin else max(1, (qmax - qmin) // 2)
        scale = (max(abs(rmin), abs(rmax)) or 1.0) / max(1, levels)
    elif rmin >= 0.0:
        zero_point, scale = qmin, rmax / (qmax - qmin)
    else:
        zero_point = middle
        scale = max(-rmin / (middle - qmin), rmax / (qmax - middle))
    if min_real_range and scale < min_real_range / (qmax - qmin):
        scale = min_real_range / (qmax - qmin)
    return QParams(np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8), QuantType.QUInt8)


def params_for_values(values: np.ndarray, qtype: QuantType, symmetric=False, reduce_range=False,
                      axis=None, min_real_range=None) -> QParams:
    """Parameters covering a constant's values, per tensor or per slice along ``axis``."""
    values = np.asarray(values, np.float32)
    if values.size == 0:
        return params_for_range(0.0, 0.0, qtype, symmetric, reduce_range)
    if axis is None:
        return params_for_range(values.min(), values.max(), qtype, symmetric, reduce_range,
                                min_real_range=min_real_range)
    other = tuple(i for i in range(values.ndim) if i != axis)
    return params_for_range(values.min(axis=other), values.max(axis=other), qtype, symmetric, reduce_range,
                            axis=axis, min_real_range=min_real_range)


def half_scaled(params: QParams) -> QParams:
    """The parameters of a float16 tensor: the scale rounded to float16, as it is stored."""
    return QParams(np.asarray(params.scale).astype(np.float16), params.zero_point, params.qtype, params.axis,
                   params.block_size)


def fixed_params(scale, zero_point, qtype: QuantType, axis=None, size=None) -> QParams:
    """Parameters given by the user (TensorQuantOverrides' scale and zero_point)."""
    scale = np.asarray(scale, np.float32)
    zero_point = np.asarray(zero_point).astype(qtype.dtype)
    if size is not None:
        scale, zero_point = np.full(size, scale, np.float32), np.full(size, zero_point, qtype.dtype)
    return QParams(scale, zero_point, qtype, axis)


def widened_for_bias(params: QParams, input_scale, bias) -> QParams:
    """Weight parameters whose scale is raised where input_scale * weight_scale is too small for the
    bias to fit int32 (onnxruntime's QDQ adjustment; symmetric int8/int16 weights only).

    The smallest valid bias scale is 1.0001 * 2 * |bias| / (2**32 - 2), per channel or for the
    tensor's largest magnitude.
    """
    if params.qtype not in (QuantType.QInt8, QuantType.QInt16) or np.any(params.zero_point != 0):
        return params
    bias = np.asarray(bias, np.float64).reshape(-1)
    if bias.size == 0:
        return params
    levels = float(INT32_MAX) - float(INT32_MIN + 1)
    input_scale = float(np.asarray(input_scale, np.float64).reshape(-1)[0])
    scale = params.scale.astype(np.float64)
    if params.per_axis:
        if bias.size != scale.size:
            return params
        smallest = 1.0001 * 2.0 * np.abs(bias) / levels
    else:
        smallest = 1.0001 * 2.0 * max(abs(min(bias.min(), 0.0)), abs(max(bias.max(), 0.0))) / levels
    candidate = input_scale * scale
    too_small = (candidate < smallest) & (candidate > 0.0)
    if not np.any(too_small):
        return params
    widened = np.where(too_small, scale * (smallest / np.where(too_small, candidate, 1.0)), scale)
    return QParams(widened.astype(np.float32).reshape(params.scale.shape), params.zero_point, params.qtype,
                   params.axis)


def quantize_values(values: np.ndarray, params: QParams) -> np.ndarray:
    return qmath.quantize(np.asarray(values, np.float32), params.scale, params.zero_point,
                          params.qtype.tensor_type, axis=params.axis, block_size=params.block_size)


def params_for_blocks(values: np.ndarray, qtype: QuantType, axis: int, block_size: int, symmetric: bool) -> QParams:
    """Blocked parameters of a rank-2 weight: one scale per ``block_size`` consecutive values along
    ``axis`` (onnxruntime's BlockSize; ranges include 0, a block of zeros gets scale 1)."""
    values = np.asarray(values, np.float32)
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    n_blocks = -(-moved.shape[0] // block_size)
    padded = np.zeros((n_blocks * block_size, moved.shape[1]), np.float32)
    padded[:moved.shape[0]] = moved
    blocks = padded.reshape(n_blocks, block_size, -1)
    rmin, rmax = blocks.min(axis=1), blocks.max(axis=1)
    params = params_for_range(rmin, rmax, qtype, symmetric=symmetric)
    scale = np.moveaxis(params.scale.reshape(n_blocks, -1), 0, axis)
    zero_point = np.moveaxis(params.zero_point.reshape(n_blocks, -1), 0, axis)
    return QParams(np.ascontiguousarray(scale), np.ascontiguousarray(zero_point), qtype, axis, block_size)


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
    return _parameter_tensor(np.asarray(params.scale), params.qtype, name, is_scale=True)


def zero_point_tensor(params: QParams, name: str):
    return _parameter_tensor(np.asarray(params.zero_point), params.qtype, name, is_scale=False)


def _parameter_tensor(values: np.ndarray, qtype: QuantType, name: str, is_scale: bool):
    """A scale or zero point stored as onnxruntime's tool stores it: typed fields (float_data,
    int32_data), not raw_data, so a reader of ``int32_data[0]`` sees the value too."""
    flat = values.reshape(-1)
    if not is_scale:
        elem, flat = qtype.tensor_type, flat.astype(np.int32)
    elif values.dtype == np.float16:
        elem = onnx.TensorProto.FLOAT16
    else:
        elem, flat = onnx.TensorProto.FLOAT, flat.astype(np.float32)
    return helper.make_tensor(name, elem, list(values.shape), flat.tolist())
