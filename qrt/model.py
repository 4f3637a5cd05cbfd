"""Pipeline stage 1 and 2: load a model and check it.

``load_model`` accepts a path, serialized bytes or an ``onnx.ModelProto`` and always returns a
private copy, so nothing qrt does later can touch the caller's object or file.
``check_model`` runs onnx's checker, inlines model-local functions and infers shapes. qrt loads
what onnxruntime loads: where the checker is stricter than onnxruntime (a graph output typed without
a shape, nodes out of topological order, ...) qrt warns once and goes on; what onnxruntime refuses
(dangling inputs, unknown ops, contradicting element types) is an :class:`InvalidModel`.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
import onnx
from onnx import TensorProto

from .errors import InvalidArgument, InvalidModel
from .graphs import node_subgraph_free_names, node_subgraphs, stable_topological_order

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
    """Shape as onnxruntime reports it: ints for fixed dims, strings for symbolic ones, None if unknown.

    A negative ``dim_value`` (PaddlePaddle's exporter writes -1 for a dynamic dim) is free, as in
    onnxruntime, which reports it as None.
    """
    if type_proto.WhichOneof("value") != "tensor_type" or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
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


def override_free_dimensions(model: onnx.ModelProto, by_name: dict, by_denotation: dict, label: str = "model"):
    """Fix free dimensions of the graph inputs in place, as onnxruntime's
    ``add_free_dimension_override_by_name`` / ``_by_denotation`` do: a dim whose ``dim_param`` is in
    ``by_name`` or whose ``denotation`` is in ``by_denotation`` takes that value."""
    if not by_name and not by_denotation:
        return
    initializers = {t.name for t in model.graph.initializer}
    for info in model.graph.input:
        if info.name in initializers or info.type.WhichOneof("value") != "tensor_type":
            continue
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            value = by_name.get(dim.dim_param) if dim.HasField("dim_param") else None
            if value is None and dim.denotation in by_denotation:
                value = by_denotation[dim.denotation]
                if dim.HasField("dim_value") and dim.dim_value >= 0 and dim.dim_value != value:
                    raise InvalidArgument(f"{label}: input {info.name!r} dimension {axis} ({dim.denotation}) is "
                                          f"fixed at {dim.dim_value}; it cannot be overridden with {value}")
            if value is not None:
                dim.dim_value = value


def model_label(model: onnx.ModelProto, source=None) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return model.graph.name or "model"


def check_model(model: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """Validate with onnx's checker, inline local functions and infer shapes (tolerantly).

    qrt loads what onnxruntime loads: checker complaints onnxruntime ignores are warned about once
    (see ``_TOLERATED``), the rest raise :class:`InvalidModel`.
    """
    if not model.graph.node and not model.graph.output:
        raise InvalidModel(f"{label}: the graph is empty")
    _guard_einsum_equations(model.graph, label)
    _reject_what_onnxruntime_rejects(model.graph, label)
    model = run_checker(model, label)
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise InvalidModel(f"{label}: could not inline model-local functions: {exc}") from None
    return _infer_shapes(model, label)


def _infer_shapes(model, label):
    """Shapes and types for the plan and for get_outputs. Inference is an aid, and a model it cannot
    follow still runs, except for a declared element type that contradicts the inferred one:
    onnxruntime rejects that model ("Type Error"), and running it would return the wrong dtype."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        conflict = re.search(r"\(op_type:[^\n]*?elem type differs[^\n]*?\((\d+)\) vs \((\d+)\)", str(exc))
        if conflict:
            inferred, declared = (_TYPE_NAMES.get(int(code), code) for code in conflict.groups())
            where = conflict.group(0).split(":", 1)[1].split(")", 1)[0]
            raise InvalidModel(f"{label}: node {where}: the output is {inferred} but the model declares it "
                               f"{declared} ({conflict.group(0)})") from None
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return model


def _graphs(graph):
    """``graph`` and every subgraph in it, outermost first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _graphs(sub)


def _reject_what_onnxruntime_rejects(graph, label):
    """Defects onnx.checker lets through but onnxruntime refuses to load. Only the main graph: a
    subgraph (a Loop body, say) may leave its inputs' types to inference."""
    for info in graph.input:
        if not info.HasField("type"):
            raise InvalidModel(f"{label}: graph input {info.name!r} has no type")
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.WhichOneof("value") == "tensor_type" and not info.type.tensor_type.elem_type:
            raise InvalidModel(f"{label}: {info.name!r} is declared as a tensor of undefined element type (0)")


def run_checker(model, label):
    """onnx.checker, then for each complaint onnxruntime tolerates: make it good and check again.

    Repairs that only silence the checker go to a probe copy; those that execution needs too (node
    order, opset imports) go to the model as well. One warning per model names every complaint.
    """
    probe, tolerated = None, []
    while True:
        try:
            onnx.checker.check_model(model if probe is None else probe)
            break
        except Exception as exc:
            message = str(exc).strip()
            rule = next((r for r in _TOLERATED if re.search(r[0], message)), None)
            if rule is None or rule[0] in (t[0] for t in tolerated):
                raise InvalidModel(f"{label}: onnx.checker rejected the model: {message}") from None
            if probe is None:
                probe = onnx.ModelProto()
                probe.CopyFrom(model)
            pattern, repair = rule
            description = repair(model, probe, re.search(pattern, message), label)
            tolerated.append((pattern, description))
    if tolerated:
        warnings.warn(f"{label}: onnx.checker objects to what onnxruntime accepts, so qrt goes on: "
                      + "; ".join(d for _, d in tolerated), stacklevel=3)
    return model


def _shapeless_io(model, probe, match, label):
    names = []
    for g in _graphs(probe.graph):
        for info in list(g.input) + list(g.output):
            tensor_type = _innermost_tensor_type(info.type)
            if tensor_type is not None and not tensor_type.HasField("shape"):
                tensor_type.shape.SetInParent()   # rank 0 for the checker only; the model keeps "unknown"
                names.append(info.name)
    return f"graph input/output {names} has a type without field 'shape' (shape unknown)"


def _innermost_tensor_type(type_proto):
    which = type_proto.WhichOneof("value")
    if which == "tensor_type":
        return type_proto.tensor_type
    if which in ("sequence_type", "optional_type"):
        return _innermost_tensor_type(getattr(type_proto, which).elem_type)
    return None


def _typeless_outputs(model, probe, match, label):
    names = []
    for g in _graphs(probe.graph):
        for info in g.output:
            if not info.HasField("type"):
                info.type.tensor_type.elem_type = TensorProto.FLOAT   # for the checker only
                info.type.tensor_type.shape.SetInParent()
                names.append(info.name)
    return f"graph output {names} has no field 'type' (inferred from the producing node)"


def _unset_ir_version(model, probe, match, label):
    probe.ir_version = onnx.IR_VERSION
    return f"field 'ir_version' is {model.ir_version}"


def _initializers_not_inputs(model, probe, match, label):
    for g in _graphs(probe.graph):
        declared = {i.name for i in g.input}
        g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in g.initializer if t.name not in declared)
    return f"IR version {model.ir_version} initializers are not listed in graph.input"


def _duplicate_metadata(model, probe, match, label):
    entries = {p.key: p.value for p in probe.metadata_props}
    del probe.metadata_props[:]
    for key, value in entries.items():
        probe.metadata_props.add(key=key, value=value)
    return "field 'metadata_props' has duplicate keys"


def _unnamed_graph(model, probe, match, label):
    for i, g in enumerate(_graphs(probe.graph)):
        g.name = g.name or f"graph_{i}"
    return "field 'name' of a graph is empty"


def _missing_opset_import(model, probe, match, label):
    domain = match.group(1)
    if domain == "ai.onnx":
        # onnxruntime reads node domain 'ai.onnx' as the default domain.
        for proto in (model, probe):
            for g in _graphs(proto.graph):
                for node in g.node:
                    if node.domain == "ai.onnx":
                        node.domain = ""
        return "nodes name the default domain 'ai.onnx' explicitly"
    latest = {"": onnx.helper.VERSION_TABLE[-1][2], "ai.onnx.ml": onnx.helper.VERSION_TABLE[-1][3]}
    if domain not in latest:
        raise InvalidModel(f"{label}: nodes use domain {domain!r}, which field 'opset_import' does not import")
    # onnxruntime gives a domain the model does not import its latest released opset.
    for proto in (model, probe):
        proto.opset_import.add(domain=domain, version=latest[domain])
    return f"field 'opset_import' lacks domain {domain!r} (taken as opset {latest[domain]}, the latest)"


def _unsorted_nodes(model, probe, match, label):
    for proto in (model, probe):
        _sort_nodes(proto.graph, frozenset(), label)
    return "nodes are not in topological order (sorted)"


def _sort_nodes(graph, outer_names, label):
    """Order ``graph``'s nodes (and its subgraphs') topologically, keeping the stored order where it
    can; a read of a name that nothing defines is an InvalidModel."""
    defined = set(outer_names) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer}
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    reads = []
    for i, node in enumerate(graph.node):
        names = [n for n in node.input if n] + sorted(node_subgraph_free_names(node))
        for name in names:
            if name not in defined and name not in producer:
                raise InvalidModel(f"{label}: input {name!r} of node {node.name or node.op_type!r} is not a graph "
                                   "input, an initializer or the output of any node")
        reads.append({producer[n] for n in names if n in producer and n not in defined})
    order = stable_topological_order(reads)
    if len(order) != len(graph.node):
        emitted = set(order)
        stuck = [node.name or node.op_type for i, node in enumerate(graph.node) if i not in emitted]
        raise InvalidModel(f"{label}: the graph has a cycle through nodes {stuck[:5]}")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)
    visible = defined | set(producer)
    for node in graph.node:
        for sub in node_subgraphs(node):
            _sort_nodes(sub, visible, label)


# onnx.checker complaints that onnxruntime loads the model despite (each checked against
# onnxruntime in tests/test_session.py): message pattern -> repair(model, probe, match, label),
# which returns what the warning says.
_TOLERATED = (
    (r"Field 'shape' of 'type' is required but missing", _shapeless_io),
    (r"Field 'type' of 'value_info' is required but missing", _typeless_outputs),
    (r"does not have an ir_version set properly", _unset_ir_version),
    (r"in initializer but not in graph input", _initializers_not_inputs),
    (r"duplicate keys in metadata_props", _duplicate_metadata),
    (r"Field 'name' of 'graph' is required to be non-empty", _unnamed_graph),
    (r"No opset import for domain '([^']*)'", _missing_opset_import),
    (r"Nodes in a graph must be topologically sorted", _unsorted_nodes),
)


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
