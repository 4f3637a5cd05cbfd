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
clipping, otherwise gate pre-activations are clipped to [-clip, clip] before their activation.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

ACTIVATIONS = {
    "sigmoid": 0, "tanh": 1, "relu": 2, "affine": 3, "leakyrelu": 4, "thresholdedrelu": 5,
    "scaledtanh": 6, "hardsigmoid": 7, "elu": 8, "softsign": 9, "softplus": 10,
}


@njit(cache=True, inline="always")
def _activate(v, code, alpha, beta):
    if code == 0:
        if v >= 0:
            return 1 / (1 + math.exp(-v))
        e = math.exp(v)
        return e / (1 + e)
    if code == 1:
        return math.tanh(v)
    if code == 2:
        return v if v > 0 else v * 0
    if code == 3:
        return alpha * v + beta
    if code == 4:
        return v if v >= 0 else alpha * v
    if code == 5:
        return v if v > alpha else v * 0
    if code == 6:
        return alpha * math.tanh(beta * v)
    if code == 7:
        return min(max(alpha * v + beta, v * 0), v * 0 + 1)
    if code == 8:
        return v if v >= 0 else alpha * (math.exp(v) - 1)
    if code == 9:
        return v / (1 + abs(v))
    # softplus, written to stay finite for large v
    return max(v, v * 0) + math.log1p(math.exp(-abs(v)))


@njit(cache=True, inline="always")
def _clip(v, clip):
    if clip > 0:
        if v > clip:
            return v * 0 + clip
        if v < -clip:
            return v * 0 - clip
    return v


@njit(cache=True, inline="always")
def _time_index(step, length, reverse):
    return length - 1 - step if reverse else step


@njit(cache=True)
def lstm_direction(x, w_t, r_t, bias, peep, seq_lens, h0, c0, reverse, clip, acts, alphas, betas,
                   input_forget, y, y_h, y_c, d):
    """Gates in ONNX order i, o, f, c; ``bias`` is Wb + Rb (4 * hidden); ``peep`` is P (i, o, f)."""
    seq, batch, width = x.shape
    hidden = r_t.shape[0]
    dtype = x.dtype
    xw = np.dot(x.reshape((seq * batch, width)), w_t)
    h = h0.copy()
    c = c0.copy()
    hr = np.empty((batch, 4 * hidden), dtype)
    f_code, g_code, h_code = acts[0], acts[1], acts[2]
    f_alpha, g_alpha, h_alpha = alphas[0], alphas[1], alphas[2]
    f_beta, g_beta, h_beta = betas[0], betas[1], betas[2]
    for step in range(seq):
        np.dot(h, r_t, hr)
        for b in range(batch):
            length = seq_lens[b]
            if step >= length:
                continue
            t = _time_index(step, length, reverse)
            xrow = xw[t * batch + b]
            hrow = hr[b]
            for j in range(hidden):
                c_prev = c[b, j]
                pre_i = xrow[j] + hrow[j] + bias[j] + peep[j] * c_prev
                pre_o = xrow[hidden + j] + hrow[hidden + j] + bias[hidden + j]
                pre_f = xrow[2 * hidden + j] + hrow[2 * hidden + j] + bias[2 * hidden + j] \
                    + peep[2 * hidden + j] * c_prev
                pre_c = xrow[3 * hidden + j] + hrow[3 * hidden + j] + bias[3 * hidden + j]
                gate_i = _activate(_clip(pre_i, clip), f_code, f_alpha, f_beta)
                if input_forget:
                    gate_f = 1 - gate_i
                else:
                    gate_f = _activate(_clip(pre_f, clip), f_code, f_alpha, f_beta)
                cand = _activate(_clip(pre_c, clip), g_code, g_alpha, g_beta)
                c_new = gate_f * c_prev + gate_i * cand
                pre_o += peep[hidden + j] * c_new
                gate_o = _activate(_clip(pre_o, clip), f_code, f_alpha, f_beta)
                h_new = gate_o * _activate(c_new, h_code, h_alpha, h_beta)
                c[b, j] = c_new
                h[b, j] = h_new
                y[t, d, b, j] = h_new
    y_h[d] = h
    y_c[d] = c


