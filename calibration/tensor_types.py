"""Tensor types as a run of the model shows them, where onnx shape inference gave up.

The quantizer needs each tensor's element type (only float32 is quantized) and rank (a
calibrated tensor becomes a graph output, and onnx's checker wants a shape on every output).
onnx's static inference leaves holes on real exports: an op of a domain it has no schema for
(com.microsoft, Paddle), a Reshape whose target is computed at run time, or a graph where it
raises and infers nothing. qrt runs the model anyway, so the holes are filled from one run:
:func:`observed_tensor_types` records the dtype and shape of every tensor the plan produces, and
:func:`with_observed_types` writes the element type and rank of the untyped ones into
``value_info``. Dims are left unknown there: one run shows one shape, not which dims vary.

Without data (``quantize_dynamic``, or ranges all given by hand) the run uses a generated feed:
random values, symbolic dims 1 on the first (batch) axis and :data:`GENERATED_DIM` elsewhere,
unless the caller gives an input's whole shape.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from qrt.errors import QrtError, QuantizationError

# Symbolic non-batch dims of a generated feed: large enough for a stride-32 CNN to keep a 2x2 map
# (PP-OCR's recognizer pools a height of 48 / 16 = 3 rows), small enough to run in moments.
GENERATED_DIM = 64


def untyped_tensors(model: onnx.ModelProto) -> list[str]:
    """Node outputs of the main graph whose element type or rank the model does not declare."""
    graph = model.graph
    typed = set()
    for info in list(graph.value_info) + list(graph.output):
        kind = info.type.WhichOneof("value")
        if kind is not None and kind != "tensor_type":
            typed.add(info.name)   # sequences, maps, optionals: the quantizer never touches them
        elif kind == "tensor_type" and info.type.tensor_type.elem_type and info.type.tensor_type.HasField("shape"):
            typed.add(info.name)
    return [name for node in graph.node for name in node.output if name and name not in typed]


def _element_type(value) -> int | None:
    if not isinstance(value, (np.ndarray, np.generic)):
        return None   # a sequence or optional value
    if value.dtype == object or value.dtype.kind in "US":
        return TensorProto.STRING
    try:
        return helper.np_dtype_to_tensor_dtype(value.dtype)
    except (KeyError, ValueError, TypeError):
        return None


def generated_shapes(session, input_shapes: dict | None = None) -> dict[str, tuple]:
    """A concrete shape per session input: ``input_shapes[name]`` if given, else the declared one
    with symbolic dims 1 on axis 0 and :data:`GENERATED_DIM` on the others."""
    input_shapes = input_shapes or {}
    names = [arg.name for arg in session.get_inputs()]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise QuantizationError(f"InputShapes names input(s) {unknown} the model does not have; its inputs: {names}")
    shapes = {}
    for arg in session.get_inputs():
        if arg.name in input_shapes:
            shape = tuple(int(d) for d in input_shapes[arg.name])
            declared = arg.shape or []
            if len(shape) != len(declared) or any(isinstance(d, int) and d >= 0 and d != s
                                                  for d, s in zip(declared, shape)):
                raise QuantizationError(f"InputShapes gives input {arg.name!r} the shape {list(shape)}, "
                                        f"the model declares {declared}")
            shapes[arg.name] = shape
            continue
        shapes[arg.name] = tuple(d if isinstance(d, int) and d >= 0 else (1 if axis == 0 else GENERATED_DIM)
                                 for axis, d in enumerate(arg.shape or []))
    return shapes


def observed_tensor_types(model: onnx.ModelProto, feed: dict | None = None, label: str = "model",
                          input_shapes: dict | None = None) -> dict[str, tuple[int, tuple]]:
    """``{tensor: (ONNX element type, shape)}`` for every main-graph tensor of one qrt run on ``feed``
    (None: a generated feed, see :func:`generated_shapes`).

    The model runs unoptimized, so every tensor keeps its name; tensors the plan folds into
    constants are reported from their folded values.
    """
    from qrt import GraphOptimizationLevel, InferenceSession, SessionOptions
    from qrt.feeds import random_feeds

    options = SessionOptions()
    options.graph_optimization_level = GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_qdq_integer_execution = False
    types: dict[str, tuple[int, tuple]] = {}

    def record(name, value):
        elem = _element_type(value)
        if elem is not None:
            types[name] = (elem, tuple(np.shape(value)))

    where = "the first calibration sample"
    try:
        session = InferenceSession(model, options)
        if feed is None:
            shapes = generated_shapes(session, input_shapes)
            where = ("a generated feed of shapes " + ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
                     + " (give the real ones with extra_options={'InputShapes': {input_name: [dims]}})")
            feed = random_feeds(session, shapes=shapes)
        for name, value in session.plan.constants.items():
            record(name, value)
        for name, value in feed.items():
            record(name, np.asarray(value))
        session.plan.run(feed, observe=record)
    except QrtError as exc:
        raise QuantizationError(f"{label}: onnx shape inference left tensor types unknown, and running the "
                                f"model on {where} to observe them failed: {exc}") from exc
    return types


def with_observed_types(model: onnx.ModelProto, feed: dict | None = None, label: str = "model",
                        input_shapes: dict | None = None) -> tuple[onnx.ModelProto, int]:
    """(copy of ``model`` whose untyped node outputs have an element type and rank in ``value_info``,
    how many were filled). The model is returned as is when nothing is untyped (no run).
    ``feed`` and ``input_shapes``: as for :func:`observed_tensor_types`."""
    untyped = untyped_tensors(model)
    if not untyped:
        return model, 0
    observed = observed_tensor_types(model, feed, label, input_shapes)
    filled = onnx.ModelProto()
    filled.CopyFrom(model)
    infos = {info.name: info for info in filled.graph.value_info}
    count = 0
    for name in untyped:
        if name not in observed:
            continue   # never produced on this feed (an unused optional output) or not a tensor
        elem, shape = observed[name]
        info = infos.get(name)
        if info is None:
            info = filled.graph.value_info.add()
            info.name = name
        tensor_type = info.type.tensor_type
        declared = tensor_type.elem_type
        if declared and declared != elem:
            raise QuantizationError(f"{label}: tensor {name!r} is declared {TensorProto.DataType.Name(declared)} "
                                    f"but the model produces {TensorProto.DataType.Name(elem)}")
        tensor_type.elem_type = elem
        if not tensor_type.HasField("shape"):
            tensor_type.shape.SetInParent()
            for _ in shape:
                tensor_type.shape.dim.add()
        count += 1
    return filled, count
