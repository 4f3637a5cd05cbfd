"""Activation epilogues that fused kernels (FusedConv, FusedGemm) apply to their output in place.

The code numbers are the contract between the ops and the kernels; ``ACTIVATION_CODES`` maps the
ONNX op names (as com.microsoft's fused ops spell them) to them.
"""
from numba import njit

from . import vmath

ACTIVATION_CODES = {"": 0, "Relu": 1, "Clip": 2, "LeakyRelu": 3, "Sigmoid": 4, "HardSigmoid": 5, "Tanh": 6}


@njit(cache=True, inline="always")
def activate(v, code, alpha, beta):
    if code == 1:
        return v if v > 0 else 0.0 * v + 0.0
    if code == 2:
        v = alpha if v < alpha else v
        return beta if v > beta else v
    if code == 3:
        return v if v >= 0 else alpha * v
    if code == 4:
        return vmath.sigmoid(v)
    if code == 5:
        return max(0.0, min(1.0, alpha * v + beta))
    if code == 6:
        return vmath.tanh(v)
    return v


@njit(cache=True, error_model="numpy")
def bias_activate_rows(out3, bias, code, alpha, beta):
    """out3 (N, M, P): add bias[m] (when given) and apply the activation, one pass over the output."""
    n_images, channels, plane = out3.shape
    has_bias = bias.shape[0] > 0
    for n in range(n_images):
        for m in range(channels):
            b = bias[m] if has_bias else 0.0
            row = out3[n, m]
            for p in range(plane):
                row[p] = activate(row[p] + b, code, alpha, beta)


@njit(cache=True, error_model="numpy")
def activate_inplace(flat, code, alpha, beta):
    for i in range(flat.shape[0]):
        flat[i] = activate(flat[i], code, alpha, beta)
