"""Numba kernels for LSTM, GRU and RNN: one direction of one layer per call.

Shapes (layout 0, one direction): ``x`` is (seq, batch, input) C-contiguous; ``w_t`` is the
transposed input weight (input, gates * hidden) and the recurrence weights arrive transposed too, so
both products are plain row-major GEMMs (``np.dot``, which Numba hands to BLAS). The input product
for every time step is one GEMM before the loop; each step then does one small GEMM with the hidden
state and the gate math element by element.

Outputs are written in place: ``y`` is (seq, num_directions, batch, hidden), pre-zeroed (steps past a
batch entry's sequence length stay zero), ``y_h``/``y_c`` are (num_directions, batch, hidden); ``d``
is this direction's index. A reverse direction walks each batch entry's own sequence backwards from
its last valid step.

Activations are coded as ints (see ``ACTIVATIONS``) with their alpha/beta; ``clip`` <= 0 means no
clipping, otherwise gate pre-activations are clipped to [-clip, clip] before their activation. Gate
math runs on whole gate vectors, one activation per loop, so the loops vectorize; ``exact`` (float64
tensors) computes sigmoid and tanh with libm, float32 with a rational tanh accurate to float32.

com.microsoft DynamicQuantizeLSTM (``lstm_dynamic_quantized``) runs the same cell
(``_lstm_step``) on products computed by the exact u8 x s8 GEMM of :mod:`.qgemm`: the input
product arrives precomputed, the recurrent one quantizes the state at every step.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .qgemm import qgemm
from .quantize import _quantize_one

ACTIVATIONS = {
    "sigmoid": 0, "tanh": 1, "relu": 2, "affine": 3, "leakyrelu": 4, "thresholdedrelu": 5,
    "scaledtanh": 6, "hardsigmoid": 7, "elu": 8, "softsign": 9, "softplus": 10,
}


# tanh(x) ~ x * P(x^2) / Q(x^2) on |x| <= 9, a (5, 4) rational fitted here for minimax relative
# error (1.3e-9 in float64 arithmetic); beyond 9 tanh rounds to +-1 in float32, and the clamp's
# absolute error there is below 3.2e-8, half a float32 ulp of 1. Evaluated in float64 it has no calls
# and no branches, so LLVM vectorizes it (with numpy's error model: Python's checks every division for
# zero, a branch that blocks vectorization); float64 tensors use libm instead, for full precision.
_TANH_CLAMP = 9.0
_TANH_P = (0.9999999987481503, 0.13680861224936547, 0.0038695127377271097, 2.8031332465200572e-05,
           3.0642302407788846e-08, -1.2245858656111485e-11)
_TANH_Q = (1.0, 0.4701419332789107, 0.027250177208391242, 0.00039407190736493554, 1.2890328042689262e-06)
_P0, _P1, _P2, _P3, _P4, _P5 = _TANH_P
_Q0, _Q1, _Q2, _Q3, _Q4 = _TANH_Q


@njit(cache=True, error_model="numpy", inline="always")
def _tanh_rational(v):
    x = min(max(np.float64(v), -_TANH_CLAMP), _TANH_CLAMP)
    s = x * x
    p = ((((_P5 * s + _P4) * s + _P3) * s + _P2) * s + _P1) * s + _P0
    q = (((_Q4 * s + _Q3) * s + _Q2) * s + _Q1) * s + _Q0
    return x * p / q


@njit(cache=True, inline="always")
def _sigmoid_exact(v):
    if v >= 0:
        return 1 / (1 + math.exp(-v))
    e = math.exp(v)
    return e / (1 + e)


@njit(cache=True, error_model="numpy")
def activate(buf, start, n, code, alpha, beta, clip, exact):
    """buf[start:start + n] = activation(clip(buf[start:start + n])) in place; ``exact`` selects
    libm over the vectorizable rational tanh (sigmoid(x) = (1 + tanh(x / 2)) / 2)."""
    # Unsigned bounds: with a signed run-time start LLVM must allow for negative-index wraparound,
    # which keeps these loops scalar (4-8x slower).
    start, stop = np.uintp(start), np.uintp(start + n)
    if clip > 0:
        for j in range(start, stop):
            buf[j] = min(max(buf[j], -clip), clip)
    if code == 0:
        if exact:
            for j in range(start, stop):
                buf[j] = _sigmoid_exact(buf[j])
        else:
            for j in range(start, stop):
                buf[j] = 0.5 + 0.5 * _tanh_rational(0.5 * buf[j])
    elif code == 1:
        if exact:
            for j in range(start, stop):
                buf[j] = math.tanh(buf[j])
        else:
            for j in range(start, stop):
                buf[j] = _tanh_rational(buf[j])
    elif code == 2:
        for j in range(start, stop):
            buf[j] = max(buf[j], 0.0)
    elif code == 3:
        for j in range(start, stop):
            buf[j] = alpha * buf[j] + beta
    elif code == 4:
        for j in range(start, stop):
            v = buf[j]
            buf[j] = v if v >= 0 else alpha * v
    elif code == 5:
        for j in range(start, stop):
            v = buf[j]
            buf[j] = v if v > alpha else 0.0
    elif code == 6:
        for j in range(start, stop):
            buf[j] = alpha * math.tanh(beta * buf[j])
    elif code == 7:
        for j in range(start, stop):
            buf[j] = min(max(alpha * buf[j] + beta, 0.0), 1.0)
    elif code == 8:
        for j in range(start, stop):
            v = buf[j]
            buf[j] = v if v >= 0 else alpha * (math.exp(v) - 1)
    elif code == 9:
        for j in range(start, stop):
            v = buf[j]
            buf[j] = v / (1 + abs(v))
    else:
        for j in range(start, stop):
            # softplus, written to stay finite for large inputs
            v = buf[j]
            buf[j] = max(v, 0.0) + math.log1p(math.exp(-abs(v)))


# Below this many multiply-adds the recurrent product runs in a Numba loop: a BLAS call costs about
# a microsecond of fixed overhead, more than the whole product at LSTM sizes like batch 3, hidden 32.
SMALL_GEMM_MACS = 1 << 16


@njit(cache=True, fastmath={"contract"})
def recurrent_product(h, r_t, out):
    """out = h @ r_t for (batch, hidden) ``h`` and (hidden, width) ``r_t``."""
    batch, hidden = h.shape
    width = r_t.shape[1]
    if batch * hidden * width > SMALL_GEMM_MACS:
        np.dot(h, r_t, out)
        return
    for b in range(batch):
        row = out[b]
        for j in range(width):
            row[j] = 0
        # Four weight rows per pass over the output row: a quarter of the loads and stores of ``row``.
        kk = 0
        while kk + 4 <= hidden:
            h0, h1, h2, h3 = h[b, kk], h[b, kk + 1], h[b, kk + 2], h[b, kk + 3]
            w0, w1, w2, w3 = r_t[kk], r_t[kk + 1], r_t[kk + 2], r_t[kk + 3]
            for j in range(width):
                row[j] += h0 * w0[j] + h1 * w1[j] + h2 * w2[j] + h3 * w3[j]
            kk += 4
        while kk < hidden:
            hk = h[b, kk]
            weights = r_t[kk]
            for j in range(width):
                row[j] += hk * weights[j]
            kk += 1


@njit(cache=True, inline="always")
def _store_state(dst, d, state):
    # An explicit loop: ``dst[d] = state`` (like any array or tuple assigned to a slice) compiles
    # Numba's generic slice assignment, whose shape-mismatch error path takes seconds to compile.
    batch, hidden = state.shape
    for b in range(batch):
        for j in range(hidden):
            dst[d, b, j] = state[b, j]


@njit(cache=True, inline="always")
def _time_index(step, length, reverse):
    return length - 1 - step if reverse else step


@njit(cache=True)
def _activate_segments(buf, segments, acts, alphas, betas, clip, exact):
    """Apply activations to segments of ``buf``: each row of ``segments`` is (start, length, role,
    clipped), ``role`` indexing ``acts``/``alphas``/``betas``. One call site for ``activate`` keeps
    each kernel's compiled code (and compile time) small."""
    for s in range(segments.shape[0]):
        role = segments[s, 2]
        activate(buf, segments[s, 0], segments[s, 1], acts[role], alphas[role], betas[role],
                 clip if segments[s, 3] else 0.0, exact)


