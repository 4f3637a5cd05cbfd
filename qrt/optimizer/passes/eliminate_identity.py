"""Remove Identity nodes: readers of the output read the input instead."""
from ..graph import is_op


def eliminate_identity(graph):
    changed = 0
    for node in graph.live_nodes():
        if is_op(node, "Identity") and len(node.input) == 1 and node.input[0]:
            changed += graph.bypass(node, node.input[0], node.output[0])
    return changed
