"""Pad(x) -> Conv becomes Conv(x) with the pad amounts added to its ``pads``, when the Pad pads
only spatial axes, with zeros (mode constant, value 0), by non-negative amounts."""
import numpy as np

from ..graph import attr, is_op, set_attr
from .eliminate_nop_pad import pad_amounts


def _pad_value_is_zero(graph, pad):
    if graph.opset() < 11:
        return float(attr(pad, "value", 0.0)) == 0.0
    if len(pad.input) < 3 or not pad.input[2]:
        return True
    value = graph.constant(pad.input[2])
    return value is not None and value.size <= 1 and not np.any(value)


def _per_axis_pads(graph, pad, rank):
    """(begins, ends) per axis of a rank-``rank`` input, or None."""
    amounts = pad_amounts(graph, pad)
    if amounts is None:
        return None
    if graph.opset() >= 18 and len(pad.input) > 3 and pad.input[3]:
        axes = graph.constant(pad.input[3])
        if axes is None:
            return None
        axes = [int(a) + rank if a < 0 else int(a) for a in axes.reshape(-1)]
    else:
        axes = list(range(rank))
    if len(amounts) != 2 * len(axes) or len(set(axes)) != len(axes) or not all(0 <= a < rank for a in axes):
        return None
    begins, ends = [0] * rank, [0] * rank
    for k, axis in enumerate(axes):
        begins[axis], ends[axis] = amounts[k], amounts[k + len(axes)]
    return begins, ends


def fuse_pad_into_conv(graph):
    changed = 0
    for conv in graph.live_nodes():
        if not is_op(conv, "Conv") or attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        pad = graph.producer(conv.input[0])
        if pad is None or not is_op(pad, "Pad") or graph.sole_consumer(pad.output[0]) is not conv:
            continue
        if attr(pad, "mode", b"constant") not in (b"constant", "constant") or not _pad_value_is_zero(graph, pad):
            continue
        rank = graph.rank(conv.input[1])
        per_axis = None if rank is None else _per_axis_pads(graph, pad, rank)
        if per_axis is None:
            continue
        begins, ends = per_axis
        if any(begins[:2]) or any(ends[:2]) or min(begins + ends) < 0:
            continue
        spatial = rank - 2
        conv_pads = list(attr(conv, "pads", [0] * (2 * spatial)))
        new_pads = [conv_pads[i] + begins[2 + i] for i in range(spatial)]
        new_pads += [conv_pads[spatial + i] + ends[2 + i] for i in range(spatial)]
        set_attr(conv, "pads", new_pads)
        graph.set_input(conv, 0, pad.input[0])
        changed += 1
    return changed
