"""Pipeline stage 1 and 2: load a model and check it.

``load_model`` accepts a path, serialized bytes or an ``onnx.ModelProto`` and always returns a
private copy, so nothing qrt does later can touch the caller's object or file.
``check_model`` runs onnx's checker, inlines model-local functions and infers shapes.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
from onnx import TensorProto

from .errors import InvalidModel

# TensorProto element type -> numpy dtype for the types qrt can hold in numpy arrays.
_ONNX_TO_NUMPY = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.UINT64: np.dtype(np.uint64),
    TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.STRING: np.dtype(object),
}

_TYPE_NAMES = {
    TensorProto.FLOAT: "float", TensorProto.DOUBLE: "double", TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16", TensorProto.INT8: "int8", TensorProto.INT16: "int16",
    TensorProto.INT32: "int32", TensorProto.INT64: "int64", TensorProto.UINT8: "uint8",
    TensorProto.UINT16: "uint16", TensorProto.UINT32: "uint32", TensorProto.UINT64: "uint64",
    TensorProto.BOOL: "bool", TensorProto.STRING: "string",
}


def numpy_dtype(elem_type: int):
    """numpy dtype for an ONNX element type, or None when numpy cannot hold it natively."""
    dtype = _ONNX_TO_NUMPY.get(elem_type)
    if dtype is not None:
        return dtype
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return None


def type_string(type_proto) -> str:
    """onnxruntime's type string for a TypeProto: 'tensor(float)', 'seq(tensor(int64))', ..."""
    which = type_proto.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({_TYPE_NAMES.get(type_proto.tensor_type.elem_type, 'unknown')})"
    if which == "sequence_type":
        return f"seq({type_string(type_proto.sequence_type.elem_type)})"
    if which == "optional_type":
        return f"optional({type_string(type_proto.optional_type.elem_type)})"
    if which == "map_type":
        key = _TYPE_NAMES.get(type_proto.map_type.key_type, "unknown")
        return f"map({key},{type_string(type_proto.map_type.value_type)})"
    return "unknown"


def shape_of(type_proto):
    """Shape as onnxruntime reports it: ints for fixed dims, strings for symbolic ones, None if unknown."""
    if type_proto.WhichOneof("value") != "tensor_type" or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def load_model(model, name: str | None = None) -> onnx.ModelProto:
    """Return a private ModelProto copy of a path, bytes or ModelProto."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise InvalidModel(f"{name or 'model bytes'}: not a readable ONNX model ({exc})") from None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise InvalidModel(f"{path}: no such file")
        try:
            return onnx.load(path)
        except Exception as exc:
            raise InvalidModel(f"{path}: not a readable ONNX model ({exc})") from None
    raise InvalidModel(f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def model_label(model: onnx.ModelProto, source=None) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return model.graph.name or "model"


def check_model(model: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """Validate with onnx's checker, inline local functions and infer shapes (tolerantly)."""
    if not model.graph.node and not model.graph.output:
        raise InvalidModel(f"{label}: the graph is empty")
    _guard_einsum_equations(model.graph, label)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidModel(f"{label}: onnx.checker rejected the model: {exc}") from None
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise InvalidModel(f"{label}: could not inline model-local functions: {exc}") from None
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        # Inference is an aid (types for the plan and for get_outputs); a model it cannot follow still runs.
        pass
    return model


_EINSUM_TERM = re.compile(r"^\s*([A-Za-z]|\.\.\.)*\s*$")


def _guard_einsum_equations(graph, label):
    """Reject malformed Einsum equations before onnx's shape inference sees them: on a stray '.' or an
    unknown character onnx 1.23's Einsum inference never returns."""
    for node in graph.node:
        if node.op_type == "Einsum":
            equation = next((a.s.decode("utf-8", "replace") for a in node.attribute if a.name == "equation"), "")
            lhs, arrow, rhs = equation.partition("->")
            terms = lhs.split(",") + ([rhs] if arrow else [])
            if "->" in rhs or not all(_EINSUM_TERM.match(t) for t in terms):
                raise InvalidModel(f"{label}: node {node.name or 'Einsum'!r}: malformed Einsum equation {equation!r}")
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _guard_einsum_equations(sub, label)


def opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    opsets = {}
    for imp in model.opset_import:
        domain = "" if imp.domain in ("", "ai.onnx") else imp.domain
        opsets[domain] = imp.version
    return opsets
