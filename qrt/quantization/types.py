"""The enums a user passes to the quantizer, named as in ``onnxruntime.quantization``.

Both accept their own members, onnxruntime's members (matched by name) and strings such as
``"QInt8"``, ``"int8"``, ``"qdq"``, so code written for onnxruntime keeps working after a change of
import.
"""
from __future__ import annotations

import enum

import numpy as np
from onnx import TensorProto

from qrt import qmath
from qrt.errors import QuantizationError


class QuantType(enum.Enum):
    QInt8 = 0
    QUInt8 = 1
    QFLOAT8E4M3FN = 2
    QInt16 = 3
    QUInt16 = 4
    QInt4 = 5
    QUInt4 = 6

    def __str__(self):
        return self.name

    @property
    def tensor_type(self) -> int:
        """The ONNX element type (also how :mod:`qrt.qmath` recognises a quantization type)."""
        return _TENSOR_TYPES[self]

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype that stores values of this type."""
        return qmath.qtype_dtype(self.tensor_type)

    @staticmethod
    def from_string(text: str) -> "QuantType":
        return QuantType.parse(text)

    @classmethod
    def parse(cls, value, what="quantization type") -> "QuantType":
        if isinstance(value, cls):
            return value
        name = getattr(value, "name", value)  # onnxruntime's QuantType members carry the same names
        if isinstance(name, str):
            key = name.strip().lower()
            for member in cls:
                if key in (member.name.lower(), _SHORT_NAMES[member]):
                    return member
        raise QuantizationError(f"unknown {what} {value!r}; expected one of "
                                + ", ".join(m.name for m in cls))


_TENSOR_TYPES = {
    QuantType.QInt8: TensorProto.INT8,
    QuantType.QUInt8: TensorProto.UINT8,
    QuantType.QFLOAT8E4M3FN: TensorProto.FLOAT8E4M3FN,
    QuantType.QInt16: TensorProto.INT16,
    QuantType.QUInt16: TensorProto.UINT16,
    QuantType.QInt4: TensorProto.INT4,
    QuantType.QUInt4: TensorProto.UINT4,
}

_SHORT_NAMES = {
    QuantType.QInt8: "int8",
    QuantType.QUInt8: "uint8",
    QuantType.QFLOAT8E4M3FN: "float8e4m3fn",
    QuantType.QInt16: "int16",
    QuantType.QUInt16: "uint16",
    QuantType.QInt4: "int4",
    QuantType.QUInt4: "uint4",
}

# The 8-bit types are the ones both rewrites and onnxruntime's QLinear kernels agree on.
SUPPORTED_QUANT_TYPES = (QuantType.QInt8, QuantType.QUInt8)


class QuantFormat(enum.Enum):
    QOperator = 0
    QDQ = 1

    def __str__(self):
        return self.name

    @staticmethod
    def from_string(text: str) -> "QuantFormat":
        return QuantFormat.parse(text)

    @classmethod
    def parse(cls, value) -> "QuantFormat":
        if isinstance(value, cls):
            return value
        name = getattr(value, "name", value)
        if isinstance(name, str):
            for member in cls:
                if name.strip().lower() == member.name.lower():
                    return member
        raise QuantizationError(f"unknown quant_format {value!r}; expected QOperator or QDQ")
