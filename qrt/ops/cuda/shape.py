"""Shape CUDA ops: Shape and Size read only metadata (their int64 results stay on the host, where
shape arithmetic runs); Reshape, Flatten, Squeeze and Unsqueeze are views of the contiguous device
buffer; Transpose is one strided copy. The CPU twins are :mod:`qrt.ops.shape`."""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgument
from ...kernels.cuda import device as dev
from ...kernels.cuda import movement as k
from ..shape import _squeeze, _unsqueeze, int_list, normalize_axes, reshaped_shape
from .base import CudaOp, twin


class _Metadata(CudaOp):
    device_inputs = ()

    def run_device(self, data):
        return self._cpu_class.run(self, data)


Shape = twin("Shape")(type("Shape", (_Metadata,), {"__module__": __name__}))
Size = twin("Size")(type("Size", (_Metadata,), {"__module__": __name__}))


@twin("Reshape")
class Reshape(CudaOp):
    device_inputs = (0,)

    def run_device(self, data, shape):
        requested = int_list(self.host(shape), "shape")
        if self.allowzero and 0 in requested and -1 in requested:
            raise InvalidArgument(f"shape {requested} has both 0 and -1, which allowzero=1 forbids")
        x = self.device(0, data)
        return x.reshape(reshaped_shape(x.shape, requested, self.allowzero))


@twin("Flatten")
class Flatten(CudaOp):
    def run_device(self, x):
        rank = x.ndim
        if not -rank <= self.axis <= rank:
            raise InvalidArgument(f"axis {self.axis} is out of range for rank {rank}")
        axis = self.axis + rank if self.axis < 0 else self.axis
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        inner = int(np.prod(x.shape[axis:], dtype=np.int64))
        return self.device(0, x).reshape(outer, inner)


@twin("Squeeze")
class Squeeze(CudaOp):
    device_inputs = (0,)

    def run_device(self, data, axes=None):
        if self.since_version < 13:
            axes = self.axes
        elif axes is not None:
            axes = int_list(self.host(axes), "axes")
        return _squeeze(self.device(0, data), axes)


@twin("Unsqueeze")
class Unsqueeze(CudaOp):
    device_inputs = (0,)

    def run_device(self, data, axes=None):
        axes = self.axes if self.since_version < 13 else int_list(self.host(axes), "axes")
        return _unsqueeze(self.device(0, data), axes)


@twin("Transpose")
class Transpose(CudaOp):
    def run_device(self, data):
        if self.perm is None:
            perm = list(range(data.ndim))[::-1]
        else:
            if len(self.perm) != data.ndim:
                raise InvalidArgument(f"perm {self.perm} does not match the rank of shape {list(data.shape)}")
            perm = normalize_axes(self.perm, data.ndim, "perm")
        x = self.device(0, data)
        if perm == list(range(x.ndim)):
            return x
        out = dev.empty([x.shape[p] for p in perm], x.dtype)
        return k.transpose(x, perm, out)
