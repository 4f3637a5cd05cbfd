"""Quantization math shared by the quantizer and the int8 kernels.

One place defines the integer ranges, how a float range becomes a scale and zero point, and how
tensors are quantized and dequantized. The conventions are onnxruntime's, so a model quantized by
qrt gets the same parameters as one quantized by ``onnxruntime.quantization``:

* ``qrange``: the full range of the type; with ``symmetric`` the signed 8/16-bit types drop their
  most negative value (int8 -> [-127, 127]) so the range is symmetric around zero; with
  ``reduce_range`` the 7-bit (resp. 15-bit, 3-bit) ranges, which take precedence over
  ``symmetric``. The reduced signed ranges are onnxruntime's ([-64, 64] for int8, not [-64, 63]).
* ``compute_scale_zero_point``: the range is widened to contain 0 (so that 0.0 is exactly
  representable), optionally made symmetric, the scale is ``(rmax - rmin) / (qmax - qmin)`` in
  float64 then stored as float32; the zero point is ``round_half_even(qmin - rmin / scale)``
  (or the middle of the integer range when symmetric). A scale below float32's smallest normal
  (``rmin == rmax == 0``) becomes scale 1, zero point 0.
* ``quantize`` / ``dequantize``: ONNX QuantizeLinear / DequantizeLinear, per-tensor, per-axis or
  blocked, with round half to even and saturation. The loops are Numba kernels in
  :mod:`qrt.kernels.cpu.quantize`; this module only reshapes and broadcasts.

Quantization types (``qtype``) are accepted as numpy dtypes or scalar types (``np.uint8``),
strings (``"int8"``, ``"int4"``), onnx ``TensorProto`` enum ints, ml_dtypes' ``int4``/``uint4``,
or onnxruntime ``QuantType`` members. 4-bit values are stored in ml_dtypes ``int4``/``uint4``
arrays (one value per byte), which is what onnx and onnxruntime use.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto

from qrt.kernels.cpu import quantize as _kernels

__all__ = [
    "QTYPE_RANGES",
    "QTYPE_SYMMETRIC_RANGES",
    "QTYPE_REDUCED_RANGES",
    "qtype_key",
    "qtype_dtype",
    "qrange",
    "compute_scale_zero_point",
    "quantize",
    "dequantize",
]

_UINT8, _INT8 = np.dtype(np.uint8), np.dtype(np.int8)
_UINT16, _INT16 = np.dtype(np.uint16), np.dtype(np.int16)

QTYPE_RANGES = {
    _UINT8: (0, 255),
    _INT8: (-128, 127),
    _UINT16: (0, 65535),
    _INT16: (-32768, 32767),
    "uint4": (0, 15),
    "int4": (-8, 7),
}

QTYPE_SYMMETRIC_RANGES = {
    _INT8: (-127, 127),
    _INT16: (-32767, 32767),
}

QTYPE_REDUCED_RANGES = {
    _UINT8: (0, 127),
    _INT8: (-64, 64),
    _UINT16: (0, 32767),
    _INT16: (-16384, 16384),
    "uint4": (0, 7),
    "int4": (-4, 3),
}

_STORAGE_DTYPE = {
    _UINT8: _UINT8,
    _INT8: _INT8,
    _UINT16: _UINT16,
    _INT16: _INT16,
    "uint4": np.dtype(ml_dtypes.uint4),
    "int4": np.dtype(ml_dtypes.int4),
}

_FROM_TENSOR_PROTO = {
    TensorProto.UINT8: _UINT8,
    TensorProto.INT8: _INT8,
    TensorProto.UINT16: _UINT16,
    TensorProto.INT16: _INT16,
    TensorProto.UINT4: "uint4",
    TensorProto.INT4: "int4",
}

# Kernel containers for 4-bit values: one byte per value, converted to ml_dtypes at the boundary.
_CONTAINER = {"uint4": _UINT8, "int4": _INT8}

# Above this many elements the parallel kernel variants pay for their thread launch.
PARALLEL_MIN_ELEMENTS = 1 << 16
# Per-tensor quantization splits the flat tensor into rows of this length for the row kernels.
_ROW_CHUNK = 1 << 14


def qtype_key(qtype):
    """Normalizes a quantization type to a key of :data:`QTYPE_RANGES`."""
    tensor_type = getattr(qtype, "tensor_type", None)  # onnxruntime.quantization.QuantType
    if tensor_type is not None:
        qtype = tensor_type
    if isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        key = _FROM_TENSOR_PROTO.get(int(qtype))
        if key is None:
            raise ValueError(f"unsupported quantization type: TensorProto enum {int(qtype)}")
        return key
    if isinstance(qtype, str) and qtype in ("int4", "uint4"):
        return qtype
    try:
        dtype = np.dtype(qtype)
    except TypeError as exc:
        raise ValueError(f"unsupported quantization type: {qtype!r}") from exc
    if dtype == _STORAGE_DTYPE["int4"]:
        return "int4"
    if dtype == _STORAGE_DTYPE["uint4"]:
        return "uint4"
    if dtype not in QTYPE_RANGES:
        raise ValueError(f"unsupported quantization type: {dtype} (expected uint8, int8, uint16, "
                         "int16, uint4 or int4)")
    return dtype


def qtype_dtype(qtype) -> np.dtype:
    """The numpy dtype that stores values of ``qtype`` (ml_dtypes int4/uint4 for 4-bit types)."""
    return _STORAGE_DTYPE[qtype_key(qtype)]


def qrange(qtype, reduce_range=False, symmetric=False):
    """``(qmin, qmax)`` as Python ints, with onnxruntime's precedence: reduce_range, then symmetric."""
    key = qtype_key(qtype)
    if reduce_range:
        return QTYPE_REDUCED_RANGES[key]
    if symmetric and key in QTYPE_SYMMETRIC_RANGES:
        return QTYPE_SYMMETRIC_RANGES[key]
    return QTYPE_RANGES[key]


