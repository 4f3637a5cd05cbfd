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

# The 8-bit types are the ones both rewrites and onnxruntime's QLinear kernels agree on; QDQ also
# carries the 16-bit and 4-bit integer types (opset 21 QuantizeLinear/DequantizeLinear, or the
# com.microsoft ones with UseQDQContribOps).
EIGHT_BIT_TYPES = (QuantType.QInt8, QuantType.QUInt8)
SIXTEEN_BIT_TYPES = (QuantType.QInt16, QuantType.QUInt16)
FOUR_BIT_TYPES = (QuantType.QInt4, QuantType.QUInt4)
SIGNED_TYPES = (QuantType.QInt8, QuantType.QInt16, QuantType.QInt4, QuantType.QFLOAT8E4M3FN)
# The opset whose QuantizeLinear/DequantizeLinear accept 16-bit and 4-bit integers.
WIDE_TYPES_OPSET = 21


def check_static_types(quant_format: "QuantFormat", activation: QuantType, weight: QuantType):
    """Refuses the combinations onnxruntime's quantize_static refuses, and the one qrt cannot write.

    Error texts name the argument and the values, as onnxruntime's ValueError does.
    """
    if activation == QuantType.QInt8 and weight == QuantType.QUInt8:
        raise QuantizationError("activation_type=QInt8 with weight_type=QUInt8 is not supported "
                                "(onnxruntime refuses it too); use QUInt8/QInt8 or QInt8/QInt8")
    if QuantType.QFLOAT8E4M3FN in (activation, weight):
        # onnxruntime scales float8 tensors by their standard deviation (Distribution calibration),
        # keeps biases float behind a Cast; qrt's quantizer does not write that form yet.
        raise QuantizationError(f"activation_type={activation.name}, weight_type={weight.name}: qrt's quantizer "
                                "does not write QFLOAT8E4M3FN yet (integer types: QInt8, QUInt8, QInt16, "
                                "QUInt16, QInt4, QUInt4); onnxruntime's quantize_static does")
    wide = [t for t in (activation, weight) if t in SIXTEEN_BIT_TYPES + FOUR_BIT_TYPES]
    if wide and quant_format != QuantFormat.QDQ:
        raise QuantizationError(f"{wide[0].name} needs quant_format=QuantFormat.QDQ; QOperator's QLinear ops "
                                "take 8-bit tensors only (onnxruntime refuses 16-bit QOperator too)")


class QuantizationMode(enum.Enum):
    """onnxruntime's name for what the two entry points write: IntegerOps (quantize_dynamic) and
    QLinearOps (quantize_static)."""

    IntegerOps = 0
    QLinearOps = 1

    def __str__(self):
        return self.name

    @staticmethod
    def from_string(text: str) -> "QuantizationMode":
        try:
            return QuantizationMode[text]
        except KeyError:
            raise QuantizationError(f"unknown QuantizationMode {text!r}; expected IntegerOps or QLinearOps") \
                from None


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
