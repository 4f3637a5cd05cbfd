"""Conv(x, W, b) * s -> Conv(x, W·s, b·s) when s is a constant with one value per output channel
(BatchNormalization exported as Mul + Add leaves this after the Conv). The Conv takes the Mul's
output name."""
import numpy as np

from .fuse_add_bias_into_conv import conv_with_constant, per_channel_values
from .fuse_bn_into_conv import conv_weight_and_bias, output_channels, scale_output_channels, set_conv_weight_and_bias


def fuse_mul_into_conv(graph):
    if graph.opset() < 7:  # Mul before opset 7 broadcasts by attribute, not numpy rules
        return 0
    changed = 0
    for mul in graph.live_nodes():
        for conv, factor in conv_with_constant(graph, mul, "Mul"):
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
