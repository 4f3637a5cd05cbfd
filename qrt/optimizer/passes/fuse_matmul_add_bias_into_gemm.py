"""MatMul(A, B) + C -> Gemm(A, B, C) when A and B are 2-D and C broadcasts to (M, N) without
growing it.

Gemm needs opset >= 7 (earlier Gemm broadcasts C by attribute) and handles float and double here.
N-D MatMuls are left alone: rewriting them needs Reshapes around the Gemm, which is no fewer nodes.
"""
from onnx import TensorProto, helper

from ..graph import is_op

GEMM_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)


def _bias_fits(bias_dims, out_dims):
    """C may only broadcast up to the MatMul output (M, N), never widen it."""
    if bias_dims is None or len(bias_dims) > 2:
        return False
    for want, have in zip(reversed(out_dims), reversed(bias_dims)):
        if have == 1:
            continue
        if have is None or have != want:
            return False
    return True


def fuse_matmul_add_bias_into_gemm(graph):
    if graph.opset() < 7:
        return 0
    changed = 0
    for add in graph.live_nodes():
        if not is_op(add, "Add") or len(add.input) != 2 or add.input[0] == add.input[1]:
            continue
        for side in (0, 1):
            matmul = graph.producer(add.input[side])
            if matmul is None or not is_op(matmul, "MatMul") or graph.sole_consumer(matmul.output[0]) is not add:
                continue
            a, b = graph.info(matmul.input[0]), graph.info(matmul.input[1])
            bias = graph.info(add.input[1 - side])
            if a is None or b is None or bias is None or a.dims is None or b.dims is None:
                continue
            if len(a.dims) != 2 or len(b.dims) != 2 or a.elem_type not in GEMM_TYPES:
                continue
            if not _bias_fits(bias.dims, (a.dims[0], b.dims[1])):
                continue
            gemm = helper.make_node("Gemm", [matmul.input[0], matmul.input[1], add.input[1 - side]],
                                    [add.output[0]], name=matmul.name or graph.fresh_name("Gemm"))
            graph.remove_node(matmul)
            graph.remove_node(add)
            graph.add_node(gemm)
            changed += 1
            break
    return changed
