"""Fused ops the planner's fusions produce.

* com.microsoft FusedConv and FusedGemm: a Conv or Gemm with its activation applied in the same
  pass (:mod:`qrt.fusion.activations`); onnxruntime's CPU provider runs the same ops, so a model
  saved after that fusion stays runnable there.
* qrt FusedElementwise: a group of float32 element-wise nodes run as one generated kernel
  (:mod:`qrt.fusion.elementwise`, :mod:`qrt.kernels.cpu.fused_elementwise`). Its ``body`` graph
  attribute holds the original nodes, so the group stays inspectable; only qrt runs this op.
"""
import math

import numpy as np

from ..errors import InvalidModel
from ..kernels.cpu import fused_elementwise as fe
from ..kernels.cpu import gemm as gemm_kernels
from ..kernels.cpu.activation import ACTIVATION_CODES, activate_inplace
from ..kernels.cpu.threads import threads_for
from ..registry import register
from .base import Op
from .conv import Conv
from .linalg import Gemm11


def _activation(activation, params):
    if activation not in ACTIVATION_CODES or not activation:
        raise InvalidModel(f"unsupported fused activation {activation!r}; qrt fuses {sorted(ACTIVATION_CODES)[1:]}")
    params = list(params or [])
    if activation == "Clip":
        lo, hi = (params + [-np.inf, np.inf][len(params):])[:2]
        return ACTIVATION_CODES[activation], float(lo), float(hi)
    if activation == "LeakyRelu":
        return ACTIVATION_CODES[activation], float(params[0] if params else 0.01), 0.0
    if activation == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        return ACTIVATION_CODES[activation], float(alpha), float(beta)
    return ACTIVATION_CODES[activation], 0.0, 0.0


@register("FusedConv", 1, domain="com.microsoft")
class FusedConv(Conv):
    def __init__(self, activation="", activation_params=None, auto_pad="NOTSET", dilations=None, group=1,
                 kernel_shape=None, pads=None, strides=None):
        super().__init__(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                         pads=pads, strides=strides)
        self.fused_activation = _activation(activation, activation_params)

    def run(self, X, W, B=None, Z=None):
        if Z is not None:
            raise InvalidModel("FusedConv with a residual input Z is not supported by qrt")
        return super().run(X, W, B)


@register("FusedGemm", 1, domain="com.microsoft")
class FusedGemm(Gemm11):
    def __init__(self, activation="", activation_alpha=None, activation_beta=None, activation_gamma=None,
                 alpha=1.0, beta=1.0, transA=0, transB=0):
        super().__init__(alpha=alpha, beta=beta, transA=transA, transB=transB)
        params = [p for p in (activation_alpha, activation_beta) if p is not None]
        self.fused_activation = _activation(activation, params)

    def run(self, a, b, c=None):
        code, alpha, beta = self.fused_activation
        out = self._packed_product(a, c, code, alpha, beta)
        if out is not None:
            return out
        if code == ACTIVATION_CODES["Relu"]:
            # The GEMM's own epilogue applies Relu together with the bias.
            return gemm_kernels.gemm(a, b, c, alpha=self.alpha, beta=self.beta, trans_a=self.trans_a,
                                     trans_b=self.trans_b, activation="Relu")
        out = super().run(a, b, c)
        activate_inplace(out.reshape(-1), code, alpha, beta)
        return out


def _program_step(step, operand, constants):
    """(op, operands, params) of one body step, mirroring what the unfused kernel computes."""
    kernel, op = step.kernel, step.op_type
    names = [n for n in step.inputs]
    if op in ("Max", "Min") and len(names) != 2:
        raise InvalidModel(f"FusedElementwise fuses two-input {op} only")
    if op == "Clip":
        if hasattr(kernel, "min"):   # Clip-6: bounds are attributes
            return op, [operand(names[0])], (kernel.min, kernel.max)
        bounds = []
        for i, default in ((1, -np.inf), (2, np.inf)):
            name = names[i] if len(names) > i else ""
            bounds.append(float(np.asarray(constants[name]).reshape(())) if name else default)
        return op, [operand(names[0])], tuple(bounds)
    if op == "Gelu":
        op = "GeluTanh" if kernel.kernel is fe.ew.gelu_tanh else "GeluErf"
        return op, [operand(names[0])], ()
    params = {"LeakyRelu": ("alpha",), "Elu": ("alpha",), "HardSigmoid": ("alpha", "beta")}.get(op, ())
    return op, [operand(n) for n in names], tuple(getattr(kernel, p) for p in params)


