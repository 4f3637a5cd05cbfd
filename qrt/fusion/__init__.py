"""Plan-time graph rewrites: QDQ groups onto the integer kernels, activations and element-wise groups fused,
int8 convolution chains kept channels-last."""
from .activations import fuse_activations
from .channels_last import to_channels_last
from .elementwise import fuse_elementwise
from .qdq import fuse_qdq_groups
from .transformer import fuse_transformer

__all__ = ["fuse_activations", "fuse_elementwise", "fuse_qdq_groups", "fuse_transformer", "to_channels_last"]
