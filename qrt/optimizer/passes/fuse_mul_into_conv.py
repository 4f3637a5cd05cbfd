"""Conv(x, W, b) * s -> Conv(x, W·s, b·s) when s is a constant with one value per output channel
(BatchNormalization exported as Mul + Add leaves this after the Conv). The Conv takes the Mul's
output name."""
import numpy as np

from ..graph import is_op
from .fuse_add_bias_into_conv import per_channel_values
from .fuse_bn_into_conv import (FLOAT_DTYPES, conv_weight_and_bias, output_channels, scale_output_channels,
                                set_conv_weight_and_bias)


def fuse_mul_into_conv(graph):
    if graph.opset() < 7:  # Mul before opset 7 broadcasts by attribute, not numpy rules
        return 0
    changed = 0
    for mul in graph.live_nodes():
        if not is_op(mul, "Mul") or len(mul.input) != 2:
            continue
        for side in (0, 1):
            conv = graph.producer(mul.input[side])
            if conv is None or not is_op(conv, "Conv", "ConvTranspose") or len(conv.output) != 1:
                continue
            if graph.sole_consumer(conv.output[0]) is not mul:
                continue
            factor = graph.constant(mul.input[1 - side])
            if factor is None or factor.dtype.type not in FLOAT_DTYPES:
                continue
            weight, bias = conv_weight_and_bias(graph, conv)
            if weight is None or weight.dtype != factor.dtype:
                continue
            per_channel = per_channel_values(factor, weight.ndim, output_channels(conv, weight.shape))
            if per_channel is None:
                continue
            scale = per_channel.astype(np.float64)
            new_weight = scale_output_channels(conv, weight.astype(np.float64), scale).astype(weight.dtype)
            new_bias = (bias.astype(np.float64) * scale).astype(weight.dtype)
            set_conv_weight_and_bias(graph, conv, new_weight, new_bias)
            graph.take_output_name(conv, 0, mul)
            changed += 1
            break
    return changed
