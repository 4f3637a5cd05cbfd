"""Element-wise kernels with broadcasting: the CUDA twin of :mod:`qrt.kernels.cpu.elementwise`.

One generic kernel per arity walks the output in a grid-stride loop; each operand is a flat
contiguous device array with element strides over the merged output dimensions (0 where it is
broadcast), see :func:`.device.merge_dims`. The operation is a device function chosen by name, so
``add``, ``relu``... are launchers with the CPU kernels' names, taking device arrays and a
preallocated ``out``.

Float math (activations, transcendental functions) is written once per float type: the constants
are cast to the operand's type so float32 data computes in float32 on the GPU, as the CPU ufuncs'
float32 loops nearly do (they promote a few literals to float64; results agree to ~1 ulp).
Integer operands are read as their own type and widen in the arithmetic (Numba promotes small
integers to int64), so 8-bit values never wrap before the result is stored.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from . import device as dev

# --------------------------------------------------------------------------- device functions


def _binary_functions():
    d = cuda.jit(device=True)
    fns = {}

    @d
    def add(a, b):
        return a + b

    @d
    def sub(a, b):
        return a - b

    @d
    def mul(a, b):
        return a * b

    @d
    def div_float(a, b):
        return a / b

    @d
    def div_int(a, b):
        if b == 0:
            return a - a
        q = a // b
        if q < 0 and q * b != a:
            q += 1
        return q

    @d
    def pow_float(a, b):
        return a ** b

    @d
    def maximum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return a if a >= b else b

    @d
    def minimum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return a if a <= b else b

    @d
    def fmod(a, b):
        return math.fmod(a, b)

    @d
    def mod_float(a, b):
        r = math.fmod(a, b)
        if r != 0 and (r < 0) != (b < 0):
            r += b
        return r

    @d
    def mod_int(a, b):
        if b == 0:
            return a - a
        return a % b

    @d
    def fmod_int(a, b):
        if b == 0:
            return a - a
        r = a - (a // b) * b
        if r != 0 and ((r < 0) != (a < 0)):
            r -= b
        return r

    @d
    def equal(a, b):
        return a == b

    @d
    def greater(a, b):
        return a > b

    @d
    def greater_equal(a, b):
        return a >= b

    @d
    def less(a, b):
        return a < b

    @d
    def less_equal(a, b):
        return a <= b

    @d
    def logical_and(a, b):
        return a and b

    @d
    def logical_or(a, b):
        return a or b

    @d
    def logical_xor(a, b):
        return a != b

    @d
    def prelu(x, slope):
        return x if x >= 0 else slope * x

    for name, fn in list(locals().items()):
        if name not in ("d", "fns"):
            fns[name] = fn
    return fns


BINARY = _binary_functions()


@functools.lru_cache(maxsize=None)
def rint_function(ft):
    """Round half to even for float type ``ft``, exactly: ``x - floor(x)`` is exact in floating point,
    unlike ``floor(x + 0.5)``, which rounds the largest float below 0.5 up to 1."""
    half, one, two = ft(0.5), ft(1.0), ft(2.0)
    integral = ft(2.0 ** 23) if ft == np.float32 else ft(2.0 ** 52)

    @cuda.jit(device=True)
    def rint(x):
        if not abs(x) < integral:
            return x
        r = ft(math.floor(x))
        frac = x - r
        if frac > half:
            return r + one
        if frac == half and ft(math.fmod(r, two)) != ft(0.0):
            return r + one
        return r

    return rint


def _unary_functions(ft):
    """Unary device functions ``f(x, p0, p1)`` for float type ``ft`` (np.float32 or np.float64);
    ``p0``/``p1`` carry the op's attributes (alpha, beta...) already converted to ``ft``."""
    d = cuda.jit(device=True)
    rint = rint_function(ft)
    zero, one, half, six = ft(0.0), ft(1.0), ft(0.5), ft(6.0)
    # Above this magnitude every value of the type is an integer (floor/rint are the identity).
    integral = ft(2.0 ** 23) if ft == np.float32 else ft(2.0 ** 52)
    inv_sqrt2 = ft(1.0 / math.sqrt(2.0))
    sqrt_2_over_pi = ft(math.sqrt(2.0 / math.pi))
    gelu_c = ft(0.044715)

    @d
    def exp(x, p0, p1):
        return ft(math.exp(x))

    @d
    def log(x, p0, p1):
        return ft(math.log(x)) if x > zero else (ft(-math.inf) if x == zero else ft(math.nan))

    @d
    def sqrt(x, p0, p1):
        return ft(math.sqrt(x)) if x >= zero else ft(math.nan)

    @d
    def reciprocal(x, p0, p1):
        return one / x

    @d
    def floor(x, p0, p1):
        # math.floor returns an integer in Numba: keep NaN, infinities and huge values as they are.
        if not abs(x) < integral:
            return x
        return ft(math.floor(x))

    @d
    def ceil(x, p0, p1):
        if not abs(x) < integral:
            return x
        return ft(math.ceil(x))

    @d
    def round_half_even(x, p0, p1):
        return rint(x)

    @d
    def relu(x, p0, p1):
        return x if x > zero else zero

    @d
    def sin(x, p0, p1):
        return ft(math.sin(x))

    @d
    def cos(x, p0, p1):
        return ft(math.cos(x))

    @d
    def tanh(x, p0, p1):
        return ft(math.tanh(x))

    @d
    def erf(x, p0, p1):
        return ft(math.erf(x))

    @d
    def sigmoid(x, p0, p1):
        if x >= zero:
            return one / (one + ft(math.exp(-x)))
        e = ft(math.exp(x))
        return e / (one + e)

    @d
    def leaky_relu(x, p0, p1):
        return x if x >= zero else p0 * x

    @d
    def elu(x, p0, p1):
        return x if x >= zero else p0 * (ft(math.exp(x)) - one)

    @d
    def selu(x, p0, p1):
        return p1 * x if x > zero else p1 * (p0 * ft(math.exp(x)) - p0)

    @d
    def hard_sigmoid(x, p0, p1):
        return max(zero, min(one, p0 * x + p1))

    @d
    def hard_swish(x, p0, p1):
        return x * max(zero, min(one, x / six + half))

    @d
    def softplus(x, p0, p1):
        if x > zero:
            return x + ft(math.log1p(ft(math.exp(-x))))
        return ft(math.log1p(ft(math.exp(x))))

    @d
    def softsign(x, p0, p1):
        return x / (one + abs(x))

    @d
    def gelu_erf(x, p0, p1):
        return half * x * (one + ft(math.erf(x * inv_sqrt2)))

    @d
    def gelu_tanh(x, p0, p1):
        return half * x * (one + ft(math.tanh(sqrt_2_over_pi * (x + gelu_c * x * x * x))))

    @d
    def thresholded_relu(x, p0, p1):
        return x if x > p0 else zero

    @d
    def is_nan(x, p0, p1):
        return x != x

    fns = {}
    for name, fn in list(locals().items()):
        if name != "rint" and (hasattr(fn, "py_func") or type(fn).__name__ == "FakeCUDAKernel"):
            fns[name] = fn
    return fns


