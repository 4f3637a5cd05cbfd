"""Running passes over a model: levels, the fixed-point loop, and op counts."""
from __future__ import annotations

import os
from collections import Counter

import onnx

from ..errors import InvalidArgument, InvalidModel
from .graph import DEFAULT_DOMAINS, Graph
from .passes import CLEANUP_PASSES, EXACT_PASSES, FUSION_PASSES, PASSES

DEFAULT_PASSES = tuple(p.__name__ for p in EXACT_PASSES + FUSION_PASSES + CLEANUP_PASSES)

# onnxruntime's GraphOptimizationLevel values. qrt has no layout transforms and no contrib-op fusions,
# so "extended", "layout" and "all" run the same passes; "basic" keeps arithmetic bit-exact.
_LEVEL_VALUES = {
    "ORT_DISABLE_ALL": 0, "DISABLE_ALL": 0, "DISABLED": 0, "DISABLE": 0, "NONE": 0,
    "ORT_ENABLE_BASIC": 1, "ENABLE_BASIC": 1, "BASIC": 1,
    "ORT_ENABLE_EXTENDED": 2, "ENABLE_EXTENDED": 2, "EXTENDED": 2,
    "ORT_ENABLE_LAYOUT": 3, "ENABLE_LAYOUT": 3, "LAYOUT": 3,
    "ORT_ENABLE_ALL": 99, "ENABLE_ALL": 99, "ALL": 99,
}
_PASSES_BY_LEVEL = {
    0: (),
    1: tuple(p.__name__ for p in EXACT_PASSES + CLEANUP_PASSES),
    2: DEFAULT_PASSES,
    3: DEFAULT_PASSES,
    99: DEFAULT_PASSES,
}

MAX_ROUNDS = 8


def level_value(level):
    """onnxruntime's integer for ``level``: a name ("basic", "ORT_ENABLE_ALL"), an int, or an enum
    member (onnxruntime's or qrt's GraphOptimizationLevel)."""
    if level is None:
        return 99
    name = getattr(level, "name", level)
    if isinstance(name, str) and name.strip().isdigit():
        value = int(name)
    elif isinstance(name, str):
        value = _LEVEL_VALUES.get(name.strip().upper())
    else:
        try:
            value = int(level)
        except (TypeError, ValueError):
            value = None
    if value not in _PASSES_BY_LEVEL:
        raise InvalidArgument(
            f"unknown graph optimization level {level!r}: use one of disabled/basic/extended/all, "
            f"onnxruntime's ORT_DISABLE_ALL/ORT_ENABLE_BASIC/ORT_ENABLE_EXTENDED/ORT_ENABLE_ALL, "
            f"or 0/1/2/99")
    return value


def passes_for_level(level):
    """The pass names an onnxruntime-style graph optimization level runs, in order.

    disabled (0): none. basic (1): constant folding and rewrites that remove work without changing
    any arithmetic (eliminations, merged transposes/reshapes, dead code). extended (2), layout (3)
    and all (99): basic plus fusions (BatchNormalization/bias/Pad into Conv, Transpose into Gemm,
    MatMul+Add into Gemm), whose results may differ from the unfused graph in the last bits.
    """
    return list(_PASSES_BY_LEVEL[level_value(level)])


def _resolve(passes):
    if isinstance(passes, str):
        passes = [p for p in passes.split(",") if p.strip()]
    resolved = []
    for p in passes:
        if callable(p):
            resolved.append(p)
            continue
        fn = PASSES.get(str(p).strip())
        if fn is None:
            raise InvalidArgument(f"unknown optimizer pass {p!r}; known passes: {', '.join(PASSES)}")
        resolved.append(fn)
    return resolved


def _private_copy(model):
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_model_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise InvalidModel(f"cannot parse the model bytes: {exc}") from exc
    if isinstance(model, (str, os.PathLike)):
        try:
            return onnx.load(os.fspath(model))
        except FileNotFoundError as exc:
            raise InvalidModel(f"model file not found: {os.fspath(model)}") from exc
        except Exception as exc:  # noqa: BLE001
            raise InvalidModel(f"cannot read model {os.fspath(model)}: {exc}") from exc
    raise InvalidArgument(f"optimize expects an onnx.ModelProto, bytes or a path, got {type(model).__name__}")


def optimize(model, passes=None, level="all"):
    """Return an optimized copy of ``model``; the model passed in is never modified.

    ``passes``: pass names (or a comma-separated string), run in the given order; default: the
    passes of ``level`` (see :func:`passes_for_level`). The list is repeated until no pass changes
    anything (at most ``MAX_ROUNDS`` times). Graph inputs, outputs and tensor names are kept.
    """
    fns = _resolve(passes_for_level(level) if passes is None else passes)
    working = _private_copy(model)
    if not fns:
        return working
    graph = Graph(working)
    for _ in range(MAX_ROUNDS):
        changed = 0
        for fn in fns:
            changed += fn(graph)
            graph.sweep()
        if not changed:
            break
        graph.refresh_tensor_info()
    return graph.to_model()


def prepare_for_quantization(model, passes=None):
    """The quantizer's pre-processing: the default passes, then shape inference so that every
    tensor the quantizer may calibrate has its type and shape in ``value_info``."""
    optimized = optimize(model, passes=DEFAULT_PASSES if passes is None else passes)
    try:
        return onnx.shape_inference.infer_shapes(optimized, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are a convenience; the optimized model stands without them
        return optimized


def count_ops(model):
    """Node count per op type in the main graph (``domain:op_type`` outside the default domain)."""
    counts = Counter(n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}:{n.op_type}"
                     for n in model.graph.node)
    return dict(sorted(counts.items()))
