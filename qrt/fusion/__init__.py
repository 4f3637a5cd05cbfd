"""Plan-time graph rewrites: QDQ groups onto the integer kernels, activations and element-wise groups fused."""
from .activations import fuse_activations
from .elementwise import fuse_elementwise
from .qdq import fuse_qdq_groups
from .qtables import fuse_qlinear_tables
from .transformer import fuse_transformer

__all__ = ["fuse_activations", "fuse_elementwise", "fuse_qdq_groups", "fuse_qlinear_tables", "fuse_transformer"]
