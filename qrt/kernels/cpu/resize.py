"""Resize kernels: per-axis source coordinates, interpolation taps, and separable resampling.

Resize is separable: an N-D resize is one 1-D resize per axis. For each resized axis the op builds
a tap table (``index``, ``weight``: for every output position, which input positions it reads and
with what weights), then :func:`resample_axis` applies it to the tensor viewed as
``(outer, length, inner)``. Coordinates, weights and the resampled values are float64, so the
result is rounded once, at the end, as in the spec's reference.
"""
import math

import numpy as np
from numba import njit, prange

# coordinate_transformation_mode codes
HALF_PIXEL = 0
HALF_PIXEL_SYMMETRIC = 1
PYTORCH_HALF_PIXEL = 2
ALIGN_CORNERS = 3
ASYMMETRIC = 4
TF_HALF_PIXEL_FOR_NN = 5
TF_CROP_AND_RESIZE = 6

# nearest_mode codes; SIMPLE is Upsample / Resize-10 rounding (floor when enlarging, ceil when shrinking)
ROUND_PREFER_FLOOR = 0
ROUND_PREFER_CEIL = 1
FLOOR = 2
CEIL = 3
SIMPLE = 4

# interpolation codes for :func:`interpolation_taps`
LINEAR = 0
CUBIC = 1


@njit(cache=True)
def source_coordinates(out_len, in_len, scale, target_len, mode, roi_start, roi_end, coords, outside):
    """``coords[x]``: the input coordinate output position x maps to; ``outside[x]``: it lies outside
    [0, in_len - 1] under tf_crop_and_resize (that output takes the extrapolation value).

    ``target_len`` is ``scale * in_len`` before truncation to an integer length; half_pixel_symmetric
    and align_corners use it.
    """
    for x in range(out_len):
        outside[x] = False
        if mode == HALF_PIXEL:
            c = (x + 0.5) / scale - 0.5
        elif mode == HALF_PIXEL_SYMMETRIC:
            adjustment = out_len / target_len
            offset = in_len / 2.0 * (1.0 - adjustment)
            c = offset + (x + 0.5) / scale - 0.5
        elif mode == PYTORCH_HALF_PIXEL:
            c = (x + 0.5) / scale - 0.5 if out_len > 1 else 0.0
        elif mode == ALIGN_CORNERS:
            c = 0.0 if target_len == 1.0 else x * (in_len - 1) / (target_len - 1.0)
        elif mode == ASYMMETRIC:
            c = x / scale
        elif mode == TF_HALF_PIXEL_FOR_NN:
            c = (x + 0.5) / scale
        else:
            # The roi arrives as float32 and its start offset and extent are rounded to float32, as
            # onnxruntime and the reference compute them: a crop edge at 0.3 * 5 must land on 1.5
            # exactly, or nearest rounding of that tie flips.
            start = np.float32(roi_start) * np.float32(in_len - 1)
            extent = np.float32(roi_end) - np.float32(roi_start)
            if out_len > 1:
                c = start + x * extent * (in_len - 1) / (out_len - 1)
            else:
                c = start + extent * np.float32(in_len - 1) / np.float32(2)
            outside[x] = c < 0.0 or c > in_len - 1
        coords[x] = c


@njit(cache=True)
def nearest_indices(coords, in_len, nearest_mode, shrinking, index):
    """The input index each coordinate rounds to, clamped to the input."""
    for x in range(coords.shape[0]):
        c = coords[x]
        if nearest_mode == ROUND_PREFER_FLOOR:
            i = math.ceil(c - 0.5)
        elif nearest_mode == ROUND_PREFER_CEIL:
            i = math.floor(c + 0.5)
        elif nearest_mode == FLOOR:
            i = math.floor(c)
        elif nearest_mode == CEIL or shrinking:
            i = math.ceil(c)
        else:
            i = math.floor(c)
        index[x] = min(max(i, 0), in_len - 1)


@njit(cache=True)
def _cubic_weight(t, a):
    t = abs(t)
    if t <= 1.0:
        return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    if t < 2.0:
        return ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return 0.0


@njit(cache=True)
def interpolation_taps(coords, in_len, kind, filter_scale, cubic_a, exclude_outside, index, weight):
    """Fill ``index``/``weight`` (out_len, taps) for linear or cubic interpolation.

    ``filter_scale`` is 1, or the downscale factor when antialiasing stretches the filter by
    ``1 / filter_scale`` (then more taps fall under it). Taps are the input positions nearest the
    coordinate, ``base + first + t`` with ``base = floor(c)`` (``c - 1`` for an integral c, whose
    own sample then carries all the weight). Taps outside the input read the edge sample, or with
    ``exclude_outside`` get weight 0; weights are renormalized to sum to 1.
    """
    taps = index.shape[1]
    first = 1 - taps // 2
    for x in range(coords.shape[0]):
        c = coords[x]
        base = math.floor(c)
        ratio = c - base
        if ratio == 0.0:
            base -= 1
            ratio = 1.0
        total = 0.0
        for t in range(taps):
            distance = (first + t - ratio) * filter_scale
            if kind == LINEAR:
                w = max(0.0, 1.0 - abs(distance))
            else:
                w = _cubic_weight(distance, cubic_a)
            weight[x, t] = w
            total += w
        for t in range(taps):
            weight[x, t] /= total
        if exclude_outside:
            total = 0.0
            for t in range(taps):
                position = base + first + t
                if position < 0 or position >= in_len:
                    weight[x, t] = 0.0
                total += weight[x, t]
            if total != 0.0:
                for t in range(taps):
                    weight[x, t] /= total
        for t in range(taps):
            index[x, t] = min(max(base + first + t, 0), in_len - 1)


@njit(cache=True, parallel=True)
def resample_axis(x, index, weight, out):
    """``out[o, j, :] = sum_t weight[j, t] * x[o, index[j, t], :]`` for ``x`` (outer, in_len, inner).

    When the axis is the last one (inner == 1) each output is a short dot product, computed in a
    register; otherwise taps add whole contiguous inner rows.
    """
    outer, _, inner = x.shape
    out_len, taps = index.shape
    if inner == 1:
        for o in prange(outer):
            src = x[o, :, 0]
            dst = out[o, :, 0]
            for j in range(out_len):
                total = 0.0
                for t in range(taps):
                    total += weight[j, t] * src[index[j, t]]
                dst[j] = total
        return
    for task in prange(outer * out_len):
        o = task // out_len
        j = task % out_len
        dst = out[o, j]
        for i in range(inner):
            dst[i] = 0.0
        for t in range(taps):
            w = weight[j, t]
            if w == 0.0:
                continue
            src = x[o, index[j, t]]
            for i in range(inner):
                dst[i] += w * src[i]


@njit(cache=True)
def round_saturate(x, lo, hi, out):
    """Round half to even and clamp to [lo, hi]: an interpolated float64 result into an integer type."""
    flat = x.ravel()
    dst = out.ravel()
    for i in range(flat.shape[0]):
        v = np.rint(flat[i])
        dst[i] = min(max(v, lo), hi)
