"""Normalization over channels and groups: BatchNormalization, InstanceNormalization, GroupNormalization, LRN.

All of them view the input as ``(N, C, positions)``; per-channel parameters are converted to float64
vectors once per call (they have C elements) so the kernels compile once per input dtype.
float16/bfloat16 inputs compute in float32 and round back.
"""
import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import normalization as k
from ..registry import register
from .base import Op
from .conv import compute_dtype


def _params(op_type, count, **arrays):
    """Each named array flattened to a float64 vector of ``count`` values."""
    vectors = []
    for name, a in arrays.items():
        if a is None or a.size != count:
            raise InvalidArgument(f"{op_type} input {name} has shape {None if a is None else a.shape}; "
                                  f"expected {count} values")
        vectors.append(np.ascontiguousarray(a, dtype=np.float64).reshape(-1))
    return vectors


def _view3(x, op_type, channel_block=1):
    """``x`` as contiguous (N, C * channel_block, positions / channel_block) in its compute dtype."""
    if x.ndim < 2:
        raise InvalidArgument(f"{op_type} input X has shape {x.shape}; expected (N, C, ...)")
    dtype = compute_dtype(x, op_type)
    return np.ascontiguousarray(x.reshape(x.shape[0], x.shape[1] * channel_block, -1), dtype=dtype)


class _BatchNorm(Op):
    """BatchNormalization. Which formula runs is the spec's call, made per opset in ``_training``:
    inference uses the given mean/var; training normalizes with the batch statistics and returns
    updated running statistics."""

    def __init__(self, epsilon=1e-5, momentum=0.9, spatial=1, training_mode=0):
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.spatial = int(spatial)
        self.training_mode = int(training_mode)

    def _training(self):
        # Opsets 7-13: the node is in training mode exactly when it declares the extra outputs. A
        # momentum attribute alone does not make it so (onnx.reference 1.23 uses batch statistics
        # whenever momentum is set; the spec and onnxruntime use the given mean/var).
        return self.n_outputs > 1

    def prepare(self, constants):
        if self.n_outputs > 1 and not self._training():
            raise InvalidModel(f"BatchNormalization with training_mode=0 declares {self.n_outputs} outputs; "
                               "only Y is defined outside training mode")

    def run(self, X, scale, B, input_mean, input_var):
        if X.ndim < 2:
            raise InvalidArgument(f"BatchNormalization input X has shape {X.shape}; expected (N, C, ...)")
        per_activation = self.spatial == 0 and scale.size == int(np.prod(X.shape[1:])) and X.ndim > 2
        x3 = _view3(X, "BatchNormalization") if not per_activation else \
            np.ascontiguousarray(X.reshape(X.shape[0], -1, 1), dtype=compute_dtype(X, "BatchNormalization"))
        channels = x3.shape[1]
        s, b, mean, var = _params("BatchNormalization", channels, scale=scale, B=B, input_mean=input_mean,
                                  input_var=input_var)
        out = np.empty_like(x3)
        if not self._training():
            k.channel_affine(x3, s, b, mean, var, self.epsilon, out)
            return out.reshape(X.shape).astype(X.dtype, copy=False)
        batch_mean = np.empty(channels)
        batch_var = np.empty(channels)
        k.channel_moments(x3, batch_mean, batch_var)
        k.channel_affine(x3, s, b, batch_mean, batch_var, self.epsilon, out)
        y = out.reshape(X.shape).astype(X.dtype, copy=False)
        stats_shape = input_mean.shape
        stats_dtype = self._stats_dtype(X, input_mean)
        running = []
        for given, batch in ((mean, batch_mean), (var, batch_var)):
            blended = np.empty(channels)
            k.blend(given, batch, self.momentum, blended)
            running.append(blended.reshape(stats_shape).astype(stats_dtype))
        outputs = (y, *running, batch_mean.reshape(stats_shape).astype(stats_dtype),
                   batch_var.reshape(stats_shape).astype(stats_dtype))
        return outputs[:self.n_outputs]

    def _stats_dtype(self, X, input_mean):
        return X.dtype


@register("BatchNormalization", 7)
class BatchNormalization7(_BatchNorm):
    """Training outputs: Y, running mean, running var, batch mean, batch (population) variance.

    ``saved_var`` is the variance, as its name and the spec's description say; onnxruntime stores
    the inverse standard deviation there (a cuDNN convention). These two outputs only feed gradient
    computations, never an inference graph.
    """

    def __init__(self, epsilon=1e-5, momentum=0.9, spatial=1):
        super().__init__(epsilon, momentum, spatial)


