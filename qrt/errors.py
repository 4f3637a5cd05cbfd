"""Exceptions raised by qrt.

Every error a user can cause is a :class:`QrtError`; the message names the model, node, input,
shape or dtype at fault. Numba tracebacks never escape a session.
"""


class QrtError(Exception):
    """Base class of every error qrt raises on purpose."""


class InvalidModel(QrtError):
    """The model cannot be read, or is not valid ONNX."""


class UnsupportedOperator(QrtError):
    """One or more nodes have no kernel. ``nodes`` lists (name, op_type, domain, opset)."""

    def __init__(self, nodes, model_name="model"):
        self.nodes = list(nodes)
        lines = [f"  node {name!r}: {domain or 'ai.onnx'}::{op_type} (opset {opset})"
                 for name, op_type, domain, opset in self.nodes]
        super().__init__(f"{model_name}: {len(self.nodes)} node(s) have no qrt kernel:\n" + "\n".join(lines))


class InvalidArgument(QrtError):
    """A feed is wrong: unknown name, missing input, wrong rank, shape or dtype."""


class NodeExecutionError(QrtError):
    """A kernel failed while running a node; the message names the node and its inputs."""


class RunTerminated(QrtError):
    """A run stopped because its RunOptions.terminate was set."""


class MemoryLimitExceeded(QrtError):
    """A run would pass SessionOptions.memory_limit_bytes; raised before the step that would allocate."""


class QuantizationError(QrtError):
    """Quantization or calibration could not proceed (bad calibration data, nothing to quantize, ...)."""


class QuantizationWarning(UserWarning):
    """The quantizer did something the caller may not expect (e.g. wrote a model with nothing quantized)."""
