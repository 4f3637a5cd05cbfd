"""The shared base of the CUDA ops: device inputs, constants uploaded once, host fallback.

A CUDA op class is its CPU twin with a device ``run``: :func:`twin` registers, for every version
the CPU registry has for an op type, a CUDA class whose bases are ``(impl, CudaOp, cpu_class)``.
The CPU class parses the attributes (same ``__init__``, same errors at plan time) and keeps its
shape helpers; ``impl`` supplies ``run_device``.

What :meth:`CudaOp.run` receives and returns:

* Inputs produced on the device are numba device arrays. Constant inputs (weights, scales,
  Reshape's shape...) arrive as the planner's host numpy arrays: ``prepare`` uploads the ones the
  op reads on the device (``device_inputs``) once per session, and :meth:`CudaOp.device` swaps the
  host array for its device copy by identity. Shape-like inputs stay on the host
  (:meth:`CudaOp.host`).
* When every input is a host array (a chain of shape arithmetic after a CUDA ``Shape`` node),
  the CPU twin runs on the host and the result stays there: copying a few int64 values to the
  device and back would only add latency. Later device ops upload such values when they need them.
* A case the device kernels do not take (a dtype without a device kernel, a mode not written for
  the GPU) raises :class:`qrt.kernels.cuda.device.Unsupported`; the op then runs its CPU twin on
  downloaded inputs and uploads the result, and counts it in ``host_fallbacks`` (logged once per
  node), so a model always runs and the tests can assert that the hot path never falls back.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from ... import registry
from ...errors import QrtError
from ...kernels.cuda import config
from ...kernels.cuda import device as dev

log = logging.getLogger("qrt")


class DeviceMemoryError(QrtError):
    """A constant could not be placed in device memory (the model is too large for the device)."""


class CudaOp:
    """Mixin for CUDA op classes; see the module docstring. Subclasses define ``run_device``."""

    # Indices of inputs read as device data; None means all of them. The others stay on the host.
    device_inputs = None
    _cpu_class = None

    host_fallbacks = 0
    _device_constants: dict = {}

    # -- plan time -------------------------------------------------------------------------------

    def prepare(self, constants):
        cpu_prepare = getattr(self._cpu_class, "prepare", None) if self._cpu_class else None
        if cpu_prepare is not None and self.validate_with_cpu_prepare:
            cpu_prepare(self, constants)
        uploaded = {}
        for i, value in enumerate(constants):
            if value is None or not self._reads_on_device(i) or not isinstance(value, np.ndarray):
                continue
            if value.dtype == object or value.dtype.kind not in "biuf":
                continue
            try:
                uploaded[i] = (value, dev.upload(value))
            except Exception as exc:
                raise DeviceMemoryError(
                    f"cannot upload constant input {i} ({value.dtype}{list(value.shape)}, {value.nbytes} bytes) "
                    f"to the CUDA device: {type(exc).__name__}: {exc}") from None
        self._device_constants = uploaded
        self.prepare_device(constants)

    # The CPU twin's prepare validates scales and zero points; ops whose CPU prepare also packs
    # weights for the CPU kernels set this False and validate themselves.
    validate_with_cpu_prepare = True

    def prepare_device(self, constants):
        """Hook: derive and upload per-session device data from constant inputs."""

    def _reads_on_device(self, i):
        return self.device_inputs is None or i in self.device_inputs

    # -- run time --------------------------------------------------------------------------------

    def device(self, i, x):
        """Input ``i`` as a C-contiguous device array (the prepared copy of a constant)."""
        if x is None:
            return None
        if dev.is_device(x):
            if x.is_c_contiguous():
                return x
            return dev.upload(x.copy_to_host())
        entry = self._device_constants.get(i)
        if entry is not None and entry[0] is x:
            return entry[1]
        return dev.upload(np.asarray(x))

    @staticmethod
    def host(x):
        """A (small, shape-like) input as a host numpy array."""
        return None if x is None else np.asarray(dev.download(x))

    def run(self, *inputs):
        if self._cpu_class is not None and not any(dev.is_device(x) for x in inputs):
            return self._cpu_class.run(self, *inputs)
        try:
            results = self.run_device(*inputs)
        except dev.Unsupported as why:
            return self._host_fallback(inputs, why)
        if config.SYNC_EACH_NODE:
            dev.synchronize()
        return results

    def _host_fallback(self, inputs, why):
        if self._cpu_class is None:
            raise QrtError(f"{self.op_type} has no device kernel for this case ({why}) and no host kernel")
        with _fallback_count_lock:      # sessions run from several threads; += is not atomic
            first = not self.host_fallbacks
            self.host_fallbacks += 1
        if first:
            log.info("qrt: node %r (%s) runs on the host: %s", self.node_name, self.op_type, why)
        results = self._cpu_class.run(self, *[self.host(x) if dev.is_device(x) else x for x in inputs])
        if isinstance(results, (tuple, list)):
            return tuple(_to_device(r) for r in results)
        return _to_device(results)


_fallback_count_lock = threading.Lock()


def _to_device(value):
    if isinstance(value, np.ndarray) and value.dtype != object:
        return dev.upload(value)
    return value


def twin(op_type, domain="", since_min=0):
    """Class decorator: register ``impl`` mixed into every CPU class of ``op_type`` (versions >=
    ``since_min``) as the CUDA kernel of the same version."""

    def decorate(impl):
        versions = [v for d, op, vs in registry.registered_ops(registry.CPU) if d == domain and op == op_type
                    for v in vs]
        if not versions:
            raise RuntimeError(f"no CPU kernel for {domain or 'ai.onnx'}::{op_type} to mirror")
        for since in versions:
            if since < since_min:
                continue
            cpu_class = registry.lookup(op_type, domain, since, registry.CPU)
            bases = (impl, cpu_class) if issubclass(impl, CudaOp) else (impl, CudaOp, cpu_class)
            cls = type(f"{cpu_class.__name__}CUDA", bases, {"_cpu_class": cpu_class,
                                                            "__module__": impl.__module__})
            registry.register(op_type, since, domain, provider=registry.CUDA)(cls)
        return impl

    return decorate


def out_like(shape, dtype):
    return dev.empty(shape, dtype)
