"""com.microsoft quantized ops on the device: QGemm (:mod:`qrt.kernels.cuda.qgemm`), QLinearAdd,
QLinearMul, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat and the table ops
(QLinearSigmoid, QLinearLeakyRelu and every other unary op whose CPU kernel is a 256-entry table;
:mod:`qrt.kernels.cuda.qelementwise`). They are registered for CUDA whether or not a CPU kernel
exists; a CPU kernel of the same name, when there is one, serves the host fallback.

The table ops build their table with the CPU twin's code (at plan time when the parameters are
constants) and upload it once, so both providers give the same bytes by construction. QLinearConcat
does the same for each input whose scale or zero point differs from the output's: its CPU twin,
run once on the 256 possible bytes, gives the requantization table.
"""
from __future__ import annotations

import numpy as np

from ... import registry
from ...errors import InvalidArgument, InvalidModel
from ...kernels.cuda import device as dev
from ...kernels.cuda import qelementwise as k
from ...kernels.cuda import qgemm as kg
from ..base import Op
from ..contrib_quantized import _check_pairs, _TableOp
from ..quantized import EIGHT_BIT, _column_zero_points, _vector_for, check_scale, qbounds, scalar_int
from .base import CudaOp
from .elementwise import broadcast_shape
from .movement import concatenate
from .quantized import _Memo, dp4a_biases, dp4a_weight_sums

MS = "com.microsoft"


def _contrib(op_type):
    def decorate(impl):
        cpu = registry.lookup(op_type, MS, 1, registry.CPU)
        bases = (impl, cpu) if cpu is not None else (impl, Op)
        cls = type(f"{op_type}CUDA", bases, {"_cpu_class": cpu, "__module__": __name__})
        registry.register(op_type, 1, MS, provider=registry.CUDA)(cls)
        return impl

    return decorate


def _scalar_scale(value, name):
    return float(np.float32(check_scale(value, name, InvalidArgument, scalar=True).reshape(-1)[0]))


class _QBinary(CudaOp):
    multiply = False

    def __init__(self, **attrs):
        if attrs:
            raise TypeError(f"unexpected attributes {sorted(attrs)}")
        super().__init__()      # the CPU twin's per-op state (its host fallback and prepare use it)

    def run_device(self, A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None):
        if A.dtype not in EIGHT_BIT or B.dtype != A.dtype:
            raise InvalidArgument(f"expected int8/uint8 inputs of one type, got {A.dtype} and {B.dtype}")
        sa, sb, sc = (_scalar_scale(self.host(s), n) for s, n in ((A_scale, "A_scale"), (B_scale, "B_scale"),
                                                                   (C_scale, "C_scale")))
        za, zb = scalar_int(self.host(A_zero_point)), scalar_int(self.host(B_zero_point))
        zc = scalar_int(self.host(C_zero_point))
        a, b = self.device(0, A), self.device(3, B)
        out = dev.empty(broadcast_shape(a, b), A.dtype)
        qmin, qmax = qbounds(A.dtype)
        if self.multiply:
            return k.qmul(a, b, out, za, zb, np.float32(sa * sb / sc), zc, qmin, qmax)
        return k.qadd(a, b, out, za, zb, np.float32(sa / sc), np.float32(sb / sc), zc, qmin, qmax)


@_contrib("QLinearAdd")
class QLinearAdd(_QBinary):
    multiply = False


@_contrib("QLinearMul")
class QLinearMul(_QBinary):
    multiply = True


@_contrib("QLinearGlobalAveragePool")
class QLinearGlobalAveragePool(CudaOp):
    def __init__(self, channels_last=0):
        self.channels_last = int(channels_last)

    def run_device(self, X, x_scale, x_zero_point, y_scale, y_zero_point):
        if X.dtype not in EIGHT_BIT or X.ndim < 3:
            raise InvalidArgument(f"expected an int8/uint8 (N, C, spatial...) input, got {X.dtype}{list(X.shape)}")
        sx = float(np.float32(check_scale(self.host(x_scale), "x_scale", InvalidArgument, scalar=True)
                              .reshape(-1)[0]))
        sy = float(np.float32(check_scale(self.host(y_scale), "y_scale", InvalidArgument, scalar=True)
                              .reshape(-1)[0]))
        zx, zy = scalar_int(self.host(x_zero_point)), scalar_int(self.host(y_zero_point))
        x = self.device(0, X)
        n = x.shape[0]
        if self.channels_last:
            channels = x.shape[x.ndim - 1]
            length = x.size // (n * channels)
            outer, inner = n, channels
            out_shape = (n,) + (1,) * (x.ndim - 2) + (channels,)
        else:
            channels = x.shape[1]
            length = x.size // (n * channels)
            outer, inner = n * channels, 1
            out_shape = (n, channels) + (1,) * (x.ndim - 2)
        qmin, qmax = qbounds(X.dtype)
        out = dev.empty(out_shape, X.dtype)
        return k.global_average(x, out, outer, length, inner, zx, sx / (sy * length), zy, qmin, qmax)