def compute_scale_zero_point(rmin, rmax, qtype, symmetric=False, reduce_range=False,
                             min_real_range=None):
    """Scale and zero point mapping ``[rmin, rmax]`` onto ``qrange(qtype, reduce_range, symmetric)``.

    ``rmin``/``rmax`` are scalars or arrays of one shape (per-channel ranges). Returns
    ``(scale, zero_point)``: for scalar ranges a ``np.float32`` and a 0-d array of the qtype's
    storage dtype; for arrays, float32 and storage-dtype arrays of the broadcast shape. Bit-identical
    to onnxruntime's ``compute_scale_zp`` with ``get_qmin_qmax_for_qType``'s ranges, applied to
    float32 ranges.
    """
    key = qtype_key(qtype)
    qmin, qmax = qrange(key, reduce_range=reduce_range, symmetric=symmetric)
    rmin = np.asarray(rmin, dtype=np.float32)
    rmax = np.asarray(rmax, dtype=np.float32)
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise ValueError(f"quantization range must be finite, got rmin={rmin}, rmax={rmax}")
    rmin, rmax = np.broadcast_arrays(rmin, rmax)
    rmin = np.minimum(rmin, np.float32(0))
    rmax = np.maximum(rmax, np.float32(0))
    if min_real_range is not None:
        rmax = np.maximum(rmax, rmin + np.float32(min_real_range))
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax

    scale64 = (rmax.astype(np.float64) - rmin.astype(np.float64)) / np.float64(qmax - qmin)
    degenerate = scale64 < np.finfo(np.float32).tiny
    safe_scale64 = np.where(degenerate, 1.0, scale64)
    if symmetric:
        zero_point = np.full(rmin.shape, np.round((qmin + qmax) / 2.0))
    else:
        zero_point = np.round(qmin - rmin.astype(np.float64) / safe_scale64)
    zero_point = np.where(degenerate, 0.0, zero_point)
    scale = np.where(degenerate, np.float32(1.0), scale64.astype(np.float32)).astype(np.float32)

    zero_point = zero_point.astype(_CONTAINER.get(key, _STORAGE_DTYPE.get(key))).astype(
        _STORAGE_DTYPE[key])
    if scale.ndim == 0:
        return np.float32(scale), zero_point
    return scale, zero_point


# --------------------------------------------------------------------------- quantize / dequantize

