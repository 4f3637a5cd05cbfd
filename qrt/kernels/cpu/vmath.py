"""Vectorizable float32 exp, sigmoid, tanh and erf for Numba loops: the one home of qrt's transcendentals.

Why: ``math.exp``/``math.tanh``/``math.erf`` are scalar libm calls in every Numba loop (Numba maps
them to a vector library only through Intel SVML, which needs an SVML-patched LLVM; llvmlite 0.50's
is not, so installing ``icc_rt`` changes nothing). A loop over them runs 30-90x slower than
onnxruntime's MLAS. These functions are straight-line float32 code (selects, no branches, no calls)
that LLVM inlines into the caller's loop and vectorizes to AVX2/AVX-512.

Call them as ``vmath.exp(x)`` etc. from any ``@njit``/``@vectorize`` code: a float32 argument takes
the polynomial, any other type keeps the scalar ``math`` formula (float64 results do not change).

Accuracy of the float32 forms against the correctly rounded result (numpy float64, rounded), over
the whole float32 range including ±0, ±inf, NaN (propagated) and subnormal inputs and results,
measured by tests/test_vmath.py on every 2**-12th bit pattern and dense sweeps of the transition
regions (measured maximum; the test's bound in brackets):

* ``exp``: 1.00 ulp [1] (subnormal results: in units of the subnormal spacing); inf above 88.72,
  exactly 0 below -103.98 and for -inf.
* ``sigmoid``: 2.40 ulp [3], including the subnormal tail for x < -87.
* ``tanh``: 1.32 ulp [2]; ±1 exactly for |x| >= 9.01, -0 preserved.
* ``erf``: 1.21 ulp [2]; ±1 exactly from |x| >= 3.92, -0 preserved, subnormals give 2/sqrt(pi)·x.
* ``gelu_erf``/``gelu_tanh``: ONNX's formulas over the above in float32 (where x·(1 + erf) cancels,
  for x < -3, the relative error grows as it does in onnxruntime's float32 Gelu).

Method (coefficients from scripts/fit_vmath.py: weighted Lawson minimax fits in float64,
rounded to float32; the residual rounding is part of the errors above):

* exp: x = k·ln2 + r with |r| <= ln2/2 (k rounded to nearest, ln2 split in a 9-bit head whose
  product with k is exact and a tail), e^r = 1 + r + r²·q(r) with q of degree 4, then the scale
  2^k applied as two factors 2^(k//2)·2^(k - k//2) so that k in [-150, 128] never overflows an
  exponent field and subnormal results are rounded once.
* sigmoid: e = exp(-|x|) in (0, 1], s = 1/(1 + e); x >= 0 gives s, x < 0 gives e·s (= e/(1+e),
  no cancellation and no overflow).
* tanh: |x| < 0.625: x + x³·q(x²), q of degree 4 (on |x|, the sign put back last); otherwise
  sign(x)·(1 - 2/(exp(2|x|) + 1)).
* erf: |x| < 0.921875: x + x·p(x²), p of degree 5 fitting erf(x)/x - 1 (small, so its rounding
  errors are); otherwise sign(x)·(1 - exp(g(|x| - 0.921875))) with g a degree-8 fit of log(erfc)
  on [0.921875, 4] (erf rounds to 1 beyond 3.92; |x| is clamped to 4).

Numba's on-disk cache of a caller is keyed on the caller's file alone: after changing this file,
clear Numba's cache (the fused element-wise kernels fold this file's source into their key).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


@intrinsic
def float32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def float32_bits(typingctx, value):
    """The IEEE-754 bit pattern of a float32, as an int32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def fmax(typingctx, a, b):
    """max(a, b) propagating NaN, as ``llvm.maximum``: unlike a compare-and-select, LLVM vectorizes
    a reduction over it."""
    if a != b or not isinstance(a, types.Float):
        return None

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(args[0].type, [args[0].type, args[1].type])
        fn = builder.module.declare_intrinsic("llvm.maximum", [args[0].type], fnty)
        return builder.call(fn, args)

    return a(a, b), codegen


