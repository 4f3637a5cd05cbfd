"""Replace computations whose result is fixed before any input is fed by initializers.

Folded: Constant nodes (any size: they are initializers in another form); ConstantOfShape with a
constant shape; Shape and Size of tensors whose dims shape inference knows; and any node of the ops
:mod:`qrt.optimizer.numpy_ops` evaluates whose inputs are all constant. Results over
``MAX_FOLDED_ELEMENTS`` elements stay as nodes (folding would only grow the model). The folded tensor
keeps its name; graph outputs are never turned into initializers.
"""
import numpy as np

from ..graph import attr, constant_node_value, node_subgraphs
from ..numpy_ops import MAX_FOLDED_ELEMENTS, evaluate


def _shape_of(graph, node):
    """Shape (the dims it slices must be known) or Size (every dim must be) of a tensor."""
    info = graph.info(node.input[0])
    if info is None or info.dims is None:
        return None
    dims = info.dims
    if node.op_type == "Size":
        dims_used = dims
    else:
        rank = len(dims)
        start, end = attr(node, "start", 0), attr(node, "end", rank)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        dims_used = dims[start:end]
    if not all(isinstance(d, int) for d in dims_used):
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(dims_used, dtype=np.int64)), dtype=np.int64)
    return np.array(dims_used, dtype=np.int64)


def folded_value(graph, node):
    """The constant ``node`` computes, or None."""
    if node.op_type == "Constant":
        return constant_node_value(node)
    if node.op_type == "ConstantOfShape":
        return graph.constant(node.output[0], max_elements=MAX_FOLDED_ELEMENTS)
    if node.op_type in ("Shape", "Size"):
        return _shape_of(graph, node)
    inputs = []
    for name in node.input:
        if not name:
            inputs.append(None)
            continue
        size = graph.constant_size(name)
        value = None if size is None or size > MAX_FOLDED_ELEMENTS else graph.constant(name)
        if value is None:
            return None
        inputs.append(value)
    return evaluate(node, inputs, graph.opset())


def constant_folding(graph):
    changed = 0
    for node in graph.live_nodes():
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or any(node_subgraphs(node)):
            continue
        name = node.output[0]
        if not name or name in graph.output_names or name in graph.initializers:
            continue
        value = folded_value(graph, node)
        if value is None:
            continue
        graph.remove_node(node)
        graph.make_initializer(name, value)
        changed += 1
    return changed
