"""Gemm(Transpose(A), B) -> Gemm(A, B, transA=1) (and the same for B): Gemm transposes for free."""
from ..graph import attr, is_op, set_attr


def fuse_transpose_into_gemm(graph):
    changed = 0
    for node in graph.live_nodes():
        if not is_op(node, "Gemm"):
            continue
        for index, flag in ((0, "transA"), (1, "transB")):
            transpose = graph.producer(node.input[index])
            # Gemm operands are 2-D, so a Transpose without perm reverses two axes.
            if transpose is None or not is_op(transpose, "Transpose"):
                continue
            if list(attr(transpose, "perm", [1, 0])) != [1, 0]:
                continue
            graph.set_input(node, index, transpose.input[0])
            set_attr(node, flag, 1 - attr(node, flag, 0))
            changed += 1
    return changed
