"""Remove Pad nodes that pad nothing (every pad amount zero)."""
import numpy as np

from ..graph import attr, is_op


def pad_amounts(graph, node):
    """The pads list of a Pad node (attribute before opset 11, input from 11), or None if unknown."""
    if graph.opset() < 11:
        pads = attr(node, "pads", attr(node, "paddings"))
        return None if pads is None else [int(p) for p in pads]
    if len(node.input) < 2 or not node.input[1]:
        return None
    pads = graph.constant(node.input[1])
    return None if pads is None else [int(p) for p in np.asarray(pads).reshape(-1)]


def eliminate_nop_pad(graph):
    changed = 0
    for node in graph.live_nodes():
        if not is_op(node, "Pad"):
            continue
        pads = pad_amounts(graph, node)
        if pads is not None and not any(pads):
            changed += graph.bypass(node, node.input[0], node.output[0])
    return changed
