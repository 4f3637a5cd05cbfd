"""A served model: its session (float, or int8 made at start-up), what the protocol says about it, warm-up.

A model is *batchable* when the first dimension of every input and output is dynamic: then requests can
be stacked along it and the outputs split back by rows. Anything else runs one request at a time.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from qrt.errors import QrtError

from .protocol import tensor_metadata

# Op types whose presence makes a model int8 for the metrics' precision label.
_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
             "ConvInteger", "DynamicQuantizeLinear", "QGemm", "QLinearAdd", "QLinearMul", "DynamicQuantizeMatMul",
             "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QLinearGlobalAveragePool", "QLinearConcat",
             "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearAveragePool"}


def _quantized_copy(path, int8, calibration):
    """``path`` quantized at start-up: dynamically (``int8``) or statically with ``calibration`` data."""
    from qrt.quantization import quantize_dynamic, quantize_static
    with tempfile.TemporaryDirectory(prefix="qrt-serve-") as tmp:
        out = os.path.join(tmp, "model.int8.onnx")
        if calibration is not None:
            from calibration import as_reader
            quantize_static(path, out, as_reader(calibration))
        else:
            quantize_dynamic(path, out)
        with open(out, "rb") as fh:
            return fh.read()


class ServedModel:
    def __init__(self, name, path, int8=False, calibration=None, threads=None):
        from qrt import InferenceSession, SessionOptions
        self.name = name
        self.path = path
        source = _quantized_copy(path, int8, calibration) if (int8 or calibration is not None) else path
        options = SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = InferenceSession(source, options)
        ops = {node.op_type for node in self.session.model.graph.node}
        self.precision = "int8" if ops & _INT8_OPS else "float"
        self.inputs = self.session.get_inputs()
        self.outputs = self.session.get_outputs()
        self.output_names = [o.name for o in self.outputs]
        self.batchable = all(a.shape and not isinstance(a.shape[0], int) for a in self.inputs + self.outputs)

    def metadata(self) -> dict:
        return {"name": self.name, "versions": ["1"], "platform": "onnx",
                "parameters": {"precision": self.precision, "batchable": self.batchable},
                "inputs": [tensor_metadata(a) for a in self.inputs],
                "outputs": [tensor_metadata(a) for a in self.outputs]}

    def check(self, feeds: dict) -> dict:
        """The feeds as the session will take them, or InvalidArgument with qrt's own message."""
        return self.session._check_feeds(feeds)

    def run(self, feeds: dict) -> list[np.ndarray]:
        return self.session.run(None, feeds)

    def warm_up(self):
        """One run on zeros (dynamic dims 1), so Numba's compile or cache load happens before 'ready'."""
        feeds = {}
        for arg in self.inputs:
            dtype = self.session._expected_dtypes.get(arg.name) or np.float32
            shape = [d if isinstance(d, int) else 1 for d in (arg.shape or [])]
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
        try:
            self.run(feeds)
        except QrtError:
            # A model whose dynamic dims cannot be 1 compiles on its first real request instead.
            pass


def parse_model_specs(positional, named) -> list[tuple[str, str]]:
    """``[(name, path)]`` from ``MODEL`` arguments (named after the file) and ``--model name=path``."""
    specs = []
    for path in positional or []:
        specs.append((os.path.splitext(os.path.basename(path))[0], path))
    for spec in named or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise QrtError(f"--model takes NAME=PATH, got {spec!r}")
        specs.append((name, path))
    names = [n for n, _ in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise QrtError(f"model name(s) {duplicated} are given twice; name them with --model NAME=PATH")
    if not specs:
        raise QrtError("no model to serve: give MODEL or --model NAME=PATH")
    for name, path in specs:
        if not os.path.exists(path):
            raise QrtError(f"model {name!r}: no such file {path}")
    return specs
