"""Recurrent layers: LSTM, GRU, RNN (one layer, forward / reverse / bidirectional).

The op class validates shapes, resolves the optional inputs to their spec defaults (zero bias,
peepholes and initial state; every sequence full length), converts ``layout=1`` (batch-major)
tensors to the time-major layout the kernels use, and runs one kernel call for all directions.
Weights are packed once (transposed per direction, biases summed where the math allows): at plan
time when W, R and B are constants, else on each run.

Activations: the ``activations`` attribute lists one function per gate role (LSTM f, g, h; GRU f, g;
RNN f) for each direction; a bidirectional node that lists only one direction's functions uses them
for both. ``activation_alpha`` / ``activation_beta`` are consumed in order by the functions that take
them (as onnxruntime reads them); a function without a listed value gets the default of the ONNX
operator of that name (Affine 1, 0; ThresholdedRelu 1; LeakyRelu 0.01; HardSigmoid 0.2, 0.5; Elu 1),
and ScaledTanh, which has no ONNX defaults, gets 1, 1 (plain tanh). onnxruntime instead uses 0 for
the Affine, ThresholdedRelu and ScaledTanh parameters left out.

A batch entry whose sequence length is 0 gets zero final states, as onnxruntime returns.

Versions: 7 (the attribute set of today's models) and 14 (adds ``layout``).

com.microsoft ``DynamicQuantizeLSTM`` (what onnxruntime's ``quantize_dynamic`` makes of an LSTM) is
the same layer with int8/uint8 weights stored transposed, W (num_directions, input, 4 * hidden) and
R (num_directions, hidden, 4 * hidden), each with a scale and zero point per direction or per
column. Its activations are quantized to uint8 at run time as onnxruntime quantizes them: X once per
call over the steps that run (the longest sequence), the hidden state before every recurrent
product over the whole batch. onnxruntime with more than one intra-op thread quantizes the state
per block of batch entries instead, so its results depend on its thread count; qrt's are those of
onnxruntime with one thread. Entries whose sequence has ended enter that range as zeros when the
node produces Y (onnxruntime reads the state back from Y) and with their last state otherwise.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import qgemm as kgemm
from ..kernels.cpu import rnn as k
from ..kernels.cpu.threads import threads_for
from ..registry import register
from .base import Op
from .quantized import EIGHT_BIT, check_scale, check_zero_point, dynamic_quantize_rows

# name -> (default alpha, default beta), None where the function takes no such parameter.
_PARAMETERS = {
    "sigmoid": (None, None), "tanh": (None, None), "relu": (None, None), "softsign": (None, None),
    "softplus": (None, None), "affine": (1.0, 0.0), "leakyrelu": (0.01, None), "thresholdedrelu": (1.0, None),
    "scaledtanh": (1.0, 1.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, None),
}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _work_dtype(dtype):
    """The dtype the kernels compute in: float32 for 16-bit floats, else the input's own."""
    if dtype == np.float32 or dtype == np.float64:
        return dtype
    if dtype == np.float16 or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    raise InvalidArgument(f"recurrent layers take float tensors, got {dtype}")


def _parse_activations(names, alphas, betas, defaults, num_directions):
    """(codes, alphas, betas) arrays of length len(defaults) * num_directions."""
    names = list(names) if names else list(defaults) * num_directions
    per_direction = len(defaults)
    if len(names) == per_direction and num_directions == 2:
        names = names * 2
    if len(names) != per_direction * num_directions:
        raise InvalidModel(f"activations lists {len(names)} functions; expected {per_direction} per direction "
                           f"for {num_directions} direction(s)")
    alphas = list(alphas or [])
    betas = list(betas or [])
    codes, alpha_values, beta_values = [], [], []
    for name in names:
        key = str(name).lower()
        if key not in _PARAMETERS:
            raise InvalidModel(f"unsupported activation {name!r}; known: {sorted(_PARAMETERS)}")
        default_alpha, default_beta = _PARAMETERS[key]
        alpha = alphas.pop(0) if default_alpha is not None and alphas else default_alpha
        beta = betas.pop(0) if default_beta is not None and betas else default_beta
        codes.append(k.ACTIVATIONS[key])
        alpha_values.append(0.0 if alpha is None else float(alpha))
        beta_values.append(0.0 if beta is None else float(beta))
    return (np.array(codes, np.int64).reshape(num_directions, per_direction),
            np.array(alpha_values, np.float64).reshape(num_directions, per_direction),
            np.array(beta_values, np.float64).reshape(num_directions, per_direction))


