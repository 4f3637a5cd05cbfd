"""Element-wise kernels as Numba ufuncs.

Each kernel is a lazily compiled, cached ``numba.vectorize`` ufunc: numpy's ufunc machinery supplies
broadcasting and output allocation, and the loop body is Numba-compiled per dtype on first use.
"""
import math

import numpy as np
from numba import vectorize

from . import vmath

# --- arithmetic --------------------------------------------------------------------------------------------


@vectorize(cache=True)
def add(a, b):
    return a + b


@vectorize(cache=True)
def sub(a, b):
    return a - b


@vectorize(cache=True)
def mul(a, b):
    return a * b


@vectorize(cache=True)
def div_float(a, b):
    return a / b


@vectorize(cache=True)
def div_int(a, b):
    # ONNX integer division truncates toward zero (C semantics), unlike Python's floor division.
    if b == 0:
        return 0
    q = a // b
    if q < 0 and q * b != a:
        q += 1
    return q


@vectorize(cache=True)
def pow_float(a, b):
    return a ** b


@vectorize(cache=True)
def pow_int(a, b):
    if b < 0:
        return 0 if a * a != 1 else (a if b % 2 else 1)
    result = 1
    base = a
    e = b
    while e > 0:
        if e & 1:
            result *= base
        base *= base
        e >>= 1
    return result


