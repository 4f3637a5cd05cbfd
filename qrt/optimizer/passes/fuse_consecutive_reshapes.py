"""Reshape(Reshape(x, s1), s2) -> Reshape(x, s2): only the last target shape matters.

A 0 in ``s2`` (copy, without ``allowzero``) refers to the first Reshape's output; it is replaced by
that dim when shape inference knows it, otherwise the pair is left alone.
"""
import numpy as np

from ..graph import attr, is_op
from .eliminate_nop_reshape import reshape_target


def fuse_consecutive_reshapes(graph):
    if graph.opset() < 5:
        return 0
    changed = 0
    for node in graph.live_nodes():
        if not is_op(node, "Reshape"):
            continue
        first = graph.producer(node.input[0])
        if first is None or not is_op(first, "Reshape"):
            continue
        target = reshape_target(graph, node)
        if target is None:
            continue
        if not attr(node, "allowzero", 0) and 0 in target:
            between = graph.info(first.output[0])
            dims = () if between is None or between.dims is None else between.dims
            if any(want == 0 and i >= len(dims) for i, want in enumerate(target)):
                continue
            copied = [dims[i] if want == 0 else want for i, want in enumerate(target)]
            if not all(isinstance(d, int) and d != 0 for d in copied):
                continue
            shape = graph.add_initializer(np.array(copied, dtype=np.int64), f"{node.input[1]}_resolved")
            graph.set_input(node, 1, shape)
        graph.set_input(node, 0, first.input[0])
        changed += 1
    return changed