@njit(cache=True)
def gru_direction(x, w_t, r_zr_t, r_h_t, w_bias, r_bias, seq_lens, h0, reverse, clip, acts, alphas, betas,
                  linear_before_reset, y, y_h, d):
    """Gates in ONNX order z, r, h; ``r_zr_t`` is the (hidden, 2 * hidden) recurrence of z and r,
    ``r_h_t`` the (hidden, hidden) one of the candidate; ``w_bias``/``r_bias`` are Wb and Rb."""
    seq, batch, width = x.shape
    hidden = r_h_t.shape[0]
    dtype = x.dtype
    xw = np.dot(x.reshape((seq * batch, width)), w_t)
    h = h0.copy()
    hzr = np.empty((batch, 2 * hidden), dtype)
    hh = np.empty((batch, hidden), dtype)
    reset_h = np.zeros((batch, hidden), dtype)
    gate_z = np.empty((batch, hidden), dtype)
    gate_r = np.empty((batch, hidden), dtype)
    f_code, g_code = acts[0], acts[1]
    f_alpha, g_alpha = alphas[0], alphas[1]
    f_beta, g_beta = betas[0], betas[1]
    for step in range(seq):
        np.dot(h, r_zr_t, hzr)
        for b in range(batch):
            length = seq_lens[b]
            if step >= length:
                continue
            xrow = xw[_time_index(step, length, reverse) * batch + b]
            for j in range(hidden):
                pre_z = xrow[j] + hzr[b, j] + w_bias[j] + r_bias[j]
                pre_r = xrow[hidden + j] + hzr[b, hidden + j] + w_bias[hidden + j] + r_bias[hidden + j]
                gate_z[b, j] = _activate(_clip(pre_z, clip), f_code, f_alpha, f_beta)
                r = _activate(_clip(pre_r, clip), f_code, f_alpha, f_beta)
                gate_r[b, j] = r
                reset_h[b, j] = r * h[b, j]
        # The candidate's recurrence multiplies either the reset state or, with
        # linear_before_reset, the plain state (the reset gate is applied after).
        np.dot(h if linear_before_reset else reset_h, r_h_t, hh)
        for b in range(batch):
            length = seq_lens[b]
            if step >= length:
                continue
            t = _time_index(step, length, reverse)
            xrow = xw[t * batch + b]
            for j in range(hidden):
                rec = hh[b, j] + r_bias[2 * hidden + j]
                if linear_before_reset:
                    rec *= gate_r[b, j]
                pre_h = xrow[2 * hidden + j] + w_bias[2 * hidden + j] + rec
                cand = _activate(_clip(pre_h, clip), g_code, g_alpha, g_beta)
                z = gate_z[b, j]
                h_new = (1 - z) * cand + z * h[b, j]
                h[b, j] = h_new
                y[t, d, b, j] = h_new
    y_h[d] = h


@njit(cache=True)
def rnn_direction(x, w_t, r_t, bias, seq_lens, h0, reverse, clip, act, alpha, beta, y, y_h, d):
    """Plain RNN: h = f(x W^T + h R^T + Wb + Rb); ``bias`` is Wb + Rb."""
    seq, batch, width = x.shape
    hidden = r_t.shape[0]
    xw = np.dot(x.reshape((seq * batch, width)), w_t)
    h = h0.copy()
    hr = np.empty((batch, hidden), x.dtype)
    for step in range(seq):
        np.dot(h, r_t, hr)
        for b in range(batch):
            length = seq_lens[b]
            if step >= length:
                continue
            t = _time_index(step, length, reverse)
            xrow = xw[t * batch + b]
            for j in range(hidden):
                h_new = _activate(_clip(xrow[j] + hr[b, j] + bias[j], clip), act, alpha, beta)
                h[b, j] = h_new
                y[t, d, b, j] = h_new
    y_h[d] = h
