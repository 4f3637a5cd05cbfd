"""Merge Transpose(Transpose(x, p1), p2) into one Transpose(x, p1∘p2), dropped when that is the
identity. The first Transpose stays while anything else reads it."""
from ..graph import is_op, set_attr
from .eliminate_nop_transpose import transpose_perm


def fuse_consecutive_transposes(graph):
    changed = 0
    for node in graph.live_nodes():
        if not is_op(node, "Transpose"):
            continue
        first = graph.producer(node.input[0])
        if first is None or not is_op(first, "Transpose"):
            continue
        inner, outer = transpose_perm(graph, first), transpose_perm(graph, node)
        if inner is None or outer is None or len(inner) != len(outer):
            continue
        perm = [inner[axis] for axis in outer]
        graph.set_input(node, 0, first.input[0])
        set_attr(node, "perm", perm)
        changed += 1
        if perm == sorted(perm):
            graph.bypass(node, node.input[0], node.output[0])
    return changed
