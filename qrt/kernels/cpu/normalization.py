"""Normalization kernels: per-channel affine (BatchNormalization), batch moments, group/instance
normalization and LRN, all on a ``(N, C, positions)`` view of the input.

Per-channel parameters arrive as float64 vectors (a handful of values, converted once by the op),
so each kernel compiles once per input dtype. Only group_norm (diffusion and detection models run
it unfused on large maps) is ``parallel=True``: BatchNormalization is normally folded into the
preceding Conv, LRN belongs to 2012-era networks, and a parallel kernel triples compile time.
Means and variances accumulate in float64 with two passes (mean, then squared deviations), which
keeps them exact to float32 rounding even for inputs with a large common offset.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True)
def channel_affine(x, scale, bias, mean, var, epsilon, out):
    """``out = (x - mean[c]) * scale[c] / sqrt(var[c] + epsilon) + bias[c]`` for ``x`` of shape (N, C, S)."""
    n_images, channels, size = x.shape
    coef = np.empty(channels, dtype=out.dtype)
    centre = np.empty(channels, dtype=out.dtype)
    shift = np.empty(channels, dtype=out.dtype)
    for c in range(channels):
        coef[c] = scale[c] / np.sqrt(var[c] + epsilon)
        centre[c] = mean[c]
        shift[c] = bias[c]
    for t in range(n_images * channels):
        n = t // channels
        c = t % channels
        a = coef[c]
        m = centre[c]
        b = shift[c]
        src = x[n, c]
        dst = out[n, c]
        for s in range(size):
            dst[s] = (src[s] - m) * a + b


@njit(cache=True)
def channel_moments(x, mean, var):
    """Per-channel mean and population variance of ``x`` (N, C, S) over N and S, in float64."""
    n_images, channels, size = x.shape
    count = n_images * size
    for c in range(channels):
        total = 0.0
        for n in range(n_images):
            src = x[n, c]
            for s in range(size):
                total += src[s]
        mu = total / count
        deviation = 0.0
        for n in range(n_images):
            src = x[n, c]
            for s in range(size):
                d = src[s] - mu
                deviation += d * d
        mean[c] = mu
        var[c] = deviation / count


@njit(cache=True, parallel=True)
def group_norm(x, channels_per_group, scale, bias, epsilon, out):
    """Normalize each (image, group) row of ``x`` (N, G, Cg*S) to zero mean and unit variance, then
    apply the per-channel ``scale`` and ``bias`` (length G*Cg). InstanceNormalization is Cg = 1."""
    n_images, groups, length = x.shape
    size = length // channels_per_group
    for t in prange(n_images * groups):
        n = t // groups
        g = t % groups
        src = x[n, g]
        dst = out[n, g]
        total = 0.0
        for s in range(length):
            total += src[s]
        mu = total / length
        deviation = 0.0
        for s in range(length):
            d = src[s] - mu
            deviation += d * d
        inv_std = 1.0 / np.sqrt(deviation / length + epsilon)
        for j in range(channels_per_group):
            c = g * channels_per_group + j
            a = scale[c] * inv_std
            b = bias[c]
            for s in range(j * size, (j + 1) * size):
                dst[s] = (src[s] - mu) * a + b


@njit(cache=True)
def lrn(x, size, alpha, beta, bias, out):
    """Local response normalization across channels of ``x`` (N, C, S):
    ``out = x / (bias + alpha / size * sum of x^2 over the channel window) ** beta``."""
    n_images, channels, positions = x.shape
    before = (size - 1) // 2
    after = size - 1 - before
    scale = alpha / size
    for t in range(n_images * channels):
        n = t // channels
        c = t % channels
        lo = max(0, c - before)
        hi = min(channels - 1, c + after)
        dst = out[n, c]
        for s in range(positions):
            dst[s] = 0
        for j in range(lo, hi + 1):
            src = x[n, j]
            for s in range(positions):
                dst[s] += src[s] * src[s]
        centre = x[n, c]
        for s in range(positions):
            dst[s] = centre[s] / (bias + scale * dst[s]) ** beta


@njit(cache=True)
def blend(running, batch, momentum, out):
    """The running-statistics update ``out = running * momentum + batch * (1 - momentum)``."""
    for c in range(out.shape[0]):
        out[c] = running[c] * momentum + batch[c] * (1.0 - momentum)
