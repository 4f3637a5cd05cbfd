"""The values a plan carries besides tensors: ONNX sequences and optionals.

* A **sequence** is a :class:`TensorSequence`: an immutable tuple of numpy arrays that also records its
  element dtype, so an empty sequence (``SequenceEmpty``, an erased last element) still knows what it
  may hold. Immutable because a plan shares constants and subgraph values between threads: every
  sequence op builds a new one instead of editing its input.
* An **optional** is its element (an array or a TensorSequence) when it has one and ``None`` when it
  is empty. The planner also passes ``None`` for an omitted input; the spec gives both the same meaning
  wherever an optional may appear (OptionalHasElement answers false for either), so one marker serves.

At the API boundary sequences are plain Python lists of arrays, as onnxruntime takes and returns them.
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidArgument
from .model import numpy_dtype, type_string


class TensorSequence:
    """An ONNX sequence of tensors: ``TensorSequence(arrays, dtype)``; ``dtype`` None when unknown.

    Not a tuple subclass on purpose: kernels return a tuple for several outputs, and a sequence is one.
    Indexing with a slice gives a plain tuple of arrays.
    """

    __slots__ = ("items", "dtype")

    def __init__(self, items=(), dtype=None):
        self.items = tuple(items)
        if dtype is None and self.items:
            dtype = self.items[0].dtype
        self.dtype = None if dtype is None else np.dtype(dtype)

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __repr__(self):
        return f"TensorSequence({list(self.items)!r}, dtype={self.dtype})"


def describe(value) -> str:
    """A short description for error messages: 'float32[2, 3]', 'seq(float32) of 2', 'empty optional'."""
    if value is None:
        return "None (omitted input or empty optional)"
    if isinstance(value, TensorSequence):
        return f"seq({value.dtype}) of {len(value)}: " + ", ".join(describe(v) for v in value.items[:4]) \
            + (", ..." if len(value) > 4 else "")
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{getattr(value, 'dtype', '?')}{list(shape)}"
    return type(value).__name__


def as_sequence(value, what) -> TensorSequence:
    """``value`` as a TensorSequence (a list or tuple of arrays is accepted), or InvalidArgument."""
    if isinstance(value, TensorSequence):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, np.ndarray) for v in value):
        return TensorSequence(value)
    raise InvalidArgument(f"{what} must be a sequence of tensors, got {describe(value)}")


def to_user(value):
    """A plan value as onnxruntime returns it: an array, a list of arrays, or None for an empty optional."""
    if isinstance(value, TensorSequence):
        return list(value)
    if value is None or isinstance(value, np.ndarray):
        return value
    return np.asarray(value)


def container_feed(label, name, value, type_proto):
    """A feed for a graph input of sequence or optional type, checked against its declared type.

    A sequence is fed as a list (or tuple) of arrays whose dtype is the declared element type; an
    optional as None (empty) or as a value of its element type.
    """
    which = type_proto.WhichOneof("value")
    if which == "optional_type":
        if value is None:
            return None
        return container_feed(label, name, value, type_proto.optional_type.elem_type)
    if which == "sequence_type":
        if not isinstance(value, (list, tuple)):
            raise InvalidArgument(f"{label}: input {name!r} is a {type_string(type_proto)}: feed a list of "
                                  f"arrays, got {type(value).__name__}")
        elem = type_proto.sequence_type.elem_type
        if elem.WhichOneof("value") != "tensor_type":
            raise InvalidArgument(f"{label}: input {name!r} is a {type_string(type_proto)}: qrt holds "
                                  f"sequences of tensors only")
        want = numpy_dtype(elem.tensor_type.elem_type) if elem.tensor_type.elem_type else None
        items = [_tensor_feed(label, f"{name}[{i}]", v, want) for i, v in enumerate(value)]
        return TensorSequence(items, want)
    if which == "tensor_type":
        want = numpy_dtype(type_proto.tensor_type.elem_type) if type_proto.tensor_type.elem_type else None
        return _tensor_feed(label, name, value, want)
    raise InvalidArgument(f"{label}: input {name!r} has type {type_string(type_proto)}, which qrt cannot hold")


def _tensor_feed(label, name, value, want):
    if value is None or isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        raise InvalidArgument(f"{label}: input {name!r} must be a tensor, got {type(value).__name__}")
    array = np.asarray(value)
    if want is not None and array.dtype != want:
        raise InvalidArgument(f"{label}: input {name!r} has dtype {array.dtype}, expected {want}")
    return array