@register("FusedElementwise", 1, domain="qrt")
class FusedElementwise(Op):
    """Runs ``body`` (float32 element-wise nodes, one output) as one generated Numba kernel.

    Inputs whose shapes differ from what the kernel indexes at run time (a broadcast the model's
    shapes did not show) run through the body's own plan, the unfused kernels, instead.
    """

    def __init__(self, body):
        self.body = body
        constants = body.constants
        out_type = body.output_types[0].tensor_type if body.output_types else None
        out_rank = len(out_type.shape.dim) if out_type is not None and out_type.HasField("shape") else None
        inputs = list(body.input_names)
        const_names = sorted({n for s in body.steps for n in s.inputs if n and n in constants})
        layouts = fe.group_layouts({n: np.shape(constants[n]) for n in const_names}, out_rank)
        if layouts is None:
            raise InvalidModel("FusedElementwise: constants do not broadcast along one axis group")
        names = inputs + const_names
        kinds = [fe.FULL] * len(inputs) + [layouts[n][0] for n in const_names]
        scalars = {i: float(np.asarray(constants[n]).reshape(())) for i, n in enumerate(names)
                   if kinds[i] == fe.SCALAR}
        index = {n: i for i, n in enumerate(names)}
        produced = {}

        def operand(name):
            return ("tmp", produced[name]) if name in produced else ("in", index[name])

        program = []
        for step in body.steps:
            if step.op_type not in fe.SCALAR_OPS and step.op_type != "Gelu":
                raise InvalidModel(f"FusedElementwise cannot fuse {step.op_type}")
            program.append(_program_step(step, operand, constants))
            produced[step.outputs[0]] = len(program) - 1
        if not program or body.steps[-1].outputs[0] != body.output_names[0]:
            raise InvalidModel("FusedElementwise body must end in the op producing its output")
        self.module = fe.load(fe.generate_source(kinds, scalars, program))
        self.element_cost = fe.element_cost(op for op, _, _ in program)
        # Compile (or load from Numba's cache) the serial variant now, at session creation; the
        # parallel one compiles on the first output large enough to use it.
        n_arrays = sum(kind != fe.SCALAR for kind in kinds)
        self.module.run_serial.compile((fe.FLOAT_VECTOR,) * (n_arrays + 1) + (fe.INDEX,) * 3)
        self.arrays = [np.ascontiguousarray(constants[n], dtype=np.float32).reshape(-1)
                       for i, n in enumerate(const_names) if kinds[len(inputs) + i] != fe.SCALAR]
        self.broadcast = next((layouts[n] for n in const_names if layouts[n][0] != fe.SCALAR), None)
        # A constant of higher rank than the inputs would widen the output: numpy's broadcast, not ours.
        self.min_rank = max((np.ndim(constants[n]) for n in const_names), default=0)

    def _layout(self, shape):
        """(rows, period, channels) of an output of ``shape``, or None when the constants do not fit it."""
        size = math.prod(shape)
        if self.broadcast is None:
            return fe.flat_layout(shape) + (1,)
        kind, key = self.broadcast
        if kind == fe.ROW:
            if len(shape) < len(key) or tuple(shape[len(shape) - len(key):]) != key:
                return None
            period = math.prod(key)
            return size // period, period, 1
        channels, ones = key
        if len(shape) < ones + 1 or shape[-ones - 1] != channels:
            return None
        period = math.prod(shape[len(shape) - ones:])
        return (size // period if period else 0), period, channels

    def run(self, *xs):
        shape = xs[0].shape if xs else None
        layout = None
        if shape is not None and len(shape) >= self.min_rank and \
                all(x.shape == shape and x.dtype == np.float32 for x in xs):
            layout = self._layout(shape)
        if layout is None:
            return self.body.run(dict(zip(self.body.input_names, xs)))[0]
        rows, period, channels = layout
        out = np.empty(shape, dtype=np.float32)
        if out.size:
            flat = [np.ascontiguousarray(x).reshape(-1) for x in xs]
            parallel = rows > 1 and threads_for(out.size * self.element_cost) > 1
            kernel = self.module.run_parallel if parallel else self.module.run_serial
            kernel(*flat, *self.arrays, out.reshape(-1), rows, period, channels)
        return out
