"""Fold an inference BatchNormalization into the Conv or ConvTranspose that feeds it.

With f = γ / √(σ² + ε) per output channel, BN(Conv(x, W, b)) = Conv(x, W·f, (b − μ)·f + β).
The new weights are computed in float64 and stored in the weight's dtype. Weights may come from
initializers, Constant or ConstantOfShape nodes; the fused Conv takes the BN's output name.
"""
import numpy as np

from ..graph import attr, is_op

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _inference_mode(graph, bn):
    if graph.opset() < 7 and not attr(bn, "is_test", 0):
        return False
    if attr(bn, "training_mode", 0) or not attr(bn, "spatial", 1):
        return False
    return not any(graph.is_read(name) for name in bn.output[1:] if name)


def output_channels(conv, weight_shape):
    if is_op(conv, "Conv"):
        return weight_shape[0]
    return weight_shape[1] * attr(conv, "group", 1)


def scale_output_channels(conv, weight, factor):
    """W with output channel c multiplied by factor[c] (ConvTranspose keeps them on axis 1, per group)."""
    if is_op(conv, "Conv"):
        return weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
    group = attr(conv, "group", 1)
    per_group = weight.reshape((group, weight.shape[0] // group) + weight.shape[1:])
    scaled = per_group * factor.reshape((group, 1, weight.shape[1]) + (1,) * (weight.ndim - 2))
    return scaled.reshape(weight.shape)


def conv_weight_and_bias(graph, conv):
    """The Conv's constant weight and bias (zeros when absent), or (None, None)."""
    weight = graph.constant(conv.input[1]) if len(conv.input) > 1 else None
    if weight is None or weight.dtype.type not in FLOAT_DTYPES or weight.ndim < 3:
        return None, None
    if is_op(conv, "ConvTranspose") and weight.shape[0] % attr(conv, "group", 1):
        return None, None
    channels = output_channels(conv, weight.shape)
    if len(conv.input) > 2 and conv.input[2]:
        bias = graph.constant(conv.input[2])
        if bias is None or bias.shape != (channels,):
            return None, None
    else:
        bias = np.zeros(channels, dtype=weight.dtype)
    return weight, bias


def set_conv_weight_and_bias(graph, conv, weight, bias):
    hint = conv.name or conv.output[0]
    graph.set_input(conv, 1, graph.add_initializer(weight, f"{hint}_W_fused"))
    graph.set_input(conv, 2, graph.add_initializer(bias, f"{hint}_B_fused"))


def fuse_bn_into_conv(graph):
    changed = 0
    for bn in graph.live_nodes():
        if not is_op(bn, "BatchNormalization") or len(bn.input) != 5:
            continue
        conv = graph.producer(bn.input[0])
        if conv is None or not is_op(conv, "Conv", "ConvTranspose") or len(conv.output) != 1:
            continue
        if graph.sole_consumer(conv.output[0]) is not bn or not _inference_mode(graph, bn):
            continue
        weight, bias = conv_weight_and_bias(graph, conv)
        if weight is None:
            continue
        channels = output_channels(conv, weight.shape)
        params = [graph.constant(name) for name in bn.input[1:]]
        if any(p is None or p.shape != (channels,) or p.dtype.kind != "f" for p in params):
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        factor = gamma / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
        new_weight = scale_output_channels(conv, weight.astype(np.float64), factor)
        new_bias = (bias.astype(np.float64) - mean) * factor + beta
        set_conv_weight_and_bias(graph, conv, new_weight.astype(weight.dtype), new_bias.astype(weight.dtype))
        graph.take_output_name(conv, 0, bn)
        changed += 1
    return changed