@_contrib("QLinearAveragePool")
class QLinearAveragePool(CudaOp):
    """(N, C, spatial...) inputs with 1 to 3 spatial axes; the geometry is the CPU twin's. A
    channels-last input runs the CPU twin."""

    def run_device(self, X, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
        if X.dtype not in EIGHT_BIT:
            raise InvalidArgument(f"X must be int8 or uint8, got {X.dtype}")
        params = [self.host(v) for v in (x_scale, x_zero_point, y_scale, y_zero_point)]
        _check_pairs((("x", params[0], params[1]), ("y", params[2], params[3])), InvalidArgument, X.dtype)
        if self.channels_last:
            raise dev.Unsupported("channels_last")
        if X.ndim < 3 or X.ndim > 5:
            raise InvalidArgument(f"X must have 1 to 3 spatial axes, got shape {list(X.shape)}")
        strides, begins, ends, outs = self._geometry(list(X.shape[2:]))
        n, channels = X.shape[:2]

        def pad3(values, fill):
            return [fill] * (3 - len(values)) + list(values)

        x = self.device(0, X)
        planes = x.reshape((n * channels,) + tuple(pad3(list(X.shape[2:]), 1)))
        out = dev.empty((n, channels) + tuple(outs), X.dtype)
        ratio = float(np.float32(params[0].reshape(-1)[0])) / float(np.float32(params[2].reshape(-1)[0]))
        qmin, qmax = qbounds(X.dtype)
        k.average_pool(planes, scalar_int(params[1]), pad3(self.kernel_shape, 1), pad3(strides, 1), pad3(begins, 0),
                       pad3(ends, 0), pad3(outs, 1), self.count_include_pad, ratio, scalar_int(params[3]), qmin, qmax,
                       out)
        return out


# --------------------------------------------------------------------------- QGemm


@_contrib("QGemm")
class QGemm(CudaOp):
    """``Y = alpha * A B' + C`` on the integer GEMM; requantized when ``y_scale`` is given, else float32.

    B (the constant weights) is transposed if ``transB`` and centered once; a column-vector or scalar
    int32 C is the epilogue's bias. ``transA`` and a full-matrix C run the CPU twin.
    """
    device_inputs = (0,)
    validate_with_cpu_prepare = False   # the CPU prepare packs B for the CPU kernels

    def prepare_device(self, constants):
        self._check(constants, InvalidModel)

    def run_device(self, A, a_scale, a_zero_point, B, b_scale, b_zero_point, C=None, y_scale=None,
                   y_zero_point=None):
        host = [self.host(v) for v in (a_scale, a_zero_point, b_scale, b_zero_point, C, y_scale, y_zero_point)]
        a_scale_h, za, b_scale_h, zb, c, y_scale_h, zy = host
        b_shape_only = np.broadcast_to(np.zeros((), B.dtype), B.shape)
        self._check((A, a_scale_h, za, b_shape_only, b_scale_h, zb, c, y_scale_h, zy), InvalidArgument)
        if A.ndim != 2:
            raise InvalidArgument(f"A must be 2-D, got shape {list(A.shape)}")
        if A.dtype not in EIGHT_BIT or B.dtype not in EIGHT_BIT:
            raise InvalidArgument(f"expected int8/uint8 A and B, got {A.dtype} and {B.dtype}")
        if self.transA:
            raise dev.Unsupported("transA")
        M, K = A.shape
        N = B.shape[0] if self.transB else B.shape[1]
        K2 = B.shape[1] if self.transB else B.shape[0]
        if K != K2:
            raise InvalidArgument(f"QGemm shapes {list(A.shape)} and {list(B.shape)} (transB={self.transB}) "
                                  f"do not align ({K} != {K2})")
        if c is not None and c.dtype != np.int32:
            raise InvalidArgument(f"C must be int32, got {c.dtype}")
        if not (c is None or c.size == 1 or (c.shape[-1] == N and c.size == N)):
            raise dev.Unsupported(f"a C of shape {list(c.shape)} (not one value per column)")
        memo = self.__dict__.setdefault("_memos", {})
        centered, sums = memo.setdefault("b", _Memo()).get((B, b_zero_point), lambda: self._centered(B, zb, N))
        bias = memo.setdefault("c", _Memo()).get((C,), lambda: dev.upload(
            np.zeros(N, np.int32) if c is None else np.broadcast_to(c.reshape(-1), (N,)).astype(np.int32)))
        if sums is not None:
            bias = dp4a_biases(self).get(bias, scalar_int(za), sums)
        # The CPU twin's float32 arithmetic, so both providers scale by the same numbers.
        scale_ab = (np.float32(self.alpha) * np.asarray(a_scale_h, np.float32).reshape(())
                    * _vector_for(b_scale_h, N, "b_scale", InvalidArgument, "column of B").astype(np.float32))
        x = self.device(0, A)
        if y_scale is None:
            scale = memo.setdefault("scale", _Memo()).get((a_scale, b_scale), lambda: dev.upload(scale_ab))
            out = dev.empty((M, N), np.float32)
            return kg.matmul(x, scalar_int(za), centered, out, (), (), (), M, N, K, bias=bias, mult=scale,
                             dp4a=sums is not None)
        out_dtype = np.dtype(np.uint8) if zy is None else zy.dtype
        qmin, qmax = qbounds(out_dtype)
        mult = memo.setdefault("mult", _Memo()).get((a_scale, b_scale, y_scale), lambda: dev.upload(
            (scale_ab / np.asarray(y_scale_h, np.float32).reshape(())).astype(np.float64)))
        out = dev.empty((M, N), out_dtype)
        return kg.matmul(x, scalar_int(za), centered, out, (), (), (), M, N, K, bias=bias, mult=mult,
                         zy=scalar_int(zy), qmin=qmin, qmax=qmax, dp4a=sums is not None)

    def _centered(self, B, zb, N):
        b = self.host(B)
        b_matrix = np.ascontiguousarray(b.T if self.transB else b)
        centered = kg.center_columns(dev.upload(b_matrix), dev.upload(_column_zero_points(zb, N, b.dtype,
                                                                                          InvalidArgument)), N)
        return centered, dp4a_weight_sums(centered, rows_last=True)


# --------------------------------------------------------------------------- table ops


class _DeviceTable(CudaOp):
    """A unary 8-bit op as its CPU twin's 256-entry table, applied on the device."""
    device_inputs = (0,)

    def run_device(self, X, X_scale, X_zero_point=None, Y_scale=None, Y_zero_point=None):
        if X.dtype not in EIGHT_BIT:
            raise InvalidArgument(f"X must be int8 or uint8, got {X.dtype}")
        tables = self._tables.get((X_scale, X_zero_point, Y_scale, Y_zero_point))
        table = None if tables is None else tables.get(X.dtype)
        if table is None:   # parameters computed at run time: build the table as the CPU twin does
            params = [self.host(v) for v in (X_scale, X_zero_point, Y_scale, Y_zero_point)]
            _check_pairs((("X", params[0], params[1]), ("Y", params[2], params[3])), InvalidArgument, X.dtype)
            table = self._table(X.dtype, *params)
        memo = self.__dict__.setdefault("_device_table", _Memo())
        device_table = memo.get((table,), lambda: dev.upload(table.view(X.dtype)))
        return k.apply_table(self.device(0, X), device_table, dev.empty(X.shape, X.dtype))


def _register_table_ops():
    """Every CPU op built on the table base gets a device twin (its tables, its attributes)."""
    for domain, op_type, versions in registry.registered_ops(registry.CPU):
        for since in versions:
            cpu = registry.lookup(op_type, domain, since, registry.CPU)
            if isinstance(cpu, type) and issubclass(cpu, _TableOp):
                cls = type(f"{cpu.__name__}CUDA", (_DeviceTable, cpu), {"_cpu_class": cpu, "__module__": __name__})
                registry.register(op_type, since, domain, provider=registry.CUDA)(cls)


_register_table_ops()



# --------------------------------------------------------------------------- QLinearConcat


@_contrib("QLinearConcat")
class QLinearConcat(CudaOp):
    """Each input moved to the output's scale and zero point by a table (none when they agree),
    then one strided copy per input into its slice of the output."""

    def _reads_on_device(self, i):
        return i >= 2 and (i - 2) % 3 == 0     # the tensors of the triples; scales and zero points stay

    def run_device(self, Y_scale, Y_zero_point, *triples):
        if len(triples) % 3 or not triples:
            raise InvalidArgument(f"expected (tensor, scale, zero point) triples, got {len(triples)} inputs")
        y_params = (self.host(Y_scale), self.host(Y_zero_point))
        dtype = y_params[1].dtype
        parts = []
        for i in range(0, len(triples), 3):
            x = triples[i]
            if x.dtype != dtype:
                raise InvalidArgument(f"input {i // 3} has type {x.dtype}; Y_zero_point is {dtype}")
            x_params = (self.host(triples[i + 1]), self.host(triples[i + 2]))
            table = self._requantize_table(dtype, x.ndim, x_params, y_params)
            part = self.device(i + 2, x)
            parts.append(part if table is None else k.apply_table(part, table, dev.empty(x.shape, dtype)))
        rank = parts[0].ndim
        if not -rank <= self.axis < rank:
            raise InvalidArgument(f"axis={self.axis} is out of range for rank {rank}")
        return concatenate(parts, self.axis % rank)

    def _requantize_table(self, dtype, rank, x_params, y_params):
        """The device table mapping input bytes to output bytes; None when the parameters agree."""
        key = (dtype.str, rank) + tuple(float(np.asarray(v, np.float64).reshape(-1)[0]) for v in x_params + y_params)
        tables = self.__dict__.setdefault("_tables", {})
        if key not in tables:
            bits = np.arange(256, dtype=np.uint8).view(dtype).reshape((256,) + (1,) * (rank - 1))
            host = self._cpu_class.run(self, y_params[0], y_params[1], bits, *x_params).reshape(-1)
            tables[key] = None if np.array_equal(host, bits.reshape(-1)) else dev.upload(host)
        return tables[key]
