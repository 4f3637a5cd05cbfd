"""qrt's graph optimizer: ONNX-to-ONNX rewrites that remove work before a model runs.

>>> optimized = qrt.optimize(model)                       # the default passes
>>> optimized = qrt.optimize(model, passes=["fuse_bn_into_conv", "eliminate_identity"])

Every pass works on a copy, keeps the model's inputs, outputs and tensor names, and leaves alone
what it cannot rewrite. ``InferenceSession`` applies ``passes_for_level(graph_optimization_level)``;
the quantizer's pre-processing is :func:`prepare_for_quantization`.
"""
from .cli import main
from .passes import PASSES
from .pipeline import (DEFAULT_PASSES, count_ops, level_value, optimize, passes_for_level,
                       prepare_for_quantization)

__all__ = ["optimize", "PASSES", "DEFAULT_PASSES", "passes_for_level", "level_value", "count_ops",
           "prepare_for_quantization", "main"]
