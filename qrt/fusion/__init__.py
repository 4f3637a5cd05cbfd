"""Plan-time graph rewrites that let quantized models run on the integer kernels."""
from .activations import fuse_activations
from .qdq import fuse_qdq_groups

__all__ = ["fuse_activations", "fuse_qdq_groups"]
