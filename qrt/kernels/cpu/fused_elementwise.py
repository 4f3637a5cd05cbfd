"""Generated Numba kernels for fused chains of float32 element-wise ops (qrt FusedElementwise).

A fused group is a small program over one output element: read each input, apply the ops in graph
order, store once. Its source is generated from the program, written to a file named after a hash
of that source in qrt's kernel cache directory, and imported from there, so ``@njit(cache=True)``
finds the compiled code again in the next process (Numba keys its cache on the source file).

Every op calls the very scalar function its unfused ufunc was built from
(:mod:`qrt.kernels.cpu.elementwise`) on float32 operands and rounds the result to float32, so the
fused result is bit-identical to running the ops one by one; no reassociation, no fast-math.

Input layouts (the output is C-contiguous, viewed as ``rows`` x ``period``):

* ``full``: same shape as the output, read at the element's flat index;
* ``scalar``: a constant of one element, baked into the source as a float32 literal;
* ``row``: a constant spanning the output's trailing axes (a bias over the last axis): read at the
  column index, ``period`` is its size;
* ``channel``: a constant of shape (C, 1, ..., 1) aligned to an axis of the output (per-channel
  scale on NCHW): read at ``row % C``, ``period`` is the size of the axes after it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import os
import sys
import tempfile
import threading

import numpy as np
from numba import njit, types

from . import elementwise as ew
from . import vmath
from .threads import threads_for

# Each fusable op: (the ufunc from qrt.kernels.cpu.elementwise, number of tensor operands).
# Extra parameters (LeakyRelu alpha, Clip bounds, ...) follow the operands as float32 literals.
SCALAR_OPS = {
    "Add": (ew.add, 2), "Sub": (ew.sub, 2), "Mul": (ew.mul, 2), "Div": (ew.div_float, 2),
    "Pow": (ew.pow_float, 2), "Max": (ew.maximum, 2), "Min": (ew.minimum, 2),
    "Abs": (ew.absolute, 1), "Neg": (ew.negative, 1), "Exp": (ew.exp, 1), "Log": (ew.log, 1),
    "Sqrt": (ew.sqrt, 1), "Reciprocal": (ew.reciprocal, 1), "Floor": (ew.floor, 1), "Ceil": (ew.ceil, 1),
    "Tanh": (ew.tanh, 1), "Erf": (ew.erf, 1), "Sigmoid": (ew.sigmoid, 1), "Relu": (ew.relu, 1),
    "Softplus": (ew.softplus, 1), "Softsign": (ew.softsign, 1), "HardSwish": (ew.hard_swish, 1),
    "Mish": (ew.mish, 1), "GeluErf": (ew.gelu_erf, 1), "GeluTanh": (ew.gelu_tanh, 1),
    "LeakyRelu": (ew.leaky_relu, 1), "Elu": (ew.elu, 1), "HardSigmoid": (ew.hard_sigmoid, 1),
    "Clip": (ew.clip, 1),
}

# The scalar functions the generated modules import, jitted from the ufuncs' own Python bodies. No
# cache of their own: they compile into each generated kernel, and that kernel is cached. numpy's
# error model, as the ufuncs have: x / 0 is inf or nan, never a ZeroDivisionError. Inlined at
# Numba's level: LLVM would leave a call to one as large as vmath's erf, and the loop scalar.
_SCALAR_FUNCS = {name: njit(error_model="numpy", inline="always")(ufunc.__wrapped__)
                 for name, (ufunc, _) in SCALAR_OPS.items()}
globals().update({f"scalar_{name}": fn for name, fn in _SCALAR_FUNCS.items()})

# Work units (threads.threads_for's: an add or a multiply-add) per element of an op: the exp- and
# polynomial-based functions took 5-8x a Relu's time per element here (Sigmoid 0.75 ns, Tanh 1.05 ns,
# Relu 0.14 ns on float32).
COSTLY_ELEMENT = 8
_COSTLY = frozenset(("Exp", "Log", "Tanh", "Erf", "Sigmoid", "Softplus", "Mish", "GeluErf", "GeluTanh", "Elu",
                     "Pow"))
# Row blocks a parallel run is cut into (the threads take equal runs of them).
PARALLEL_BLOCKS = 16

# The one signature every generated kernel has: contiguous float32 vectors, then rows/period/channels.
FLOAT_VECTOR = types.Array(types.float32, 1, "C")
INDEX = types.int64

FULL, SCALAR, ROW, CHANNEL = "full", "scalar", "row", "channel"

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def cache_dir() -> str:
    """Where generated kernel sources (and Numba's cache beside them) live: $QRT_CACHE_DIR or ~/.cache/qrt."""
    root = os.environ.get("QRT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "qrt")
    return os.path.join(root, "fused_elementwise")


def classify_constant(shape, out_rank):
    """The kernel layout of a constant group input of ``shape``: (kind, key) or None when not fusable.

    ``key`` is what must agree across a group's non-scalar constants: the trailing shape of a ROW
    constant, (C, trailing ones) of a CHANNEL constant. ``out_rank`` may be None (unknown).
    """
    shape = tuple(int(d) for d in shape)
    if out_rank is not None and len(shape) > out_rank:
        return None
    if math.prod(shape) == 1:
        return SCALAR, None
    core = shape
    while core and core[0] == 1:
        core = core[1:]
    if 1 not in core:
        return ROW, core
    ones = len(core) - 1
    if out_rank is not None and core[1:] == (1,) * ones:
        return CHANNEL, (core[0], ones)
    return None


def group_layouts(constant_shapes, out_rank):
    """Layouts of a group's constants (name -> (kind, key)), or None if the kernel cannot index them."""
    layouts = {}
    for name, shape in constant_shapes.items():
        layout = classify_constant(shape, out_rank)
        if layout is None:
            return None
        layouts[name] = layout
    if len({layout for layout in layouts.values() if layout[0] != SCALAR}) > 1:
        return None   # one period per group: every broadcast constant must share it
    return layouts


def _literal(value) -> str:
    value = float(np.float32(value))
    if math.isnan(value):
        return "np.float32(math.nan)"
    if math.isinf(value):
        return "np.float32(math.inf)" if value > 0 else "np.float32(-math.inf)"
    return f"np.float32({value!r})"


def generate_source(kinds, scalars, program) -> str:
    """The module source for one fused group.

    ``kinds``: the layout of each group input (FULL/SCALAR/ROW/CHANNEL); ``scalars``: input index ->
    value for SCALAR inputs; ``program``: (op, operands, params) per op in order, operands being
    ("in", k) or ("tmp", j), the last op's result being the output.
    """
    arrays = [k for k, kind in enumerate(kinds) if kind != SCALAR]
    lines = ["import math", "import numpy as np", "from numba import njit, prange",
             "from qrt.kernels.cpu.fused_elementwise import " +
             ", ".join(sorted({f"scalar_{op}" for op, _, _ in program})), ""]
    for k, kind in enumerate(kinds):
        if kind == SCALAR:
            lines.append(f"S{k} = {_literal(scalars[k])}")
    # Parameters are float32 like the scalar arrays the unfused ops pass to their ufuncs.
    for j, (_, _, params) in enumerate(program):
        for p, value in enumerate(params):
            lines.append(f"P{j}_{p} = {_literal(value)}")

    def operand(ref):
        where, index = ref
        if where == "tmp":
            return f"t{index}"
        kind = kinds[index]
        return {FULL: f"x{index}[i]", SCALAR: f"S{index}", ROW: f"x{index}[j]", CHANNEL: f"c{index}"}[kind]

    body = []
    for j, (op, operands, params) in enumerate(program):
        args = [operand(r) for r in operands] + [f"P{j}_{p}" for p in range(len(params))]
        body.append(f"t{j} = np.float32(scalar_{op}({', '.join(args)}))")
    arguments = ", ".join([f"x{k}" for k in arrays] + ["out"])
    # The loop lives in span(), over rows counted from 0 of views that start at the block: inside
    # a prange body, a loop over indices from a computed start was left unvectorized (Numba's
    # negative-index wraparound check stays in it), and the parallel variant ran at a quarter to
    # a half of the serial speed per thread. ``row0`` keeps the channel phase of a block's rows.
    lines += ["", "", "@njit(cache=True, error_model='numpy')",
              f"def span({arguments}, rows, period, channels, row0):", "    for r in range(rows):",
              "        base = r * period"]
    lines += [f"        c{k} = x{k}[(row0 + r) % channels]" for k in arrays if kinds[k] == CHANNEL]
    lines += ["        for j in range(period):", "            i = base + j"]
    lines += [f"            {stmt}" for stmt in body]
    lines.append(f"            out[i] = t{len(program) - 1}")
    block_views = ", ".join([f"x{k}[lo:hi]" if kinds[k] == FULL else f"x{k}" for k in arrays] + ["out[lo:hi]"])
    lines += ["", "", "@njit(cache=True, error_model='numpy')",
              f"def run_serial({arguments}, rows, period, channels):",
              f"    span({arguments}, rows, period, channels, 0)",
              "", "", "@njit(cache=True, error_model='numpy', parallel=True)",
              f"def run_parallel({arguments}, rows, period, channels):",
              f"    step = (rows + {PARALLEL_BLOCKS - 1}) // {PARALLEL_BLOCKS}",
              "    for block in prange((rows + step - 1) // step):",
              "        first = block * step",
              "        last = min(rows, first + step)",
              "        lo = first * period",
              "        hi = last * period",
              f"        span({block_views}, last - first, period, channels, first)"]
    return "\n".join(lines) + "\n"


def _source_version() -> str:
    # Numba's cache only watches the generated file: fold the scalar functions' sources (and the
    # vector math they call) into the name so a change to any of them yields a new module instead
    # of stale machine code.
    return inspect.getsource(vmath) + "".join(inspect.getsource(ufunc.__wrapped__) for ufunc, _ in SCALAR_OPS.values())


_VERSION = hashlib.sha256(_source_version().encode()).hexdigest()[:12]


def load(source: str):
    """Import the module generated from ``source`` (written once per distinct source, atomically)."""
    digest = hashlib.sha256((_VERSION + source).encode()).hexdigest()[:24]
    module = _loaded.get(digest)
    if module is not None:
        return module
    with _lock:
        module = _loaded.get(digest)
        if module is not None:
            return module
        try:
            path = _write_once(cache_dir(), digest, source)
        except OSError:
            # An unwritable cache (read-only home): compile from a private temporary directory instead.
            path = _write_once(tempfile.mkdtemp(prefix="qrt-fused-"), digest, source)
        name = f"qrt_fused_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _loaded[digest] = module
        return module


def _write_once(directory, digest, source):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"fused_{digest}.py")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    return path


def element_cost(ops) -> int:
    """Work units per output element of a fused program, given its ops' names."""
    return sum(COSTLY_ELEMENT if op in _COSTLY else 1 for op in ops)


def flat_layout(shape):
    """(rows, period) for a tensor whose inputs are all full-size: trailing axes make the period
    until it is a few vectors long, the rest are rows (which the parallel variant splits)."""
    period = 1
    for d in reversed(shape):
        period *= d
        if period >= 256:
            break
    size = math.prod(shape)
    return (size // period if period else 0), period


def single_op(op):
    """The generated kernel module for ``op`` alone on one float32 input.

    Unary transcendental ops (Exp, Sigmoid, Tanh, Erf, Gelu) run through it rather than through
    their ufunc: numpy's ufunc loop calls the compiled scalar function per element, which LLVM
    does not inline or vectorize once the function is as large as a polynomial erf, and it is
    serial. The generated loop inlines vmath, vectorizes, and splits large tensors across threads.
    """
    return load(generate_source([FULL], {}, [(op, [("in", 0)], ())]))


def run_single(module, x):
    """``module``'s op on float32 ``x`` (any shape, any strides), as a new C-contiguous array."""
    out = np.empty(x.shape, dtype=np.float32)
    if out.size:
        rows, period = flat_layout(x.shape)
        parallel = rows > 1 and threads_for(out.size * COSTLY_ELEMENT) > 1
        kernel = module.run_parallel if parallel else module.run_serial
        kernel(np.ascontiguousarray(x).reshape(-1), out.reshape(-1), rows, period, 1)
    return out
