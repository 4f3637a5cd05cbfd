"""qrt as an ``onnx.backend.base.Backend``, so onnx's own backend test cases run through qrt."""
from __future__ import annotations

import onnx
from onnx.backend.base import Backend, BackendRep

from .session import InferenceSession, SessionOptions, GraphOptimizationLevel


class QrtBackendRep(BackendRep):
    def __init__(self, session: InferenceSession):
        self.session = session

    def run(self, inputs, **kwargs):
        names = [i.name for i in self.session.get_inputs()]
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            feeds = dict(zip(names, inputs))
        return self.session.run(None, feeds)


class QrtBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device="CPU", **kwargs):
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        options = SessionOptions()
        options.graph_optimization_level = kwargs.get("graph_optimization_level",
                                                      GraphOptimizationLevel.ORT_DISABLE_ALL)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.upper().startswith("CUDA") \
            else ["CPUExecutionProvider"]
        return QrtBackendRep(InferenceSession(model, options, providers=providers))

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        raise onnx.backend.base.BackendIsNotSupposedToImplementIt("qrt runs whole models; use run_model")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        device = device.upper()
        if device.startswith("CUDA"):
            from .providers import cuda_available
            return cuda_available()
        return device.startswith("CPU")


prepare = QrtBackend.prepare
run_model = QrtBackend.run_model
supports_device = QrtBackend.supports_device
