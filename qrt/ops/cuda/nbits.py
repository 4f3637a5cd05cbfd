"""com.microsoft MatMulNBits on the device (:mod:`qrt.kernels.cuda.nbits`); the CPU twin,
:class:`qrt.ops.nbits.MatMulNBits`, parses the attributes and unpacks the constant weights once.
float16 activations and weights that are not constants run the CPU twin."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cpu import nbits as cpu_kernels
from ...kernels.cuda import device as dev
from ...kernels.cuda import nbits as k
from .base import CudaOp, twin

MS = "com.microsoft"


@twin("MatMulNBits", MS)
class MatMulNBits(CudaOp):
    device_inputs = (0,)  # B, scales and zero points are unpacked on the host, then uploaded

    def prepare_device(self, constants):
        b, scales = constants[1:3]
        zp = constants[3] if len(constants) > 3 else None
        unpacked = self._weights.get((b, scales) + ((zp,) if zp is not None else ()))
        if unpacked is None:
            self._device_weights = None
            return
        codes, scale, zero_scale = unpacked[:3]
        if codes is None:  # the CPU twin keeps only its VNNI kernel's words at accuracy_level 4
            codes = cpu_kernels.untile_weights_vnni(unpacked[3])
        self._device_weights = ((b, scales, zp),
                                tuple(dev.upload(np.ascontiguousarray(x)) for x in (codes, scale, zero_scale)))

    def run_device(self, A, B, scales, zero_points=None, g_idx=None, bias=None):
        cached = getattr(self, "_device_weights", None)
        if cached is None or cached[0][0] is not B or cached[0][1] is not scales or cached[0][2] is not zero_points:
            raise dev.Unsupported("MatMulNBits weights that are not constants")
        if A.dtype != np.float32:
            raise dev.Unsupported(f"device MatMulNBits of {A.dtype}")
        shape = tuple(A.shape)  # the simulator's shapes take no negative index
        if not shape or shape[-1] != self.K:
            raise InvalidArgument(f"MatMulNBits {self.node_name!r}: A's last dimension must be K={self.K}, "
                                  f"got shape {list(A.shape)}")
        codes, scale, zero_scale = cached[1]
        bias32 = np.zeros(self.N, np.float32) if bias is None else np.asarray(self.host(bias), np.float32)
        a = self.device(0, A).reshape(int(np.prod(shape[:-1], dtype=np.int64)), self.K)
        out = dev.empty((a.shape[0], self.N), np.float32)
        k.matmul_nbits(a, codes, scale, zero_scale, dev.upload(bias32.reshape(-1)), out, self.bits, self.block_size,
                       self.K)
        return out.reshape(shape[:-1] + (self.N,))
