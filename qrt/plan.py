"""Pipeline stages 4 and 5: place nodes on providers and build the execution plan; then run it.

A :class:`Plan` is built once per session (and once per subgraph). Building it binds initializers
and ``Constant`` outputs, folds nodes whose inputs are all constant, chooses a kernel for every
node with its attributes parsed once, inserts copies where a tensor crosses providers, and records
after which step each intermediate can be freed. ``Plan.run`` only walks the steps; it keeps all
per-call state in local variables, so one plan serves several threads at once.
"""
from __future__ import annotations

import threading
import time
from collections import ChainMap

import numpy as np
import onnx
from onnx import numpy_helper

from . import registry
from .errors import InvalidModel, NodeExecutionError, QrtError, UnsupportedOperator
from .providers import CPUProvider
from .values import TensorSequence, describe


def tensor_to_array(tensor: onnx.TensorProto) -> np.ndarray:
    array = numpy_helper.to_array(tensor)
    return np.asarray(array)


def _attribute_value(attr: onnx.AttributeProto, make_subplan):
    A = onnx.AttributeProto
    if attr.type == A.GRAPH:
        return make_subplan(attr.g)
    if attr.type == A.GRAPHS:
        return [make_subplan(g) for g in attr.graphs]
    if attr.type == A.TENSOR:
        return tensor_to_array(attr.t)
    if attr.type == A.TENSORS:
        return [tensor_to_array(t) for t in attr.tensors]
    if attr.type == A.SPARSE_TENSOR:
        return _sparse_to_dense(attr.sparse_tensor)
    if attr.type == A.STRING:
        return attr.s.decode("utf-8", errors="replace")
    if attr.type == A.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in attr.strings]
    if attr.type == A.INTS:
        return [int(v) for v in attr.ints]
    if attr.type == A.FLOATS:
        return [float(v) for v in attr.floats]
    if attr.type == A.TYPE_PROTO:
        return attr.tp
    if attr.type == A.TYPE_PROTOS:
        return list(attr.type_protos)
    return onnx.helper.get_attribute_value(attr)


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = tensor_to_array(sparse.values)
    indices = tensor_to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


class Step:
    """One node of the plan: a bound kernel, where its inputs come from and what it frees."""

    __slots__ = ("name", "op_type", "domain", "kernel", "inputs", "outputs", "release", "provider",
                 "outer_inputs")

    def __init__(self, name, op_type, domain, kernel, inputs, outputs, provider):
        self.name = name
        self.op_type = op_type
        self.domain = domain
        self.kernel = kernel
        self.inputs = inputs          # tensor names, '' for an omitted optional input
        self.outputs = outputs        # tensor names, '' for an omitted optional output
        self.provider = provider
        self.release = ()             # names to drop after this step (last use)
        self.outer_inputs = ()        # names a subgraph of this node reads from the enclosing scope


class _CopyKernel:
    """Moves one tensor between provider memories at a partition boundary."""

    deterministic = True
    uses_outer_scope = False

    def __init__(self, move):
        self._move = move

    def run(self, x):
        return self._move(x)


class Profiler:
    """Collects one Chrome-trace event per node run; shared by every thread running the session."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()
        self._origin = time.perf_counter()

    def record(self, name, op_type, provider, start, end):
        event = {
            "cat": "Node", "ph": "X", "pid": 1, "tid": threading.get_ident() % 100000,
            "name": name, "ts": int((start - self._origin) * 1e6), "dur": max(int((end - start) * 1e6), 0),
            "args": {"op_name": op_type, "provider": provider},
        }
        with self._lock:
            self.events.append(event)


class Plan:
    """An executable graph. Built by :func:`build_plan`; run with :meth:`run`."""

    def __init__(self, label, graph_inputs, graph_outputs, constants, steps, outer_names):
        self.label = label
        self.input_names = graph_inputs        # names the caller feeds
        self.output_names = graph_outputs
        self.constants = constants             # name -> array, bound at plan time
        self.steps = steps
        self.outer_names = outer_names         # names read from an enclosing graph
        self.output_types = ()                 # graph outputs' TypeProtos (Loop/Scan size empty scan outputs)

    def run(self, feeds: dict, scope=None, profiler: Profiler | None = None, observe=None) -> list:
        """Execute the steps; ``feeds`` maps input names to arrays, ``scope`` holds outer-scope values.

        ``observe(name, value)``, when given, sees every tensor a step produces, before it can be
        freed (the quantizer learns tensor types this way where onnx shape inference gives up).
        """
        constants = self.constants
        env = dict(feeds)
        for step in self.steps:
            args = []
            for name in step.inputs:
                if not name:
                    args.append(None)
                elif name in env:
                    args.append(env[name])
                elif name in constants:
                    args.append(constants[name])
                else:
                    args.append(scope[name])
            kernel = step.kernel
            start = time.perf_counter() if profiler is not None else 0.0
            try:
                if kernel.uses_outer_scope:
                    visible = ChainMap(env, constants, scope) if scope is not None else ChainMap(env, constants)
                    results = kernel.run(*args, scope=visible, profiler=profiler)
                else:
                    results = kernel.run(*args)
            except QrtError as exc:
                # The traceback keeps this frame alive: drop the run's tensors (device memory) now.
                env.clear()
                if isinstance(exc, NodeExecutionError):
                    raise
                raise type(exc)(f"{self.label}: node {step.name!r} ({step.op_type}): {exc}") from None
            except Exception as exc:
                shapes = ", ".join(f"{n or '<omitted>'}: {describe(a)}" for n, a in zip(step.inputs, args))
                env.clear()
                args.clear()
                err = NodeExecutionError(
                    f"{self.label}: node {step.name!r} ({step.op_type}) failed on inputs ({shapes}): "
                    f"{type(exc).__name__}: {exc}")
                err.original = exc
                raise err from None
            if profiler is not None:
                profiler.record(step.name, step.op_type, step.provider, start, time.perf_counter())
            if not isinstance(results, (tuple, list)):
                results = (results,)
            for name, value in zip(step.outputs, results):
                if name:
                    env[name] = value
                    if observe is not None:
                        observe(name, value)
            for name in step.release:
                env.pop(name, None)
        out = []
        for name in self.output_names:
            if name in env:
                out.append(env[name])
            elif name in constants:
                out.append(constants[name])
            else:
                out.append(scope[name])
        return out


def _subgraph_free_names(graph: onnx.GraphProto) -> set:
    """Names a graph (and its nested subgraphs) reads but neither defines nor receives as inputs."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                used |= _subgraph_free_names(g)
        defined.update(n for n in node.output if n)
    used.update(o.name for o in graph.output)
    return used - defined


