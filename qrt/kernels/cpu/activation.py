"""Activation epilogues that fused kernels (FusedConv, FusedGemm) apply to their output in place.

The code numbers are the contract between the ops and the kernels; ``ACTIVATION_CODES`` maps the
ONNX op names (as com.microsoft's fused ops spell them) to them.
"""
from numba import njit

from . import vmath

ACTIVATION_CODES = {"": 0, "Relu": 1, "Clip": 2, "LeakyRelu": 3, "Sigmoid": 4, "HardSigmoid": 5, "Tanh": 6,
                    "HardSwish": 7}


@njit(cache=True, error_model="numpy")
def bias_activate_row(src, b, dst, code, alpha, beta):
    """dst[q] = activation(src[q] + b); ``dst`` may be ``src``.

    In place, the loops get ``dst`` as both operands: given two arrays at one address, LLVM's
    runtime overlap check sends every loop to its scalar version, which made in-place epilogues
    (every conv path's, HardSigmoid and HardSwish included) 4-10x slower than a copy."""
    if src.ctypes.data == dst.ctypes.data and src.strides[0] == dst.strides[0]:
        _bias_activate(dst, b, dst, code, alpha, beta)
    else:
        _bias_activate(src, b, dst, code, alpha, beta)


@njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _bias_activate(src, b, dst, code, alpha, beta):
    """The activation is chosen once per row and every branch has its own loop, in the arrays'
    dtype: a switch inside one loop (or a float64 bias or parameter) kept LLVM from vectorizing,
    and a ReLU epilogue then cost as much as the convolution's GEMM."""
    zero = dst.dtype.type(0)
    one = dst.dtype.type(1)
    shift = dst.dtype.type(b)
    a = dst.dtype.type(alpha)
    c = dst.dtype.type(beta)
    n = dst.shape[0]
    if code == 0:
        for q in range(n):
            dst[q] = src[q] + shift
    elif code == 1:
        for q in range(n):
            v = src[q] + shift
            dst[q] = zero if v <= zero else v     # NaN stays NaN, as in onnxruntime
    elif code == 2:
        for q in range(n):
            v = src[q] + shift
            v = a if v < a else v
            dst[q] = c if v > c else v
    elif code == 3:
        for q in range(n):
            v = src[q] + shift
            dst[q] = v if v >= zero else a * v
    elif code == 4:
        _transcendental_row(src, shift, dst, True)
    elif code == 5:
        for q in range(n):
            v = a * (src[q] + shift) + c
            v = zero if v < zero else v     # comparisons, not min/max: a NaN stays NaN
            dst[q] = one if v > one else v
    elif code == 6:
        _transcendental_row(src, shift, dst, False)
    else:     # 7, HardSwish: v * HardSigmoid(v) with alpha 1/6 and beta 0.5, as onnxruntime computes it
        sixth = dst.dtype.type(1.0 / 6.0)
        half = dst.dtype.type(0.5)
        for q in range(n):
            v = src[q] + shift
            gate = v * sixth + half
            gate = zero if gate < zero else gate     # a NaN v gives NaN: v times anything
            dst[q] = v * (one if gate > one else gate)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _transcendental_row(src, shift, dst, sigmoid):
    """Sigmoid (or Tanh) of src + shift. Calls of their own, one vmath call site each: Numba's SSA
    pass trips over vmath's branches inlined twice into one function."""
    if src.ctypes.data == dst.ctypes.data and src.strides[0] == dst.strides[0]:
        _transcendental_in_place(dst, shift, sigmoid)
    elif sigmoid:
        for q in range(dst.shape[0]):
            dst[q] = vmath.sigmoid(src[q] + shift)
    else:
        for q in range(dst.shape[0]):
            dst[q] = vmath.tanh(src[q] + shift)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _transcendental_in_place(row, shift, sigmoid):
    """In place, with loops that read ``row`` itself (the overlap check again: the scalar fallback
    took 6-8x as long)."""
    if sigmoid:
        for q in range(row.shape[0]):
            row[q] = vmath.sigmoid(row[q] + shift)
    else:
        for q in range(row.shape[0]):
            row[q] = vmath.tanh(row[q] + shift)


@njit(cache=True, error_model="numpy")
def bias_activate_rows(out3, bias, code, alpha, beta):
    """out3 (N, M, P): add bias[m] (when given) and apply the activation, one pass over the output."""
    n_images, channels, plane = out3.shape
    has_bias = bias.shape[0] > 0
    for n in range(n_images):
        for m in range(channels):
            row = out3[n, m]
            bias_activate_row(row, bias[m] if has_bias else 0.0, row, code, alpha, beta)


@njit(cache=True, error_model="numpy")
def activate_inplace(flat, code, alpha, beta):
    bias_activate_row(flat, 0.0, flat, code, alpha, beta)
