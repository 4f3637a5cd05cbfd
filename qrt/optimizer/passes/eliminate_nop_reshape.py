"""Remove Reshape nodes whose target shape equals the input's shape.

The input shape may be partly symbolic: target entry 0 (copy, without ``allowzero``) matches any
dim, a number matches the same known dim, and a single -1 matches whatever is left once every
other entry matched exactly.
"""
from ..graph import attr, is_op


def reshape_target(graph, node):
    """The shape a Reshape asks for (attribute before opset 5, input after), or None."""
    if graph.opset() < 5:
        shape = attr(node, "shape")
        return None if shape is None else [int(d) for d in shape]
    if len(node.input) < 2:
        return None
    shape = graph.constant(node.input[1])
    return None if shape is None else [int(d) for d in shape.reshape(-1)]


def is_nop_reshape(dims, target, allowzero):
    if dims is None or target is None or len(dims) != len(target):
        return False
    if any(d == 0 for d in dims):  # -1 is ambiguous on empty tensors
        return False
    unmatched = 0
    for dim, want in zip(dims, target):
        if want == 0 and not allowzero:
            continue
        if isinstance(dim, int) and want == dim:
            continue
        if want == -1:
            unmatched += 1
            continue
        return False
    return unmatched <= 1


def eliminate_nop_reshape(graph):
    changed = 0
    for node in graph.live_nodes():
        if not is_op(node, "Reshape"):
            continue
        info = graph.info(node.input[0])
        target = reshape_target(graph, node)
        if info is not None and is_nop_reshape(info.dims, target, attr(node, "allowzero", 0)):
            changed += graph.bypass(node, node.input[0], node.output[0])
    return changed
