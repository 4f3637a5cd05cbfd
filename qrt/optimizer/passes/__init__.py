"""The optimizer passes, one module each.

A pass is a function ``pass(graph: qrt.optimizer.graph.Graph) -> int`` that rewrites the graph in
place and returns how many rewrites it made (0: the graph is as it was).
"""
from .constant_folding import constant_folding
from .eliminate_deadend import eliminate_deadend
from .eliminate_dropout import eliminate_dropout
from .eliminate_identity import eliminate_identity
from .eliminate_nop_pad import eliminate_nop_pad
from .eliminate_nop_reshape import eliminate_nop_reshape
from .eliminate_nop_transpose import eliminate_nop_transpose
from .eliminate_unused_initializer import eliminate_unused_initializer
from .fold_shape_ops import fold_shape_ops
from .fuse_add_bias_into_conv import fuse_add_bias_into_conv
from .fuse_bn_into_conv import fuse_bn_into_conv
from .fuse_consecutive_reshapes import fuse_consecutive_reshapes
from .fuse_consecutive_transposes import fuse_consecutive_transposes
from .fuse_matmul_add_bias_into_gemm import fuse_matmul_add_bias_into_gemm
from .fuse_mul_into_conv import fuse_mul_into_conv
from .fuse_pad_into_conv import fuse_pad_into_conv
from .fuse_transpose_into_gemm import fuse_transpose_into_gemm

# Rewrites that keep every arithmetic operation as it was (folding computes what the runtime would,
# bit for bit): the "basic" level.
EXACT_PASSES = (
    constant_folding,
    fold_shape_ops,
    eliminate_identity,
    eliminate_dropout,
    eliminate_nop_transpose,
    eliminate_nop_pad,
    eliminate_nop_reshape,
    fuse_consecutive_transposes,
    fuse_consecutive_reshapes,
)

# Fusions that merge arithmetic into fewer kernels (results may differ in the last bits): "extended".
FUSION_PASSES = (
    fuse_transpose_into_gemm,
    fuse_pad_into_conv,
    fuse_bn_into_conv,
    fuse_mul_into_conv,
    fuse_add_bias_into_conv,
    fuse_matmul_add_bias_into_gemm,
)

CLEANUP_PASSES = (
    eliminate_deadend,
    eliminate_unused_initializer,
)

PASSES = {p.__name__: p for p in EXACT_PASSES + FUSION_PASSES + CLEANUP_PASSES}
