"""Transformer ops: LayerNormalization, RMSNormalization, Attention, RotaryEmbedding and Dropout, and the
com.microsoft SkipLayerNormalization and MultiHeadAttention that the planner's transformer fusions
(:mod:`qrt.fusion.transformer`) emit, as onnxruntime's optimizer does.

The op classes turn ONNX shapes into the kernels' canonical layouts (see
:mod:`qrt.kernels.cpu.transformer`); float16/bfloat16 tensors are computed in float32 and rounded
once at the end.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper as onnx_helper

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import transformer as k
from ..kernels.cpu.softmax import rounding_for
from ..kernels.cpu.threads import num_threads, threads_for
from ..registry import register
from .base import Op, ShapeCache

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def _work_dtype(dtype, op_type):
    dtype = np.dtype(dtype)
    if dtype == _FLOAT64:
        return _FLOAT64
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return _FLOAT32
    raise InvalidArgument(f"{op_type} takes floating-point tensors, got {dtype}")


def _as(x, dtype):
    return np.ascontiguousarray(x, dtype=dtype)


def _axis(axis, rank, op_type):
    if not -rank <= axis < rank:
        raise InvalidArgument(f"{op_type} axis {axis} is out of range for an input of rank {rank}")
    return axis + rank if axis < 0 else axis


def _onnx_dtype(code, what):
    try:
        return np.dtype(onnx_helper.tensor_dtype_to_np_dtype(int(code)))
    except Exception:
        raise InvalidModel(f"{what} {code} is not an ONNX tensor type") from None


# ---------------------------------------------------------------- normalization

def _param_rows(param, shape, axis, work, name, op_type):
    """``param`` broadcast unidirectionally to ``shape``, as a (1 | rows, n) array for the kernel."""
    rows = math.prod(shape[:axis])
    n = math.prod(shape[axis:])
    try:
        if param.ndim <= len(shape) - axis:
            return _as(np.broadcast_to(param, shape[axis:]), work).reshape(1, n)
        return _as(np.broadcast_to(param, shape), work).reshape(rows, n)
    except ValueError:
        raise InvalidArgument(f"{op_type} {name} of shape {param.shape} does not broadcast to the input "
                              f"shape {shape}") from None


def _normalize(op_type, x, scale, bias, axis, epsilon, rms, layouts=None):
    """Normalize ``x`` over the axes from ``axis`` on; ``layouts`` (a :class:`ShapeCache`, given when
    scale and bias are the session's constants) keeps the shape work and the prepared parameters
    per input shape and dtype."""
    key = (x.shape, x.dtype)
    layout = layouts.get(key) if layouts is not None else None
    if layout is None:
        layout = _normalize_layout(op_type, x.shape, x.dtype, scale, bias, axis, epsilon)
        if layouts is not None:
            layouts.put(key, layout)
    work, rows, n, scale2, bias2, eps, stat_shape = layout
    has_bias = bias is not None
    x2 = _as(x, work).reshape(rows, n)
    y = np.empty((rows, n), dtype=work)
    mean = np.empty(rows, dtype=work)
    inv_std = np.empty(rows, dtype=work)
    if n:
        kernel = k.normalize_rows_parallel if threads_for(x.size) > 1 and rows > 1 else k.normalize_rows
        kernel(x2, scale2, bias2, has_bias, eps, rms, y, mean, inv_std)
    else:
        mean[:] = np.nan
        inv_std[:] = np.nan
    return y.reshape(x.shape), mean.reshape(stat_shape), inv_std.reshape(stat_shape)


def _normalize_layout(op_type, shape, dtype, scale, bias, axis, epsilon):
    axis = _axis(axis, len(shape), op_type)
    work = _work_dtype(dtype, op_type)
    scale2 = _param_rows(scale, shape, axis, work, "Scale", op_type)
    bias2 = _param_rows(bias, shape, axis, work, "B", op_type) if bias is not None else np.zeros((1, 1), work)
    stat_shape = shape[:axis] + (1,) * (len(shape) - axis)
    return (work, math.prod(shape[:axis]), math.prod(shape[axis:]), scale2, bias2, work.type(epsilon),
            stat_shape)


class _ConstantParams:
    """Normalizations whose scale and bias are constants bind their layout once per input shape."""

    _params = (None, None)

    def prepare(self, constants):
        self._params = (constants[1], constants[2] if len(constants) > 2 else None)
        self._layouts = ShapeCache()

    def _layouts_for(self, scale, bias):
        constant = scale is not None and scale is self._params[0] and bias is self._params[1]
        return self._layouts if constant else None


@register("LayerNormalization", 17)
class LayerNormalization(_ConstantParams, Op):
    def __init__(self, axis=-1, epsilon=1e-5, stash_type=1):
        self.axis = int(axis)
        self.epsilon = float(epsilon)
        self.stash_dtype = _onnx_dtype(stash_type, "LayerNormalization stash_type")

    def run(self, x, scale, b=None):
        y, mean, inv_std = _normalize(self.op_type, x, scale, b, self.axis, self.epsilon, rms=False,
                                      layouts=self._layouts_for(scale, b))
        y = y.astype(x.dtype, copy=False)
        if self.n_outputs <= 1:
            return y
        return y, mean.astype(self.stash_dtype, copy=False), inv_std.astype(self.stash_dtype, copy=False)


@register("LayerNormalization", 1)
class LayerNormalization1(LayerNormalization):
    """Before opset 17: onnxruntime's contrib op in the ai.onnx domain (same attributes), which its
    optimizer and qrt's (:mod:`qrt.fusion.transformer`) emit for decomposed layer norms."""


@register("RMSNormalization", 23)
class RMSNormalization(_ConstantParams, Op):
    def __init__(self, axis=-1, epsilon=1e-5, stash_type=1):
        self.axis = int(axis)
        self.epsilon = float(epsilon)
        _onnx_dtype(stash_type, "RMSNormalization stash_type")

    def run(self, x, scale):
        y, _, _ = _normalize(self.op_type, x, scale, None, self.axis, self.epsilon, rms=True,
                             layouts=self._layouts_for(scale, None))
        return y.astype(scale.dtype, copy=False)


@register("SimplifiedLayerNormalization", 1)
class SimplifiedLayerNormalization(RMSNormalization):
    """onnxruntime's contrib RMS normalization in the ai.onnx domain, which its optimizer and qrt's
    (:mod:`qrt.fusion.transformer`) emit for a written-out RMSNorm; outputs Y and optionally 1/rms."""

    def run(self, x, scale):
        y, _, inv_std = _normalize(self.op_type, x, scale, None, self.axis, self.epsilon, rms=True,
                                   layouts=self._layouts_for(scale, None))
        y = y.astype(x.dtype, copy=False)
        return y if self.n_outputs <= 1 else (y, inv_std.astype(np.float32, copy=False))


@register("SkipLayerNormalization", 1, domain="com.microsoft")
class SkipLayerNormalization(Op):
    """com.microsoft SkipLayerNormalization: LayerNormalization(input + skip (+ bias)) over the last axis.

    Outputs: output, mean, inv_std_var (shape (..., 1)) and input_skip_bias_sum, as onnxruntime's.
    """

    def __init__(self, epsilon=1e-12):
        self.epsilon = float(epsilon)

    def run(self, x, skip, gamma, beta=None, bias=None):
        if x.dtype != _FLOAT32:
            raise InvalidArgument(f"SkipLayerNormalization takes float32 input, got {x.dtype}")
        if x.ndim < 1:
            raise InvalidArgument("SkipLayerNormalization input must have rank >= 1")
        n = x.shape[-1]
        try:
            skip_full = np.broadcast_to(skip, x.shape)
        except ValueError:
            raise InvalidArgument(f"SkipLayerNormalization skip of shape {skip.shape} does not match input "
                                  f"{x.shape}") from None
        for name, param in (("gamma", gamma), ("beta", beta), ("bias", bias)):
            if param is not None and param.size != n:
                raise InvalidArgument(f"SkipLayerNormalization {name} of shape {param.shape} does not match "
                                      f"the hidden size {n}")
        rows = math.prod(x.shape[:-1])
        x2 = _as(x, _FLOAT32).reshape(rows, n)
        skip2 = _as(skip_full, _FLOAT32).reshape(rows, n)
        flat = [_as(p, _FLOAT32).reshape(-1) if p is not None else np.zeros(1, _FLOAT32)
                for p in (gamma, beta, bias)]
        y = np.empty((rows, n), _FLOAT32)
        total = np.empty((rows, n), _FLOAT32) if self.n_outputs >= 4 else y
        mean = np.empty(rows, _FLOAT32)
        inv_std = np.empty(rows, _FLOAT32)
        if x.size:
            kernel = k.skip_normalize_rows_parallel if threads_for(x.size) > 1 and rows > 1 \
                else k.skip_normalize_rows
            kernel(x2, skip2, flat[2], bias is not None, flat[0], flat[1], beta is not None,
                   np.float32(self.epsilon), total, y, mean, inv_std)
        stat_shape = x.shape[:-1] + (1,)
        results = (y.reshape(x.shape), mean.reshape(stat_shape), inv_std.reshape(stat_shape),
                   total.reshape(x.shape))
        return results[0] if self.n_outputs <= 1 else results[:self.n_outputs]


# ---------------------------------------------------------------- attention

def _heads_first(x, heads, name):
    """(B, S, H * D) -> contiguous (B, H, S, D)."""
    batch, seq, hidden = x.shape
    if heads <= 0 or hidden % heads:
        raise InvalidArgument(f"Attention {name} hidden size {hidden} is not a multiple of {heads} heads")
    return x.reshape(batch, seq, heads, hidden // heads).transpose(0, 2, 1, 3)


def _mask_4d(mask, target, what="attn_mask"):
    """The mask as a 4-D array whose axes are 1 or the target's (last axis: at most the key count)."""
    if mask.ndim > 4 or mask.ndim == 0:
        raise InvalidArgument(f"Attention {what} must have rank 1 to 4, got shape {mask.shape}")
    shaped = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    for axis in range(3):
        if shaped.shape[axis] not in (1, target[axis]):
            raise InvalidArgument(f"Attention {what} of shape {mask.shape} does not broadcast to {tuple(target)}")
    if shaped.shape[3] > target[3]:
        raise InvalidArgument(f"Attention {what} of shape {mask.shape} covers more than the "
                              f"{target[3]} keys")
    return shaped


class _Attention(Op):
    """Attention-23: Q/K/V (3-D with head counts, or 4-D), mask, past key/value, softcap, GQA."""

    has_window = False

    def __init__(self, is_causal=0, kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0,
                 scale=None, softcap=0.0, softmax_precision=None, left_window_size=-1, right_window_size=-1):
        self.is_causal = bool(is_causal)
        self.kv_num_heads = None if kv_num_heads is None else int(kv_num_heads)
        self.q_num_heads = None if q_num_heads is None else int(q_num_heads)
        self.qk_mode = int(qk_matmul_output_mode)
        if self.qk_mode not in (0, 1, 2, 3):
            raise InvalidModel(f"Attention qk_matmul_output_mode must be 0..3, got {self.qk_mode}")
        self.scale = None if scale is None else float(scale)
        self.softcap = float(softcap)
        self.softmax_dtype = None if softmax_precision is None else \
            _onnx_dtype(softmax_precision, "Attention softmax_precision")
        self.left_window = int(left_window_size)
        self.right_window = int(right_window_size)
        if self.left_window < -1 or self.right_window < -1:
            raise InvalidModel("Attention window sizes must be -1 or nonnegative")

    def run(self, q, k_in, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
        if q.ndim != k_in.ndim or q.ndim != v.ndim or q.ndim not in (3, 4):
            raise InvalidArgument(f"Attention Q, K, V must all be 3-D or all 4-D, got {q.shape}, {k_in.shape}, "
                                  f"{v.shape}")
        if (past_key is None) != (past_value is None):
            raise InvalidArgument("Attention past_key and past_value must be given together")
        if nonpad_kv_seqlen is not None and past_key is not None:
            raise InvalidArgument("Attention nonpad_kv_seqlen cannot be combined with past_key/past_value")
        three_d = q.ndim == 3
        if three_d:
            if self.q_num_heads is None or self.kv_num_heads is None:
                raise InvalidArgument("Attention with 3-D inputs needs the q_num_heads and kv_num_heads attributes")
            q4 = _heads_first(q, self.q_num_heads, "Q")
            k4 = _heads_first(k_in, self.kv_num_heads, "K")
            v4 = _heads_first(v, self.kv_num_heads, "V")
        else:
            if self.has_window and (self.q_num_heads is not None or self.kv_num_heads is not None):
                raise InvalidModel("Attention q_num_heads and kv_num_heads apply to 3-D inputs only")
            q4, k4, v4 = q, k_in, v
        batch, q_heads, q_len, depth = q4.shape
        kv_heads = k4.shape[1]
        if k4.shape[0] != batch or v4.shape[0] != batch or v4.shape[1] != kv_heads or k4.shape[2] != v4.shape[2]:
            raise InvalidArgument(f"Attention K {k_in.shape} and V {v.shape} do not match Q {q.shape}")
        if k4.shape[3] != depth:
            raise InvalidArgument(f"Attention Q head size {depth} differs from K head size {k4.shape[3]}")
        if kv_heads == 0 or q_heads % kv_heads:
            raise InvalidArgument(f"Attention needs q_num_heads ({q_heads}) to be a multiple of kv_num_heads "
                                  f"({kv_heads})")

        if past_key is not None:
            if past_key.ndim != 4 or past_value.ndim != 4:
                raise InvalidArgument("Attention past_key and past_value must be 4-D")
            present_key = np.concatenate((past_key, k4), axis=2)
            present_value = np.concatenate((past_value, v4), axis=2)
            past_len = past_key.shape[2]
        else:
            present_key, present_value, past_len = k4, v4, 0
        total = present_key.shape[2]

        softmax_in_double = self.softmax_dtype is not None and self.softmax_dtype == _FLOAT64
        work = _FLOAT64 if softmax_in_double else _work_dtype(q.dtype, "Attention")
        if nonpad_kv_seqlen is not None:
            valid = np.ascontiguousarray(nonpad_kv_seqlen, dtype=np.int64).reshape(-1)
            if valid.shape[0] != batch:
                raise InvalidArgument(f"Attention nonpad_kv_seqlen has {valid.shape[0]} entries for batch {batch}")
            offsets = valid - q_len
        else:
            valid = np.full(batch, total, dtype=np.int64)
            offsets = np.full(batch, past_len, dtype=np.int64)

        target = (batch, q_heads, q_len, total)
        bool_mask = np.ones((1, 1, 1, 1), dtype=np.bool_)
        float_mask = np.zeros((1, 1, 1, 1), dtype=work)
        mask_kind = k.MASK_NONE
        if attn_mask is not None:
            shaped = _mask_4d(attn_mask, target)
            if shaped.dtype == np.bool_:
                bool_mask, mask_kind = np.ascontiguousarray(shaped), k.MASK_BOOL
            else:
                float_mask, mask_kind = _as(shaped, work), k.MASK_FLOAT

        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(depth)
        # The spec scales Q and K by sqrt(scale); scalars take the input type, as in the reference.
        sqrt_scale = work.type(np.asarray(math.sqrt(scale)).astype(q.dtype))
        softcap = work.type(np.asarray(self.softcap).astype(q.dtype))
        rounding = rounding_for(q.dtype)
        softmax_rounding = rounding if self.softmax_dtype is None else rounding_for(self.softmax_dtype)
        want_qk = self.n_outputs >= 4
        qk_out = np.empty(target, dtype=work) if want_qk else np.empty((1, 1, 1, 1), dtype=work)
        y = np.empty((batch, q_heads, q_len, v4.shape[3]), dtype=work)
        if y.size or want_qk:
            k.attention(_as(q4, work), _as(present_key, work), _as(present_value, work), sqrt_scale, softcap,
                        mask_kind, bool_mask, float_mask, self.is_causal, offsets, self.left_window,
                        self.right_window, valid, self.qk_mode if want_qk else -1, qk_out, y, rounding,
                        softmax_rounding, 2 * num_threads())
        if three_d:
            y = y.transpose(0, 2, 1, 3).reshape(batch, q_len, q_heads * v4.shape[3])
        results = [y.astype(q.dtype)]
        if self.n_outputs >= 2:
            results.append(np.ascontiguousarray(present_key))
        if self.n_outputs >= 3:
            results.append(np.ascontiguousarray(present_value))
        if want_qk:
            results.append(qk_out.astype(q.dtype))
        return results[0] if len(results) == 1 else tuple(results)


@register("Attention", 23)
class Attention(_Attention):
    def run(self, q, k_in, v, attn_mask=None, past_key=None, past_value=None):
        return super().run(q, k_in, v, attn_mask, past_key, past_value)


@register("Attention", 24)
class Attention24(_Attention):
    """Adds the ``nonpad_kv_seqlen`` input (an external, padded KV cache)."""


@register("Attention", 25)
class Attention25(_Attention):
    """Adds ``left_window_size`` / ``right_window_size`` (sliding-window attention)."""

    has_window = True


@register("MultiHeadAttention", 1, domain="com.microsoft")
class MultiHeadAttention(Op):
    """com.microsoft MultiHeadAttention with 3-D query/key/value (B, S, heads * D) and an additive
    ``attention_bias`` broadcastable to (B, heads, S, L); runs the fused attention kernel."""

    def __init__(self, num_heads, mask_filter_value=-10000.0, scale=None, unidirectional=0):
        self.num_heads = int(num_heads)
        self.inner = _Attention(is_causal=unidirectional, q_num_heads=self.num_heads,
                                kv_num_heads=self.num_heads, scale=scale)
        self.inner.n_outputs = 1

    def run(self, query, key, value, bias=None, key_padding_mask=None, attention_bias=None, past_key=None,
            past_value=None, *unused):
        given = [name for name, v in (("bias", bias), ("key_padding_mask", key_padding_mask),
                                      ("past_key", past_key), ("past_value", past_value)) if v is not None]
        if given or any(v is not None for v in unused):
            raise InvalidArgument(f"MultiHeadAttention inputs {given or 'past the eighth'} are not supported by qrt")
        if key is None or value is None or query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
            raise InvalidArgument("qrt's MultiHeadAttention takes 3-D query, key and value")
        return self.inner.run(query, key, value, attn_mask=attention_bias)


# ---------------------------------------------------------------- rotary embedding

@register("RotaryEmbedding", 23)
class RotaryEmbedding(Op):
    def __init__(self, interleaved=0, num_heads=0, rotary_embedding_dim=0):
        self.interleaved = bool(interleaved)
        self.num_heads = int(num_heads)
        self.rotary_dim = int(rotary_embedding_dim)

    def run(self, x, cos_cache, sin_cache, position_ids=None):
        if x.ndim == 4:
            x4 = x
        elif x.ndim == 3:
            if self.num_heads <= 0:
                raise InvalidArgument("RotaryEmbedding with a 3-D input needs the num_heads attribute")
            x4 = _heads_first(x, self.num_heads, "input")
        else:
            raise InvalidArgument(f"RotaryEmbedding input must be 3-D or 4-D, got shape {x.shape}")
        batch, heads, seq, depth = x4.shape
        rotary_dim = self.rotary_dim or depth
        if rotary_dim > depth or rotary_dim % 2:
            raise InvalidArgument(f"RotaryEmbedding rotary_embedding_dim {rotary_dim} must be even and at most "
                                  f"the head size {depth}")
        half = rotary_dim // 2
        if position_ids is not None:
            if cos_cache.ndim != 2 or sin_cache.ndim != 2:
                raise InvalidArgument("RotaryEmbedding caches must be 2-D when position_ids is given")
            ids = np.asarray(position_ids, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= cos_cache.shape[0] or ids.max() >= sin_cache.shape[0]):
                raise InvalidArgument(f"RotaryEmbedding position_ids range [{ids.min()}, {ids.max()}] exceeds the "
                                      f"cache of {cos_cache.shape[0]} positions")
            cos, sin = np.take(cos_cache, ids, axis=0), np.take(sin_cache, ids, axis=0)
        else:
            cos, sin = cos_cache, sin_cache
        for name, cache in (("cos_cache", cos), ("sin_cache", sin)):
            if cache.ndim != 3 or cache.shape[-1] != half:
                raise InvalidArgument(f"RotaryEmbedding {name} gives shape {cache.shape}; expected "
                                      f"(batch, sequence, {half})")
        work = _work_dtype(x.dtype, "RotaryEmbedding")
        try:
            cos = _as(np.broadcast_to(cos, (batch, seq, half)), work)
            sin = _as(np.broadcast_to(sin, (batch, seq, half)), work)
        except ValueError:
            raise InvalidArgument(f"RotaryEmbedding caches of shape {cos.shape} do not match batch {batch}, "
                                  f"sequence {seq}") from None
        out = np.empty((batch, heads, seq, depth), dtype=work)
        k.rotary(_as(x4, work), cos, sin, rotary_dim, self.interleaved, out)
        if x.ndim == 3:
            out = out.transpose(0, 2, 1, 3).reshape(x.shape)
        return out.astype(x.dtype)


@register("RotaryEmbedding", 1, domain="com.microsoft")
class MicrosoftRotaryEmbedding(Op):
    """com.microsoft RotaryEmbedding: ``position_ids`` (1,) is the first position of every sequence,
    (B, S) gives each token's; caches are (max positions, rotary_dim / 2)."""

    def __init__(self, interleaved=0, num_heads=0, rotary_embedding_dim=0, scale=1.0, is_packed_batching=0):
        if is_packed_batching or float(scale) != 1.0:
            raise InvalidModel("qrt's com.microsoft RotaryEmbedding supports neither packed batching nor a scale")
        self.interleaved, self.num_heads, self.rotary_dim = interleaved, int(num_heads), rotary_embedding_dim

    def run(self, x, position_ids, cos_cache, sin_cache):
        if x.ndim not in (3, 4) or cos_cache.ndim != 2:
            raise InvalidArgument(f"RotaryEmbedding takes a 3-D or 4-D input and 2-D caches, got {x.shape} and "
                                  f"{cos_cache.shape}")
        heads = self.num_heads
        if x.ndim == 3 and heads <= 0:
            # Without num_heads the head size is the rotary width, the caches' width doubled.
            heads = x.shape[2] // (2 * cos_cache.shape[1]) if cos_cache.shape[1] else 0
        inner = RotaryEmbedding(self.interleaved, heads, self.rotary_dim)
        batch, seq = x.shape[0], x.shape[-2] if x.ndim == 4 else x.shape[1]
        ids = np.asarray(position_ids, dtype=np.int64)
        if ids.shape == (1,):
            ids = np.broadcast_to(ids[0] + np.arange(seq, dtype=np.int64), (batch, seq))
        elif ids.shape != (batch, seq):
            raise InvalidArgument(f"RotaryEmbedding position_ids of shape {ids.shape} must be (1,) or "
                                  f"(batch {batch}, sequence {seq})")
        return inner.run(x, cos_cache, sin_cache, ids)


# ---------------------------------------------------------------- dropout

def _dropout_apply(x, ratio, seed, training, n_outputs, mask_dtype):
    """Inference: identity (mask all ones). Training: keep where uniform(0, 1) >= ratio, scale by 1/(1-ratio).

    The keep mask is drawn with numpy's ``RandomState(seed)`` so a seeded node reproduces the
    reference implementation's mask.
    """
    if not training or ratio == 0:
        y = x.copy()
        if n_outputs < 2:
            return y
        return y, np.ones(x.shape, dtype=mask_dtype)
    if not 0 <= ratio < 1:
        raise InvalidArgument(f"Dropout ratio must be in [0, 1), got {ratio}")
    keep = np.random.RandomState(seed).uniform(0.0, 1.0, x.shape) >= ratio
    work = _work_dtype(x.dtype, "Dropout")
    out = np.empty(x.size, dtype=work)
    k.dropout(_as(x, work).reshape(-1), keep.reshape(-1), work.type(1.0 / (1.0 - ratio)), out)
    y = out.reshape(x.shape).astype(x.dtype, copy=False)
    return y if n_outputs < 2 else (y, keep.astype(mask_dtype))


@register("Dropout", 7)
class Dropout(Op):
    """Opsets 7-9: inference-only; the optional mask has the data's type."""

    bool_mask = False

    def __init__(self, ratio=0.5):
        self.ratio = float(ratio)

    def run(self, x):
        return _dropout_apply(x, self.ratio, None, False, self.n_outputs, np.bool_ if self.bool_mask else x.dtype)


@register("Dropout", 10)
class Dropout10(Dropout):
    bool_mask = True


@register("Dropout", 12)
class Dropout12(Op):
    """Opset 12+: ratio and training_mode are inputs; training mode drops with the ``seed`` attribute."""

    def __init__(self, seed=None):
        self.seed = None if seed is None else int(seed)
        # An unseeded training-mode mask differs on every run, so it must not be folded at plan time.
        self.deterministic = self.seed is not None

    def run(self, x, ratio=None, training_mode=None):
        ratio_value = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        training = False if training_mode is None else bool(np.asarray(training_mode).reshape(-1)[0])
        return _dropout_apply(x, ratio_value, self.seed, training, self.n_outputs, np.bool_)
