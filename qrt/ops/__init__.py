"""Every CPU op, one module per family; importing this package registers them all."""
from . import constant, elementwise  # noqa: F401
from . import cast, control_flow, movement, shape  # noqa: F401
from . import index, reduce, rnn  # noqa: F401  (reductions, index/sort ops, recurrent networks)
from . import linalg, softmax, transformer  # noqa: F401  (matrix products, softmax family, transformer blocks)
from . import conv, normalization, pool, resize  # noqa: F401  (convolution, normalization, pooling, resampling)
from . import quantized  # noqa: F401  (QuantizeLinear family, QLinear*/Integer matmul and conv)
from . import contrib_quantized  # noqa: F401  (com.microsoft QGemm, QLinearAdd, ... as onnxruntime's quantizer emits)
from . import fused  # noqa: F401  (com.microsoft FusedConv/FusedGemm from the planner's activation fusion)
from . import sequence  # noqa: F401  (Sequence*, SplitToSequence, ConcatFromSequence, Optional*)
from . import nbits  # noqa: F401  (com.microsoft MatMulNBits, GatherBlockQuantized: blockwise 4-bit weights)
