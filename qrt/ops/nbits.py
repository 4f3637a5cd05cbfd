"""com.microsoft weight-only ops: ``MatMulNBits`` and ``GatherBlockQuantized`` (since_version 1).

Both follow onnxruntime's contrib-op definitions (checked against onnxruntime 1.32):

* ``MatMulNBits(A, B, scales, zero_points=None, g_idx=None, bias=None)``: ``Y = A @ W + bias`` with
  ``W[k, n] = (q[n, k] - zp[n, k // block_size]) * scale[n, k // block_size]``; ``B`` is uint8
  ``[N, k_blocks, block_size * bits / 8]``, codes packed lowest bits first; zero points are packed
  uint8 (``[N * ceil(k_blocks * bits / 8)]``) or float like A (``[N * k_blocks]``, HQQ), and default
  to ``2 ** (bits - 1)``. ``accuracy_level`` is the lowest precision allowed for A: at 4, A is
  quantized to int8 per block (``amax / 127``, round half to even, as onnxruntime's MLAS does, so
  the two runtimes agree to float rounding) where onnxruntime does it too (uint8 or no zero points,
  not 2-bit blocks of 16, blocks up to ``INT8_MAX_BLOCK``). On AVX-512 VNNI hosts every row count
  then runs the ``vpdpbusd`` kernel (0.55-0.8x the time of float panels at 8-128 rows); elsewhere
  products of fewer than ``PANEL_MIN_ROWS`` rows use the float-lane int8 kernel (same bits) and
  larger ones stay in float32, which that level allows.
* ``GatherBlockQuantized(data, indices, scales, zero_points=None)``: ``Gather`` over ``gather_axis``
  of ``(data - zp) * scale`` blocked along ``quantize_axis``; data is int4/uint4 (zero point
  default 0) or uint8 holding ``8 / bits`` codes a byte (zero point default ``2 ** (bits - 1)``).

Kernels: :mod:`qrt.kernels.cpu.nbits`. Constant weights are unpacked into the kernels' layout once,
in ``prepare``.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import nbits as kernels
from ..kernels.cpu.qgemm import ISA
from ..kernels.cpu.threads import num_threads
from ..registry import register
from .base import Op
from .quantized import _ConstantCache

MS = "com.microsoft"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))
# Rows from which a product dequantizes column panels instead of streaming the codes (measured, 1 thread,
# K=2048 N=5632 and K=768 N=3072: streaming 1.8-2.3x faster at 1 row, 1.1-1.5x at 4, panels 1.0-1.2x
# faster at 8, 1.2x at 16).
PANEL_MIN_ROWS = 8
# Widest block whose int8 products the streaming kernel sums exactly in float32 lanes (< 2 ** 24);
# wider blocks at accuracy_level=4 are computed in float32, which that level allows.
INT8_MAX_BLOCK = 512


def _float_param(x, name, error, count, dtype):
    x = np.asarray(x)
    if x.dtype != dtype:
        raise error(f"{name} must have A's type {dtype}, got {x.dtype}")
    if x.size != count:
        raise error(f"{name} must hold {count} values, got shape {list(x.shape)}")
    return x.astype(np.float32).reshape(-1)


@register("MatMulNBits", 1, domain=MS)
class MatMulNBits(Op):
    def __init__(self, K=None, N=None, bits=4, block_size=None, accuracy_level=0):
        if K is None or N is None or block_size is None:
            raise InvalidModel("MatMulNBits needs the K, N and block_size attributes")
        self.K, self.N, self.bits, self.block_size = int(K), int(N), int(bits), int(block_size)
        self.accuracy_level = int(accuracy_level)
        if self.bits not in (2, 4, 8):
            raise InvalidModel(f"MatMulNBits bits must be 2, 4 or 8, got {self.bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise InvalidModel(f"MatMulNBits block_size must be a power of 2 >= 16, got {self.block_size}")
        self.k_blocks = -(-self.K // self.block_size)
        self._weights = _ConstantCache()

    def _unpack(self, b, scales, zero_points, g_idx, dtype, error):
        """(codes, scale, zero * scale, VNNI codes, int8 activations?) tiled for the kernels
        (:func:`kernels.tile_weights`; codes None where only the VNNI layout is used), checked against the
        attributes."""
        where = f"MatMulNBits {self.node_name!r}"
        N, kb = self.N, self.k_blocks
        blob = self.block_size * self.bits // 8
        b = np.asarray(b)
        if b.dtype != np.uint8 or b.size != N * kb * blob:
            raise error(f"{where}: B must be uint8 [N={N}, k_blocks={kb}, {blob}], got {b.dtype} {list(b.shape)}")
        codes = np.ascontiguousarray(b.reshape(N, kb, blob))
        scale = _float_param(scales, f"{where}: scales", error, N * kb, dtype).reshape(N, kb)
        if zero_points is None:
            zero = np.full((N, kb), 2.0 ** (self.bits - 1), np.float32)
        else:
            zp = np.asarray(zero_points)
            if zp.dtype == np.uint8:
                per_row = -(-kb * self.bits // 8)
                if zp.size != N * per_row:
                    raise error(f"{where}: packed zero_points must hold N * {per_row} = {N * per_row} bytes, "
                                f"got shape {list(zp.shape)}")
                zero = kernels.unpack_zero_points(np.ascontiguousarray(zp.reshape(-1)), N, kb, self.bits)
            else:
                zero = _float_param(zp, f"{where}: zero_points", error, N * kb, dtype).reshape(N, kb)
        if g_idx is not None and np.asarray(g_idx).size:
            g = np.asarray(g_idx).reshape(-1)
            if g.size != self.K or not np.array_equal(g, np.arange(self.K) // self.block_size):
                raise error(f"{where}: g_idx other than k // block_size (act-order GPTQ) is not supported")
        int8 = self._int8_activations(zero_points)
        tiled = kernels.tile_weights(codes, np.ascontiguousarray(scale), np.ascontiguousarray(zero), N)
        if int8 and ISA == "avx512vnni":
            # vpdpbusd reads the codes in words of four bytes a column, for every row count: that layout only
            return None, tiled[1], tiled[2], kernels.tile_weights_vnni(tiled[0]), int8
        return tiled + (None, int8)

    def _int8_activations(self, zero_points):
        """Whether A is quantized to int8 per block: at accuracy_level 4, where onnxruntime 1.32 does it
        too (its CPU kernel computes in float32 with float zero points and for 2-bit blocks of 16;
        matching it keeps the two runtimes' results within float rounding of each other)."""
        if self.accuracy_level != 4 or self.block_size > INT8_MAX_BLOCK:
            return False
        if zero_points is not None and np.asarray(zero_points).dtype != np.uint8:
            return False
        return not (self.bits == 2 and self.block_size == 16)

    def prepare(self, constants):
        # A zero-point input that is not constant leaves an entry the run's key never matches.
        b, scales = constants[1:3]
        zp, g_idx = (list(constants[3:5]) + [None, None])[:2]
        if b is None or scales is None:
            return
        dtype = scales.dtype if scales.dtype in _FLOATS else np.dtype(np.float32)
        key = (b, scales) + ((zp,) if zp is not None else ())
        self._weights.put(key, self._unpack(b, scales, zp, g_idx, dtype, InvalidModel))

    def run(self, A, B, scales, zero_points=None, g_idx=None, bias=None):
        where = f"MatMulNBits {self.node_name!r}"
        if A.dtype not in _FLOATS:
            raise InvalidArgument(f"{where}: A must be float32 or float16, got {A.dtype}")
        if A.ndim < 1 or A.shape[-1] != self.K:
            raise InvalidArgument(f"{where}: A's last dimension must be K={self.K}, got shape {list(A.shape)}")
        key = (B, scales) + ((zero_points,) if zero_points is not None else ())
        unpacked = self._weights.get(key)
        if unpacked is None:
            unpacked = self._unpack(B, scales, zero_points, g_idx, A.dtype, InvalidArgument)
        codes, scale, zero_scale, vnni_codes, int8 = unpacked
        if bias is None:
            bias32 = np.zeros(self.N, np.float32)
        else:
            bias32 = _float_param(bias, f"{where}: bias", InvalidArgument, self.N, A.dtype)
        a = np.ascontiguousarray(A.reshape(-1, self.K), dtype=np.float32)
        out = np.empty((a.shape[0], self.N), np.float32)
        if vnni_codes is not None:
            kernel, codes = kernels.matmul_nbits_rows_vnni, vnni_codes
        elif a.shape[0] >= PANEL_MIN_ROWS:
            kernel = kernels.matmul_nbits_panels
        elif int8:
            kernel = kernels.matmul_nbits_rows_int8
        else:
            kernel = kernels.matmul_nbits_rows
        kernel(a, codes, scale, zero_scale, self.bits, self.block_size, self.K, bias32, out, num_threads())
        return out.reshape(A.shape[:-1] + (self.N,)).astype(A.dtype, copy=False)


_FOUR_BIT = {np.dtype(ml_dtypes.int4): np.int8, np.dtype(ml_dtypes.uint4): np.uint8}


@register("GatherBlockQuantized", 1, domain=MS)
class GatherBlockQuantized(Op):
    def __init__(self, gather_axis=0, quantize_axis=1, block_size=128, bits=4):
        self.gather_axis, self.quantize_axis = int(gather_axis), int(quantize_axis)
        self.block_size, self.bits = int(block_size), int(bits)
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise InvalidModel(f"GatherBlockQuantized block_size must be a power of 2 >= 16, got {self.block_size}")
        if self.bits not in (4, 8):
            raise InvalidModel(f"GatherBlockQuantized bits must be 4 or 8, got {self.bits}")
        self._tables = _ConstantCache()

    def _codes(self, data, error):
        """The table as one code per element (int8/uint8) and the zero point used when none is given."""
        where = f"GatherBlockQuantized {self.node_name!r}"
        data = np.asarray(data)
        if data.dtype in _FOUR_BIT:
            return data.astype(_FOUR_BIT[data.dtype]), 0.0
        if data.dtype != np.uint8:
            raise error(f"{where}: data must be int4, uint4 or uint8, got {data.dtype}")
        if self.bits == 8:
            return data, 128.0
        lo, hi = data & 15, data >> 4
        return np.stack([lo, hi], axis=-1).reshape(data.shape[:-1] + (data.shape[-1] * 2,)), 8.0

    def _table(self, data, scales, zero_points, error):
        where = f"GatherBlockQuantized {self.node_name!r}"
        codes, default_zero = self._codes(data, error)
        rank = codes.ndim
        g = self.gather_axis + rank if self.gather_axis < 0 else self.gather_axis
        q = self.quantize_axis + rank if self.quantize_axis < 0 else self.quantize_axis
        if not (0 <= g < rank and 0 <= q < rank):
            raise error(f"{where}: gather_axis {self.gather_axis} / quantize_axis {self.quantize_axis} "
                        f"out of range for data of rank {rank}")
        if q <= g:
            raise error(f"{where}: quantize_axis {q} must come after gather_axis {g}")
        if np.asarray(data).dtype == np.uint8 and self.bits == 4 and q != rank - 1:
            raise error(f"{where}: packed uint8 data must be quantized along its last axis")
        scale_shape = list(codes.shape)
        scale_shape[q] = -(-codes.shape[q] // self.block_size)
        scales = np.asarray(scales)
        if list(scales.shape) != scale_shape or scales.dtype not in _FLOATS:
            raise error(f"{where}: scales must be float {scale_shape}, got {scales.dtype} {list(scales.shape)}")
        if zero_points is None:
            zero = np.full(scale_shape, default_zero, np.float32)
        else:
            zero, _ = self._codes(zero_points, error)
            if list(zero.shape) != scale_shape:
                raise error(f"{where}: zero_points must have shape {scale_shape}, got {list(zero.shape)}")
        outer = int(np.prod(codes.shape[:g]))
        rows = codes.shape[g]
        inner_shape = codes.shape[g + 1:]
        # block of each inner position: its index in the inner part of the scales array
        position = np.indices(inner_shape).reshape(len(inner_shape), -1)
        position[q - g - 1] //= self.block_size
        block_of = np.ravel_multi_index(tuple(position), scale_shape[g + 1:]).astype(np.int64)
        three_d = (outer, rows, -1)
        return (np.ascontiguousarray(codes.reshape(three_d)),
                np.ascontiguousarray(zero.reshape(three_d), dtype=np.float32),
                np.ascontiguousarray(scales.reshape(three_d), dtype=np.float32),
                block_of, codes.shape[:g], inner_shape, scales.dtype)

    def prepare(self, constants):
        data, _, scales = constants[:3]
        zp = constants[3] if len(constants) > 3 else None
        if data is None or scales is None:
            return
        self._tables.put((data, scales) + ((zp,) if zp is not None else ()),
                         self._table(data, scales, zp, InvalidModel))

    def run(self, data, indices, scales, zero_points=None):
        where = f"GatherBlockQuantized {self.node_name!r}"
        table = self._tables.get((data, scales) + ((zero_points,) if zero_points is not None else ()))
        if table is None:
            table = self._table(data, scales, zero_points, InvalidArgument)
        codes, zero, scale, block_of, outer_shape, inner_shape, dtype = table
        indices = np.asarray(indices)
        if indices.dtype not in (np.int32, np.int64):
            raise InvalidArgument(f"{where}: indices must be int32 or int64, got {indices.dtype}")
        rows = codes.shape[1]
        flat = indices.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -rows or flat.max() >= rows):
            raise InvalidArgument(f"{where}: indices must lie in [{-rows}, {rows - 1}], got "
                                  f"[{flat.min()}, {flat.max()}]")
        flat = np.where(flat < 0, flat + rows, flat)
        out = np.empty((codes.shape[0], flat.size, codes.shape[2]), np.float32)
        kernels.gather_blocks(codes, zero, scale, block_of, flat, out)
        return out.reshape(tuple(outer_shape) + indices.shape + tuple(inner_shape)).astype(dtype, copy=False)
