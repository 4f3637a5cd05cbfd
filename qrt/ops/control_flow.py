"""Control flow: If, Loop, Scan.

Their graph attributes arrive as built sub-plans (:class:`qrt.plan.Plan`). A sub-plan's graph
inputs (``Plan.input_names``: loop counter, condition, carried values, scan slices) are passed as
``feeds`` on every iteration; names the body reads from enclosing graphs come through ``scope``,
which the planner hands to ops with ``uses_outer_scope``. Branch outputs and loop-carried values
may be sequences or optionals (:mod:`qrt.values`): they pass through untouched; Loop scan outputs are
stacked and so must be tensors.
"""
import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..model import numpy_dtype
from ..registry import register
from .base import Op
from .shape import contiguous, normalize_axis


def _flag(value, what):
    array = np.asarray(value)
    if array.size != 1:
        raise InvalidArgument(f"{what} must hold one value, got shape {list(array.shape)}")
    return bool(array.reshape(-1)[0])


def _empty_scan_output(plan, index, leading_shape=(0,)):
    """The scan output of a body that never ran: zero iterations of the declared element shape."""
    types = getattr(plan, "output_types", ())
    dtype, element_shape = np.dtype(np.float32), ()
    if index < len(types) and types[index].WhichOneof("value") == "tensor_type":
        tensor_type = types[index].tensor_type
        dtype = numpy_dtype(tensor_type.elem_type) or dtype
        dims = tensor_type.shape.dim if tensor_type.HasField("shape") else ()
        # Symbolic or unknown dims have no size to give; with no iterations they hold nothing anyway.
        element_shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    return np.zeros(tuple(leading_shape) + element_shape, dtype=dtype)


@register("If", 1)
class If(Op):
    uses_outer_scope = True

    def __init__(self, then_branch=None, else_branch=None):
        if then_branch is None or else_branch is None:
            raise InvalidModel("If needs both 'then_branch' and 'else_branch'")
        self.then_branch = then_branch
        self.else_branch = else_branch

    def run(self, cond, scope=None, profiler=None):
        branch = self.then_branch if _flag(cond, "cond") else self.else_branch
        outputs = branch.run({}, scope=scope, profiler=profiler)
        if len(outputs) < self.n_outputs:
            raise InvalidModel(f"the chosen branch {branch.label!r} has {len(outputs)} outputs, the node "
                               f"declares {self.n_outputs}")
        return tuple(outputs[:self.n_outputs])


@register("Loop", 1)
class Loop(Op):
    uses_outer_scope = True

    def __init__(self, body=None):
        if body is None:
            raise InvalidModel("Loop needs the 'body' attribute")
        if len(body.input_names) < 2:
            raise InvalidModel(f"Loop body has inputs {body.input_names}; it needs (iteration_num, cond, "
                               f"loop-carried...)")
        self.body = body

    def run(self, max_trip_count=None, cond=None, *initial, scope=None, profiler=None):
        body = self.body
        n_carried = len(initial)
        if len(body.input_names) != 2 + n_carried:
            raise InvalidModel(f"Loop body takes {len(body.input_names)} inputs; the node passes {n_carried} "
                               f"loop-carried values, so the body needs {2 + n_carried}")
        n_scan = len(body.output_names) - 1 - n_carried
        if n_scan < 0:
            raise InvalidModel(f"Loop body has {len(body.output_names)} outputs, fewer than the condition and "
                               f"{n_carried} loop-carried values")
        trips = None if max_trip_count is None else int(np.asarray(max_trip_count).reshape(-1)[0])
        running = True if cond is None else _flag(cond, "cond")
        iteration_name, cond_name = body.input_names[:2]
        carried_names = body.input_names[2:]
        values = list(initial)
        scans = [[] for _ in range(n_scan)]
        iteration = 0
        while running and (trips is None or iteration < trips):
            feeds = {iteration_name: np.array(iteration, dtype=np.int64), cond_name: np.array(running)}
            feeds.update(zip(carried_names, values))
            outputs = body.run(feeds, scope=scope, profiler=profiler)
            # Without a cond input the body's condition output is ignored (a plain for loop).
            if cond is not None:
                running = _flag(outputs[0], "the body's condition output")
            values = outputs[1:1 + n_carried]
            for collected, value in zip(scans, outputs[1 + n_carried:]):
                collected.append(value)
            iteration += 1
        stacked = []
        for j, collected in enumerate(scans):
            if collected:
                if not all(isinstance(v, np.ndarray) for v in collected):
                    raise InvalidArgument(f"scan output {j} is not a tensor: Loop stacks its scan outputs, so "
                                          f"they must be tensors (carry a sequence as a loop-carried value)")
                shapes = {v.shape for v in collected}
                if len(shapes) != 1:
                    raise InvalidArgument(f"scan output {j} changes shape between iterations: {sorted(shapes)}")
                stacked.append(np.stack(collected))
            else:
                stacked.append(_empty_scan_output(body, 1 + n_carried + j))
        return tuple(values) + tuple(stacked)


