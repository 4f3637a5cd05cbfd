"""The Open Inference Protocol (KServe v2) on the wire: datatypes, JSON tensors, the binary-data extension.

Pure functions from request bytes to numpy arrays and back, so every check a client can trip is in one
place and testable without a server. Anything malformed raises :class:`ProtocolError` (a 400) whose
message names the input and what was expected.

Binary-data extension (what tritonclient's HTTP client sends by default): the body is the JSON header
(its length in the ``Inference-Header-Content-Length`` HTTP header) followed by the raw little-endian
tensors, in the order of the inputs whose ``parameters.binary_data_size`` is set.
"""
from __future__ import annotations

import json
import math

import numpy as np

from qrt.errors import InvalidArgument

# Protocol datatype <-> numpy dtype. BYTES travels as JSON strings (or length-prefixed in binary).
DATATYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}
_ONNX_NAMES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
               "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
               "float": "FP32", "double": "FP64", "string": "BYTES", "bfloat16": "BF16"}
# Header and tensors together; a larger body is refused before it is parsed.
MAX_ELEMENTS = 1 << 28


class ProtocolError(InvalidArgument):
    """A request that does not follow the protocol or does not fit the model (HTTP 400)."""


def datatype_of_type_string(type_string: str) -> str:
    """'tensor(float)' -> 'FP32', as the protocol names element types."""
    inner = type_string[len("tensor("):-1] if type_string.startswith("tensor(") else type_string
    return _ONNX_NAMES.get(inner, inner.upper())


def datatype_of_dtype(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        return "BYTES"
    return _NAMES.get(dtype, dtype.name.upper())


def protocol_shape(shape) -> list[int]:
    """A qrt/onnxruntime shape (ints, symbolic names, None) as the protocol writes it: -1 for dynamic."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in (shape or [])]


def tensor_metadata(arg) -> dict:
    return {"name": arg.name, "datatype": datatype_of_type_string(arg.type), "shape": protocol_shape(arg.shape)}


def _shape(name, value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {value!r}")
    if math.prod(value) > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: shape {value} has more than {MAX_ELEMENTS} elements")
    return tuple(value)


def _flatten(name, data):
    """The JSON 'data' of a tensor as a flat list (the protocol allows nested row-major lists too)."""
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: 'data' must be a list, got {type(data).__name__}")
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_array(name, datatype, shape, data) -> np.ndarray:
    flat = _flatten(name, data)
    if len(flat) != math.prod(shape):
        raise ProtocolError(f"input {name!r}: 'data' holds {len(flat)} element(s), shape {list(shape)} "
                            f"needs {math.prod(shape)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
        return np.array(flat, dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    if dtype.kind == "b":
        ok = all(isinstance(v, bool) for v in flat)
    elif dtype.kind in "iu":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat)
    if not ok:
        raise ProtocolError(f"input {name!r}: datatype {datatype} needs "
                            + {"b": "true/false", "i": "integer", "u": "integer", "f": "numeric"}[dtype.kind]
                            + " elements")
    try:
        array = np.array(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: a value does not fit {datatype}: {exc}") from None
    return array.reshape(shape)


def _binary_array(name, datatype, shape, raw: memoryview) -> np.ndarray:
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise ProtocolError(f"input {name!r}: truncated BYTES element length")
            n = int.from_bytes(raw[offset:offset + 4], "little")
            if offset + 4 + n > len(raw):
                raise ProtocolError(f"input {name!r}: a BYTES element overruns its binary_data_size")
            values.append(bytes(raw[offset + 4:offset + 4 + n]))
            offset += 4 + n
        if len(values) != math.prod(shape):
            raise ProtocolError(f"input {name!r}: {len(values)} BYTES element(s), shape {list(shape)} "
                                f"needs {math.prod(shape)}")
        return np.array(values, dtype=object).reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(f"input {name!r}: binary_data_size is {len(raw)} bytes, shape {list(shape)} of "
                            f"{datatype} needs {expected}")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def parse_infer_request(body: bytes, header_length: str | None):
    """``(request json, {input name: array}, {output name: binary?} or None for all, binary-all flag)``."""
    if header_length is not None:
        try:
            json_length = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 <= json_length <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {json_length} is outside the body "
                                f"({len(body)} bytes)")
    else:
        json_length = len(body)
    try:
        request = json.loads(bytes(body[:json_length]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError(f"the request must be a JSON object, got {type(request).__name__}")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    binary = memoryview(body)[json_length:]
    offset = 0
    feeds = {}
    for index, spec in enumerate(inputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"inputs[{index}] must be an object with a string 'name'")
        name = spec["name"]
        if name in feeds:
            raise ProtocolError(f"input {name!r} is given twice")
        datatype = spec.get("datatype")
        if datatype not in DATATYPES and datatype != "BYTES":
            raise ProtocolError(f"input {name!r}: unknown datatype {datatype!r}; expected one of "
                                + ", ".join(list(DATATYPES) + ["BYTES"]))
        shape = _shape(name, spec.get("shape"))
        parameters = spec.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size} overruns the {len(binary)} "
                                    f"bytes of binary data after the JSON header")
            feeds[name] = _binary_array(name, datatype, shape, binary[offset:offset + size])
            offset += size
        else:
            if "data" not in spec:
                raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
            feeds[name] = _json_array(name, datatype, shape, spec["data"])
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} byte(s) of binary data are not claimed by any input's "
                            "binary_data_size")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    binary_all = bool(parameters.get("binary_data_output", False))
    requested = None
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise ProtocolError("'outputs' must be a list")
        requested = {}
        for index, spec in enumerate(outputs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ProtocolError(f"outputs[{index}] must be an object with a string 'name'")
            params = spec.get("parameters") or {}
            if not isinstance(params, dict):
                raise ProtocolError(f"output {spec['name']!r}: 'parameters' must be an object")
            requested[spec["name"]] = bool(params.get("binary_data", binary_all))
    return request, feeds, requested, binary_all


def _json_data(value: np.ndarray):
    if value.dtype.kind in "OUS":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
    return value.reshape(-1).tolist()


def _binary_data(value: np.ndarray) -> bytes:
    if value.dtype.kind in "OUS":
        chunks = []
        for v in value.reshape(-1):
            raw = v if isinstance(v, bytes) else str(v).encode()
            chunks.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(chunks)
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def encode_infer_response(model_name, request_id, outputs, binary) -> tuple[bytes, int | None]:
    """``(body, json header length or None)``; ``outputs`` is [(name, array)], ``binary`` a set of names."""
    described, blobs = [], []
    for name, value in outputs:
        entry = {"name": name, "datatype": datatype_of_dtype(value.dtype), "shape": list(value.shape)}
        if name in binary:
            blob = _binary_data(value)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(value)
        described.append(entry)
    response = {"model_name": model_name, "model_version": "1", "outputs": described}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, allow_nan=True).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
