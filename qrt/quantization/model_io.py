"""Reading the float model, checking the result, and writing it atomically.

The input is never modified: a path is read into a private copy and a ModelProto is copied. The
output is written to a temporary file in the destination directory and moved over the target
with ``os.replace``, so a failure leaves either the old file or no file, never half a model.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import onnx

from qrt.errors import InvalidModel, QuantizationError
from qrt.model import load_model, model_label, run_checker

from .graph import finish_graph

_PROTOBUF_LIMIT = 2 ** 31 - 1


def load(model_input):
    """(private ModelProto copy, label for messages, serialized size in bytes of what was given)."""
    try:
        model = load_model(model_input)
    except InvalidModel as exc:
        raise QuantizationError(str(exc)) from None
    label = model_label(model, model_input)
    if isinstance(model_input, (str, os.PathLike)):
        size = _file_size(os.fspath(model_input), model)
    else:
        size = serialized_size(model)
    if not model.graph.node:
        raise QuantizationError(f"{label}: the graph has no nodes")
    return model, label, size


def check_output(model_input, model_output):
    """Refuses to overwrite the input model: the float file must survive any quantization call."""
    if model_output is None or not isinstance(model_input, (str, os.PathLike)):
        return
    src, dst = os.path.abspath(os.fspath(model_input)), os.path.abspath(os.fspath(model_output))
    if src == dst or (os.path.exists(dst) and os.path.samefile(src, dst)):
        raise QuantizationError(f"model_output {os.fspath(model_output)!r} is the input model; "
                                "write the quantized model to another file")


def _file_size(path, model):
    """Size on disk, counting external data files the model references."""
    size = os.path.getsize(path)
    folder = os.path.dirname(os.path.abspath(path))
    seen = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                data = os.path.join(folder, entry.value)
                if os.path.exists(data):
                    size += os.path.getsize(data)
    return size


def serialized_size(model: onnx.ModelProto) -> int:
    return model.ByteSize()


def finish(model, nodes, initializers, label) -> onnx.ModelProto:
    """The rewritten model, validated by onnx's checker (a failure here is a qrt bug, reported as such).
    What the checker objects to in the float model and onnxruntime tolerates is carried over and
    tolerated the same way (qrt.model.run_checker)."""
    try:
        quantized = finish_graph(model, nodes, initializers)
    except RuntimeError as exc:
        raise QuantizationError(f"{label}: the rewrite produced an invalid graph: {exc}") from None
    try:
        if quantized.ByteSize() < _PROTOBUF_LIMIT:
            quantized = run_checker(quantized, label)
    except InvalidModel as exc:
        raise QuantizationError(f"the quantized model fails onnx.checker: {exc}") from None
    return quantized


def save(model: onnx.ModelProto, path, use_external_data_format=False) -> int:
    """Writes atomically; returns the bytes written (model file plus external data)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise QuantizationError(f"cannot write {path}: directory {folder} does not exist")
    if not use_external_data_format and model.ByteSize() >= _PROTOBUF_LIMIT:
        raise QuantizationError("the quantized model is over 2 GiB; pass use_external_data_format=True")
    staging = tempfile.mkdtemp(prefix=".qrt-quant-", dir=folder)
    try:
        base = os.path.basename(path)
        staged = os.path.join(staging, base)
        if use_external_data_format:
            data_name = base + ".data"
            external = onnx.ModelProto()
            external.CopyFrom(model)  # save_model moves tensors out of the proto it is given
            onnx.save_model(external, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            staged_data = os.path.join(staging, data_name)
            written = os.path.getsize(staged)
            if os.path.exists(staged_data):
                written += os.path.getsize(staged_data)
                os.replace(staged_data, os.path.join(folder, data_name))
        else:
            with open(staged, "wb") as f:
                f.write(model.SerializeToString())
            written = os.path.getsize(staged)
        os.replace(staged, path)
        return written
    except OSError as exc:
        raise QuantizationError(f"cannot write {path}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