# Contraction only: a*b + c may become one FMA (more accurate, not less). No reassociation, which
# would undo the split of ln 2, and no nnan/ninf, which would drop the NaN and inf selects.
_FLAGS = {"contract"}
_F = np.float32

# exp
_EXP_HI = _F(88.9)            # above: the result is inf (exp(88.7229) already overflows)
_EXP_LO = _F(-104.0)          # below: the result rounds to 0 (exp(-103.98) is half the least subnormal)
_LOG2E = _F(1.4426950408889634)
_LN2_HEAD = _F(0.693359375)   # 355/512: k * head is exact for |k| <= 2**15
_LN2_TAIL = _F(-2.12194440e-4)
_EXP_Q0, _EXP_Q1, _EXP_Q2, _EXP_Q3, _EXP_Q4 = (
    _F(0.4999999403953552), _F(0.1666651964187622), _F(0.04166839271783829),
    _F(0.008368780836462975), _F(0.001381446490995586))

# tanh
_TANH_SPLIT = _F(0.625)
_TANH_CAP = _F(10.0)
_TANH_Q0, _TANH_Q1, _TANH_Q2, _TANH_Q3, _TANH_Q4 = (
    _F(-0.3333328068256378), _F(0.13331441581249237), _F(-0.05373971536755562),
    _F(0.02063908986747265), _F(-0.005704990588128567))

# erf
_ERF_SPLIT = _F(0.921875)
_ERF_CLAMP = _F(4.0)
_ERF_P0, _ERF_P1, _ERF_P2, _ERF_P3, _ERF_P4, _ERF_P5 = (
    _F(0.12837915122509003), _F(-0.37612494826316833), _F(0.1128181740641594),
    _F(-0.026766644790768623), _F(0.004993212874978781), _F(-0.000599099206738174))
_ERFC_G0, _ERFC_G1, _ERFC_G2, _ERFC_G3, _ERFC_G4, _ERFC_G5, _ERFC_G6, _ERFC_G7, _ERFC_G8 = (
    _F(-1.648561954498291), _F(-2.508012533187866), _F(-0.8329858183860779),
    _F(-0.04484408721327782), _F(0.010899567045271397), _F(-0.0022020218893885612),
    _F(0.0003361694689374417), _F(-3.353627835167572e-05), _F(1.6024944216042059e-06))

_ONE = _F(1.0)
_TWO = _F(2.0)
_HALF = _F(0.5)
_ZERO = _F(0.0)
_BIAS = np.int32(127)
_MANTISSA_BITS = np.int32(23)


@njit(cache=True, inline="always", fastmath=_FLAGS)
def exp_float32(x):
    # A NaN input fails both compares and is clamped to _EXP_LO: the arithmetic stays finite (no
    # poison from converting NaN to int) and the last select puts the NaN back.
    clamped = x if x > _EXP_LO else _EXP_LO
    clamped = clamped if clamped < _EXP_HI else _EXP_HI
    k = np.floor(clamped * _LOG2E + _HALF)
    r = clamped - k * _LN2_HEAD
    r = r - k * _LN2_TAIL
    q = _EXP_Q4
    q = q * r + _EXP_Q3
    q = q * r + _EXP_Q2
    q = q * r + _EXP_Q1
    q = q * r + _EXP_Q0
    p = _ONE + (r + (r * r) * q)
    ki = np.int32(k)
    half = ki >> np.int32(1)
    scale_a = float32_from_bits((half + _BIAS) << _MANTISSA_BITS)
    scale_b = float32_from_bits((ki - half + _BIAS) << _MANTISSA_BITS)
    y = (p * scale_a) * scale_b
    return x if x != x else y


@njit(cache=True, inline="always", fastmath=_FLAGS)
def sigmoid_float32(x):
    e = exp_float32(-abs(x))
    s = _ONE / (_ONE + e)
    return s if x >= _ZERO else e * s


