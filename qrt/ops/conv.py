"""Convolutions: Conv and ConvTranspose over 1 to 3 spatial axes, grouped, strided, dilated, any auto_pad.

Inputs are reshaped to the canonical ``(N, C, D, H, W)`` layout (unit axes in front of the real
spatial ones) so one compiled kernel per dtype serves every rank. float32 and float64 run natively;
float16 and bfloat16 are computed in float32 and rounded back, as onnxruntime does.

The window arithmetic here (``window_geometry``, ``spatial_list``) is shared with pooling.
"""
import threading

import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import conv as k
from ..kernels.cpu import sgemm
from ..kernels.cpu.threads import call_with_threads, num_threads, threads_for
from ..registry import register
from .base import Op

AUTO_PAD_MODES = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
MAX_SPATIAL_AXES = 3


def check_auto_pad(auto_pad):
    if auto_pad not in AUTO_PAD_MODES:
        raise InvalidModel(f"auto_pad must be one of {', '.join(AUTO_PAD_MODES)}, got {auto_pad!r}")
    return auto_pad


def spatial_list(values, n_axes, default, name):
    """An attribute given per spatial axis, or ``default`` on every axis when absent."""
    if values is None:
        return [default] * n_axes
    values = [int(v) for v in values]
    if len(values) != n_axes:
        raise InvalidArgument(f"{name} has {len(values)} values for {n_axes} spatial axes: {values}")
    return values


def split_padding(total, auto_pad):
    """Begin/end padding for SAME_* auto_pad: the odd pixel goes at the end for SAME_UPPER, else at the start."""
    half = total // 2
    return (half, total - half) if auto_pad == "SAME_UPPER" else (total - half, half)


