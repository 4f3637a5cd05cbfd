"""A small editable view of one ONNX graph, shared by every optimizer pass.

A pass asks questions (who produces a tensor, who reads it, is it a constant, what is its shape) and
makes edits (rewire an input, remove a node, add an initializer); :meth:`Graph.to_model` writes the
result back. The rules every pass relies on live here, so each pass stays short:

* Graph outputs and tensors read from inside a subgraph (If/Loop/Scan bodies see outer-scope names)
  are *protected*: never removed and never renamed.
* A graph input that also has an initializer is an overridable default when ``ir_version >= 4``
  (onnxruntime's rule), so it is not a constant. Below IR 4 every initializer must be listed as an
  input and all of them are weights; the optimizer keeps that listing in step with the initializers.
* Nodes are kept in a list and re-sorted topologically (stable) on write-back, so a pass never has to
  reason about where a rewritten node sits.
* Removing a node schedules its inputs for a sweep: tensors a rewrite left unread lose their producer
  (a node whose outputs are all unread, or an initializer), transitively. Nodes that were already dead
  before are left to ``eliminate_deadend``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..graphs import attr, node_subgraph_free_names, node_subgraphs, stable_topological_order

DEFAULT_DOMAINS = ("", "ai.onnx")

# Initializers above this many elements are replaced by typed inputs before shape inference: their
# values never decide a shape, and copying them would make every inference round cost a model copy.
_SHAPE_INFERENCE_MAX_INITIALIZER = 4096


@dataclass(frozen=True)
class TensorInfo:
    """What is statically known of a tensor: element type and dims (int, symbol name, or None)."""

    elem_type: int
    dims: tuple | None  # None when the rank is unknown

    @property
    def static_shape(self):
        """The dims as ints when every one is known, else None."""
        if self.dims is None or not all(isinstance(d, int) for d in self.dims):
            return None
        return tuple(self.dims)


def set_attr(node, name, value):
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def is_op(node, *op_types):
    return node.domain in DEFAULT_DOMAINS and node.op_type in op_types


def tensor_info_from_type(type_proto):
    if not type_proto.HasField("tensor_type"):
        return None
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return TensorInfo(tt.elem_type, None)
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(tt.elem_type, tuple(dims))


def constant_node_value(node):
    """The tensor a Constant node holds, as numpy, or None for forms not folded (sparse)."""
    for a in node.attribute:
        if a.name == "value":
            if a.t.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
        if a.name == "value_string":
            return np.array(a.s, dtype=object)
        if a.name == "value_strings":
            return np.array(list(a.strings), dtype=object)
    return None


def _constant_of_shape_fill(node):
    """(numpy dtype, scalar) that a ConstantOfShape node fills with; float32 zero by default."""
    value = attr(node, "value")
    if value is None:
        return np.dtype(np.float32), np.float32(0)
    arr = numpy_helper.to_array(value)
    return arr.dtype, arr.reshape(-1)[0]


def _all_names(graph_proto, into):
    into.update(i.name for i in graph_proto.input)
    into.update(o.name for o in graph_proto.output)
    into.update(t.name for t in graph_proto.initializer)
    into.update(v.name for v in graph_proto.value_info)
    for node in graph_proto.node:
        into.update(node.input)
        into.update(node.output)
        if node.name:
            into.add(node.name)
        for g in node_subgraphs(node):
            _all_names(g, into)


class Graph:
    """Editable view of ``model.graph``; ``model`` must be the caller's private copy."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.opsets = {}
        for imp in model.opset_import:
            self.opsets["" if imp.domain in DEFAULT_DOMAINS else imp.domain] = imp.version
        self.ir_version = model.ir_version
        self.nodes = list(g.node)
        self.initializers = {t.name: t for t in g.initializer}
        self.output_names = [o.name for o in g.output]
        self._outputs = set(self.output_names)
        self._inputs = {i.name for i in g.input}
        self._implicit = {}  # id(node) -> outer-scope names its subgraphs read
        self.subgraph_refs = set()
        for node in self.nodes:
            self._note_subgraphs(node)
        self._names = set()
        _all_names(g, self._names)
        self._removed = set()
        self._maybe_unread = set()
        self._constants = {}
        self._info = {}
        self._producer, self._consumers = {}, {}
        for node in self.nodes:
            self._index_node(node)
        self.refresh_tensor_info()

    # ------------------------------------------------------------------ queries
    def opset(self, domain=""):
        return self.opsets.get(domain, 0)

    def is_protected(self, name):
        """Graph outputs and names read inside subgraphs keep their name and their producer."""
        return name in self._outputs or name in self.subgraph_refs

    def is_graph_input(self, name):
        return name in self._inputs

    def is_overridable(self, name):
        return name in self.initializers and name in self._inputs and self.ir_version >= 4

    def reads(self, node):
        """Tensors a node reads: its inputs and what its subgraphs take from this scope."""
        names = [n for n in node.input if n]
        names.extend(sorted(self._implicit.get(id(node), ())))
        return list(dict.fromkeys(names))

    def _index_node(self, node):
        for name in node.output:
            if name:
                self._producer[name] = node
        for name in self.reads(node):
            self._consumers.setdefault(name, []).append(node)

    def _unindex_read(self, node, name):
        users = [n for n in self._consumers.get(name, ()) if n is not node]
        if users:
            self._consumers[name] = users
        else:
            self._consumers.pop(name, None)

    def _add_read(self, node, name):
        users = self._consumers.setdefault(name, [])
        if not any(n is node for n in users):
            users.append(node)

    def producer(self, name):
        return self._producer.get(name)

    def consumers(self, name):
        """Nodes that read ``name`` (each node once), subgraph readers included."""
        return list(self._consumers.get(name, ()))

    def is_read(self, name):
        return bool(self._consumers.get(name)) or name in self._outputs

    def sole_consumer(self, name):
        """The one node reading ``name`` when nothing else (graph output, subgraph) needs it."""
        users = self.consumers(name)
        if len(users) != 1 or self.is_protected(name):
            return None
        return users[0]

    def live_nodes(self):
        """The nodes still in the graph, as a list safe to iterate while editing."""
        if self._removed:
            self.nodes = [n for n in self.nodes if id(n) not in self._removed]
            self._removed.clear()
        return list(self.nodes)

    def info(self, name) -> TensorInfo | None:
        if name in self.initializers:
            t = self.initializers[name]
            return TensorInfo(t.data_type, tuple(int(d) for d in t.dims))
        value = self._constants.get(name)
        if value is not None and name not in self._info:
            return TensorInfo(helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        return self._info.get(name)

    def static_shape(self, name):
        info = self.info(name)
        return None if info is None else info.static_shape

    def rank(self, name):
        info = self.info(name)
        return None if info is None or info.dims is None else len(info.dims)

    def elem_type(self, name):
        info = self.info(name)
        return None if info is None else info.elem_type

    def constant_size(self, name):
        """Element count of a constant tensor without materializing it, or None if not constant."""
        if name in self._constants:
            return self._constants[name].size
        if name in self.initializers:
            t = self.initializers[name]
            if self.is_overridable(name) or t.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return math.prod(t.dims)
        node = self.producer(name)
        if node is None:
            return None
        if is_op(node, "Constant"):
            value = self.constant(name)
            return None if value is None else value.size
        if is_op(node, "ConstantOfShape") and len(node.input) == 1:
            shape = self.constant(node.input[0])
            if shape is None:
                return None
            return math.prod(int(d) for d in shape.reshape(-1))
        return None

    def constant(self, name, max_elements=None):
        """The value of ``name`` when it is fixed before any input is fed, else None.

        Constants are non-overridable initializers and the outputs of Constant nodes and of
        ConstantOfShape nodes with a constant shape (weights of many exports are such nodes).
        ``max_elements`` refuses to materialize a larger ConstantOfShape output.
        """
        if not name:
            return None
        if name in self._constants:
            return self._constants[name]
        value = None
        if name in self.initializers:
            t = self.initializers[name]
            if not self.is_overridable(name) and t.data_location != onnx.TensorProto.EXTERNAL:
                value = numpy_helper.to_array(t)
        else:
            node = self.producer(name)
            if node is None or node.domain not in DEFAULT_DOMAINS:
                return None
            if node.op_type == "Constant":
                value = constant_node_value(node)
            elif node.op_type == "ConstantOfShape" and len(node.input) == 1:
                shape = self.constant(node.input[0])
                if shape is None or shape.dtype != np.int64 or np.any(shape < 0):
                    return None
                dims = tuple(int(d) for d in shape.reshape(-1))
                if max_elements is not None and math.prod(dims) > max_elements:
                    return None
                dtype, fill = _constant_of_shape_fill(node)
                value = np.full(dims, fill, dtype=dtype)
        if value is not None:
            self._constants[name] = value
        return value

    def fresh_name(self, hint):
        base = hint or "qrt_opt"
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    # ------------------------------------------------------------------ edits
    def set_input(self, node, index, name):
        while len(node.input) <= index:
            node.input.append("")
        old = node.input[index]
        node.input[index] = name
        if old and old not in self.reads(node):
            self._unindex_read(node, old)
            self._maybe_unread.add(old)
        if name:
            self._add_read(node, name)

    def set_output(self, node, index, name):
        old = node.output[index]
        if old and self._producer.get(old) is node:
            del self._producer[old]
        node.output[index] = name
        if name:
            self._producer[name] = node
            self._names.add(name)

    def replace_uses(self, old, new):
        """Make every reader of ``old`` read ``new``; ``old`` must not be protected."""
        if self.is_protected(old):
            raise ValueError(f"{old!r} is a graph output or read by a subgraph; its readers cannot be rewired")
        for node in self._consumers.pop(old, ()):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            self._add_read(node, new)
        self._maybe_unread.add(old)

    def remove_node(self, node):
        reads = self.reads(node)
        for name in reads:
            self._unindex_read(node, name)
        for name in node.output:
            if name and self._producer.get(name) is node:
                del self._producer[name]
        self._implicit.pop(id(node), None)
        self._removed.add(id(node))
        self._maybe_unread.update(reads)

    def add_node(self, node):
        """Append a node; write-back re-sorts, so position does not matter."""
        if node.name:
            self._names.add(node.name)
        self._names.update(node.output)
        self._note_subgraphs(node)
        self.nodes.append(node)
        self._index_node(node)

    def add_initializer(self, array, name_hint):
        name = self.fresh_name(name_hint)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        self._constants[name] = np.asarray(array)
        return name

    def make_initializer(self, name, array):
        """Turn the tensor ``name`` (whose producer the caller removes) into an initializer."""
        array = np.asarray(array)
        self.initializers[name] = numpy_helper.from_array(array, name)
        self._constants[name] = array

    def remove_initializer(self, name):
        del self.initializers[name]
        self._constants.pop(name, None)
        if self.ir_version < 4:
            self._inputs.discard(name)

    def bypass(self, node, kept, dropped):
        """Remove ``node``, whose output ``dropped`` always equals its input ``kept``.

        Readers of ``dropped`` read ``kept`` instead. When ``dropped`` is protected (a graph output,
        or read by a subgraph) its name must survive, so ``kept``'s producer is renamed to it
        instead; when that is not possible either, the node stays and False is returned.
        """
        if not self.is_protected(dropped):
            self.replace_uses(dropped, kept)
            self.remove_node(node)
            return True
        upstream = self.producer(kept)
        if (upstream is None or self.is_protected(kept) or self.is_graph_input(kept)
                or kept in self.initializers):
            return False
        self.remove_node(node)
        for i, name in enumerate(upstream.output):
            if name == kept:
                self.set_output(upstream, i, dropped)
        self.replace_uses(kept, dropped)
        return True

    def take_output_name(self, keep_node, keep_index, dropped_node):
        """``keep_node`` now computes what ``dropped_node`` did: it takes that node's output name
        (so downstream names and graph outputs stay), and ``dropped_node`` goes."""
        self.remove_node(dropped_node)
        self.set_output(keep_node, keep_index, dropped_node.output[0])

    def sweep(self):
        """Remove producers of tensors that edits left unread (transitively)."""
        removed = 0
        while self._maybe_unread:
            name = self._maybe_unread.pop()
            if self.is_read(name) or name in self.subgraph_refs:
                continue
            if name in self.initializers:
                if not self.is_graph_input(name) or self.ir_version < 4:
                    self.remove_initializer(name)
                    removed += 1
                continue
            node = self.producer(name)
            if node is None or any(self.is_read(o) for o in node.output if o):
                continue
            self.remove_node(node)
            removed += 1
        return removed

    # ------------------------------------------------------------------ shape information
    def refresh_tensor_info(self):
        """Re-run ONNX shape inference on a light copy (large initializers become typed inputs)."""
        info = {}
        g = self.model.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            ti = tensor_info_from_type(vi.type)
            if ti is not None:
                info[vi.name] = ti
        try:
            inferred = shape_inference.infer_shapes(self._skeleton(), data_prop=True)
        except Exception:  # noqa: BLE001 - inference is a hint; custom domains or odd models may fail
            inferred = None
        if inferred is not None:
            ig = inferred.graph
            for vi in list(ig.input) + list(ig.value_info) + list(ig.output):
                ti = tensor_info_from_type(vi.type)
                if ti is not None and (ti.dims is not None or vi.name not in info):
                    info[vi.name] = ti
        self._info = info

    def _skeleton(self):
        model = onnx.ModelProto(ir_version=self.model.ir_version)
        model.opset_import.extend(self.model.opset_import)
        model.functions.extend(self.model.functions)
        src, g = self.model.graph, model.graph
        g.name = src.name
        g.input.extend(i for i in src.input if i.name in self._inputs)
        g.output.extend(src.output)
        g.value_info.extend(src.value_info)
        inputs = {i.name for i in g.input}
        for node in self.sorted_nodes():
            value = attr(node, "value") if is_op(node, "Constant") else None
            if value is not None and math.prod(value.dims) > _SHAPE_INFERENCE_MAX_INITIALIZER:
                g.input.append(helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
                inputs.add(node.output[0])
            else:
                g.node.append(node)
        for name, t in self.initializers.items():
            if math.prod(t.dims) <= _SHAPE_INFERENCE_MAX_INITIALIZER:
                g.initializer.append(t)
                if name not in inputs and self.ir_version < 4:
                    g.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
            elif name not in inputs:
                g.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        return model

    # ------------------------------------------------------------------ write-back
    def sorted_nodes(self):
        """Live nodes in a topological order that keeps the current order wherever it can."""
        nodes = self.live_nodes()
        producer_pos = {}
        for pos, node in enumerate(nodes):
            for name in node.output:
                if name:
                    producer_pos[name] = pos
        deps = [{producer_pos[n] for n in list(node.input) + list(self._implicit.get(id(node), ()))
                 if n in producer_pos} for node in nodes]
        order = stable_topological_order(deps)
        if len(order) != len(nodes):  # a cycle means the input was not a valid graph: keep its order
            return nodes
        return [nodes[pos] for pos in order]

    def to_model(self):
        """Write the edits back into ``self.model`` and return it."""
        self.sweep()
        g = self.model.graph
        nodes = self.sorted_nodes()
        del g.node[:]
        g.node.extend(nodes)
        del g.initializer[:]
        g.initializer.extend(self.initializers.values())
        if self.ir_version < 4:
            kept = [i for i in g.input if i.name in self._inputs]
            listed = {i.name for i in kept}
            del g.input[:]
            g.input.extend(kept)
            for name, t in self.initializers.items():
                if name not in listed:
                    g.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        alive = {o for n in nodes for o in n.output} | set(self.initializers) | {i.name for i in g.input}
        kept_vi = [vi for vi in g.value_info if vi.name in alive]
        del g.value_info[:]
        g.value_info.extend(kept_vi)
        return self.model

    def _note_subgraphs(self, node):
        names = node_subgraph_free_names(node)
        if names:
            self._implicit[id(node)] = names
            self.subgraph_refs |= names