def _run_scan(body, states, sequences, reverse, length, scope, profiler):
    """Run ``body`` over ``length`` steps of ``sequences`` (scan axis first); per-step outputs listed."""
    n_state = len(states)
    names = body.input_names
    if len(names) != n_state + len(sequences):
        raise InvalidModel(f"Scan body takes {len(names)} inputs, the node passes {n_state} states and "
                           f"{len(sequences)} scan inputs")
    n_scan_out = len(body.output_names) - n_state
    if n_scan_out < 0:
        raise InvalidModel(f"Scan body has {len(body.output_names)} outputs, fewer than its {n_state} states")
    states = list(states)
    collected = [[] for _ in range(n_scan_out)]
    for t in range(length):
        feeds = dict(zip(names[:n_state], states))
        for name, sequence, backwards in zip(names[n_state:], sequences, reverse):
            feeds[name] = contiguous(sequence[length - 1 - t if backwards else t])
        outputs = body.run(feeds, scope=scope, profiler=profiler)
        states = outputs[:n_state]
        for out_list, value in zip(collected, outputs[n_state:]):
            out_list.append(value)
    return states, collected


def _directions(values, count, what):
    if values is None:
        return [False] * count
    if len(values) != count:
        raise InvalidModel(f"{what} has {len(values)} entries for {count} tensors")
    return [bool(int(v)) for v in values]


@register("Scan", 8)
class Scan8(Op):
    """Opset 8: a leading batch axis on every input and output, and optional per-batch lengths."""

    uses_outer_scope = True

    def __init__(self, body=None, num_scan_inputs=None, directions=None):
        if body is None or num_scan_inputs is None:
            raise InvalidModel("Scan needs 'body' and 'num_scan_inputs'")
        self.body = body
        self.num_scan_inputs = int(num_scan_inputs)
        self.directions = None if directions is None else [int(d) for d in directions]

    def run(self, sequence_lens=None, *inputs, scope=None, profiler=None):
        m = self.num_scan_inputs
        n_state = len(inputs) - m
        if n_state < 0:
            raise InvalidModel(f"Scan declares {m} scan inputs but has {len(inputs)} state and scan inputs")
        states, sequences = inputs[:n_state], inputs[n_state:]
        reverse = _directions(self.directions, m, "directions")
        batch = (states + sequences)[0].shape[0] if inputs else 0
        if any(x.ndim < 1 or x.shape[0] != batch for x in states) or \
                any(x.ndim < 2 or x.shape[0] != batch for x in sequences):
            raise InvalidArgument(f"Scan inputs must share batch size {batch}; scan inputs need a sequence axis")
        max_len = sequences[0].shape[1] if sequences else 0
        if any(x.shape[1] != max_len for x in sequences):
            raise InvalidArgument("Scan inputs differ in sequence length")
        lengths = [max_len] * batch if sequence_lens is None else [int(v) for v in sequence_lens.reshape(-1)]
        if len(lengths) != batch or any(not 0 <= n <= max_len for n in lengths):
            raise InvalidArgument(f"sequence_lens {lengths} do not fit batch {batch} and length {max_len}")
        final_states, scan_outputs = [], []
        for b in range(batch):
            state_b, collected = _run_scan(self.body, [x[b] for x in states], [x[b] for x in sequences],
                                           reverse, lengths[b], scope, profiler)
            final_states.append(state_b)
            scan_outputs.append(collected)
        results = [np.stack([final_states[b][j] for b in range(batch)]) for j in range(n_state)]
        n_scan_out = len(self.body.output_names) - n_state
        for j in range(n_scan_out):
            per_batch = [scan_outputs[b][j] for b in range(batch)]
            sample = next((steps[0] for steps in per_batch if steps), None)
            if sample is None:
                results.append(_empty_scan_output(self.body, n_state + j, (batch, max_len)))
                continue
            # Steps past a batch entry's sequence length stay zero.
            out = np.zeros((batch, max_len) + sample.shape, dtype=sample.dtype)
            for b, steps in enumerate(per_batch):
                if steps:
                    out[b, :len(steps)] = np.stack(steps)
            results.append(out)
        return tuple(results)