@vectorize(cache=True)
def maximum(a, b):
    # NaN propagates, as in numpy.maximum and onnxruntime.
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@vectorize(cache=True)
def minimum(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


@vectorize(cache=True)
def fmod(a, b):
    return np.fmod(a, b)


@vectorize(cache=True)
def mod_float(a, b):
    # fmod=0 on floats: the result takes the divisor's sign, like Python's %.
    r = np.fmod(a, b)
    if r != 0 and (r < 0) != (b < 0):
        r += b
    return r


@vectorize(cache=True)
def mod_int(a, b):
    # Integer Mod with fmod=0 takes the sign of the divisor (Python semantics).
    if b == 0:
        return 0
    r = a % b
    return r


@vectorize(cache=True)
def fmod_int(a, b):
    if b == 0:
        return 0
    r = a - (a // b) * b
    if r != 0 and ((r < 0) != (a < 0)):
        r -= b
    return r


# --- comparison and logic ----------------------------------------------------------------------------------

@vectorize(cache=True)
def equal(a, b):
    return a == b


@vectorize(cache=True)
def greater(a, b):
    return a > b


@vectorize(cache=True)
def greater_equal(a, b):
    return a >= b


@vectorize(cache=True)
def less(a, b):
    return a < b


@vectorize(cache=True)
def less_equal(a, b):
    return a <= b


@vectorize(cache=True)
def logical_and(a, b):
    return a and b


@vectorize(cache=True)
def logical_or(a, b):
    return a or b


@vectorize(cache=True)
def logical_xor(a, b):
    return a != b


@vectorize(cache=True)
def logical_not(a):
    return not a


@vectorize(cache=True)
def where(c, x, y):
    return x if c else y


@vectorize(cache=True)
def is_nan(x):
    return x != x


@vectorize(cache=True)
def is_inf(x, detect_positive, detect_negative):
    if x == np.inf:
        return detect_positive != 0
    if x == -np.inf:
        return detect_negative != 0
    return False


# --- unary math ---------------------------------------------------------------------------------------------

@vectorize(cache=True)
def absolute(x):
    return abs(x)


@vectorize(cache=True)
def negative(x):
    return -x


@vectorize(cache=True)
def sign(x):
    if x > 0:
        return 1
    if x < 0:
        return -1
    return x if x != x else 0


@vectorize(cache=True)
def exp(x):
    return vmath.exp(x)


@vectorize(cache=True)
def log(x):
    if x < 0:
        return math.nan
    if x == 0:
        return -math.inf
    return math.log(x)


@vectorize(cache=True)
def sqrt(x):
    if x < 0:
        return math.nan
    return math.sqrt(x)


@vectorize(cache=True)
def reciprocal(x):
    return 1 / x


@vectorize(cache=True)
def floor(x):
    return math.floor(x)


@vectorize(cache=True)
def ceil(x):
    return math.ceil(x)


@vectorize(cache=True)
def round_half_even(x):
    return np.rint(x)


@vectorize(cache=True)
def sin(x):
    return math.sin(x)


@vectorize(cache=True)
def cos(x):
    return math.cos(x)


@vectorize(cache=True)
def tan(x):
    return math.tan(x)


@vectorize(cache=True)
def asin(x):
    return math.asin(x) if -1 <= x <= 1 else math.nan


@vectorize(cache=True)
def acos(x):
    return math.acos(x) if -1 <= x <= 1 else math.nan


@vectorize(cache=True)
def atan(x):
    return math.atan(x)


@vectorize(cache=True)
def sinh(x):
    return math.sinh(x)


@vectorize(cache=True)
def cosh(x):
    return math.cosh(x)


@vectorize(cache=True)
def asinh(x):
    return math.asinh(x)


@vectorize(cache=True)
def acosh(x):
    return math.acosh(x) if x >= 1 else math.nan


@vectorize(cache=True)
def atanh(x):
    return math.atanh(x) if -1 < x < 1 else (math.copysign(math.inf, x) if abs(x) == 1 else math.nan)


@vectorize(cache=True)
def tanh(x):
    return vmath.tanh(x)


@vectorize(cache=True)
def erf(x):
    return vmath.erf(x)


# --- activations (alpha/beta arrive as scalars of the input's dtype) ----------------------------------------

@vectorize(cache=True)
def sigmoid(x):
    return vmath.sigmoid(x)


@vectorize(cache=True)
def relu(x):
    return 0 if x <= 0 else x     # NaN fails the test and stays NaN, as in onnxruntime and the ONNX reference


@vectorize(cache=True)
def leaky_relu(x, alpha):
    return x if x >= 0 else alpha * x


@vectorize(cache=True)
def elu(x, alpha):
    return x if x >= 0 else alpha * (vmath.exp(x) - 1)


@vectorize(cache=True)
def selu(x, alpha, gamma):
    return gamma * x if x > 0 else gamma * (alpha * vmath.exp(x) - alpha)


@vectorize(cache=True)
def celu(x, alpha):
    return max(0, x) + min(0, alpha * (vmath.exp(x / alpha) - 1))


@vectorize(cache=True)
def hard_sigmoid(x, alpha, beta):
    v = alpha * x + beta
    v = 0 if v < 0 else v     # comparisons, not min/max: a NaN stays NaN
    return 1 if v > 1 else v


_SIXTH = 1.0 / 6.0     # HardSwish's alpha; a multiply, as onnxruntime does (a divide costs 4x a multiply)


@vectorize(cache=True)
def hard_swish(x):
    # A NaN x gives NaN whatever the clamp does (x times anything).
    gate = x * _SIXTH + 0.5
    gate = 0.0 if gate < 0.0 else gate
    gate = 1.0 if gate > 1.0 else gate
    return x * gate


@vectorize(cache=True)
def softplus(x):
    # log(1 + e^x) without overflow for large x.
    if x > 0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@vectorize(cache=True)
def softsign(x):
    return x / (1 + abs(x))


@vectorize(cache=True)
def mish(x):
    sp = x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))
    return x * math.tanh(sp)


@vectorize(cache=True)
def gelu_erf(x):
    # vmath.gelu_erf keeps float32 in float32 (the literals here would widen it to float64).
    return vmath.gelu_erf(x)


@vectorize(cache=True)
def gelu_tanh(x):
    return vmath.gelu_tanh(x)


@vectorize(cache=True)
def thresholded_relu(x, alpha):
    return x if x > alpha else 0


@vectorize(cache=True)
def shrink(x, bias, lambd):
    if x < -lambd:
        return x + bias
    if x > lambd:
        return x - bias
    return 0


@vectorize(cache=True)
def clip(x, lo, hi):
    # min first, then max: with lo > hi every value becomes hi, as the spec says.
    if x != x:
        return x
    v = lo if x < lo else x
    return hi if v > hi else v


@vectorize(cache=True)
def prelu(x, slope):
    return x if x >= 0 else slope * x
