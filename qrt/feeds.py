"""Building feeds for a model: from .npy/.npz files, or random values of the right shape and dtype."""
from __future__ import annotations

import os

import numpy as np

from .errors import InvalidArgument


def _concrete_shape(arg, dims: dict, shapes: dict, default_dim):
    """The shape to generate for input ``arg``: ``shapes[arg.name]`` if given (checked against the
    declared shape), else the declared one with each free dim from ``dims``, the leading (batch) dim 1."""
    declared = arg.shape
    if arg.name in shapes:
        shape = tuple(int(d) for d in shapes[arg.name])
        if declared is not None and (len(shape) != len(declared)
                                     or any(isinstance(d, int) and d != s for d, s in zip(declared, shape))):
            raise InvalidArgument(f"shape {list(shape)} given for input {arg.name!r} does not fit its declared "
                                  f"shape {declared}")
        return shape
    if declared is None:
        raise InvalidArgument(f"input {arg.name!r} has no declared shape: give one with --shape "
                              f"{arg.name}=D0,D1,... (Python: random_feeds(..., shapes={{{arg.name!r}: ...}}))")
    out = []
    for axis, d in enumerate(declared):
        if isinstance(d, int):
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(int(dims[d]))
        elif axis == 0:
            out.append(1)
        elif default_dim is not None:
            out.append(int(default_dim))
        else:
            # Guessing 1 for a spatial dim makes detectors fail deep inside (Concat, Reshape): ask instead.
            named = f"symbolic dimension {d!r}" if isinstance(d, str) else "a free dimension"
            flags = (f"--free-dim {d}=N or " if isinstance(d, str) else "") + f"--shape {arg.name}=D0,D1,..."
            raise InvalidArgument(f"input {arg.name!r} {declared}: {named} (axis {axis}) has no value; "
                                  f"give one with {flags} (Python: "
                                  + (f"SessionOptions.add_free_dimension_override_by_name({d!r}, N) or "
                                     if isinstance(d, str) else "") + "explicit feeds)")
    return tuple(out)


def random_feeds(session, seed: int = 0, dims: dict | None = None, shapes: dict | None = None,
                 default_dim: int | None = None) -> dict:
    """Random inputs matching ``session.get_inputs()``.

    ``shapes`` maps an input name to its whole shape; otherwise a symbolic dim takes ``dims[name]``,
    a free leading (batch) dim 1, and any other free dim ``default_dim``; without one that is an
    InvalidArgument naming the input and the dim.
    """
    rng = np.random.default_rng(seed)
    dims, shapes = dims or {}, shapes or {}
    inputs = session.get_inputs()
    unknown = sorted(set(shapes) - {a.name for a in inputs})
    if unknown:
        raise InvalidArgument(f"shape given for unknown input(s) {unknown}; the model's inputs are "
                              f"{[a.name for a in inputs]}")
    feeds = {}
    for arg in inputs:
        shape = _concrete_shape(arg, dims, shapes, default_dim)
        kind = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else arg.type
        if kind in ("float", "double", "float16"):
            dtype = {"float": np.float32, "double": np.float64, "float16": np.float16}[kind]
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "bool":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        elif kind in ("int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64"):
            # Small non-negative values are valid indices/token ids for most integer inputs.
            feeds[arg.name] = rng.integers(0, 10, shape).astype(np.dtype(kind))
        elif kind == "string":
            feeds[arg.name] = np.full(shape, "a", dtype=object)
        else:
            raise InvalidArgument(f"cannot make random data for input {arg.name!r} of type {arg.type}")
    return feeds


def load_feeds(paths, session) -> dict:
    """Feeds from ``--input`` arguments: ``x.npy`` (for a single-input model), ``name=x.npy`` or ``data.npz``."""
    names = [a.name for a in session.get_inputs()]
    feeds = {}
    for spec in paths or []:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        if not os.path.exists(path):
            raise InvalidArgument(f"input file {path!r} does not exist")
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    feeds[key] = data[key]
            continue
        array = np.load(path, allow_pickle=False)
        if name is None:
            if len(names) != 1:
                raise InvalidArgument(f"the model has inputs {names}: pass --input NAME=FILE.npy for each")
            name = names[0]
        feeds[name] = array
    return feeds
