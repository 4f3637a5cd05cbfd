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
from .graphs import subgraph_free_names
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


# Slot 0 always holds None (an omitted optional input reads it); slot 1 swallows omitted outputs.
_OMITTED_INPUT, _OMITTED_OUTPUT = 0, 1


class Plan:
    """An executable graph. Built by :func:`build_plan`; run with :meth:`run`.

    Every tensor name gets an integer slot when the plan is built, and a run keeps its values in a
    list: ``run`` copies a template holding the constants, fills the feeds and walks a flat program
    of (kernel, input slots, output slots, slots to free) tuples. Name lookups, release lists and
    the profiler branch are settled here, once, so the per-node cost is the kernel call itself.
    """

    def __init__(self, label, graph_inputs, graph_outputs, constants, steps, outer_names):
        self.label = label
        self.input_names = graph_inputs        # names the caller feeds
        self.output_names = graph_outputs
        self.constants = constants             # name -> array, bound at plan time
        self.steps = steps
        self.outer_names = outer_names         # names read from an enclosing graph
        self.output_types = ()                 # graph outputs' TypeProtos (Loop/Scan size empty scan outputs)
        self.input_types = ()                  # TypeProtos of input_names (QLinearTable's source type)
        self.subplans = []                     # plans of this graph's subgraphs (If/Loop/Scan bodies)
        self._compile()

    def _compile(self):
        slots = {}

        def slot(name):
            if name not in slots:
                slots[name] = len(slots) + 2
            return slots[name]

        for name in list(self.input_names) + list(self.constants) + sorted(self.outer_names):
            slot(name)
        program = []
        for step in self.steps:
            ins = tuple(slot(n) if n else _OMITTED_INPUT for n in step.inputs)
            outs = tuple(slot(n) if n else _OMITTED_OUTPUT for n in step.outputs)
            scoped = tuple((n, slot(n)) for n in step.outer_inputs) if step.kernel.uses_outer_scope else None
            program.append((step.kernel.run, ins, outs, tuple(slot(n) for n in step.release), scoped, step))
        template = [None] * (len(slots) + 2)
        for name, value in self.constants.items():
            template[slots[name]] = value
        self._slots = slots
        self._template = template
        self._program = tuple(program)
        self._outer_slots = tuple((name, slots[name]) for name in sorted(self.outer_names))
        self._output_slots = tuple(slot(n) for n in self.output_names)
        self._walk = self._generate()

    def _generate(self):
        """The program unrolled into one function of straight-line code, :meth:`run`'s fast path.

        Each step becomes ``r = k3(env[4], env[7])``, its output store and its releases, with the
        slots written in as literals: no loop, tuple unpacking or argument list per node. The
        function returns None, or the failing step's index and its exception.
        """
        namespace = {"_results": (tuple, list)}
        lines = ["def walk(env):", "    step = 0", "    try:"]
        for index, (run, ins, outs, release, scoped, _) in enumerate(self._program):
            namespace[f"k{index}"] = run
            args = [f"env[{i}]" for i in ins]
            if scoped is not None:
                namespace[f"s{index}"] = scoped
                args += [f"scope={{n: env[i] for n, i in s{index}}}", "profiler=None"]
            lines += [f"        step = {index}", f"        r = k{index}({', '.join(args)})"]
            if len(outs) == 1:
                lines.append(f"        env[{outs[0]}] = r[0] if isinstance(r, _results) else r")
            else:
                lines += ["        if not isinstance(r, _results):", "            r = (r,)",
                          f"        for i, v in zip({outs!r}, r):", "            env[i] = v"]
            lines += [f"        env[{i}] = None" for i in release]
        lines += ["        pass", "    except Exception as exc:", "        return step, exc", "    return None"]
        exec(compile("\n".join(lines), f"<plan {self.label}>", "exec"), namespace)
        return namespace["walk"]

    def run(self, feeds: dict, scope=None, profiler: Profiler | None = None, observe=None, before=None) -> list:
        """Execute the steps; ``feeds`` maps input names to arrays, ``scope`` holds outer-scope values.

        ``observe(name, value)``, when given, sees every tensor a step produces, before it can be
        freed (the quantizer learns tensor types this way where onnx shape inference gives up).
        ``before(index, env)``, when given, is called before each step with the run's slots (the
        memory limit's guard, :mod:`qrt.memory`, refuses a step there).
        """
        env = self._template.copy()
        slots = self._slots
        for name, value in feeds.items():
            index = slots.get(name)
            if index is not None:
                env[index] = value
        if scope is not None:
            for name, index in self._outer_slots:
                env[index] = scope[name]
        if profiler is not None or observe is not None or before is not None:
            self._interpret(env, profiler, observe, before)
        else:
            failed = self._walk(env)
            if failed is not None:
                index, exc = failed
                _, ins, _, _, _, step = self._program[index]
                raise self._node_error(step, [env[i] for i in ins], exc, env) from None
        return [env[i] for i in self._output_slots]

    def _interpret(self, env, profiler, observe, before=None):
        """The walk :meth:`_generate` unrolls, a step at a time, for the runs that watch it: one
        profiler event per step, ``observe`` called on every tensor produced, ``before`` before each step."""
        clock = time.perf_counter
        for index, (run, ins, outs, release, scoped, step) in enumerate(self._program):
            if before is not None:
                try:
                    before(index, env)
                except QrtError:
                    env.clear()
                    raise
            args = [env[i] for i in ins]
            start = clock()
            try:
                if scoped is None:
                    results = run(*args)
                else:
                    results = run(*args, scope={n: env[i] for n, i in scoped}, profiler=profiler)
            except Exception as exc:
                raise self._node_error(step, args, exc, env) from None
            if profiler is not None:
                profiler.record(step.name, step.op_type, step.provider, start, clock())
            if not isinstance(results, (tuple, list)):
                results = (results,)
            for name, index, value in zip(step.outputs, outs, results):
                env[index] = value
                if observe is not None and name:
                    observe(name, value)
            for index in release:
                env[index] = None

    def _node_error(self, step, args, exc, env):
        """The error to raise for ``exc`` from ``step``: it names the node and, when unexpected, its inputs."""
        # The traceback keeps this frame alive: drop the run's tensors (device memory) now.
        env.clear()
        if isinstance(exc, NodeExecutionError):
            return exc
        if isinstance(exc, QrtError):
            return type(exc)(f"{self.label}: node {step.name!r} ({step.op_type}): {exc}")
        shapes = ", ".join(f"{n or '<omitted>'}: {describe(a)}" for n, a in zip(step.inputs, args))
        args.clear()
        err = NodeExecutionError(
            f"{self.label}: node {step.name!r} ({step.op_type}) failed on inputs ({shapes}): "
            f"{type(exc).__name__}: {exc}")
        err.original = exc
        return err


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

    subplans = []

    def make_subplan_factory(node):
        def make_subplan(subgraph):
            visible = frozenset(outer_names) | local_names | set(visible_constants)
            subplan = build_plan(subgraph, opsets, providers, label=f"{label}/{node.name or node.op_type}",
                                 outer_names=visible, outer_constants=visible_constants,
                                 fold_constants=fold_constants)
            subplans.append(subplan)
            return subplan
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
                    outer_inputs |= subgraph_free_names(g)

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
    plan.subplans = subplans
    plan.output_types = tuple(o.type for o in graph.output)
    plan.input_types = tuple(i.type for i in graph.input if i.name not in constants)
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