@register("BatchNormalization", 6)
class BatchNormalization6(BatchNormalization7):
    """Opset 6 adds ``is_test``; as in opset 7, the number of outputs decides training vs inference."""

    def __init__(self, epsilon=1e-5, is_test=0, momentum=0.9, spatial=1):
        super().__init__(epsilon, momentum, spatial)


@register("BatchNormalization", 9)
class BatchNormalization9(BatchNormalization7):
    def __init__(self, epsilon=1e-5, momentum=0.9):
        super().__init__(epsilon, momentum)


@register("BatchNormalization", 14)
class BatchNormalization14(_BatchNorm):
    """Training is the ``training_mode`` attribute; outputs Y, running_mean, running_var."""

    def __init__(self, epsilon=1e-5, momentum=0.9, training_mode=0):
        if training_mode not in (0, 1):
            raise InvalidModel(f"training_mode must be 0 or 1, got {training_mode}")
        super().__init__(epsilon, momentum, training_mode=training_mode)

    def _training(self):
        return self.training_mode == 1

    def prepare(self, constants):
        super().prepare(constants)
        if self.n_outputs > 3:
            raise InvalidModel(f"BatchNormalization-14 has at most 3 outputs, the node declares {self.n_outputs}")


@register("BatchNormalization", 15)
class BatchNormalization(BatchNormalization14):
    """As opset 14; scale/B and the statistics may each have their own float type (running stats keep theirs)."""

    def _stats_dtype(self, X, input_mean):
        return input_mean.dtype


@register("InstanceNormalization", 6)
class InstanceNormalization(Op):
    def __init__(self, epsilon=1e-5):
        self.epsilon = float(epsilon)

    def run(self, X, scale, B):
        if X.ndim < 3:
            raise InvalidArgument(f"InstanceNormalization input has shape {X.shape}; expected (N, C, D1, ...)")
        x3 = _view3(X, "InstanceNormalization")
        s, b = _params("InstanceNormalization", X.shape[1], scale=scale, B=B)
        out = np.empty_like(x3)
        if x3.size:
            k.group_norm(x3, 1, s, b, self.epsilon, out)
        return out.reshape(X.shape).astype(X.dtype, copy=False)


class _GroupNorm(Op):
    per_group_parameters = False

    def __init__(self, num_groups=None, epsilon=1e-5, stash_type=1):
        if num_groups is None or int(num_groups) < 1:
            raise InvalidModel(f"num_groups must be a positive integer, got {num_groups}")
        self.num_groups = int(num_groups)
        self.epsilon = float(epsilon)
        # Statistics always accumulate in float64, at least as wide as any stash_type asks for.
        self.stash_type = int(stash_type)

    def run(self, X, scale, bias):
        groups = self.num_groups
        if X.ndim < 2 or X.shape[1] % groups:
            raise InvalidArgument(f"GroupNormalization input X has shape {X.shape}; its channels must divide "
                                  f"into num_groups={groups}")
        channels = X.shape[1]
        per_group = channels // groups
        if self.per_group_parameters:
            s, b = _params("GroupNormalization", groups, scale=scale, bias=bias)
            s, b = np.repeat(s, per_group), np.repeat(b, per_group)
        else:
            s, b = _params("GroupNormalization", channels, scale=scale, bias=bias)
        dtype = compute_dtype(X, "GroupNormalization")
        x3 = np.ascontiguousarray(X.reshape(X.shape[0], groups, -1), dtype=dtype)
        out = np.empty_like(x3)
        if x3.size:
            k.group_norm(x3, per_group, s, b, self.epsilon, out)
        return out.reshape(X.shape).astype(X.dtype, copy=False)


@register("GroupNormalization", 18)
class GroupNormalization18(_GroupNorm):
    """Opset 18 gives scale and bias per group."""

    per_group_parameters = True

    def __init__(self, num_groups=None, epsilon=1e-5):
        super().__init__(num_groups, epsilon)


@register("GroupNormalization", 21)
class GroupNormalization(_GroupNorm):
    """Opset 21 gives scale and bias per channel."""


@register("LRN", 1)
class LRN(Op):
    def __init__(self, size=None, alpha=0.0001, beta=0.75, bias=1.0):
        if size is None or int(size) < 1:
            raise InvalidModel(f"size must be a positive integer, got {size}")
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = float(bias)

    def run(self, X):
        if X.ndim < 3:
            raise InvalidArgument(f"LRN input X has shape {X.shape}; expected (N, C, D1, ...)")
        x3 = _view3(X, "LRN")
        out = np.empty_like(x3)
        k.lrn(x3, self.size, self.alpha, self.beta, self.bias, out)
        return out.reshape(X.shape).astype(X.dtype, copy=False)