@njit(cache=True)
def _lstm_segments(batch, hidden, has_peep):
    """(start, length, role: 0 f / 1 g / 2 h, clipped) rows for ``_activate_segments``: on the flat
    gates before the cell update, on the output gate after it (peepholes see the new cell), and h
    on the new cell state."""
    block = batch * hidden
    if has_peep:
        before = np.array([[0, block, 0, 1], [2 * block, block, 0, 1], [3 * block, block, 1, 1]], np.int64)
    else:
        before = np.array([[0, 3 * block, 0, 1], [3 * block, block, 1, 1]], np.int64)
    return before, np.array([[block, block, 0, 1]], np.int64), np.array([[0, block, 2, 0]], np.int64)


@njit(cache=True)
def _lstm_step(step, d, backwards, xw, hr3, gate_bias, p, has_peep, seq_lens, h, c, rows, gates, cell, segments,
               acts, alphas, betas, clip, input_forget, exact, y):
    """One time step of one direction: the LSTM cell on the products ``xw`` (rows of X W^T, (seq *
    batch, 4, hidden)) and ``hr3`` (H R^T, (batch, 4, hidden)); updates ``h``, ``c`` and ``y``.

    A step's pre-activations are gathered gate-major, (gate, batch, hidden), so each activation runs
    once over every batch entry (i, o and f together when there are no peepholes). Entries whose
    sequence has ended compute from row 0 of the step and their results are dropped. Loops index
    multi-dimensional views with loop counters, which LLVM knows are non-negative, so they vectorize."""
    batch, hidden = h.shape
    before_segments, output_segments, cell_segments = segments
    gates3 = gates.reshape((4, batch, hidden))
    gate_i, gate_o, gate_f, gate_c = gates3[0], gates3[1], gates3[2], gates3[3]
    cell2 = cell.reshape((batch, hidden))
    for b in range(batch):
        length = seq_lens[b]
        rows[b] = _time_index(step, length, backwards) if step < length else 0
        xrow = xw[rows[b] * batch + b]
        for g in range(4):
            for j in range(hidden):
                gates3[g, b, j] = xrow[g, j] + hr3[b, g, j] + gate_bias[g, j]
        if has_peep:
            for j in range(hidden):
                gate_i[b, j] += p[0, j] * c[b, j]
                gate_f[b, j] += p[2, j] * c[b, j]
    _activate_segments(gates, before_segments, acts[d], alphas[d], betas[d], clip, exact)
    for b in range(batch):
        if input_forget:
            for j in range(hidden):
                gate_f[b, j] = 1 - gate_i[b, j]
        for j in range(hidden):
            cell2[b, j] = gate_f[b, j] * c[b, j] + gate_i[b, j] * gate_c[b, j]
        if step < seq_lens[b]:
            for j in range(hidden):
                c[b, j] = cell2[b, j]
        if has_peep:
            for j in range(hidden):
                gate_o[b, j] += p[1, j] * cell2[b, j]
    if has_peep:
        _activate_segments(gates, output_segments, acts[d], alphas[d], betas[d], clip, exact)
    _activate_segments(cell, cell_segments, acts[d], alphas[d], betas[d], clip, exact)
    for b in range(batch):
        if step < seq_lens[b]:
            t = rows[b]
            for j in range(hidden):
                h_new = gate_o[b, j] * cell2[b, j]
                h[b, j] = h_new
                y[t, d, b, j] = h_new


