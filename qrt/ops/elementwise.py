"""Element-wise ops: arithmetic, comparison, logic, unary math and activations, with broadcasting."""
import functools

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import elementwise as k
from ..kernels.cpu import fused_elementwise as fe
from ..kernels.cpu.threads import WORK_PER_THREAD, threads_for
from ..kernels.cpu.ufunc import binary, call, unary
from ..registry import register
from .base import Op

_BOOL = np.dtype(np.bool_)
_FLOAT32 = np.dtype(np.float32)
# Ops whose large float32 inputs go through their generated kernel in parallel (see _across_threads).
_SPLITTABLE = frozenset(("Add", "Sub", "Mul", "Div", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Relu",
                         "HardSwish", "Softplus", "Softsign", "Mish"))


def _is_int(a):
    return a.dtype.kind in "iu"


def _across_threads(op_type, arrays):
    """``op_type`` (a fused_elementwise op) on same-shape float32 arrays, by its generated kernel split
    across the caller's threads; None when the arrays are one thread's share of work, need
    broadcasting or are not float32. The Numba ufuncs run on the calling thread only; the generated
    kernel runs the same scalar code, so the results are the same."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.size < WORK_PER_THREAD or first.dtype != _FLOAT32:
        return None
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != _FLOAT32 or a.shape != first.shape:
            return None
    if threads_for(first.size * fe.element_cost((op_type,))) < 2:
        return None
    rows, period = fe.flat_layout(first.shape)
    if rows < 2:
        return None
    out = np.empty(first.shape, _FLOAT32)
    _split_module(op_type, len(arrays)).run_parallel(*[np.ascontiguousarray(a).reshape(-1) for a in arrays],
                                                     out.reshape(-1), rows, period, 1)
    return out


@functools.lru_cache(maxsize=None)
def _split_module(op_type, arity):
    return fe.load(fe.generate_source([fe.FULL] * arity, {}, [(op_type, [("in", i) for i in range(arity)], ())]))


def _binary(op_type, since, kernel, int_kernel=None, result_bool=False):
    """Register a two-input op whose float and integer loops may differ (Div, Pow, Mod)."""

    splittable = op_type in _SPLITTABLE

    @register(op_type, since)
    class Binary(Op):
        def run(self, a, b):
            dtype = a.dtype
            if dtype.kind == "O":
                return _object_binary(op_type, a, b)
            if splittable and a.size >= WORK_PER_THREAD:
                out = _across_threads(op_type, (a, b))
                if out is not None:
                    return out
            chosen = int_kernel if (int_kernel is not None and dtype.kind in "iu") else kernel
            return binary(chosen, a, b, _BOOL if result_bool else dtype)

    Binary.__name__ = Binary.__qualname__ = op_type
    return Binary


def _object_binary(op_type, a, b):
    # String tensors: only comparisons are defined on them, and numpy compares Python strings.
    if op_type == "Equal":
        return np.equal(a, b).astype(bool)
    raise InvalidModel(f"{op_type} is not defined on string tensors")


def _legacy_broadcast(a, b, broadcast, axis):
    """Opset 1-6 broadcasting: B (never A) is stretched onto A, aligned at ``axis`` or at the trailing dims."""
    if not broadcast:
        if a.shape != b.shape:
            raise InvalidArgument(f"inputs of shapes {list(a.shape)} and {list(b.shape)} need broadcast=1")
        return b
    if axis is None:
        return b
    axis = axis + a.ndim if axis < 0 else axis
    if axis + b.ndim > a.ndim:
        raise InvalidArgument(f"B of shape {list(b.shape)} does not fit A of shape {list(a.shape)} at axis {axis}")
    return b.reshape(b.shape + (1,) * (a.ndim - axis - b.ndim))


def _legacy_binary(op_type, modern):
    """The opset 1-6 form of a binary op: ``broadcast``/``axis`` attributes, then the opset-7 kernel."""

    @register(op_type, 1)
    class LegacyBinary(Op):
        def __init__(self, axis=None, broadcast=0, consumed_inputs=None):
            self.axis = None if axis is None else int(axis)
            self.broadcast = int(broadcast)
            self.modern = modern()

        def run(self, a, b):
            return self.modern.run(a, _legacy_broadcast(a, b, self.broadcast, self.axis))

    LegacyBinary.__name__ = LegacyBinary.__qualname__ = f"{op_type}1"
    return LegacyBinary


Add = _binary("Add", 7, k.add)
Sub = _binary("Sub", 7, k.sub)
Mul = _binary("Mul", 7, k.mul)
Div = _binary("Div", 7, k.div_float, k.div_int)
Equal = _binary("Equal", 7, k.equal, result_bool=True)
Greater = _binary("Greater", 7, k.greater, result_bool=True)
GreaterOrEqual = _binary("GreaterOrEqual", 12, k.greater_equal, result_bool=True)
Less = _binary("Less", 7, k.less, result_bool=True)
LessOrEqual = _binary("LessOrEqual", 12, k.less_equal, result_bool=True)
And = _binary("And", 7, k.logical_and, result_bool=True)
Or = _binary("Or", 7, k.logical_or, result_bool=True)
Xor = _binary("Xor", 7, k.logical_xor, result_bool=True)


@register("Pow", 7)
class Pow(Op):
    def run(self, x, y):
        # The result has the base's type; the exponent may be of another numeric type (opset 12+).
        if _is_int(x):
            return call(k.pow_int, x, y.astype(np.int64) if y.dtype.kind == "f" else y, dtype=x.dtype) \
                if y.dtype.kind in "iu" else call(k.pow_float, x.astype(np.float64), y, dtype=x.dtype)
        return call(k.pow_float, x, y.astype(x.dtype) if y.dtype != x.dtype else y, dtype=x.dtype)


Add1, Sub1, Mul1, Div1, Pow1 = (_legacy_binary(name, cls) for name, cls in
                                (("Add", Add), ("Sub", Sub), ("Mul", Mul), ("Div", Div), ("Pow", Pow)))


@register("Mod", 10)
class Mod(Op):
    def __init__(self, fmod=0):
        self.fmod = int(fmod)

    def run(self, a, b):
        if a.dtype.kind == "f":
            return call(k.fmod if self.fmod else k.mod_float, a, b, dtype=a.dtype)
        return call(k.fmod_int if self.fmod else k.mod_int, a, b, dtype=a.dtype)


def _variadic(op_type, since, kernel):
    fused_op = "Add" if op_type == "Sum" else op_type

    @register(op_type, since)
    class Variadic(Op):
        def run(self, *xs):
            if len(xs) == 2 and xs[0].size >= WORK_PER_THREAD:
                out = _across_threads(fused_op, xs)
                if out is not None:
                    return out
            result = xs[0]
            for x in xs[1:]:
                result = call(kernel, result, x, dtype=xs[0].dtype)
            if len(xs) == 1:
                result = result.copy()
            return result

    Variadic.__name__ = Variadic.__qualname__ = op_type
    return Variadic


Max = _variadic("Max", 8, k.maximum)
Min = _variadic("Min", 8, k.minimum)
Sum = _variadic("Sum", 8, k.add)
# Opset 6 takes equal shapes only: a subset of what the opset-8 classes accept.
Max6, Min6, Sum6 = (_variadic(name, 6, kernel) for name, kernel in
                    (("Max", k.maximum), ("Min", k.minimum), ("Sum", k.add)))


@register("Mean", 8)
class Mean(Op):
    def run(self, *xs):
        total = xs[0]
        for x in xs[1:]:
            total = call(k.add, total, x, dtype=xs[0].dtype)
        return call(k.div_float, total, np.asarray(len(xs), dtype=total.dtype), dtype=total.dtype)


def _unary(op_type, since, kernel, result_bool=False):
    splittable = op_type in _SPLITTABLE

    @register(op_type, since)
    class Unary(Op):
        def run(self, x):
            if splittable and x.size >= WORK_PER_THREAD:
                out = _across_threads(op_type, (x,))
                if out is not None:
                    return out
            return unary(kernel, x, _BOOL if result_bool else x.dtype)

    Unary.__name__ = Unary.__qualname__ = op_type
    return Unary


def _transcendental(op_type, since, kernel):
    """A unary op whose float32 form runs as a generated, vectorized kernel (see fe.single_op)."""

    @register(op_type, since)
    class Transcendental(Op):
        module = None

        def run(self, x):
            if x.dtype != np.float32:
                return unary(kernel, x, x.dtype)
            if self.module is None:
                self.module = fe.single_op(op_type)
            return fe.run_single(self.module, x)

    Transcendental.__name__ = Transcendental.__qualname__ = op_type
    return Transcendental


Abs = _unary("Abs", 6, k.absolute)
Neg = _unary("Neg", 6, k.negative)
Sign = _unary("Sign", 9, k.sign)
Exp = _transcendental("Exp", 6, k.exp)
Log = _unary("Log", 6, k.log)
Sqrt = _unary("Sqrt", 6, k.sqrt)
Reciprocal = _unary("Reciprocal", 6, k.reciprocal)
Floor = _unary("Floor", 6, k.floor)
Ceil = _unary("Ceil", 6, k.ceil)
Round = _unary("Round", 11, k.round_half_even)
Sin = _unary("Sin", 7, k.sin)
Cos = _unary("Cos", 7, k.cos)
Tan = _unary("Tan", 7, k.tan)
Asin = _unary("Asin", 7, k.asin)
Acos = _unary("Acos", 7, k.acos)
Atan = _unary("Atan", 7, k.atan)
Sinh = _unary("Sinh", 9, k.sinh)
Cosh = _unary("Cosh", 9, k.cosh)
Asinh = _unary("Asinh", 9, k.asinh)
Acosh = _unary("Acosh", 9, k.acosh)
Atanh = _unary("Atanh", 9, k.atanh)
Tanh = _transcendental("Tanh", 6, k.tanh)
Erf = _transcendental("Erf", 9, k.erf)
Sigmoid = _transcendental("Sigmoid", 6, k.sigmoid)
Relu = _unary("Relu", 6, k.relu)
HardSwish = _unary("HardSwish", 14, k.hard_swish)
Softplus = _unary("Softplus", 1, k.softplus)
Softsign = _unary("Softsign", 1, k.softsign)
Mish = _unary("Mish", 18, k.mish)
Not = _unary("Not", 1, k.logical_not, result_bool=True)
IsNaN = _unary("IsNaN", 9, k.is_nan, result_bool=True)


@register("IsInf", 10)
class IsInf(Op):
    def __init__(self, detect_negative=1, detect_positive=1):
        self.detect_negative = np.int64(detect_negative)
        self.detect_positive = np.int64(detect_positive)

    def run(self, x):
        return call(k.is_inf, x, self.detect_positive, self.detect_negative, dtype=_BOOL)


def _scalar(value, like):
    """An attribute as a 0-d array of ``like``'s dtype, made once per (value, dtype) and shared (read-only)."""
    return _typed_scalar(value, like.dtype)