def _normalize_axis(axis, ndim):
    axis = 1 if axis is None else int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def _layout(shape, scale, axis, block_size):
    """Classifies the quantization as 'tensor', 'axis' or 'blocked' and returns (kind, axis)."""
    if block_size:
        if block_size < 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        axis = _normalize_axis(axis, len(shape))
        expected = list(shape)
        expected[axis] = -(-shape[axis] // block_size)
        if scale.shape != tuple(expected):
            raise ValueError(f"blocked quantization of a tensor of shape {tuple(shape)} along axis "
                             f"{axis} with block_size {block_size} needs scale shape "
                             f"{tuple(expected)}, got {scale.shape}")
        return "blocked", axis
    if scale.size == 1 and scale.ndim <= 1:
        return "tensor", None
    if scale.ndim != 1:
        raise ValueError(f"scale must be a scalar or a 1-D vector, got shape {scale.shape}")
    axis = _normalize_axis(axis, len(shape))
    if shape[axis] != scale.shape[0]:
        raise ValueError(f"per-axis scale has {scale.shape[0]} elements but axis {axis} of the "
                         f"tensor has {shape[axis]} (shape {tuple(shape)})")
    return "axis", axis


def _split(shape, axis):
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


def _run_rows_per_tensor(kernel_pair, x_flat, out_flat, scalars, extra=()):
    """Runs a row kernel over a flat tensor with one (scale, zero point): full rows, then the tail."""
    serial, parallel = kernel_pair
    kernel = parallel if x_flat.size >= PARALLEL_MIN_ELEMENTS else serial
    n = x_flat.size
    full = n - n % _ROW_CHUNK
    if full:
        rows = full // _ROW_CHUNK
        kernel(x_flat[:full].reshape(rows, _ROW_CHUNK),
               *(np.full(rows, v) for v in scalars), *extra, out_flat[:full].reshape(rows, _ROW_CHUNK))
    if n - full:
        serial(x_flat[full:].reshape(1, n - full), *(np.full(1, v) for v in scalars), *extra,
               out_flat[full:].reshape(1, n - full))


def _dispatch(x, scale, zero_point, kind, axis, block_size, out, rows_pair, cols_pair, blocked,
              bounds=()):
    """Feeds (x, scale, zero point) in the layout each kernel wants; ``x`` and ``out`` are C-contiguous."""
    if kind == "tensor":
        _run_rows_per_tensor(rows_pair, x.reshape(-1), out.reshape(-1),
                             (scale.reshape(-1)[0], zero_point.reshape(-1)[0]), bounds)
        return
    outer, depth, inner = _split(x.shape, axis)
    big = x.size >= PARALLEL_MIN_ELEMENTS
    if kind == "axis":
        if inner == 1:
            kernel = cols_pair[1] if big else cols_pair[0]
            kernel(x.reshape(outer, depth), scale, zero_point, *bounds, out.reshape(outer, depth))
        else:
            kernel = rows_pair[1] if big else rows_pair[0]
            kernel(x.reshape(outer * depth, inner), np.tile(scale, outer), np.tile(zero_point, outer),
                   *bounds, out.reshape(outer * depth, inner))
        return
    n_blocks = scale.shape[axis]
    blocked(x.reshape(outer, depth, inner), scale.reshape(outer, n_blocks, inner),
            zero_point.reshape(outer, n_blocks, inner), block_size, *bounds,
            out.reshape(outer, depth, inner))


def quantize(x, scale, zero_point=None, qtype=None, axis=None, block_size=0):
    """ONNX QuantizeLinear: ``saturate(round_half_even(x / scale) + zero_point)``.

    ``scale`` is a scalar (per-tensor), a 1-D vector along ``axis`` (per-axis), or, with
    ``block_size > 0``, an array shaped like ``x`` with ``ceil(x.shape[axis] / block_size)`` along
    ``axis`` (blocked). ``axis`` defaults to 1 as in ONNX and may be negative. ``zero_point`` has
    the shape of ``scale`` (or is None for zeros); the output type is ``qtype`` if given, else the
    zero point's dtype, else uint8. Returns an array of the qtype's storage dtype.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"quantize expects a floating-point tensor, got {x.dtype}")
    scale = np.asarray(scale)
    if qtype is None:
        qtype = zero_point.dtype if isinstance(zero_point, np.ndarray) else np.uint8
    key = qtype_key(qtype)
    qmin, qmax = QTYPE_RANGES[key]
    kind, axis = _layout(x.shape, scale, axis, block_size)
    zero_point = np.zeros(scale.shape, np.int32) if zero_point is None else np.asarray(zero_point)
    if zero_point.shape != scale.shape and not (kind == "tensor" and zero_point.size == 1):
        raise ValueError(f"zero point shape {zero_point.shape} differs from scale shape {scale.shape}")

    compute = np.result_type(x.dtype, scale.dtype)
    if compute == np.float16:
        # numpy divides float16 by float16 in float16; reproduce that rounding before rint.
        scale_b = _broadcast_param(scale, x.shape, kind, axis, block_size)
        zp_b = _broadcast_param(zero_point.astype(np.int32), x.shape, kind, axis, block_size)
        with np.errstate(over="ignore"):  # an infinite quotient saturates like any large one
            values = np.rint(x / scale_b).astype(np.float64) + zp_b
        values = np.where(np.isnan(values), qmin, np.clip(values, qmin, qmax))
        return values.astype(_CONTAINER.get(key, _STORAGE_DTYPE.get(key))).astype(_STORAGE_DTYPE[key])

    x_c = np.ascontiguousarray(x, dtype=compute)
    scale_c = np.ascontiguousarray(scale, dtype=compute)
    zp_c = np.ascontiguousarray(zero_point.astype(np.int32), dtype=compute)
    out = np.empty(x.shape, dtype=_CONTAINER.get(key, _STORAGE_DTYPE.get(key)))
    if x.size:
        bounds = (compute.type(qmin), compute.type(qmax))
        _dispatch(x_c, scale_c, zp_c, kind, axis, block_size, out,
                  (_kernels.quantize_rows, _kernels.quantize_rows_parallel),
                  (_kernels.quantize_cols, _kernels.quantize_cols_parallel),
                  _kernels.quantize_blocked, bounds)
    if key in _CONTAINER:
        return out.astype(_STORAGE_DTYPE[key])
    return out


def dequantize(q, scale, zero_point=None, axis=None, block_size=0, output_dtype=None):
    """ONNX DequantizeLinear: ``(float32(q) - zero_point) * scale``.

    Layout rules as :func:`quantize`. The result has the scale's dtype unless ``output_dtype`` is
    given. ``q`` may be any of the qtypes or int32 (whose conversion to float32 rounds, as in the
    spec).
    """
    q = np.asarray(q)
    scale = np.asarray(scale)
    if scale.dtype.kind != "f":
        raise ValueError(f"scale must be floating point, got {scale.dtype}")
    kind, axis = _layout(q.shape, scale, axis, block_size)
    zero_point = np.zeros(scale.shape, np.int32) if zero_point is None else np.asarray(zero_point)
    if zero_point.shape != scale.shape and not (kind == "tensor" and zero_point.size == 1):
        raise ValueError(f"zero point shape {zero_point.shape} differs from scale shape {scale.shape}")

    compute = np.result_type(np.float32, scale.dtype)
    if q.dtype in (_STORAGE_DTYPE["int4"], _STORAGE_DTYPE["uint4"]):
        q = q.astype(np.int8 if q.dtype == _STORAGE_DTYPE["int4"] else np.uint8)
    elif q.dtype.itemsize > 2 or q.dtype.kind == "f":
        q = q.astype(np.float32)
    q_c = np.ascontiguousarray(q)
    if compute == np.float64 and q_c.dtype == np.float32:
        q_c = q_c.astype(np.float64)
    scale_c = np.ascontiguousarray(scale, dtype=compute)
    zp_c = np.ascontiguousarray(zero_point.astype(np.float32), dtype=compute)
    out = np.empty(q.shape, dtype=compute)
    if q.size:
        _dispatch(q_c, scale_c, zp_c, kind, axis, block_size, out,
                  (_kernels.dequantize_rows, _kernels.dequantize_rows_parallel),
                  (_kernels.dequantize_cols, _kernels.dequantize_cols_parallel),
                  _kernels.dequantize_blocked)
    target = np.dtype(output_dtype) if output_dtype is not None else scale.dtype
    return out if target == out.dtype else out.astype(target)


def _broadcast_param(param, shape, kind, axis, block_size):
    """Expands a scale or zero point to ``shape`` (only the rarely used float16 path needs this)."""
    if kind == "tensor":
        return param.reshape(())
    if kind == "axis":
        dims = [1] * len(shape)
        dims[axis] = param.size
        return param.reshape(dims)
    return np.repeat(param, block_size, axis=axis).take(range(shape[axis]), axis=axis)