@njit(cache=True, inline="always", fastmath=_FLAGS)
def tanh_float32(x):
    a = abs(x)
    x2 = x * x
    q = _TANH_Q4
    q = q * x2 + _TANH_Q3
    q = q * x2 + _TANH_Q2
    q = q * x2 + _TANH_Q1
    q = q * x2 + _TANH_Q0
    small = a + a * (x2 * q)
    # tanh is 1.0f from |x| = 9.01: clamping keeps exp from overflowing (and raising numpy's warning).
    capped = a if a < _TANH_CAP else _TANH_CAP
    large = _ONE - _TWO / (exp_float32(capped + capped) + _ONE)
    result = math.copysign(small if a < _TANH_SPLIT else large, x)
    return x if x != x else result


@njit(cache=True, inline="always", fastmath=_FLAGS)
def erf_float32(x):
    a = abs(x)
    x2 = x * x
    p = _ERF_P5
    p = p * x2 + _ERF_P4
    p = p * x2 + _ERF_P3
    p = p * x2 + _ERF_P2
    p = p * x2 + _ERF_P1
    p = p * x2 + _ERF_P0
    small = x + x * p
    u = (a if a < _ERF_CLAMP else _ERF_CLAMP) - _ERF_SPLIT
    g = _ERFC_G8
    g = g * u + _ERFC_G7
    g = g * u + _ERFC_G6
    g = g * u + _ERFC_G5
    g = g * u + _ERFC_G4
    g = g * u + _ERFC_G3
    g = g * u + _ERFC_G2
    g = g * u + _ERFC_G1
    g = g * u + _ERFC_G0
    large = math.copysign(_ONE - exp_float32(g), x)
    result = small if a < _ERF_SPLIT else large
    return x if x != x else result


# ---------------------------------------------------------------- type-dispatching entry points

def exp(x):
    """e**x: the float32 polynomial for float32, ``math.exp`` otherwise."""
    return math.exp(x)


def sigmoid(x):
    """1 / (1 + e**-x), without overflow for either sign."""
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def tanh(x):
    return math.tanh(x)


def erf(x):
    return math.erf(x)


def gelu_erf(x):
    """x·Φ(x) = x/2·(1 + erf(x/√2)), ONNX Gelu (approximate='none')."""
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    """ONNX Gelu (approximate='tanh'): x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    return 0.5 * x * (1 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


_SQRT_HALF = _F(math.sqrt(0.5))
_SQRT_2_OVER_PI = _F(math.sqrt(2.0 / math.pi))
_GELU_CUBIC = _F(0.044715)


@njit(cache=True, inline="always", fastmath=_FLAGS)
def gelu_erf_float32(x):
    return _HALF * x * (_ONE + erf_float32(x * _SQRT_HALF))


@njit(cache=True, inline="always", fastmath=_FLAGS)
def gelu_tanh_float32(x):
    # Beyond |x| = 10 the tanh is ±1.0f; capping its argument keeps x³ from overflowing.
    c = x if abs(x) < _TANH_CAP else math.copysign(_TANH_CAP, x)
    return _HALF * x * (_ONE + tanh_float32(_SQRT_2_OVER_PI * (c + _GELU_CUBIC * c * c * c)))


def _dispatch(python_impl, float32_impl, inline):
    @overload(python_impl, inline=inline)
    def _overload(x):
        if x == types.float32:
            return lambda x: float32_impl(x)
        return python_impl


# exp is small enough for LLVM to inline on its own, and Numba-level inlining of it into prange
# loops (softmax, attention) trips Numba's IR scope check; the larger functions must be inlined by
# Numba, or LLVM keeps them as calls and the caller's loop scalar.
_dispatch(exp, exp_float32, "never")
_dispatch(sigmoid, sigmoid_float32, "always")
_dispatch(tanh, tanh_float32, "always")
_dispatch(erf, erf_float32, "always")
_dispatch(gelu_erf, gelu_erf_float32, "always")
_dispatch(gelu_tanh, gelu_tanh_float32, "always")