@njit(cache=True)
def lstm(x, w_t, r_t, bias, peep, has_peep, seq_lens, h0, c0, reverse, clip, acts, alphas, betas, input_forget,
         exact, y, y_h, y_c):
    """LSTM over every direction d (reversed when d == 1 or ``reverse``): per direction, ``w_t`` is
    (input, 4 * hidden), ``r_t`` (hidden, 4 * hidden), ``bias`` Wb + Rb (4 * hidden) and ``peep`` P
    (3 * hidden), zeros when ``has_peep`` is false. Gates in ONNX order i, o, f, c. The cell state's
    activation h(C) is not clipped, as in onnxruntime; the cell is :func:`_lstm_step`."""
    for d in range(w_t.shape[0]):
        _lstm_direction(d, x, w_t, r_t, bias, peep, has_peep, seq_lens, h0, c0, reverse, clip, acts, alphas,
                        betas, input_forget, exact, y, y_h, y_c)


@njit(cache=True, parallel=True)
def lstm_directions_parallel(x, w_t, r_t, bias, peep, has_peep, seq_lens, h0, c0, reverse, clip, acts, alphas,
                             betas, input_forget, exact, y, y_h, y_c):
    """:func:`lstm` with the two directions of a bidirectional layer on two threads: they share only
    the input, and each streams its own recurrent weights every step (the time loop itself is serial)."""
    for d in prange(w_t.shape[0]):
        _lstm_direction(d, x, w_t, r_t, bias, peep, has_peep, seq_lens, h0, c0, reverse, clip, acts, alphas,
                        betas, input_forget, exact, y, y_h, y_c)


