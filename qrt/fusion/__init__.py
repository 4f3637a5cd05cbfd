"""Plan-time graph rewrites: QDQ groups and dynamic-quantization chains onto the integer kernels, activations and
element-wise groups fused, int8 convolution chains kept channels-last."""
from .activations import fuse_activations
from .channels_last import to_channels_last
from .dynamic_matmul import fuse_dynamic_matmuls
from .elementwise import fuse_elementwise
from .per_row_matmul import fuse_per_row_matmuls
from .qdq import fuse_qdq_groups
from .qtables import fuse_qlinear_tables
from .transformer import fuse_transformer

__all__ = ["fuse_activations", "fuse_dynamic_matmuls", "fuse_elementwise", "fuse_per_row_matmuls", "fuse_qdq_groups",
           "fuse_qlinear_tables", "fuse_transformer", "to_channels_last"]
