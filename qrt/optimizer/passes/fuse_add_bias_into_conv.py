"""Conv(x, W, b) + c -> Conv(x, W, b + c) when c is a constant holding one value per output channel
(shape like (M, 1, 1), (1, M, 1, 1), or a single value). The Conv takes the Add's output name."""
import numpy as np

from ..graph import is_op
from .fuse_bn_into_conv import FLOAT_DTYPES, output_channels


def per_channel_values(bias, rank, channels):
    """The (channels,) vector a constant adds to a (N, channels, ...) tensor of ``rank``, or None
    when adding it would do more than that (broadcast to a bigger shape, vary along other axes)."""
    if bias.ndim > rank:
        return None
    shape = (1,) * (rank - bias.ndim) + bias.shape
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(bias.reshape(-1), (channels,))


def conv_with_constant(graph, node, op_type):
    """(conv, constant) for each side of a two-input ``op_type`` node whose one operand is the sole use of
    a Conv/ConvTranspose output and whose other operand is a float constant."""
    if not is_op(node, op_type) or len(node.input) != 2:
        return []
    candidates = []
    for side in (0, 1):
        conv = graph.producer(node.input[side])
        if conv is None or not is_op(conv, "Conv", "ConvTranspose") or len(conv.output) != 1:
            continue
        if graph.sole_consumer(conv.output[0]) is not node:
            continue
        constant = graph.constant(node.input[1 - side])
        if constant is None or constant.dtype.type not in FLOAT_DTYPES:
            continue
        candidates.append((conv, constant))
    return candidates


def fuse_add_bias_into_conv(graph):
    if graph.opset() < 7:  # Add before opset 7 broadcasts by attribute, not numpy rules
        return 0
    changed = 0
    for add in graph.live_nodes():
        for conv, addend in conv_with_constant(graph, add, "Add"):
            weight_shape = graph.static_shape(conv.input[1])
            if weight_shape is None:
                continue
            channels = output_channels(conv, weight_shape)
            extra = per_channel_values(addend, len(weight_shape), channels)
            if extra is None:
                continue
            if len(conv.input) > 2 and conv.input[2]:
                bias = graph.constant(conv.input[2])
                if bias is None or bias.shape != (channels,):
                    continue
            else:
                bias = np.zeros(channels, dtype=addend.dtype)
            name = graph.add_initializer((bias + extra).astype(addend.dtype), f"{conv.name or conv.output[0]}_B_fused")
            graph.set_input(conv, 2, name)
            graph.take_output_name(conv, 0, add)
            changed += 1
            break
    return changed
