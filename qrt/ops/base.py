"""The contract every kernel class follows.

A kernel class is registered with :func:`qrt.registry.register`. Its ``__init__`` takes the node's
ONNX attributes as keyword arguments, with the ONNX names and the spec's defaults, and parses them
once at plan time. ``run(*inputs)`` receives the node's inputs in order (``None`` for an omitted
optional input) and returns one array or a tuple of arrays, one per node output.

The planner sets two instance attributes before the first run:

* ``n_inputs`` / ``n_outputs``: how many inputs and outputs the node declares (``Split`` and
  ``TopK``-style ops need the output count; trailing optional outputs may be left out).
* ``node_name``: for error messages.
* ``output_names``: the node's output names, ``""`` for an omitted optional output (an op whose
  arithmetic depends on which outputs exist, as onnxruntime's quantized LSTM does, reads it).

Three stages, each as rare as its inputs allow: ``__init__`` and ``prepare`` once per session,
*bind* once per input-shape signature and ``run`` on every call. Binding is what depends on shapes
only (output shapes, broadcasting, kernel geometry): an op keeps those answers in a
:class:`ShapeCache` keyed by the input shapes and computes them on a miss, so ``run`` on a shape
it has seen does no shape arithmetic.

A kernel may define ``prepare(self, constants)``: the planner calls it once, before constant folding,
with one entry per node input — the array when that input is a constant (initializer, folded
value), else None. Use it to validate scales and zero points and to pre-pack weights; raise
:class:`qrt.errors.QrtError` (or ValueError) to reject the model at session creation.

Class attributes a kernel may override:

* ``deterministic = False`` keeps the node out of plan-time constant folding (random ops).
* ``container_outputs = True`` says the outputs are sequences or optionals (:mod:`qrt.values`):
  the planner keeps the nodes that read them on the host.
* ``uses_outer_scope = True`` makes the planner call ``run(*inputs, scope=values)`` where ``scope``
  maps outer-scope names to arrays; graph attributes arrive in ``__init__`` as built sub-plans
  (:class:`qrt.plan.Plan`).
"""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def is_half_float(dtype) -> bool:
    """float16 or bfloat16, the types kernels widen to float32.

    Asked once per dtype: numpy builds ``dtype.name`` in Python on every access (2.6 us measured).
    """
    return np.dtype(dtype).name in ("float16", "bfloat16")


class ShapeCache(dict):
    """One node's per-shape-signature answers: ``cache.get(key)``, else ``cache.put(key, computed)``.

    Threads running one plan share it: a dict read or write is atomic under the GIL and a value,
    once computed for a key, never changes. It is emptied when it reaches ``limit`` entries, so a
    model fed ever-new shapes does not grow it without bound.
    """

    __slots__ = ()
    limit = 64

    def put(self, key, value):
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


class Op:
    op_type: str = ""
    domain: str = ""
    provider: str = ""
    since_version: int = 0

    deterministic = True
    uses_outer_scope = False
    container_outputs = False

    n_inputs = 0
    n_outputs = 1
    node_name = ""
    output_names: tuple = ()

    def __repr__(self):
        return f"{type(self).__name__}({self.node_name!r})"
