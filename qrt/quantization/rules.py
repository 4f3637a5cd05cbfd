"""Which ops the quantizer rewrites, and how each one's inputs are treated.

Three kinds of op:

* ``compute``: has its own output range (Conv, MatMul, Add, pools, Softmax, ...). Its float inputs
  are quantized with the activation type; a weight input is quantized with the weight type
  (per-channel along :func:`weight_axis`); a bias input becomes int32 with scale
  ``input scale * weight scale`` and zero point 0.
* ``passthrough``: moves or selects values without arithmetic (MaxPool, Reshape, Slice, ...). It
  runs on the int8 tensor of its producer and its output keeps the producer's scale and zero
  point, so it is quantized only when its data input already is.
* ``reader``: ArgMax. Its output is an index, not a value; in QOperator form it reads the int8
  tensor of a quantized producer directly (the order of values survives quantization).
* ``activation``: Relu and Clip. After a compute op they disappear into the producer's output
  range when that range cannot represent anything the activation would remove.
"""
from __future__ import annotations

from dataclasses import dataclass

from .graph import MS_DOMAIN, attribute


@dataclass(frozen=True)
class OpRule:
    kind: str
    activations: tuple | None = (0,)  # input indices quantized as activations; None: every input
    weight: int | None = None         # input index of a weight (quantized with weight_type)
    bias: int | None = None           # input index of a bias (int32)
    qlinear: str | None = None        # the QOperator replacement, None: kept in float with int8 weights
    domain: str = ""


RULES = {
    "Conv": OpRule("compute", weight=1, bias=2, qlinear="QLinearConv"),
    "ConvTranspose": OpRule("compute", weight=1, bias=2, qlinear=None),
    "MatMul": OpRule("compute", activations=(0,), weight=1, qlinear="QLinearMatMul"),
    "Gemm": OpRule("compute", activations=(0,), weight=1, bias=2, qlinear="QGemm", domain=MS_DOMAIN),
    "Add": OpRule("compute", activations=(0, 1), qlinear="QLinearAdd", domain=MS_DOMAIN),
    "Mul": OpRule("compute", activations=(0, 1), qlinear="QLinearMul", domain=MS_DOMAIN),
    "GlobalAveragePool": OpRule("compute", qlinear="QLinearGlobalAveragePool", domain=MS_DOMAIN),
    "AveragePool": OpRule("compute", qlinear="QLinearAveragePool", domain=MS_DOMAIN),
    "Sigmoid": OpRule("compute", qlinear="QLinearSigmoid", domain=MS_DOMAIN),
    "LeakyRelu": OpRule("compute", qlinear="QLinearLeakyRelu", domain=MS_DOMAIN),
    "Concat": OpRule("compute", activations=None, qlinear="QLinearConcat", domain=MS_DOMAIN),
    "Softmax": OpRule("compute", qlinear="QLinearSoftmax", domain=MS_DOMAIN),
    "Where": OpRule("compute", activations=(1, 2), qlinear="QLinearWhere", domain=MS_DOMAIN),
    "MaxPool": OpRule("passthrough"),
    "Reshape": OpRule("passthrough"),
    "Transpose": OpRule("passthrough"),
    "Flatten": OpRule("passthrough"),
    "Squeeze": OpRule("passthrough"),
    "Unsqueeze": OpRule("passthrough"),
    "Resize": OpRule("passthrough"),
    "Split": OpRule("passthrough"),
    "Slice": OpRule("passthrough"),
    "Gather": OpRule("passthrough"),
    "Pad": OpRule("passthrough"),
    "ArgMax": OpRule("reader"),
    "Relu": OpRule("activation"),
    "Clip": OpRule("activation"),
}

DEFAULT_STATIC_OP_TYPES = tuple(RULES)
DEFAULT_DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "Gather", "LSTM")


def weight_axis(node, weight_rank: int):
    """The output-channel axis of a node's weight, or None when only per-tensor makes sense."""
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        # Output channels are split over groups along axis 1; one scale per axis-1 slot would be
        # shared by several output channels, so grouped transposed convs stay per-tensor.
        return 1 if attribute(node, "group", 1) == 1 else None
    if op == "MatMul":
        return 1 if weight_rank == 2 else None
    if op == "Gemm":
        return 0 if attribute(node, "transB", 0) else 1
    return None


def activation_bounds(node, constant):
    """(low, high) a Relu/Clip clamps to, or None when a bound is not a constant.

    ``constant(name)`` returns an initializer's value or None.
    """
    if node.op_type == "Relu":
        return 0.0, float("inf")
    # Clip's bounds are inputs from opset 11 on; pre-processing converts older models to opset 13.
    low, high = float("-inf"), float("inf")
    if len(node.input) > 1 and node.input[1]:
        value = constant(node.input[1])
        if value is None:
            return None
        low = float(value)
    if len(node.input) > 2 and node.input[2]:
        value = constant(node.input[2])
        if value is None:
            return None
        high = float(value)
    return low, high
