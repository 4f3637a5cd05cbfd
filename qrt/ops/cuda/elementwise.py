"""Element-wise CUDA ops: arithmetic, comparison, logic, activations, Where, Cast, Identity.

Each class is the CPU op of the same name (:mod:`qrt.ops.elementwise`) with a device ``run``; the
kernels are :mod:`qrt.kernels.cuda.elementwise`. Dtypes without a device kernel (float16,
bfloat16, strings) run the CPU twin (see :mod:`.base`).
"""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import elementwise as k
from .base import CudaOp, twin

DEVICE_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float32, np.float64))
_BOOL = np.dtype(np.bool_)


def require_device_dtypes(*arrays):
    for a in arrays:
        if a is not None and np.dtype(a.dtype) not in DEVICE_DTYPES:
            raise dev.Unsupported(f"dtype {a.dtype} has no device kernel")


def broadcast_shape(*arrays):
    try:
        return np.broadcast_shapes(*[tuple(a.shape) for a in arrays])
    except ValueError:
        raise InvalidArgument("shapes " + ", ".join(str(list(a.shape)) for a in arrays)
                              + " do not broadcast") from None


# --------------------------------------------------------------------------- binary


class _Binary(CudaOp):
    kernel = ""
    int_kernel = ""
    result_bool = False

    def run_device(self, a, b):
        require_device_dtypes(a, b)
        if a.dtype != b.dtype:
            raise dev.Unsupported(f"mixed input dtypes {a.dtype} and {b.dtype}")
        name = self.int_kernel if self.int_kernel and a.dtype.kind in "iub" else self.kernel
        x, y = self.device(0, a), self.device(1, b)
        out = dev.empty(broadcast_shape(x, y), _BOOL if self.result_bool else x.dtype)
        return k.apply_binary(name, x, y, out)


def _binary(op_type, kernel, int_kernel="", result_bool=False):
    cls = type(op_type, (_Binary,), {"kernel": kernel, "int_kernel": int_kernel, "result_bool": result_bool,
                                     "__module__": __name__})
    # Opsets 1-6 broadcast by the `broadcast`/`axis` attributes, which only the host kernels apply.
    return twin(op_type, since_min=7)(cls)


Add = _binary("Add", "add")
Sub = _binary("Sub", "sub")
Mul = _binary("Mul", "mul")
Div = _binary("Div", "div_float", "div_int")
Equal = _binary("Equal", "equal", result_bool=True)
Greater = _binary("Greater", "greater", result_bool=True)
GreaterOrEqual = _binary("GreaterOrEqual", "greater_equal", result_bool=True)
Less = _binary("Less", "less", result_bool=True)
LessOrEqual = _binary("LessOrEqual", "less_equal", result_bool=True)
And = _binary("And", "logical_and", result_bool=True)
Or = _binary("Or", "logical_or", result_bool=True)
Xor = _binary("Xor", "logical_xor", result_bool=True)


@twin("Pow", since_min=7)   # opsets 1-6: legacy broadcast attributes, host only
class Pow(CudaOp):
    def run_device(self, x, y):
        require_device_dtypes(x, y)
        if x.dtype.kind != "f" or y.dtype != x.dtype:
            raise dev.Unsupported(f"Pow of {x.dtype} by {y.dtype}")
        a, b = self.device(0, x), self.device(1, y)
        return k.apply_binary("pow_float", a, b, dev.empty(broadcast_shape(a, b), a.dtype))


@twin("Mod")
class Mod(CudaOp):
    def run_device(self, a, b):
        require_device_dtypes(a, b)
        if a.dtype != b.dtype:
            raise dev.Unsupported(f"mixed input dtypes {a.dtype} and {b.dtype}")
        if a.dtype.kind == "f":
            name = "fmod" if self.fmod else "mod_float"
        else:
            name = "fmod_int" if self.fmod else "mod_int"
        x, y = self.device(0, a), self.device(1, b)
        return k.apply_binary(name, x, y, dev.empty(broadcast_shape(x, y), x.dtype))


class _Variadic(CudaOp):
    kernel = ""

    def run_device(self, *xs):
        require_device_dtypes(*xs)
        if any(x.dtype != xs[0].dtype for x in xs):
            raise dev.Unsupported("mixed input dtypes")
        arrays = [self.device(i, x) for i, x in enumerate(xs)]
        result = arrays[0]
        if len(arrays) == 1:
            return k.apply_unary("identity", result, dev.empty(result.shape, result.dtype))
        for x in arrays[1:]:
            result = k.apply_binary(self.kernel, result, x, dev.empty(broadcast_shape(result, x), result.dtype))
        return result


Max = twin("Max")(type("Max", (_Variadic,), {"kernel": "maximum", "__module__": __name__}))
Min = twin("Min")(type("Min", (_Variadic,), {"kernel": "minimum", "__module__": __name__}))
Sum = twin("Sum")(type("Sum", (_Variadic,), {"kernel": "add", "__module__": __name__}))


