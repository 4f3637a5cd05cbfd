"""Remove Transpose nodes whose permutation is the identity."""
from ..graph import attr, is_op


def transpose_perm(graph, node):
    """The permutation a Transpose applies, or None when it depends on an unknown rank."""
    perm = attr(node, "perm")
    if perm is not None:
        return list(perm)
    rank = graph.rank(node.input[0])
    return None if rank is None else list(range(rank - 1, -1, -1))


def eliminate_nop_transpose(graph):
    changed = 0
    for node in graph.live_nodes():
        if not is_op(node, "Transpose"):
            continue
        perm = transpose_perm(graph, node)
        if perm is not None and perm == sorted(perm):
            changed += graph.bypass(node, node.input[0], node.output[0])
    return changed