@njit(cache=True)
def _lstm_direction(d, x, w_t, r_t, bias, peep, has_peep, seq_lens, h0, c0, reverse, clip, acts, alphas, betas,
                    input_forget, exact, y, y_h, y_c):
    """Direction ``d`` of :func:`lstm`, with its own scratch; writes only its part of the outputs."""
    seq, batch, width = x.shape
    hidden = r_t.shape[1]
    dtype = x.dtype
    segments = _lstm_segments(batch, hidden, has_peep)
    hr = np.empty((batch, 4 * hidden), dtype)
    gates = np.empty(4 * batch * hidden, dtype)
    cell = np.empty(batch * hidden, dtype)
    rows = np.empty(batch, np.int64)
    hr3 = hr.reshape((batch, 4, hidden))
    backwards = reverse or d == 1
    xw = np.dot(x.reshape((seq * batch, width)), w_t[d]).reshape((seq * batch, 4, hidden))
    h = h0[d].copy()
    c = c0[d].copy()
    gate_bias = bias[d].reshape((4, hidden))
    p = peep[d].reshape((3, hidden))
    for step in range(seq):
        recurrent_product(h, r_t[d], hr)
        _lstm_step(step, d, backwards, xw, hr3, gate_bias, p, has_peep, seq_lens, h, c, rows, gates, cell,
                   segments, acts, alphas, betas, clip, input_forget, exact, y)
    _store_state(y_h, d, h)
    _store_state(y_c, d, c)


@njit(cache=True)
def _quantize_state(h, seq_lens, step, zero_finished, out, row_sum):
    """Quantizes the (batch, hidden) state to uint8 rows of ``out`` as onnxruntime's quantized LSTM
    does before each recurrent product: one scale and zero point for the whole batch, from its range
    widened to contain 0, values rounded half to even. With ``zero_finished`` the entries whose
    sequence ended before this step count as zeros (onnxruntime reads them from Y, where they are
    0); otherwise they keep their last state. Returns (scale, zero point); ``row_sum`` receives each
    row's sum of quantized values."""
    batch, hidden = h.shape
    lo = np.float32(0)
    hi = np.float32(0)
    for b in range(batch):
        if zero_finished and step > 0 and seq_lens[b] < step:
            continue
        for j in range(hidden):
            v = h[b, j]
            lo = min(lo, v)
            hi = max(hi, v)
    scale = np.float32(1) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero_point = np.float32(np.rint(min(max(np.float32(0) - lo / scale, np.float32(0)), np.float32(255))))
    for b in range(batch):
        zeroed = zero_finished and step > 0 and seq_lens[b] < step
        s = 0
        for j in range(hidden):
            q = zero_point if zeroed else _quantize_one(h[b, j], scale, zero_point, 0, 255)
            out[b, j] = np.uint8(q)
            s += np.int32(q)
        row_sum[b] = s
    return scale, np.int32(zero_point)