@functools.lru_cache(maxsize=256)
def _typed_scalar(value, dtype):
    scalar = np.asarray(value, dtype=dtype)
    scalar.flags.writeable = False
    return scalar


@register("LeakyRelu", 6)
class LeakyRelu(Op):
    def __init__(self, alpha=0.01):
        self.alpha = alpha

    def run(self, x):
        return call(k.leaky_relu, x, _scalar(self.alpha, x))


@register("Elu", 6)
class Elu(Op):
    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def run(self, x):
        return call(k.elu, x, _scalar(self.alpha, x))


@register("Selu", 6)
class Selu(Op):
    def __init__(self, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
        self.alpha, self.gamma = alpha, gamma

    def run(self, x):
        return call(k.selu, x, _scalar(self.alpha, x), _scalar(self.gamma, x))


@register("Celu", 12)
class Celu(Op):
    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def run(self, x):
        return call(k.celu, x, _scalar(self.alpha, x))


@register("HardSigmoid", 6)
class HardSigmoid(Op):
    def __init__(self, alpha=0.2, beta=0.5):
        self.alpha, self.beta = alpha, beta

    def run(self, x):
        return call(k.hard_sigmoid, x, _scalar(self.alpha, x), _scalar(self.beta, x))


@register("ThresholdedRelu", 10)
class ThresholdedRelu(Op):
    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def run(self, x):
        return call(k.thresholded_relu, x, _scalar(self.alpha, x))


@register("Shrink", 9)
class Shrink(Op):
    def __init__(self, bias=0.0, lambd=0.5):
        self.bias, self.lambd = bias, lambd

    def run(self, x):
        return call(k.shrink, x, _scalar(self.bias, x), _scalar(self.lambd, x))


@register("Gelu", 20)
class Gelu(Op):
    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise InvalidModel(f"Gelu approximate must be 'none' or 'tanh', got {approximate!r}")
        self.kernel = k.gelu_tanh if approximate == "tanh" else k.gelu_erf
        self.module = None

    def run(self, x):
        if x.dtype != np.float32:
            return call(self.kernel, x)
        if self.module is None:
            self.module = fe.single_op("GeluTanh" if self.kernel is k.gelu_tanh else "GeluErf")
        return fe.run_single(self.module, x)


@register("Clip", 6)
class Clip6(Op):
    def __init__(self, min=-3.402823e38, max=3.402823e38):
        self.min, self.max = min, max

    def run(self, x):
        return call(k.clip, x, _scalar(self.min, x), _scalar(self.max, x))


@register("Clip", 11)
class Clip(Op):
    def run(self, x, min=None, max=None):
        if x.dtype.kind == "f":
            lo = min if min is not None else np.asarray(-np.inf, x.dtype)
            hi = max if max is not None else np.asarray(np.inf, x.dtype)
        else:
            info = np.iinfo(x.dtype)
            lo = min if min is not None else np.asarray(info.min, x.dtype)
            hi = max if max is not None else np.asarray(info.max, x.dtype)
        return call(k.clip, x, np.asarray(lo, x.dtype).reshape(()), np.asarray(hi, x.dtype).reshape(()))


@register("PRelu", 7)
class PRelu(Op):
    def run(self, x, slope):
        return call(k.prelu, x, slope.astype(x.dtype, copy=False))


@register("PRelu", 6)
class PRelu6(PRelu):
    """Opset 6: a 1-D slope of C values applies per channel (axis 1), as exporters of the time wrote it."""

    def run(self, x, slope):
        if slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1] and slope.shape[0] != x.shape[-1]:
            slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
        return super().run(x, slope)


@register("Where", 9)
class Where(Op):
    def run(self, condition, x, y):
        if x.dtype == object:
            return np.where(condition, x, y)
        return call(k.where, condition, x, y, dtype=x.dtype)