class _Recurrent(Op):
    """Shared attribute parsing and input handling; subclasses set ``gates``, ``default_activations``
    and ``pack(w, r, b, hidden, dtype)``, which returns the kernel's weight arguments."""

    gates = 1
    default_activations = ("Tanh",)
    _packed = None           # (W, R, B, packed weights) when W and R are plan-time constants

    def _init(self, activation_alpha, activation_beta, activations, clip, direction, hidden_size, layout):
        if direction not in _DIRECTIONS:
            raise InvalidModel(f"direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
        if layout not in (0, 1):
            raise InvalidModel(f"layout must be 0 or 1, got {layout}")
        if clip is not None and not float(clip) > 0:
            raise InvalidModel(f"clip must be positive, got {clip}")
        self.num_directions = _DIRECTIONS[direction]
        self.reverse = direction == "reverse"
        self.hidden_size = None if hidden_size is None else int(hidden_size)
        self.layout = int(layout)
        self.clip = 0.0 if clip is None else float(clip)
        self.act_codes, self.act_alphas, self.act_betas = _parse_activations(
            activations, activation_alpha, activation_beta, self.default_activations, self.num_directions)

    def prepare(self, constants):
        # Packed for the B seen here (None when omitted or computed); a run whose W, R or B is another
        # array (a computed B) packs afresh.
        w, r = constants[1], constants[2]
        b = constants[3] if len(constants) > 3 else None
        if w is not None and r is not None:
            self._validate_weights(w, r, w.shape[2] if w.ndim == 3 else -1)
            hidden, dtype = r.shape[2], _work_dtype(w.dtype)
            self._packed = (w, r, b, self.pack(w, r, self._bias(b, hidden, dtype), hidden, dtype))

    def _weights(self, w, r, b, hidden, dtype):
        packed = self._packed
        if packed is not None and packed[0] is w and packed[1] is r and packed[2] is b:
            return packed[3]
        return self.pack(w, r, self._bias(b, hidden, dtype), hidden, dtype)

    def _validate_weights(self, w, r, width):
        dirs, gates = self.num_directions, self.gates
        if w.ndim != 3 or r.ndim != 3:
            raise InvalidArgument(f"W and R must be 3-D, got shapes {w.shape}, {r.shape}")
        hidden = r.shape[2]
        if self.hidden_size is not None and self.hidden_size != hidden:
            raise InvalidArgument(f"hidden_size={self.hidden_size} but R has shape {r.shape}")
        if w.shape != (dirs, gates * hidden, width):
            raise InvalidArgument(f"W has shape {w.shape}; expected {(dirs, gates * hidden, width)}")
        if r.shape != (dirs, gates * hidden, hidden):
            raise InvalidArgument(f"R has shape {r.shape}; expected {(dirs, gates * hidden, hidden)}")

    def _common(self, x, w, r, b, sequence_lens, initial_h):
        """Time-major input, work dtype, hidden size, packed weights, per-batch lengths, initial state."""
        x, dtype = self._time_major(x)
        seq, batch, width = x.shape
        self._validate_weights(w, r, width)
        hidden = r.shape[2]
        lengths = _lengths(sequence_lens, seq, batch)
        h0 = self._state(initial_h, "initial_h", batch, hidden, dtype)
        return x, dtype, hidden, self._weights(w, r, b, hidden, dtype), lengths, h0

    def _time_major(self, x):
        """(X as C-contiguous (seq, batch, input) in the work dtype, the work dtype)."""
        if x.ndim != 3:
            raise InvalidArgument(f"X must be 3-D, got shape {x.shape}")
        dtype = _work_dtype(x.dtype)
        if self.layout == 1:
            x = x.transpose(1, 0, 2)
        return np.ascontiguousarray(x, dtype=dtype), dtype

    def _state(self, value, name, batch, hidden, dtype):
        """A (num_directions, batch, hidden) time-major state, zeros when omitted."""
        dirs = self.num_directions
        if value is None:
            return np.zeros((dirs, batch, hidden), dtype)
        expected = (batch, dirs, hidden) if self.layout == 1 else (dirs, batch, hidden)
        if value.shape != expected:
            raise InvalidArgument(f"{name} has shape {value.shape}; expected {expected}")
        if self.layout == 1:
            value = value.transpose(1, 0, 2)
        return np.ascontiguousarray(value, dtype=dtype)

    def _bias(self, b, hidden, dtype):
        """(num_directions, 2 * gates * hidden) [Wb, Rb], zeros when omitted."""
        size = 2 * self.gates * hidden
        if b is None:
            return np.zeros((self.num_directions, size), dtype)
        if b.shape != (self.num_directions, size):
            raise InvalidArgument(f"B has shape {b.shape}; expected {(self.num_directions, size)}")
        return np.asarray(b, dtype=dtype)

    def _outputs(self, y, states, dtype, lengths):
        """Y and the final states in the node's layout and dtype, as many as the node declares."""
        empty = lengths == 0
        if empty.any():
            for state in states:
                state[:, empty] = 0
        if self.layout == 1:
            y = y.transpose(2, 0, 1, 3)
            states = [s.transpose(1, 0, 2) for s in states]
        results = [np.ascontiguousarray(a).astype(dtype, copy=False) for a in [y, *states]]
        return tuple(results[:max(self.n_outputs, 1)])


def _lengths(sequence_lens, seq, batch):
    """Each batch entry's sequence length as int64, ``seq`` for all when omitted."""
    if sequence_lens is None:
        return np.full(batch, seq, dtype=np.int64)
    lengths = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
    if lengths.shape != (batch,):
        raise InvalidArgument(f"sequence_lens has shape {np.shape(sequence_lens)}; expected ({batch},)")
    if batch and (lengths.min() < 0 or lengths.max() > seq):
        raise InvalidArgument(f"sequence_lens {lengths.tolist()} must lie in [0, {seq}]")
    return lengths


def _transposed(weights, dtype):
    """(num_directions, rows, cols) -> C-contiguous (num_directions, cols, rows) in ``dtype``."""
    return np.ascontiguousarray(weights.transpose(0, 2, 1), dtype=dtype)


class _LSTM(_Recurrent):
    gates = 4
    default_activations = ("Sigmoid", "Tanh", "Tanh")

    def __init__(self, activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None, input_forget=0, layout=0):
        self._init(activation_alpha, activation_beta, activations, clip, direction, hidden_size, layout)
        if input_forget not in (0, 1):
            raise InvalidModel(f"input_forget must be 0 or 1, got {input_forget}")
        self.input_forget = bool(input_forget)

    @staticmethod
    def pack(w, r, bias, hidden, dtype):
        summed = np.ascontiguousarray(bias[:, :4 * hidden] + bias[:, 4 * hidden:], dtype=dtype)
        return _transposed(w, dtype), _transposed(r, dtype), summed

    def _peepholes(self, p, hidden, dtype):
        """P as (num_directions, 3 * hidden), zeros when omitted."""
        dirs = self.num_directions
        if p is None:
            return np.zeros((dirs, 3 * hidden), dtype)
        if p.shape != (dirs, 3 * hidden):
            raise InvalidArgument(f"P has shape {p.shape}; expected {(dirs, 3 * hidden)}")
        return np.ascontiguousarray(p, dtype=dtype)

    def run(self, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
        in_dtype = x.dtype
        x, dtype, hidden, (w_t, r_t, bias), lengths, h0 = self._common(x, w, r, b, sequence_lens, initial_h)
        seq, batch, _ = x.shape
        c0 = self._state(initial_c, "initial_c", batch, hidden, dtype)
        dirs = self.num_directions
        peep = self._peepholes(p, hidden, dtype)
        y = np.zeros((seq, dirs, batch, hidden), dtype)
        y_h = h0.copy()
        y_c = c0.copy()
        if seq and batch:
            # Two directions on two threads once each has 64K multiply-adds per step (ddddocr's
            # bidirectional LSTM, hidden 512: 9.6 ms serial).
            parallel = dirs == 2 and threads_for(batch * 4 * hidden * (hidden + x.shape[2])) > 1
            (k.lstm_directions_parallel if parallel else k.lstm)(
                x, w_t, r_t, bias, peep, p is not None, lengths, h0, c0, self.reverse, self.clip, self.act_codes,
                self.act_alphas, self.act_betas, self.input_forget, dtype == np.float64, y, y_h, y_c)
        return self._outputs(y, [y_h, y_c], in_dtype, lengths)


@register("LSTM", 7)
class LSTM_7(_LSTM):
    def __init__(self, activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None, input_forget=0):
        super().__init__(activation_alpha, activation_beta, activations, clip, direction, hidden_size,
                         input_forget, 0)


@register("LSTM", 14)
class LSTM_14(_LSTM):
    pass


class _GRU(_Recurrent):
    gates = 3
    default_activations = ("Sigmoid", "Tanh")

    def __init__(self, activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None, linear_before_reset=0, layout=0):
        self._init(activation_alpha, activation_beta, activations, clip, direction, hidden_size, layout)
        if linear_before_reset not in (0, 1):
            raise InvalidModel(f"linear_before_reset must be 0 or 1, got {linear_before_reset}")
        self.linear_before_reset = bool(linear_before_reset)

    @staticmethod
    def pack(w, r, bias, hidden, dtype):
        # The candidate's recurrence is separate: it multiplies the reset state (or is scaled by the
        # reset gate), so Wb and Rb stay apart too.
        r_t = _transposed(r, dtype)
        return (_transposed(w, dtype), np.ascontiguousarray(r_t[:, :, :2 * hidden]),
                np.ascontiguousarray(r_t[:, :, 2 * hidden:]), np.ascontiguousarray(bias[:, :3 * hidden]),
                np.ascontiguousarray(bias[:, 3 * hidden:]))

    def run(self, x, w, r, b=None, sequence_lens=None, initial_h=None):
        in_dtype = x.dtype
        x, dtype, hidden, packed, lengths, h0 = self._common(x, w, r, b, sequence_lens, initial_h)
        w_t, r_zr_t, r_h_t, w_bias, r_bias = packed
        seq, batch, _ = x.shape
        y = np.zeros((seq, self.num_directions, batch, hidden), dtype)
        y_h = h0.copy()
        if seq and batch:
            k.gru(x, w_t, r_zr_t, r_h_t, w_bias, r_bias, lengths, h0, self.reverse, self.clip, self.act_codes,
                  self.act_alphas, self.act_betas, self.linear_before_reset, dtype == np.float64, y, y_h)
        return self._outputs(y, [y_h], in_dtype, lengths)


@register("GRU", 7)
class GRU_7(_GRU):
    def __init__(self, activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None, linear_before_reset=0):
        super().__init__(activation_alpha, activation_beta, activations, clip, direction, hidden_size,
                         linear_before_reset, 0)


@register("GRU", 14)
class GRU_14(_GRU):
    pass


class _RNN(_Recurrent):
    gates = 1
    default_activations = ("Tanh",)

    def __init__(self, activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None, layout=0):
        self._init(activation_alpha, activation_beta, activations, clip, direction, hidden_size, layout)

    @staticmethod
    def pack(w, r, bias, hidden, dtype):
        summed = np.ascontiguousarray(bias[:, :hidden] + bias[:, hidden:], dtype=dtype)
        return _transposed(w, dtype), _transposed(r, dtype), summed

    def run(self, x, w, r, b=None, sequence_lens=None, initial_h=None):
        in_dtype = x.dtype
        x, dtype, hidden, (w_t, r_t, bias), lengths, h0 = self._common(x, w, r, b, sequence_lens, initial_h)
        seq, batch, _ = x.shape
        y = np.zeros((seq, self.num_directions, batch, hidden), dtype)
        y_h = h0.copy()
        if seq and batch:
            k.rnn(x, w_t, r_t, bias, lengths, h0, self.reverse, self.clip, self.act_codes, self.act_alphas,
                  self.act_betas, dtype == np.float64, y, y_h)
        return self._outputs(y, [y_h], in_dtype, lengths)


@register("RNN", 7)
class RNN_7(_RNN):
    def __init__(self, activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None):
        super().__init__(activation_alpha, activation_beta, activations, clip, direction, hidden_size, 0)


@register("RNN", 14)
class RNN_14(_RNN):
    pass


class _QuantizedWeights:
    """W and R of a DynamicQuantizeLSTM packed for the int8 GEMM, with per-column float32 scales."""

    __slots__ = ("key", "input_size", "hidden", "w_packs", "w_scale", "r_pack", "r_data", "r_scale")


def _per_column(value, name, dirs, n, dtype=None):
    """A per-direction (num_directions,) or per-column (num_directions, n) parameter as (dirs, n)."""
    value = np.asarray(value)
    if dtype is not None and value.dtype != dtype:
        raise InvalidArgument(f"{name} must be {dtype} like its weights, got {value.dtype}")
    if value.shape == (dirs,):
        return np.repeat(value.reshape(dirs, 1), n, axis=1)
    if value.shape == (dirs, n):
        return value
    raise InvalidArgument(f"{name} has shape {list(value.shape)}; expected [{dirs}] (per direction) or "
                          f"[{dirs}, {n}] (per column)")


@register("DynamicQuantizeLSTM", 1, domain="com.microsoft")
class DynamicQuantizeLSTM(_LSTM):
    """LSTM on int8/uint8 W and R (transposed layout) with dynamically quantized X and H (module doc).

    The products are exact integer sums scaled in float32 (``x_scale * W_scale``, ``h_scale *
    R_scale``), so results agree with onnxruntime's to float32 rounding of the cell's arithmetic,
    plus the rare one-step change of a quantized state value that such rounding can tip."""

    def __init__(self, activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None, input_forget=0):
        super().__init__(activation_alpha, activation_beta, activations, clip, direction, hidden_size,
                         input_forget, 0)

    def prepare(self, constants):
        constants = list(constants) + [None] * (12 - len(constants))
        weights = [constants[i] for i in (1, 2, 8, 9, 10, 11)]
        if all(v is not None for v in weights):
            try:
                self._packed = self._pack(*weights)
            except InvalidArgument as exc:
                raise InvalidModel(str(exc)) from None

    def _pack(self, w, r, w_scale, w_zero_point, r_scale, r_zero_point):
        dirs = self.num_directions
        for name, weight in (("W", w), ("R", r)):
            if weight.dtype not in EIGHT_BIT or weight.ndim != 3 or weight.shape[0] != dirs:
                raise InvalidArgument(f"{name} must be a 3-D int8 or uint8 tensor with {dirs} direction(s), got "
                                      f"{weight.dtype} of shape {list(weight.shape)}")
        hidden = r.shape[1]
        n = 4 * hidden
        if self.hidden_size is not None and self.hidden_size != hidden:
            raise InvalidArgument(f"hidden_size={self.hidden_size} but R has shape {list(r.shape)}")
        if w.shape[2] != n or r.shape[2] != n:
            raise InvalidArgument(f"W has shape {list(w.shape)} and R {list(r.shape)}; expected "
                                  f"[{dirs}, input_size, {n}] and [{dirs}, {hidden}, {n}]")
        check_scale(w_scale, "W_scale", InvalidArgument)
        check_scale(r_scale, "R_scale", InvalidArgument)
        check_zero_point(w_zero_point, "W_zero_point", w.dtype, error=InvalidArgument)
        check_zero_point(r_zero_point, "R_zero_point", r.dtype, error=InvalidArgument)
        packed = _QuantizedWeights()
        packed.key = (w, r, w_scale, w_zero_point, r_scale, r_zero_point)
        packed.input_size, packed.hidden = w.shape[1], hidden
        w_zp = _per_column(w_zero_point, "W_zero_point", dirs, n, w.dtype)
        r_zp = _per_column(r_zero_point, "R_zero_point", dirs, n, r.dtype)
        packed.w_scale = np.ascontiguousarray(_per_column(w_scale, "W_scale", dirs, n), np.float32)
        packed.r_scale = np.ascontiguousarray(_per_column(r_scale, "R_scale", dirs, n), np.float32)
        packed.w_packs = [kgemm.pack_weights([w[d]], w_zp[d:d + 1]) for d in range(dirs)]
        # One group per direction: the recurrent kernel indexes packed data, sums and zero points by d.
        packed.r_pack = kgemm.pack_weights([r[d] for d in range(dirs)], r_zp)
        packed.r_data = packed.r_pack.data.reshape(dirs, -1)
        return packed

    def _quantized_weights(self, *weights):
        packed = self._packed
        if packed is not None and all(a is b for a, b in zip(packed.key, weights)):
            return packed
        return self._pack(*weights)

    def run(self, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, W_scale=None,
            W_zero_point=None, R_scale=None, R_zero_point=None):
        if x.dtype != np.float32:
            raise InvalidArgument(f"X must be float32, got {x.dtype}")
        if any(v is None for v in (W_scale, W_zero_point, R_scale, R_zero_point)):
            raise InvalidArgument("W_scale, W_zero_point, R_scale and R_zero_point are required")
        packed = self._quantized_weights(w, r, W_scale, W_zero_point, R_scale, R_zero_point)
        x, dtype = self._time_major(x)
        seq, batch, width = x.shape
        if width != packed.input_size:
            raise InvalidArgument(f"X has {width} features per step but W has shape {list(w.shape)}")
        hidden, dirs = packed.hidden, self.num_directions
        n = 4 * hidden
        lengths = _lengths(sequence_lens, seq, batch)
        h0 = self._state(initial_h, "initial_h", batch, hidden, dtype)
        c0 = self._state(initial_c, "initial_c", batch, hidden, dtype)
        bias = self._bias(b, hidden, dtype)
        summed = np.ascontiguousarray(bias[:, :n] + bias[:, n:])
        peep = self._peepholes(p, hidden, dtype)
        y = np.zeros((seq, dirs, batch, hidden), dtype)
        y_h = h0.copy()
        y_c = c0.copy()
        steps = int(lengths.max()) if batch else 0
        if seq and steps:
            # X is quantized once, over the steps that run: onnxruntime's one input product per direction.
            rows = steps * batch
            # Written straight into the GEMM's row buffer with its row sums (the AMX driver's, where it runs).
            x_q, row_sum, x_scale, x_zero_point = dynamic_quantize_rows(
                np.ascontiguousarray(x[:steps]).reshape(rows, width), packed.w_packs[0].Kp)
            xw = np.empty((dirs, rows, n), np.float32)
            for d in range(dirs):
                epilogue = kgemm.Epilogue(2, 1, n, fscale=x_scale * packed.w_scale[d])
                kgemm.matmul_rows(x_q, width, row_sum, int(x_zero_point), packed.w_packs[d], epilogue, xw[d])
            r_pack = packed.r_pack
            mc, n_groups = kgemm.split_work(batch, -(-n // r_pack.nr), r_pack.Kp, r_pack.nr)
            zero_finished = bool(self.output_names[:1] and self.output_names[0])
            k.lstm_dynamic_quantized(kgemm.tag_for(r_pack.isa), xw, packed.r_data, r_pack.Kp, r_pack.nr,
                                     r_pack.koff, r_pack.col_sum, r_pack.zb, packed.r_scale, mc, n_groups, summed,
                                     peep, p is not None, lengths, h0, c0, self.reverse, self.clip, self.act_codes,
                                     self.act_alphas, self.act_betas, self.input_forget, zero_finished, y, y_h, y_c)
        return self._outputs(y, [y_h, y_c], np.float32, lengths)
