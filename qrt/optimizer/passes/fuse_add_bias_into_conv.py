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


def fuse_add_bias_into_conv(graph):
    if graph.opset() < 7:  # Add before opset 7 broadcasts by attribute, not numpy rules
        return 0
    changed = 0
    for add in graph.live_nodes():
        if not is_op(add, "Add") or len(add.input) != 2:
            continue
        for side in (0, 1):
            conv = graph.producer(add.input[side])
            if conv is None or not is_op(conv, "Conv", "ConvTranspose") or len(conv.output) != 1:
                continue
            if graph.sole_consumer(conv.output[0]) is not add:
                continue
            weight_shape = graph.static_shape(conv.input[1])
            addend = graph.constant(add.input[1 - side])
            if weight_shape is None or addend is None or addend.dtype.type not in FLOAT_DTYPES:
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