@njit(cache=True)
def lstm_dynamic_quantized(tag, xw, r_data, r_kp, r_nr, r_koff, r_col_sum, r_zb, r_scale, mc, n_groups, bias, peep,
                           has_peep, seq_lens, h0, c0, reverse, clip, acts, alphas, betas, input_forget,
                           zero_finished, y, y_h, y_c):
    """com.microsoft DynamicQuantizeLSTM after its input product: ``xw`` (num_directions, seq * batch,
    4 * hidden) float32 holds X W^T of every step, computed on dynamically quantized X; each step
    quantizes the state (:func:`_quantize_state`) and multiplies it with the int8 recurrence weights
    packed for :func:`qrt.kernels.cpu.qgemm.qgemm` (``r_data`` one packed matrix per direction, its
    column sums and shifted zero points), scaled by ``state scale * r_scale[d]`` in float32 as
    onnxruntime does. The cell is the float LSTM's."""
    dirs = xw.shape[0]
    batch, hidden = h0.shape[1], h0.shape[2]
    seq = y.shape[0]
    n = 4 * hidden
    segments = _lstm_segments(batch, hidden, has_peep)
    hr = np.empty((batch, n), np.float32)
    gates = np.empty(4 * batch * hidden, np.float32)
    cell = np.empty(batch * hidden, np.float32)
    rows = np.empty(batch, np.int64)
    hr3 = hr.reshape((batch, 4, hidden))
    h_q = np.zeros((batch, r_kp), np.uint8)
    row_sum = np.empty(batch, np.int32)
    row_za = np.empty(batch, np.int32)
    row_t = np.empty(batch, np.int32)
    col_bias = np.zeros(n, np.int32)
    mult = np.zeros(n, np.float64)
    fscale = np.empty(n, np.float32)
    fbias = np.zeros(n, np.float32)
    no_q = np.empty((0, 0), np.uint8)
    no_i = np.empty((0, 0), np.int32)
    steps = 0
    for b in range(batch):
        steps = max(steps, seq_lens[b])
    for d in range(dirs):
        backwards = reverse or d == 1
        xw_d = xw[d].reshape((xw.shape[1], 4, hidden))
        h = h0[d].copy()
        c = c0[d].copy()
        gate_bias = bias[d].reshape((4, hidden))
        p = peep[d].reshape((3, hidden))
        for step in range(min(seq, steps)):
            scale, zero_point = _quantize_state(h, seq_lens, step, zero_finished, h_q, row_sum)
            for j in range(n):
                fscale[j] = scale * r_scale[d, j]
            for b in range(batch):
                row_za[b] = zero_point
                row_t[b] = row_sum[b] - hidden * zero_point
            qgemm(tag, h_q.reshape(-1), r_kp, batch, r_kp, hidden, r_data[d], n, r_nr, r_koff, row_za, row_t,
                  r_col_sum[d], r_zb[d], col_bias, 2, mult, 0, 0, 255, fscale, fbias, no_q, no_i, hr, mc, n_groups)
            _lstm_step(step, d, backwards, xw_d, hr3, gate_bias, p, has_peep, seq_lens, h, c, rows, gates, cell,
                       segments, acts, alphas, betas, clip, input_forget, False, y)
        _store_state(y_h, d, h)
        _store_state(y_c, d, c)


