"""Plan-time graph rewrites that let quantized models run on the integer kernels."""
from .qdq import fuse_qdq_groups

__all__ = ["fuse_qdq_groups"]
