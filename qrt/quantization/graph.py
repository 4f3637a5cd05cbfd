"""A read-only index over a model's main graph, and the helpers the rewrites share.

The rewrites never edit the input graph in place: they read it through :class:`GraphIndex` and
emit a new node list, which :func:`finish_graph` then sorts, prunes and type-annotates.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graphs import node_subgraphs, stable_topological_order, subgraph_free_names

MS_DOMAIN = "com.microsoft"


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and the outer-scope names its subgraphs use."""
    names = [n for n in node.input if n]
    for sub in node_subgraphs(node):
        names.extend(sorted(subgraph_free_names(sub)))
    return names


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node (output {node.output[0]!r})"


class GraphIndex:
    """Producers, consumers, constants and element types of the main graph's tensors."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node_reads(node):
                self.consumers[name].append(node)
        self.elem_types: dict[str, int] = {}
        self.shapes: dict[str, list] = {}
        for info in list(graph.input) + list(graph.value_info) + list(graph.output):
            if info.type.WhichOneof("value") == "tensor_type":
                tensor_type = info.type.tensor_type
                if tensor_type.elem_type:
                    self.elem_types[info.name] = tensor_type.elem_type
                if tensor_type.HasField("shape"):
                    self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                              for d in tensor_type.shape.dim]
        for name, tensor in self.initializers.items():
            self.elem_types[name] = tensor.data_type
            self.shapes[name] = list(tensor.dims)
        self.opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 1)
        self._constants: dict[str, np.ndarray] = {}
        self._taken = set(self.producer) | set(self.initializers) | {i.name for i in graph.input}
        self._taken.update(n.name for n in graph.node if n.name)
        for node in graph.node:
            self._taken.update(node_reads(node))

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) == TensorProto.FLOAT

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def constant(self, name: str) -> np.ndarray:
        if name not in self._constants:
            self._constants[name] = numpy_helper.to_array(self.initializers[name])
        return self._constants[name]

    def rank(self, name: str):
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def unique(self, base: str) -> str:
        """A tensor or node name not used anywhere in the model yet (and reserves it)."""
        name, i = base, 1
        while name in self._taken:
            name = f"{base}_{i}"
            i += 1
        self._taken.add(name)
        return name


def toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's order, stable with respect to the given order; raises if a cycle or a dangling read remains."""
    produced_by = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                produced_by[out] = i
    deps = [{produced_by[n] for n in node_reads(node) if n in produced_by and n not in available}
            for node in nodes]
    positions = stable_topological_order(deps)
    if len(positions) != len(nodes):
        emitted = set(positions)
        stuck = [node.name or node.op_type for i, node in enumerate(nodes) if i not in emitted]
        raise RuntimeError(f"the rewritten graph has a cycle through {stuck[:5]}")
    order = [nodes[i] for i in positions]
    return order


def finish_graph(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                 new_initializers: list[onnx.TensorProto], keep_value_info=True) -> onnx.ModelProto:
    """Builds the rewritten model: sorted nodes, only the initializers still read, the domains used."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    initializers = {t.name: t for t in graph.initializer}
    for tensor in new_initializers:
        initializers[tensor.name] = tensor
    ordered = toposort(nodes, inputs | set(initializers))

    # Drop what nothing reads any more (float weights replaced by int8 ones, dead branches).
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(ordered):
        if any(out in needed for out in node.output if out) or not node.output:
            live.append(node)
            needed.update(node_reads(node))
    live.reverse()

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(live)
    del out.graph.initializer[:]
    out.graph.initializer.extend(t for name, t in initializers.items() if name in needed)
    produced = {o for n in live for o in n.output}
    kept_info = [vi for vi in graph.value_info if vi.name in produced] if keep_value_info else []
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept_info)

    domains = {n.domain for n in live}
    if MS_DOMAIN in domains and not any(imp.domain == MS_DOMAIN for imp in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out