@register("Scan", 9)
class Scan(Op):
    uses_outer_scope = True

    def __init__(self, body=None, num_scan_inputs=None, scan_input_axes=None, scan_input_directions=None,
                 scan_output_axes=None, scan_output_directions=None):
        if body is None or num_scan_inputs is None:
            raise InvalidModel("Scan needs 'body' and 'num_scan_inputs'")
        self.body = body
        self.num_scan_inputs = int(num_scan_inputs)
        self.input_axes = None if scan_input_axes is None else [int(a) for a in scan_input_axes]
        self.input_directions = scan_input_directions
        self.output_axes = None if scan_output_axes is None else [int(a) for a in scan_output_axes]
        self.output_directions = scan_output_directions

    def run(self, *inputs, scope=None, profiler=None):
        m = self.num_scan_inputs
        n_state = len(inputs) - m
        if n_state < 0 or m < 1:
            raise InvalidModel(f"Scan declares {m} scan inputs but has {len(inputs)} inputs")
        states, sequences = inputs[:n_state], inputs[n_state:]
        axes = [0] * m if self.input_axes is None else self.input_axes
        if len(axes) != m:
            raise InvalidModel(f"scan_input_axes has {len(axes)} entries for {m} scan inputs")
        # Scan axis first, as a view; each step's slice is then contiguous or copied once.
        sequences = [np.moveaxis(x, normalize_axis(a, x.ndim, "scan_input_axes"), 0)
                     for x, a in zip(sequences, axes)]
        length = sequences[0].shape[0]
        if any(x.shape[0] != length for x in sequences):
            raise InvalidArgument(f"scan inputs differ in sequence length: {[x.shape[0] for x in sequences]}")
        reverse = _directions(self.input_directions, m, "scan_input_directions")
        final_states, collected = _run_scan(self.body, states, sequences, reverse, length, scope, profiler)
        n_out = len(collected)
        out_axes = [0] * n_out if self.output_axes is None else self.output_axes
        if len(out_axes) != n_out:
            raise InvalidModel(f"scan_output_axes has {len(out_axes)} entries for {n_out} scan outputs")
        out_reverse = _directions(self.output_directions, n_out, "scan_output_directions")
        results = list(final_states)
        for j, (steps, axis, backwards) in enumerate(zip(collected, out_axes, out_reverse)):
            if not steps:
                stacked = _empty_scan_output(self.body, n_state + j)
            else:
                stacked = np.stack(steps[::-1] if backwards else steps)
            axis = normalize_axis(axis, stacked.ndim, "scan_output_axes")
            results.append(contiguous(np.moveaxis(stacked, 0, axis)))
        return tuple(results)