@njit(cache=True)
def gru(x, w_t, r_zr_t, r_h_t, w_bias, r_bias, seq_lens, h0, reverse, clip, acts, alphas, betas,
        linear_before_reset, exact, y, y_h):
    """GRU over every direction (reversed when d == 1 or ``reverse``). Gates in ONNX order z, r, h;
    per direction ``r_zr_t`` is the (hidden, 2 * hidden) recurrence of z and r, ``r_h_t`` the
    (hidden, hidden) one of the candidate, ``w_bias``/``r_bias`` are Wb and Rb (3 * hidden).
    Pre-activations are gathered gate-major as in ``lstm``: z and r of every batch entry, then the
    candidate."""
    seq, batch, width = x.shape
    hidden = r_h_t.shape[1]
    dtype = x.dtype
    block = batch * hidden
    gate_segments = np.array([[0, 2 * block, 0, 1]], np.int64)
    candidate_segments = np.array([[2 * block, block, 1, 1]], np.int64)
    hzr = np.empty((batch, 2 * hidden), dtype)
    hh = np.empty((batch, hidden), dtype)
    reset_h = np.empty((batch, hidden), dtype)
    gates = np.empty(3 * block, dtype)
    rows = np.empty(batch, np.int64)
    hzr3 = hzr.reshape((batch, 2, hidden))
    gates3 = gates.reshape((3, batch, hidden))
    gate_z, gate_r, cand = gates3[0], gates3[1], gates3[2]
    for d in range(w_t.shape[0]):
        backwards = reverse or d == 1
        xw = np.dot(x.reshape((seq * batch, width)), w_t[d]).reshape((seq * batch, 3, hidden))
        h = h0[d].copy()
        wb = w_bias[d].reshape((3, hidden))
        rb = r_bias[d].reshape((3, hidden))
        for step in range(seq):
            recurrent_product(h, r_zr_t[d], hzr)
            for b in range(batch):
                length = seq_lens[b]
                rows[b] = _time_index(step, length, backwards) if step < length else 0
                xrow = xw[rows[b] * batch + b]
                for g in range(2):
                    for j in range(hidden):
                        gates3[g, b, j] = xrow[g, j] + hzr3[b, g, j] + wb[g, j] + rb[g, j]
            _activate_segments(gates, gate_segments, acts[d], alphas[d], betas[d], clip, exact)
            if not linear_before_reset:
                for b in range(batch):
                    for j in range(hidden):
                        reset_h[b, j] = gate_r[b, j] * h[b, j]
            # The candidate's recurrence multiplies the reset state, or with linear_before_reset the
            # plain state, the reset gate then scaling the product.
            recurrent_product(h if linear_before_reset else reset_h, r_h_t[d], hh)
            for b in range(batch):
                xrow = xw[rows[b] * batch + b]
                if linear_before_reset:
                    for j in range(hidden):
                        cand[b, j] = xrow[2, j] + wb[2, j] + gate_r[b, j] * (hh[b, j] + rb[2, j])
                else:
                    for j in range(hidden):
                        cand[b, j] = xrow[2, j] + wb[2, j] + hh[b, j] + rb[2, j]
            _activate_segments(gates, candidate_segments, acts[d], alphas[d], betas[d], clip, exact)
            for b in range(batch):
                if step < seq_lens[b]:
                    t = rows[b]
                    for j in range(hidden):
                        z = gate_z[b, j]
                        h_new = (1 - z) * cand[b, j] + z * h[b, j]
                        h[b, j] = h_new
                        y[t, d, b, j] = h_new
        _store_state(y_h, d, h)


@njit(cache=True)
def rnn(x, w_t, r_t, bias, seq_lens, h0, reverse, clip, acts, alphas, betas, exact, y, y_h):
    """Plain RNN over every direction: h = f(x W^T + h R^T + Wb + Rb); ``bias`` is Wb + Rb."""
    seq, batch, width = x.shape
    hidden = r_t.shape[1]
    segments = np.array([[0, batch * hidden, 0, 1]], np.int64)
    hr = np.empty((batch, hidden), x.dtype)
    pre = np.empty(batch * hidden, x.dtype)
    pre2 = pre.reshape((batch, hidden))
    rows = np.empty(batch, np.int64)
    for d in range(w_t.shape[0]):
        backwards = reverse or d == 1
        xw = np.dot(x.reshape((seq * batch, width)), w_t[d])
        h = h0[d].copy()
        b_sum = bias[d]
        for step in range(seq):
            recurrent_product(h, r_t[d], hr)
            for b in range(batch):
                length = seq_lens[b]
                rows[b] = _time_index(step, length, backwards) if step < length else 0
                xrow = xw[rows[b] * batch + b]
                for j in range(hidden):
                    pre2[b, j] = xrow[j] + hr[b, j] + b_sum[j]
            _activate_segments(pre, segments, acts[d], alphas[d], betas[d], clip, exact)
            for b in range(batch):
                if step < seq_lens[b]:
                    t = rows[b]
                    for j in range(hidden):
                        h[b, j] = pre2[b, j]
                        y[t, d, b, j] = pre2[b, j]
        _store_state(y_h, d, h)
