"""Cast and CastLike.

Numeric casts are numpy ``astype`` conversions (one pass, no arithmetic beyond the conversion the
spec defines). bfloat16, the float8 family, 4-bit/2-bit integers and float4 are ml_dtypes types;
ml_dtypes is optional: without it those casts are rejected when the plan is built. String tensors
are object arrays of ``str``: numbers print as onnxruntime prints them ("%.8g", "NaN", "INF") and
parse like ``strtod``/``strtol``.
"""
import numpy as np
import onnx

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import movement as k
from ..model import numpy_dtype
from ..registry import register
from .base import Op

try:
    import ml_dtypes
except ImportError:     # optional: only the extra float/int types need it
    ml_dtypes = None

_OBJECT = np.dtype(object)
_ROUND_MODES = {"up": k.E8M0_ROUND_UP, "down": k.E8M0_ROUND_DOWN, "nearest": k.E8M0_ROUND_NEAREST}


def _ml_dtype(name):
    return None if ml_dtypes is None or not hasattr(ml_dtypes, name) else np.dtype(getattr(ml_dtypes, name))


# The float8 types whose out-of-range values the 'saturate' attribute governs.
_SATURATING = {d for d in (_ml_dtype("float8_e4m3fn"), _ml_dtype("float8_e4m3fnuz"), _ml_dtype("float8_e5m2"),
                           _ml_dtype("float8_e5m2fnuz")) if d is not None}
_E8M0 = _ml_dtype("float8_e8m0fnu")


def target_dtype(to):
    """The numpy dtype an ONNX element type casts into, or InvalidModel when qrt cannot hold it."""
    to = int(to)
    if to == onnx.TensorProto.STRING:
        return _OBJECT
    try:
        name = onnx.TensorProto.DataType.Name(to)
    except ValueError:
        raise InvalidModel(f"'to'={to} is not an ONNX element type") from None
    dtype = numpy_dtype(to)
    if dtype is None or (dtype.kind == "V" and ml_dtypes is None):
        raise InvalidModel(f"casting to {name} needs the ml_dtypes package (pip install ml_dtypes)")
    return dtype


def _is_float(dtype):
    # ml_dtypes types (bfloat16, float8_*, float4_*) report kind 'V'; their names say what they are.
    return dtype.kind == "f" or (dtype.kind == "V" and "float" in dtype.name)


def _format_number(value, is_float):
    if not is_float:
        return str(int(value))
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "INF" if value > 0 else "-INF"
    return "%.8g" % value


def _to_strings(x):
    if x.dtype == np.bool_:
        values = ["1" if v else "0" for v in x.reshape(-1)]
    else:
        is_float = _is_float(x.dtype)
        source = x.astype(np.float64) if is_float and x.dtype.kind != "f" else x
        values = [_format_number(v, is_float) for v in source.reshape(-1)]
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(x.shape)


def _parse_float(text):
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float.fromhex(text)
    except ValueError:
        raise InvalidArgument(f"string {text!r} is not a number") from None


def _parse_int(text):
    text = str(text).strip()
    try:
        return int(text)
    except ValueError:
        # "2.7" to an integer type is undefined by the spec; strtol-like truncation is what ORT does.
        value = _parse_float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgument(f"string {text!r} is not an integer") from None
        return int(value)


def _from_strings(x, dtype, saturate, round_mode):
    items = x.reshape(-1)
    if dtype == np.bool_:
        values = [str(v).strip().lower() == "true" or
                  (str(v).strip().lower() != "false" and _parse_float(v) != 0) for v in items]
        return np.array(values, dtype=np.bool_).reshape(x.shape)
    if dtype.kind in "iu":
        ints = [_parse_int(v) for v in items]
        # Out-of-range integers wrap like fixed-point casts do.
        wide = np.uint64 if dtype.kind == "u" else np.int64
        wrapped = [v % (1 << 64) if dtype.kind == "u" else ((v + (1 << 63)) % (1 << 64)) - (1 << 63)
                   for v in ints]
        return np.array(wrapped, dtype=wide).astype(dtype).reshape(x.shape)
    floats = np.array([_parse_float(v) for v in items], dtype=np.float64).reshape(x.shape)
    return cast_array(floats, dtype, saturate, round_mode)


def _to_e8m0(x, saturate, round_mode):
    bits = np.ascontiguousarray(x.astype(np.float32)).reshape(-1).view(np.uint32)
    out = np.empty(bits.shape, dtype=np.uint8)
    k.float32_to_e8m0(bits, out, _ROUND_MODES[round_mode], bool(saturate))
    return out.view(_E8M0).reshape(x.shape)


def cast_array(x, dtype, saturate=True, round_mode="up"):
    """``x`` converted to ``dtype`` following the ONNX Cast rules."""
    if x.dtype == dtype:
        return x
    if dtype == _OBJECT:
        return _to_strings(x)
    if x.dtype == _OBJECT:
        return _from_strings(x, dtype, saturate, round_mode)
    if dtype == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    with np.errstate(invalid="ignore", over="ignore"):
        if saturate and dtype in _SATURATING:
            # Saturation maps +-Inf and anything beyond the largest finite value to +-max (NaN stays NaN).
            limit = float(ml_dtypes.finfo(dtype).max)
            wide = x if x.dtype in (np.float16, np.float32, np.float64) else x.astype(np.float64)
            return np.clip(wide, -limit, limit).astype(dtype)
        return x.astype(dtype)


class _Cast(Op):
    saturate = 1
    round_mode = "up"

    def _setup(self, to, saturate, round_mode):
        if round_mode not in _ROUND_MODES:
            raise InvalidModel(f"round_mode {round_mode!r} is not one of {sorted(_ROUND_MODES)}")
        self.saturate = bool(int(saturate))
        self.round_mode = round_mode
        self.dtype = None if to is None else target_dtype(to)


@register("Cast", 6)
class Cast(_Cast):
    def __init__(self, to=None):
        if to is None:
            raise InvalidModel("Cast needs the 'to' attribute")
        self._setup(to, 1, "up")

    def run(self, input):
        return cast_array(input, self.dtype, self.saturate, self.round_mode)


@register("Cast", 19)
class Cast19(Cast):
    def __init__(self, to=None, saturate=1):
        if to is None:
            raise InvalidModel("Cast needs the 'to' attribute")
        self._setup(to, saturate, "up")


@register("Cast", 24)
class Cast24(Cast):
    def __init__(self, to=None, saturate=1, round_mode="up"):
        if to is None:
            raise InvalidModel("Cast needs the 'to' attribute")
        self._setup(to, saturate, round_mode)


@register("CastLike", 15)
class CastLike(_Cast):
    def __init__(self):
        self._setup(None, 1, "up")

    def run(self, input, target_type):
        return cast_array(input, target_type.dtype, self.saturate, self.round_mode)


@register("CastLike", 19)
class CastLike19(CastLike):
    def __init__(self, saturate=1):
        self._setup(None, saturate, "up")


@register("CastLike", 24)
class CastLike24(CastLike):
    def __init__(self, saturate=1, round_mode="up"):
        self._setup(None, saturate, round_mode)
