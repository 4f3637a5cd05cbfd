"""com.microsoft FusedConv and FusedGemm: a Conv or Gemm with its activation applied in the same pass.

The planner's activation fusion (:mod:`qrt.fusion.activations`) produces them; onnxruntime's CPU
provider runs the same ops, so a model saved after fusion stays runnable there.
"""
import numpy as np

from ..errors import InvalidModel
from ..kernels.cpu import gemm as gemm_kernels
from ..kernels.cpu.activation import ACTIVATION_CODES, activate_inplace
from ..registry import register
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
        if code == ACTIVATION_CODES["Relu"]:
            # The GEMM's own epilogue applies Relu together with the bias.
            return gemm_kernels.gemm(a, b, c, alpha=self.alpha, beta=self.beta, trans_a=self.trans_a,
                                     trans_b=self.trans_b, activation="Relu")
        out = super().run(a, b, c)
        activate_inplace(out.reshape(-1), code, alpha, beta)
        return out