def build_plan(graph: onnx.GraphProto, opsets: dict, providers=None, label: str = "model",
               outer_names=frozenset(), outer_constants=None, fold_constants: bool = True) -> Plan:
    """Build the plan of ``graph``; ``outer_names`` are the names an enclosing graph makes visible."""
    providers = providers or [CPUProvider()]
    host = next(p for p in providers if p.on_host)
    constants: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        try:
            constants[tensor.name] = tensor_to_array(tensor)
        except Exception as exc:
            raise InvalidModel(f"{label}: initializer {tensor.name!r} cannot be read: {exc}") from None
    for sparse in graph.sparse_initializer:
        constants[sparse.values.name] = _sparse_to_dense(sparse)
    # Initializers of an enclosing graph are constants here too, so subgraph nodes fold through them.
    visible_constants = ChainMap(constants, outer_constants or {})

    input_names = [i.name for i in graph.input if i.name not in constants]
    local_names = set(input_names) | set(constants)
    unsupported = []
    steps: list[Step] = []
    where = {name: host.name for name in input_names}   # provider holding each tensor
    declared, containers = _declared_kinds(graph)

    def make_subplan_factory(node):
        def make_subplan(subgraph):
            visible = frozenset(outer_names) | local_names | set(visible_constants)
            return build_plan(subgraph, opsets, providers, label=f"{label}/{node.name or node.op_type}",
                              outer_names=visible, outer_constants=visible_constants,
                              fold_constants=fold_constants)
        return make_subplan

    for index, node in enumerate(graph.node):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        node_name = node.name or f"{node.op_type}_{index}"
        opset = opsets.get(domain)
        if opset is None:
            raise InvalidModel(f"{label}: node {node_name!r} uses domain {domain!r} that the model does not import")
        cls, provider = None, None
        # Sequences and optionals live in host memory only, and so do the nodes that read or write them.
        host_only = any(n in containers for n in list(node.input) + list(node.output) if n)
        for p in providers:
            if host_only and not p.on_host:
                continue
            cls = registry.lookup(node.op_type, domain, opset, p.name)
            if cls is not None:
                provider = p
                break
        if cls is None:
            unsupported.append((node_name, node.op_type, domain, opset))
            local_names.update(n for n in node.output if n)
            continue
        try:
            attrs = {a.name: _attribute_value(a, make_subplan_factory(node)) for a in node.attribute}
        except QrtError:
            raise
        except Exception as exc:
            raise InvalidModel(f"{label}: node {node_name!r} ({node.op_type}): bad attribute: {exc}") from None
        try:
            kernel = cls(**attrs)
        except QrtError as exc:
            raise type(exc)(f"{label}: node {node_name!r} ({node.op_type}): {exc}") from None
        except TypeError as exc:
            raise InvalidModel(f"{label}: node {node_name!r} ({node.op_type}): unsupported attributes "
                               f"{sorted(attrs)}: {exc}") from None
        except (ValueError, KeyError) as exc:
            raise InvalidModel(f"{label}: node {node_name!r} ({node.op_type}): {exc}") from None
        if host_only or cls.container_outputs:
            # Outputs the graph leaves untyped may hold containers too; keep their readers on the host.
            containers.update(n for n in node.output if n and declared.get(n) != "tensor_type")
        kernel.n_inputs = len(node.input)
        kernel.n_outputs = len(node.output)
        kernel.output_names = tuple(node.output)
        kernel.node_name = node_name
        inputs = list(node.input)
        outputs = list(node.output)
        prepare = getattr(kernel, "prepare", None)
        if prepare is not None:
            # Plan-time hook: validate and pre-pack constant inputs (weights, scales) once per session.
            try:
                prepare([visible_constants.get(n) if n else None for n in inputs])
            except QrtError as exc:
                raise type(exc)(f"{label}: node {node_name!r} ({node.op_type}): {exc}") from None
            except (ValueError, TypeError) as exc:
                raise InvalidModel(f"{label}: node {node_name!r} ({node.op_type}): {exc}") from None

        outer_inputs = set()
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    outer_inputs |= _subgraph_free_names(g)

        foldable = (fold_constants and kernel.deterministic and not kernel.uses_outer_scope
                    and all((not n) or n in visible_constants for n in inputs))
        if foldable:
            # Folding runs on the host kernel, so a folded constant is a host array whatever the node's
            # provider; device kernels receive constants through prepare() and upload them once.
            folder = kernel if provider.on_host else _host_kernel(node, domain, opset, attrs)
            try:
                values = folder.run(*[visible_constants[n] if n else None for n in inputs])
            except Exception:
                foldable = False     # leave the node in the plan; it reports its error when run
            else:
                if not isinstance(values, (tuple, list)):
                    values = (values,)
                for name, value in zip(outputs, values):
                    if name:
                        # An empty optional (None) and a sequence are constants as they are.
                        is_container = value is None or isinstance(value, TensorSequence)
                        constants[name] = value if is_container else np.asarray(value)
                local_names.update(n for n in outputs if n)
                continue

        # Tensors produced on another provider's memory are copied once, right before first use.
        for i, name in enumerate(inputs):
            if not name or name in visible_constants:
                continue
            src = where.get(name, host.name)
            if src != provider.name:
                copy_name = f"{name}@{provider.name}"
                if copy_name not in where:
                    mover = provider.to_device if not provider.on_host else _host_mover(providers, src)
                    steps.append(Step(f"copy {name} to {provider.name}", "MemcpyToDevice" if not provider.on_host
                                      else "MemcpyToHost", "", _CopyKernel(mover), [name], [copy_name],
                                      provider.name))
                    where[copy_name] = provider.name
                    local_names.add(copy_name)
                inputs[i] = copy_name
        step = Step(node_name, node.op_type, domain, kernel, inputs, outputs, provider.name)
        step.outer_inputs = tuple(sorted(outer_inputs))
        steps.append(step)
        for name in outputs:
            if name:
                where[name] = provider.name
                local_names.add(name)

    if unsupported:
        raise UnsupportedOperator(unsupported, model_name=label)

    output_names = [o.name for o in graph.output]
    # Graph outputs go back to host memory.
    for i, name in enumerate(output_names):
        src = where.get(name, host.name)
        if src != host.name:
            copy_name = f"{name}@host"
            steps.append(Step(f"copy {name} to host", "MemcpyToHost", "", _CopyKernel(_host_mover(providers, src)),
                              [name], [copy_name], host.name))
            local_names.add(copy_name)
            output_names[i] = copy_name
    _assign_releases(steps, set(output_names))
    outer_used = set()
    for step in steps:
        outer_used.update(n for n in step.inputs if n and n not in local_names)
        outer_used.update(n for n in step.outer_inputs if n not in local_names)
    outer_used.update(n for n in output_names if n not in local_names and n not in constants)
    missing = sorted(n for n in outer_used if n not in outer_names and n not in visible_constants)
    if missing:
        raise InvalidModel(f"{label}: tensor(s) {missing} are used but never produced")
    plan = Plan(label, input_names, output_names, constants, steps, frozenset(outer_used))
    plan.output_types = tuple(o.type for o in graph.output)
    return plan


def _declared_kinds(graph):
    """Each typed name's kind ('tensor_type', 'sequence_type', ...) and the set of sequence/optional names."""
    kinds = {v.name: v.type.WhichOneof("value")
             for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    return kinds, {n for n, kind in kinds.items() if kind in ("sequence_type", "optional_type")}


def _host_kernel(node, domain, opset, attrs):
    cls = registry.lookup(node.op_type, domain, opset, registry.CPU)
    kernel = cls(**attrs)
    kernel.n_inputs, kernel.n_outputs, kernel.node_name = len(node.input), len(node.output), node.name
    kernel.output_names = tuple(node.output)
    return kernel


def _host_mover(providers, src_name):
    for p in providers:
        if p.name == src_name:
            return p.to_host
    return lambda x: x


def _assign_releases(steps, keep):
    last_use = {}
    for index, step in enumerate(steps):
        for name in list(step.inputs) + list(step.outer_inputs):
            if name:
                last_use[name] = index
        for name in step.outputs:
            if name and name not in last_use:
                last_use[name] = index     # produced and never read: free right away
    releases = [[] for _ in steps]
    for name, index in last_use.items():
        if name not in keep:
            releases[index].append(name)
    for step, names in zip(steps, releases):
        step.release = tuple(names)
