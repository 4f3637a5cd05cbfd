"""MatMul and Gemm on the device (:mod:`qrt.kernels.cuda.gemm`, shared-memory tiling); the CPU
twins are :mod:`qrt.ops.linalg`. Transposed operands and broadcast batches are read through
strides and per-batch offsets, never copied. Integer and half-precision products run the CPU twin."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import gemm as k
from .base import CudaOp, twin

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@twin("MatMul")
class MatMul(CudaOp):
    def run_device(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise InvalidArgument(f"MatMul operands must have rank >= 1, got shapes {list(a.shape)} and "
                                  f"{list(b.shape)}")
        if a.dtype != b.dtype:
            raise InvalidArgument(f"MatMul operands must have one dtype, got {a.dtype} and {b.dtype}")
        if a.dtype not in _FLOATS:
            raise dev.Unsupported(f"device MatMul of {a.dtype}")
        x, w = self.device(0, a), self.device(1, b)
        a_shape = (1,) + tuple(x.shape) if x.ndim == 1 else tuple(x.shape)
        b_shape = tuple(w.shape) + (1,) if w.ndim == 1 else tuple(w.shape)
        M, K = a_shape[-2:]
        K2, N = b_shape[-2:]
        if K != K2:
            raise InvalidArgument(f"MatMul shapes {list(a.shape)} and {list(b.shape)} do not align ({K} != {K2})")
        try:
            batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
        except ValueError:
            raise InvalidArgument(f"MatMul batch dimensions of {list(a.shape)} and {list(b.shape)} do not "
                                  "broadcast") from None
        out = dev.empty(tuple(batch) + (M, N), x.dtype)
        if K == 0:
            from ...kernels.cuda.movement import fill
            fill(out, 0)
        else:
            k.matmul(x, w, out, batch, a_shape[:-2], b_shape[:-2], M, N, K)
        shape = tuple(batch) + (M, N)
        if x.ndim == 1:
            shape = shape[:-2] + (N,)
        if w.ndim == 1:
            shape = shape[:-1]
        return out.reshape(shape)


@twin("Gemm")
class Gemm(CudaOp):
    def run_device(self, a, b, c=None):
        if c is None and not self.c_optional:
            raise InvalidArgument("Gemm before opset 11 requires input C")
        if a.ndim != 2 or b.ndim != 2:
            raise InvalidArgument(f"Gemm operands must be 2-D, got shapes {list(a.shape)} and {list(b.shape)}")
        if a.dtype != b.dtype:
            raise InvalidArgument(f"Gemm operands must have one dtype, got {a.dtype} and {b.dtype}")
        if a.dtype not in _FLOATS or (c is not None and c.dtype != a.dtype):
            raise dev.Unsupported(f"device Gemm of {a.dtype}")
        x, w = self.device(0, a), self.device(1, b)
        M, K = (x.shape[1], x.shape[0]) if self.trans_a else x.shape
        K2, N = (w.shape[1], w.shape[0]) if self.trans_b else w.shape
        if K != K2:
            raise InvalidArgument(f"Gemm shapes {list(a.shape)} (transA={int(self.trans_a)}) and {list(b.shape)} "
                                  f"(transB={int(self.trans_b)}) do not align ({K} != {K2})")
        bias, strides = None, (0, 0)
        if c is not None and self.beta != 0:
            bias = self.device(2, c)
            if bias.ndim > 2:
                raise InvalidArgument(f"Gemm bias C of shape {list(c.shape)} does not broadcast to ({M}, {N})")
            shaped = (1,) * (2 - bias.ndim) + tuple(bias.shape)
            if shaped[0] not in (1, M) or shaped[1] not in (1, N):
                raise InvalidArgument(f"Gemm bias C of shape {list(c.shape)} does not broadcast to ({M}, {N})")
            strides = (shaped[1] if shaped[0] > 1 else 0, 1 if shaped[1] > 1 else 0)
        out = dev.empty((M, N), x.dtype)
        if K == 0 and bias is None:
            from ...kernels.cuda.movement import fill
            return fill(out, 0)
        return k.gemm(x, w, out, M, N, K, self.alpha, self.beta, self.trans_a, self.trans_b, bias, strides)