def window_geometry(in_sizes, kernel, strides, dilations, auto_pad, pads, ceil_mode=False):
    """Begin pads, end pads and output sizes of a sliding window (Conv and the pooling ops).

    Explicit pads use ``floor`` (or ``ceil`` with ceil_mode) of ``(in + pads - extent) / stride + 1``;
    with ceil_mode a last window that would start in the end padding is dropped. SAME_* gives
    ``ceil(in / stride)`` outputs; VALID gives the windows that fit without padding.
    """
    n_axes = len(in_sizes)
    if auto_pad == "NOTSET":
        if pads is None:
            pads = [0] * (2 * n_axes)
        pads = [int(p) for p in pads]
        if len(pads) != 2 * n_axes:
            raise InvalidArgument(f"pads has {len(pads)} values; {n_axes} spatial axes need {2 * n_axes}")
        begins, ends = pads[:n_axes], pads[n_axes:]
    else:
        begins, ends = [0] * n_axes, [0] * n_axes
    outs = []
    for i in range(n_axes):
        extent = (kernel[i] - 1) * dilations[i] + 1
        size = in_sizes[i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + extent - size, 0)
            begins[i], ends[i] = split_padding(total, auto_pad)
        elif auto_pad == "VALID":
            out = (size - extent) // strides[i] + 1
        else:
            span = size + begins[i] + ends[i] - extent
            if ceil_mode:
                out = -(-span // strides[i]) + 1
                if (out - 1) * strides[i] >= size + begins[i]:
                    out -= 1
            else:
                out = span // strides[i] + 1
        outs.append(out)
    return begins, ends, outs


def compute_dtype(x, op_type):
    """The float type a kernel computes in for input ``x``: float32/float64 as is, narrower floats in float32."""
    if x.dtype in (np.float32, np.float64):
        return x.dtype
    if x.dtype.kind == "f" or x.dtype.name == "bfloat16":
        return np.dtype(np.float32)
    raise InvalidArgument(f"{op_type} takes floating-point tensors, got {x.dtype}")


def canonical(a, dtype):
    """``(N, C, *spatial)`` -> contiguous ``(N, C, D, H, W)`` of ``dtype`` with unit axes in front."""
    lead = (1,) * (MAX_SPATIAL_AXES - (a.ndim - 2))
    return np.ascontiguousarray(a.reshape(a.shape[:2] + lead + a.shape[2:]), dtype=dtype)


def pack_geometry(kernel, strides, dilations, begins):
    """The int64 ``geom`` vector the kernels take, padded to three axes."""
    lead = MAX_SPATIAL_AXES - len(kernel)
    return np.array([1] * lead + list(kernel) + [1] * lead + list(strides) + [1] * lead + list(dilations)
                    + [0] * lead + list(begins), dtype=np.int64)


_scratch = threading.local()


def _scratch_buffer(size, dtype):
    """A flat scratch array of at least ``size`` elements, one per thread and dtype, shared by every
    convolution node that thread runs (nodes run one at a time, so sharing is safe and memory stays
    at the largest single column matrix).

    Reusing it matters: a column matrix is megabytes, and a fresh one per call pays its page faults
    every time (2-3x the GEMM's own time on a 3x3 ResNet layer)."""
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buffer = buffers.get(dtype)
    if buffer is None or buffer.size < size:
        buffer = buffers[dtype] = np.empty(size, dtype=dtype)
    return buffer


def _check_ranks(op_type, x, w):
    if x.ndim < 3 or x.ndim - 2 > MAX_SPATIAL_AXES:
        raise InvalidArgument(f"{op_type} input X has shape {x.shape}; qrt supports (N, C, spatial...) with "
                              f"1 to {MAX_SPATIAL_AXES} spatial axes")
    if w.ndim != x.ndim:
        raise InvalidArgument(f"{op_type} weight W has shape {w.shape}, rank {w.ndim}; "
                              f"input X {x.shape} needs rank {x.ndim}")


def _bias(b, n_out, dtype, op_type):
    if b is None:
        return np.empty(0, dtype=dtype)
    if b.shape != (n_out,):
        raise InvalidArgument(f"{op_type} bias B has shape {b.shape}; expected ({n_out},)")
    return np.ascontiguousarray(b, dtype=dtype)


class _Window(Op):
    """Attribute handling common to Conv and ConvTranspose."""

    def __init__(self, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
        self.auto_pad = check_auto_pad(auto_pad)
        self.dilations = dilations
        self.group = int(group)
        if self.group < 1:
            raise InvalidModel(f"group must be >= 1, got {group}")
        self.kernel_shape = None if kernel_shape is None else [int(v) for v in kernel_shape]
        self.pads = pads
        self.strides = strides
        for name, values in (("dilations", dilations), ("strides", strides)):
            if values is not None and any(int(v) < 1 for v in values):
                raise InvalidModel(f"{name} must be >= 1, got {list(values)}")
        if pads is not None and any(int(v) < 0 for v in pads):
            raise InvalidModel(f"pads must be >= 0, got {list(pads)}")

    def _kernel(self, w):
        kernel = list(w.shape[2:])
        if self.kernel_shape is not None and self.kernel_shape != kernel:
            raise InvalidArgument(f"kernel_shape {self.kernel_shape} does not match weight shape {w.shape}")
        return kernel


# Column-matrix tiles of about this many output positions: big enough for an efficient GEMM, small
# enough that a tile's im2col is still in cache when BLAS packs it and that planes split into tasks.
TILE_COLUMNS = 512
MAX_CACHED_PLANS = 32


def conv_tiling(n_images, group, m_group, plane, pointwise, workers):
    """``(tile_p, block_m, workers)`` for :func:`qrt.kernels.cpu.conv.conv_gemm`.

    Tasks are (image, group, column tile, channel block), split in equal runs over the workers, so
    the task count is made a multiple of the workers where possible: column tiles first; then, when
    images, groups and tiles are too few (late layers with 7x7 planes, batch 1), output-channel
    blocks. A pointwise conv keeps the whole plane as one tile so BLAS reads the image in place.
    """
    tiles = 1
    if not pointwise:
        tiles = -(-plane // TILE_COLUMNS)
        if tiles > 1 or plane >= 64 * workers:
            tiles = -(-tiles // workers) * workers
    tile_p = -(-plane // tiles)
    if tile_p >= 256:     # whole vectors per tile row, at most 6% imbalance; smaller tiles split evenly
        tile_p = min(plane, -(-tile_p // 16) * 16)
    tiles = -(-plane // tile_p)
    base = n_images * group * tiles
    blocks = 1
    while (base * blocks) % workers and base * blocks < 4 * workers and blocks < m_group:
        blocks += 1
    block_m = -(-m_group // blocks)
    tasks = base * -(-m_group // block_m)
    return tile_p, block_m, min(workers, tasks)


# Depthwise convs run channels-last (one vector op over all channels per tap) when the output plane
# is at most this size and there are at least this many channels. Measured against the NCHW kernel
# (3x3, one thread): 544 x 7x7 4.5x faster, 64 x 56x56 stride 2 (28x28 out) 1.4x faster; from 32x32
# outputs on, the two transposes cost more than they save (16 x 112x112 2x slower).
CHANNELS_LAST_MAX_PLANE = 28 * 28
CHANNELS_LAST_MIN_CHANNELS = 16
# Output planes smaller than this stay on OpenBLAS: the micro-kernel computes strips of sgemm.NR
# (32) columns, so a 1x1 plane (a squeeze-excitation block, a classifier head) wasted 31/32 of its
# multiply-adds and took 2x OpenBLAS's time (512 -> 1280 channels: 277 us against 134 us).
MICRO_KERNEL_MIN_PLANE = 8


def _channels_last_pays(channels, out_plane):
    return out_plane <= CHANNELS_LAST_MAX_PLANE and channels >= CHANNELS_LAST_MIN_CHANNELS


def _uses_sgemm(dtype):
    """Whether a non-depthwise conv computed in ``dtype`` runs on the AVX-512 micro-kernel
    (:mod:`qrt.kernels.cpu.sgemm`) rather than im2col + OpenBLAS: float32 on CPUs with AVX-512,
    where it measured 0.7-1.1x OpenBLAS's time per conv shape (1.0-1.1x only at 16-32 output
    channels); elsewhere OpenBLAS's own kernel for the CPU stays."""
    return sgemm.ISA == "avx512" and dtype == np.float32


def _pack_rows(W, group):
    """A float32 conv weight (M, C/group, k...) packed per group for :func:`sgemm.conv_sgemm`."""
    w3 = np.ascontiguousarray(W.reshape(group, W.shape[0] // group, -1), dtype=np.float32)
    packed = np.empty((group, w3.shape[1] * w3.shape[2]), dtype=np.float32)
    sgemm.pack_rows(w3, packed)
    return packed


@register("Conv", 1)
class Conv(_Window):
    fused_activation = (0, 0.0, 0.0)     # (code, alpha, beta): set by FusedConv

    def __init__(self, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
        super().__init__(auto_pad, dilations, group, kernel_shape, pads, strides)
        # Geometry and tiling per (X shape, W shape, dtype, threads): a model runs few shapes, and
        # recomputing them cost more than a small conv's kernel. Entries are immutable tuples, so
        # concurrent runs at worst compute one twice.
        self._plans = {}
        self._packed = None     # (W shape, W packed for the micro-kernel), by prepare() for a constant weight

    def _plan(self, X, W):
        key = (X.shape, W.shape, X.dtype, num_threads())
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_CACHED_PLANS:     # free dims that change every run: don't grow forever
                self._plans.clear()
            plan = self._plans[key] = self._make_plan(X, W, key[3])
        return plan

    def _make_plan(self, X, W, threads):
        _check_ranks("Conv", X, W)
        n_axes = X.ndim - 2
        n_images, channels = X.shape[:2]
        n_out, c_group = W.shape[:2]
        group = self.group
        if c_group * group != channels or n_out % group:
            raise InvalidArgument(f"Conv with group={group}: input X {X.shape} and weight W {W.shape} disagree "
                                  f"(need C = W.shape[1] * group and M divisible by group)")
        kernel = self._kernel(W)
        strides = spatial_list(self.strides, n_axes, 1, "strides")
        dilations = spatial_list(self.dilations, n_axes, 1, "dilations")
        begins, ends, out_sizes = window_geometry(X.shape[2:], kernel, strides, dilations, self.auto_pad, self.pads)
        if any(o < 1 for o in out_sizes):
            raise InvalidArgument(f"Conv output would be empty: input {X.shape}, kernel {kernel}, strides "
                                  f"{strides}, dilations {dilations}, pads {self.pads}")
        geom = pack_geometry(kernel, strides, dilations, begins)
        out_shape = (n_images, n_out) + tuple(out_sizes)
        out5_shape = (n_images, n_out) + (1,) * (MAX_SPATIAL_AXES - n_axes) + tuple(out_sizes)
        taps, plane = int(np.prod(kernel)), int(np.prod(out_sizes))
        depthwise = None     # or which depthwise kernel runs it
        if c_group == 1 and group > 1:
            channels_last = n_out == channels and n_axes <= 2 and _channels_last_pays(channels, plane)
            depthwise = "channels_last" if channels_last else "planes"
        pointwise = taps == 1 and all(s == 1 for s in strides) and not any(begins) and not any(ends)
        micro_kernel = depthwise is None and plane >= MICRO_KERNEL_MIN_PLANE and _uses_sgemm(compute_dtype(X, "Conv"))
        if micro_kernel and not pointwise and n_axes <= 2:
            micro_kernel = "implicit"
            lead = [1] * (2 - n_axes)
            padded, wide = sgemm.implicit_scratch(channels, n_out, lead + kernel, lead + strides, lead + dilations,
                                                  lead + out_sizes)
            tiling = padded, -(-(n_out // group) // sgemm.MR) * sgemm.MR, 0
            scratch = padded + wide
        elif micro_kernel:
            # The micro-kernel reads a pointwise conv's image in place whatever the tiling, so column
            # tiles split the work as for any conv; channel blocks are whole micro-kernel blocks.
            tile_p, block_m, workers = conv_tiling(n_images, group, n_out // group, plane, False, threads)
            block_m = -(-block_m // sgemm.MR) * sgemm.MR
            tiling = tile_p, block_m, workers
            scratch = sgemm.scratch_size(c_group * taps, tile_p, pointwise)
        else:
            tiling = conv_tiling(n_images, group, n_out // group, plane, pointwise, threads)
            tile_p, block_m, workers = tiling
            scratch = (0 if pointwise else c_group * taps * tile_p) + (block_m * tile_p if tile_p < plane else 0)
        return out_shape, out5_shape, geom, depthwise, micro_kernel, tiling, scratch

    def prepare(self, constants):
        W = constants[1]
        if not isinstance(W, np.ndarray) or W.ndim < 3 or not W.size or W.shape[0] % self.group:
            return
        depthwise = W.shape[1] == 1 and self.group > 1     # runs on the depthwise kernels, unpacked
        if not depthwise and _uses_sgemm(compute_dtype(W, "Conv")):
            self._packed = (W.shape, _pack_rows(W, self.group))

    def _packed_weight(self, W):
        packed = self._packed
        if packed is not None and packed[0] == W.shape:
            return packed[1]
        return _pack_rows(W, self.group)     # a weight fed at run time

    def run(self, X, W, B=None):
        out_shape, out5_shape, geom, depthwise, micro_kernel, tiling, scratch = self._plan(X, W)
        dtype = compute_dtype(X, "Conv")
        if X.size == 0 or W.size == 0:
            return np.zeros(out_shape, dtype=X.dtype) if B is None else \
                np.broadcast_to(B.reshape((-1,) + (1,) * (X.ndim - 2)), out_shape).astype(X.dtype)
        group = self.group
        x5 = canonical(X, dtype)
        w5 = canonical(W, dtype)
        bias = _bias(B, out_shape[1], dtype, "Conv")
        out = np.empty(out5_shape, dtype=dtype)
        act, alpha, beta = self.fused_activation
        # Small convolutions on fewer threads: the float rule, one thread per WORK_PER_THREAD multiply-adds.
        threads = threads_for(out.size * w5[0].size)
        if depthwise == "channels_last":
            image = _scratch_buffer(X[0].size, dtype)
            call_with_threads(threads, k.conv_depthwise_channels_last, x5, w5, bias, geom, out, image, act, alpha, beta,
                              sgemm.ISA == "avx512")
        elif depthwise == "planes":
            call_with_threads(threads, k.conv_depthwise, x5, w5, bias, geom, out, act, alpha, beta)
        elif micro_kernel == "implicit":
            padded, block_m, _ = tiling
            buffer = _scratch_buffer(scratch, dtype)
            if not bias.size:
                bias = np.zeros(out_shape[1], dtype=dtype)
            call_with_threads(threads, sgemm.conv_implicit, x5, self._packed_weight(W), bias, geom, out,
                              buffer[:padded], buffer[padded:scratch], block_m, act, alpha, beta)
        elif micro_kernel:
            tile_p, block_m, workers = tiling
            buffers = _scratch_buffer(workers * scratch, dtype)[:workers * scratch].reshape(workers, scratch)
            if not bias.size:
                bias = np.zeros(out_shape[1], dtype=dtype)
            call_with_threads(threads, sgemm.conv_sgemm, x5, self._packed_weight(W), bias, geom, out, tile_p, block_m,
                              buffers, act, alpha, beta)
        else:
            tile_p, block_m, workers = tiling
            buffers = _scratch_buffer(workers * scratch, dtype)[:workers * scratch].reshape(workers, scratch)
            call_with_threads(threads, k.conv_gemm, x5, w5.reshape(group, out_shape[1] // group, -1), bias, geom, out,
                              tile_p, block_m, buffers, act, alpha, beta)
        return out.reshape(out_shape).astype(X.dtype, copy=False)


@register("ConvTranspose", 1)
class ConvTranspose(_Window):
    def __init__(self, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, output_padding=None,
                 output_shape=None, pads=None, strides=None):
        super().__init__(auto_pad, dilations, group, kernel_shape, pads, strides)
        self.output_padding = output_padding
        self.output_shape = None if output_shape is None else [int(v) for v in output_shape]
        self._packed = None     # the constant weight, regrouped once by prepare()

    def _geometry(self, in_sizes, kernel, strides, dilations):
        """Begin pads and output sizes, from output_shape, auto_pad or explicit pads, as the spec orders them."""
        n_axes = len(in_sizes)
        out_padding = spatial_list(self.output_padding, n_axes, 0, "output_padding")
        full = [strides[i] * (in_sizes[i] - 1) + out_padding[i] + (kernel[i] - 1) * dilations[i] + 1
                for i in range(n_axes)]
        if self.output_shape is not None:
            target = self.output_shape[-n_axes:] if len(self.output_shape) == n_axes + 2 else self.output_shape
            if len(target) != n_axes:
                raise InvalidArgument(f"output_shape {self.output_shape} does not fit {n_axes} spatial axes")
            mode = "SAME_UPPER" if self.auto_pad == "SAME_UPPER" else "SAME_LOWER"
            begins = [split_padding(full[i] - target[i], mode)[0] for i in range(n_axes)]
            return begins, list(target)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = [in_sizes[i] * strides[i] for i in range(n_axes)]
            begins = [split_padding(full[i] - target[i], self.auto_pad)[0] for i in range(n_axes)]
            return begins, target
        if self.auto_pad == "VALID":
            return [0] * n_axes, full
        pads = spatial_list(self.pads, 2 * n_axes, 0, "pads")
        return pads[:n_axes], [full[i] - pads[i] - pads[n_axes + i] for i in range(n_axes)]

    def prepare(self, constants):
        W = constants[1]
        if isinstance(W, np.ndarray) and W.ndim >= 3 and W.shape[0] % self.group == 0 and (
                W.dtype.kind == "f" or W.dtype.name == "bfloat16"):
            self._packed = self._regrouped_weight(W, compute_dtype(W, "ConvTranspose"))

    def _regrouped_weight(self, W, dtype):
        """The weight as ``(group, M/group * taps, C/group)`` for the per-group GEMM."""
        channels, m_group = W.shape[:2]
        c_group = channels // self.group
        taps = int(np.prod(W.shape[2:]))
        return np.ascontiguousarray(W.reshape(self.group, c_group, m_group * taps).transpose(0, 2, 1), dtype=dtype)

    def run(self, X, W, B=None):
        _check_ranks("ConvTranspose", X, W)
        n_axes = X.ndim - 2
        n_images, channels = X.shape[:2]
        group = self.group
        if W.shape[0] != channels or channels % group:
            raise InvalidArgument(f"ConvTranspose with group={group}: input X {X.shape} and weight W {W.shape} "
                                  f"disagree (need W.shape[0] = C, divisible by group)")
        n_out = W.shape[1] * group
        kernel = self._kernel(W)
        strides = spatial_list(self.strides, n_axes, 1, "strides")
        dilations = spatial_list(self.dilations, n_axes, 1, "dilations")
        begins, out_sizes = self._geometry(list(X.shape[2:]), kernel, strides, dilations)
        if any(o < 1 for o in out_sizes):
            raise InvalidArgument(f"ConvTranspose output would be empty: input {X.shape}, weight {W.shape}, "
                                  f"output sizes {out_sizes}")
        dtype = compute_dtype(X, "ConvTranspose")
        bias = _bias(B, n_out, dtype, "ConvTranspose")
        out_shape = (n_images, n_out) + tuple(out_sizes)
        out = np.empty((n_images, n_out) + (1,) * (MAX_SPATIAL_AXES - n_axes) + tuple(out_sizes), dtype=dtype)
        if X.size == 0 or W.size == 0:
            out[...] = bias.reshape((-1, 1, 1, 1)) if bias.size else 0
        else:
            geom = pack_geometry(kernel, strides, dilations, begins)
            cols = _scratch_buffer(n_out * int(np.prod(kernel)) * int(np.prod(X.shape[2:])), dtype)
            packed = self._packed
            if packed is None or packed.dtype != dtype:    # a weight fed at run time, or another X dtype
                packed = self._regrouped_weight(W, dtype)
            k.conv_transpose_gemm(canonical(X, dtype), packed, bias, geom, group, cols, out)
        return out.reshape(out_shape).astype(X.dtype, copy=False)
