"""Building feeds for a model: from .npy/.npz files, or random values of the right shape and dtype."""
from __future__ import annotations

import os

import numpy as np

from .errors import InvalidArgument


def _concrete_shape(shape, dims: dict, default_dim: int):
    out = []
    for d in shape or []:
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(int(dims[d]))
        else:
            out.append(default_dim)
    return tuple(out)


def random_feeds(session, seed: int = 0, dims: dict | None = None, default_dim: int = 1,
                 shapes: dict | None = None) -> dict:
    """Random inputs matching ``session.get_inputs()``; symbolic dims take ``dims[name]`` or ``default_dim``,
    and an input named in ``shapes`` takes that whole shape."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    shapes = shapes or {}
    feeds = {}
    for arg in session.get_inputs():
        shape = tuple(shapes[arg.name]) if arg.name in shapes else _concrete_shape(arg.shape, dims, default_dim)
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