FLOAT_UNARY = {"float32": _unary_functions(np.float32), "float64": _unary_functions(np.float64)}


def _generic_unary_functions():
    """Unary device functions valid for every numeric type (integers included)."""
    d = cuda.jit(device=True)

    @d
    def identity(x, p0, p1):
        return x

    @d
    def absolute(x, p0, p1):
        return x if x >= 0 else -x

    @d
    def negative(x, p0, p1):
        return -x

    @d
    def relu(x, p0, p1):
        return x if x > 0 else x - x

    @d
    def sign(x, p0, p1):
        if x > 0:
            return 1
        if x < 0:
            return -1
        return x

    @d
    def clip(x, p0, p1):
        if x != x:
            return x
        v = p0 if x < p0 else x
        return p1 if v > p1 else v

    @d
    def logical_not(x, p0, p1):
        return not x

    fns = {}
    for name, fn in list(locals().items()):
        if name != "d":
            fns[name] = fn
    return fns


GENERIC_UNARY = _generic_unary_functions()


def unary_function(name, dtype):
    """The device function for ``name`` on ``dtype``, or None (the caller runs the host kernel)."""
    table = FLOAT_UNARY.get(np.dtype(dtype).name, {})
    if name in table:
        return table[name]
    if name in GENERIC_UNARY and np.dtype(dtype).kind in "biuf":
        return GENERIC_UNARY[name]
    return None


