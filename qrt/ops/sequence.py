"""Sequence and optional ops: SequenceConstruct/Empty/At/Insert/Erase/Length, SplitToSequence,
ConcatFromSequence, SequenceMap, Optional, OptionalHasElement, OptionalGetElement.

Values are :class:`qrt.values.TensorSequence` (an immutable tuple of arrays with its element dtype)
and, for optionals, the element itself or None when empty (see :mod:`qrt.values`). These ops only
move references to arrays around, so they are plain Python; the array work (splitting, joining)
is movement.py's Split and Concat. They run on the host only: the planner keeps every node that
reads or writes a sequence or optional off device providers.
"""
import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..model import numpy_dtype
from ..registry import register
from ..values import TensorSequence, as_sequence, describe
from .base import Op
from .movement import concat_arrays, split_array
from .shape import contiguous, int_list, normalize_axis


def _position(value, length, what, allow_end=False):
    """A sequence position in ``[-length, length)`` (``[-length, length]`` to insert) as an index >= 0."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must be one integer, got {describe(array)}")
    position = int(array.reshape(-1)[0])
    high = length if allow_end else length - 1
    if not -length <= position <= high:
        raise InvalidArgument(f"{what} {position} is out of range for a sequence of length {length} "
                              f"(valid: {-length}..{high})")
    return position + length if position < 0 else position


def _require_dtype(sequence, tensor, what):
    if sequence.dtype is not None and tensor.dtype != sequence.dtype:
        raise InvalidArgument(f"{what} has dtype {tensor.dtype}, but the sequence holds {sequence.dtype}")


@register("SequenceConstruct", 11)
class SequenceConstruct(Op):
    container_outputs = True

    def run(self, *inputs):
        if not inputs:
            raise InvalidModel("SequenceConstruct needs at least one input")
        for i, x in enumerate(inputs[1:], 1):
            if x.dtype != inputs[0].dtype:
                raise InvalidArgument(f"input {i} has dtype {x.dtype}, input 0 has {inputs[0].dtype}: a "
                                      f"sequence holds one element type")
        return TensorSequence(inputs)


@register("SequenceEmpty", 11)
class SequenceEmpty(Op):
    container_outputs = True

    def __init__(self, dtype=1):
        self.dtype = numpy_dtype(int(dtype))
        if self.dtype is None:
            raise InvalidModel(f"SequenceEmpty dtype {dtype} has no numpy equivalent in qrt")

    def run(self):
        return TensorSequence((), self.dtype)


@register("SequenceLength", 11)
class SequenceLength(Op):
    def run(self, input_sequence):
        return np.array(len(as_sequence(input_sequence, "input_sequence")), dtype=np.int64)


@register("SequenceAt", 11)
class SequenceAt(Op):
    def run(self, input_sequence, position):
        sequence = as_sequence(input_sequence, "input_sequence")
        return sequence[_position(position, len(sequence), "position")]


@register("SequenceInsert", 11)
class SequenceInsert(Op):
    container_outputs = True

    def run(self, input_sequence, tensor, position=None):
        sequence = as_sequence(input_sequence, "input_sequence")
        _require_dtype(sequence, tensor, "the inserted tensor")
        at = len(sequence) if position is None else _position(position, len(sequence), "position",
                                                                allow_end=True)
        return TensorSequence(sequence[:at] + (tensor,) + sequence[at:], sequence.dtype or tensor.dtype)


@register("SequenceErase", 11)
class SequenceErase(Op):
    container_outputs = True

    def run(self, input_sequence, position=None):
        sequence = as_sequence(input_sequence, "input_sequence")
        if not sequence:
            raise InvalidArgument("cannot erase from an empty sequence")
        at = len(sequence) - 1 if position is None else _position(position, len(sequence), "position")
        return TensorSequence(sequence[:at] + sequence[at + 1:], sequence.dtype)


@register("SplitToSequence", 11)
class SplitToSequence(Op):
    container_outputs = True

    def __init__(self, axis=0, keepdims=1):
        self.axis = int(axis)
        self.keepdims = bool(int(keepdims))

    def run(self, input, split=None):
        axis = normalize_axis(self.axis, input.ndim)
        dim = input.shape[axis]
        if split is None:
            # Chunks of one; keepdims=0 drops the split axis from each of them.
            parts = split_array(input, axis, None, None, dim) if dim else ()
            if not self.keepdims:
                parts = [contiguous(np.squeeze(p, axis=axis)) for p in parts]
            return TensorSequence(parts, input.dtype)
        sizes = int_list(split, "split")
        if np.asarray(split).ndim == 0:
            # One chunk length for all; the last chunk takes what is left.
            chunk = sizes[0]
            if chunk <= 0:
                raise InvalidArgument(f"split {chunk} must be positive")
            sizes = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
        return TensorSequence(split_array(input, axis, sizes, None, len(sizes)), input.dtype)


@register("ConcatFromSequence", 11)
class ConcatFromSequence(Op):
    def __init__(self, axis=None, new_axis=0):
        if axis is None:
            raise InvalidModel("ConcatFromSequence needs the 'axis' attribute")
        self.axis = int(axis)
        self.new_axis = bool(int(new_axis))

    def run(self, input_sequence):
        sequence = as_sequence(input_sequence, "input_sequence")
        if not sequence:
            raise InvalidArgument("cannot concatenate an empty sequence: it has no element shape")
        if self.new_axis:
            # Stacking: the new axis may also go after the last one, so the range is [-rank-1, rank].
            axis = normalize_axis(self.axis, sequence[0].ndim + 1)
            return concat_arrays([np.expand_dims(x, axis) for x in sequence], axis, "sequence element")
        return contiguous(concat_arrays(list(sequence), self.axis, "sequence element"))


@register("SequenceMap", 17)
class SequenceMap(Op):
    """Runs ``body`` once per element of the first input; later inputs are sequences of the same
    length (element i is passed) or tensors (passed whole). Each body output becomes a sequence."""

    uses_outer_scope = True
    container_outputs = True

    def __init__(self, body=None):
        if body is None:
            raise InvalidModel("SequenceMap needs the 'body' attribute")
        self.body = body

    def run(self, input_sequence, *additional_inputs, scope=None, profiler=None):
        body = self.body
        sequence = as_sequence(input_sequence, "input_sequence")
        inputs = (sequence,) + additional_inputs
        if len(body.input_names) != len(inputs):
            raise InvalidModel(f"SequenceMap body takes {len(body.input_names)} inputs, the node passes "
                               f"{len(inputs)}")
        for i, value in enumerate(additional_inputs, 1):
            if isinstance(value, TensorSequence) and len(value) != len(sequence):
                raise InvalidArgument(f"input {i} is a sequence of {len(value)}, input 0 of {len(sequence)}")
        collected = [[] for _ in body.output_names]
        for index in range(len(sequence)):
            feeds = {name: value[index] if isinstance(value, TensorSequence) else value
                     for name, value in zip(body.input_names, inputs)}
            for out, value in zip(collected, body.run(feeds, scope=scope, profiler=profiler)):
                out.append(value)
        return tuple(TensorSequence(out, _element_dtype(body, j)) for j, out in enumerate(collected))


def _element_dtype(plan, index):
    types = plan.output_types
    if index < len(types) and types[index].WhichOneof("value") == "tensor_type":
        return numpy_dtype(types[index].tensor_type.elem_type)
    return None


@register("Optional", 15)
class Optional(Op):
    """An optional holding ``input``, or an empty one (None) when the input is omitted; ``type`` only
    matters to type inference."""

    container_outputs = True

    def __init__(self, type=None):
        self.type = type

    def run(self, input=None):
        return input


@register("OptionalHasElement", 15)
class OptionalHasElement(Op):
    """Opset 18 made the input optional and let it be a plain tensor or sequence: one rule serves
    every version, since an omitted input and an empty optional both arrive as None."""

    def run(self, input=None):
        return np.array(input is not None)


@register("OptionalGetElement", 15)
class OptionalGetElement(Op):
    """Opset 18 also accepts a plain tensor or sequence, returned as it is (same rule for 15)."""

    container_outputs = True

    def run(self, input=None):
        if input is None:
            raise InvalidArgument("the optional input is empty (or omitted); OptionalGetElement needs an element "
                                  "(guard it with OptionalHasElement)")
        return input