@twin("Mean")
class Mean(_Variadic):
    kernel = "add"

    def run_device(self, *xs):
        if xs[0].dtype.kind != "f":
            raise dev.Unsupported(f"Mean of {xs[0].dtype}")
        total = _Variadic.run_device(self, *xs)
        count = dev.upload(np.asarray(len(xs), dtype=total.dtype))
        return k.apply_binary("div_float", total, count, dev.empty(total.shape, total.dtype))


# --------------------------------------------------------------------------- unary


class _Unary(CudaOp):
    kernel = ""
    result_bool = False

    def params(self, x):
        return 0, 0

    def run_device(self, x):
        require_device_dtypes(x)
        a = self.device(0, x)
        p0, p1 = self.params(a)
        out = dev.empty(a.shape, _BOOL if self.result_bool else a.dtype)
        return k.apply_unary(self.kernel_name(), a, out, p0, p1)

    def kernel_name(self):
        return self.kernel


def _unary(op_type, kernel, result_bool=False, params=None):
    attrs = {"kernel": kernel, "result_bool": result_bool, "__module__": __name__}
    if params is not None:
        attrs["params"] = params
    return twin(op_type)(type(op_type, (_Unary,), attrs))


Abs = _unary("Abs", "absolute")
Neg = _unary("Neg", "negative")
Sign = _unary("Sign", "sign")
Exp = _unary("Exp", "exp")
Log = _unary("Log", "log")
Sqrt = _unary("Sqrt", "sqrt")
Reciprocal = _unary("Reciprocal", "reciprocal")
Floor = _unary("Floor", "floor")
Ceil = _unary("Ceil", "ceil")
Round = _unary("Round", "round_half_even")
Sin = _unary("Sin", "sin")
Cos = _unary("Cos", "cos")
Tanh = _unary("Tanh", "tanh")
Erf = _unary("Erf", "erf")
Sigmoid = _unary("Sigmoid", "sigmoid")
Relu = _unary("Relu", "relu")
HardSwish = _unary("HardSwish", "hard_swish")
Softplus = _unary("Softplus", "softplus")
Softsign = _unary("Softsign", "softsign")
Not = _unary("Not", "logical_not", result_bool=True)
IsNaN = _unary("IsNaN", "is_nan", result_bool=True)
LeakyRelu = _unary("LeakyRelu", "leaky_relu", params=lambda self, x: (self.alpha, 0))
Elu = _unary("Elu", "elu", params=lambda self, x: (self.alpha, 0))
Selu = _unary("Selu", "selu", params=lambda self, x: (self.alpha, self.gamma))
HardSigmoid = _unary("HardSigmoid", "hard_sigmoid", params=lambda self, x: (self.alpha, self.beta))
ThresholdedRelu = _unary("ThresholdedRelu", "thresholded_relu", params=lambda self, x: (self.alpha, 0))


@twin("Gelu")
class Gelu(_Unary):
    def kernel_name(self):
        return "gelu_tanh" if getattr(self.kernel, "__name__", "") == "gelu_tanh" else "gelu_erf"


@twin("Clip")
class Clip(CudaOp):
    device_inputs = (0,)

    def run_device(self, x, min=None, max=None):
        require_device_dtypes(x)
        if x.dtype == _BOOL:
            raise dev.Unsupported("Clip of bool")
        if self.since_version < 11:
            lo, hi = self.min, self.max
        else:
            if x.dtype.kind == "f":
                lo, hi = -np.inf, np.inf
            else:
                info = np.iinfo(x.dtype)
                lo, hi = info.min, info.max
            if min is not None:
                lo = self.host(min).reshape(-1)[0]
            if max is not None:
                hi = self.host(max).reshape(-1)[0]
        a = self.device(0, x)
        return k.apply_unary("clip", a, dev.empty(a.shape, a.dtype), x.dtype.type(lo), x.dtype.type(hi))


@twin("PRelu", since_min=7)   # opset 6: legacy per-channel slope, host only
class PRelu(CudaOp):
    def run_device(self, x, slope):
        require_device_dtypes(x, slope)
        if slope.dtype != x.dtype:
            raise dev.Unsupported(f"PRelu slope {slope.dtype} on {x.dtype}")
        a, s = self.device(0, x), self.device(1, slope)
        return k.apply_binary("prelu", a, s, dev.empty(broadcast_shape(a, s), a.dtype))


@twin("Where")
class Where(CudaOp):
    def run_device(self, condition, x, y):
        require_device_dtypes(condition, x, y)
        if x.dtype != y.dtype:
            raise dev.Unsupported("mixed value dtypes")
        c, a, b = self.device(0, condition), self.device(1, x), self.device(2, y)
        return k.where(c, a, b, dev.empty(broadcast_shape(c, a, b), a.dtype))


@twin("Cast")
class Cast(CudaOp):
    def run_device(self, input):
        require_device_dtypes(input)
        if self.dtype not in DEVICE_DTYPES:
            raise dev.Unsupported(f"Cast to {self.dtype}")
        a = self.device(0, input)
        if a.dtype == self.dtype:
            return a
        return k.apply_unary("identity", a, dev.empty(a.shape, self.dtype))


@twin("Identity")
class Identity(CudaOp):
    def run_device(self, x):
        return x