# --------------------------------------------------------------------------- kernels


@dev.kernel_factory
def _map1(name, dtype):
    fn = unary_function(name, dtype)

    @cuda.jit
    def kernel(x, out, n, p0, p1, ndim, dims, sx):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            rem = i
            ix = 0
            for d in range(ndim - 1, -1, -1):
                size = dims[d]
                q = rem // size
                ix += (rem - q * size) * sx[d]
                rem = q
            out[i] = fn(x[ix], p0, p1)
            i += step

    return kernel


@dev.kernel_factory
def _map2(name):
    fn = BINARY[name]

    @cuda.jit
    def kernel(a, b, out, n, ndim, dims, sa, sb):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            rem = i
            ia = 0
            ib = 0
            for d in range(ndim - 1, -1, -1):
                size = dims[d]
                q = rem // size
                idx = rem - q * size
                rem = q
                ia += idx * sa[d]
                ib += idx * sb[d]
            out[i] = fn(a[ia], b[ib])
            i += step

    return kernel


@dev.kernel_factory
def _where():
    @cuda.jit
    def kernel(c, a, b, out, n, ndim, dims, sc, sa, sb):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            rem = i
            ic = 0
            ia = 0
            ib = 0
            for d in range(ndim - 1, -1, -1):
                size = dims[d]
                q = rem // size
                idx = rem - q * size
                rem = q
                ic += idx * sc[d]
                ia += idx * sa[d]
                ib += idx * sb[d]
            out[i] = a[ia] if c[ic] else b[ib]
            i += step

    return kernel


def _layout(out, operands):
    return dev.merge_dims(out.shape, [dev.broadcast_strides(out.shape, x.shape) for x in operands])


def apply_unary(name, x, out, p0=0, p1=0):
    """``out = f(x)`` element-wise; ``x`` broadcasts to ``out`` (contiguous device arrays).

    Raises :class:`.device.Unsupported` when ``name`` has no device function for ``x``'s dtype.
    """
    if unary_function(name, x.dtype) is None:
        raise dev.Unsupported(f"no device kernel for {name} on {x.dtype}")
    n = out.size
    if n == 0:
        return out
    ndim, dims, (sx,) = _layout(out, [x])
    kind = np.dtype(x.dtype)
    scalar = kind.type if kind.kind in "fiu" else np.int64
    dev.launch(_map1(name, kind.name), dev.blocks_for(n), _threads(), dev.flat(x), dev.flat(out), n,
               scalar(p0), scalar(p1), ndim, dims, sx)
    return out


def apply_binary(name, a, b, out):
    """``out = f(a, b)`` with numpy broadcasting of ``a`` and ``b`` to ``out``."""
    n = out.size
    if n == 0:
        return out
    ndim, dims, (sa, sb) = _layout(out, [a, b])
    dev.launch(_map2(name), dev.blocks_for(n), _threads(), dev.flat(a), dev.flat(b), dev.flat(out), n, ndim,
               dims, sa, sb)
    return out


def where(c, a, b, out):
    n = out.size
    if n == 0:
        return out
    ndim, dims, (sc, sa, sb) = _layout(out, [c, a, b])
    dev.launch(_where(), dev.blocks_for(n), _threads(), dev.flat(c), dev.flat(a), dev.flat(b), dev.flat(out), n,
               ndim, dims, sc, sa, sb)
    return out


def _threads():
    from . import config
    return config.THREADS


# The CPU module's kernel names, as launchers.

def _binary_launcher(name):
    def launcher(a, b, out):
        return apply_binary(name, a, b, out)

    launcher.__name__ = name
    return launcher


def _unary_launcher(name):
    def launcher(x, out, p0=0, p1=0):
        return apply_unary(name, x, out, p0, p1)

    launcher.__name__ = name
    return launcher


for _name in BINARY:
    globals()[_name] = _binary_launcher(_name)
for _name in list(GENERIC_UNARY) + list(FLOAT_UNARY["float32"]):
    globals()[_name] = _unary_launcher(_name)
del _name
