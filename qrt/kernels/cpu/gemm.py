"""Matrix products on the CPU: ``matmul`` (numpy semantics) and ``gemm`` (with a fused epilogue).

Float32/float64 products call BLAS through ``np.dot`` inside Numba (one BLAS call per 2-D product, the
batch loop in Numba). Integer products are exact Numba loops that wrap on overflow exactly as numpy's
integer matmul does. float16/bfloat16 operands are computed in float32 and rounded once at the end.

Other kernels (Conv through im2col, the int8 helpers, planner fusions) call the two python-level
functions :func:`matmul` and :func:`gemm`; they take and return numpy arrays.

Layout: 2-D float products pass C- or F-contiguous operands straight to BLAS (a transposed weight is
an F-contiguous view, no copy); batched products use C-contiguous (batch, rows, cols) stacks plus an
index per output batch into each stack, so broadcast batches are never materialized.
"""
from __future__ import annotations

import functools
import math
import numpy as np
from numba import njit

from ...errors import InvalidArgument

_BLAS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Epilogue activations: the code the kernel switches on. Fusions add an entry and a branch below.
ACTIVATIONS = {None: 0, "Relu": 1}


# ---------------------------------------------------------------- kernels

@njit(cache=True)
def _blas_2d(a, b, out):
    np.dot(a, b, out)


@njit(cache=True)
def _blas_batches(a, b, a_index, b_index, out):
    for i in range(out.shape[0]):
        np.dot(a[a_index[i]], b[b_index[i]], out[i])


@njit(cache=True)
def _int_product(a, b, out):
    # Row-of-A times B as axpy updates over K: the inner loop runs along contiguous rows of B and
    # the output, which LLVM vectorizes; integer addition is associative, so no fastmath is needed.
    rows, depth = a.shape
    cols = b.shape[1]
    for m in range(rows):
        for n in range(cols):
            out[m, n] = 0
        for k in range(depth):
            av = a[m, k]
            if av == 0:
                continue
            for n in range(cols):
                out[m, n] += av * b[k, n]


@njit(cache=True)
def _int_batches(a, b, a_index, b_index, out):
    for i in range(out.shape[0]):
        _int_product(a[a_index[i]], b[b_index[i]], out[i])


@njit(cache=True)
def _epilogue(out, alpha, c, beta, activation):
    """out = act(alpha * out + beta * c), ``c`` a (1|M, 1|N) array broadcast over ``out`` (M, N)."""
    rows, cols = out.shape
    c_rows, c_cols = c.shape
    for m in range(rows):
        cm = m if c_rows > 1 else 0
        if c_cols > 1:
            for n in range(cols):
                out[m, n] = alpha * out[m, n] + beta * c[cm, n]
        else:
            shift = beta * c[cm, 0]
            for n in range(cols):
                out[m, n] = alpha * out[m, n] + shift
        if activation == 1:
            for n in range(cols):
                if out[m, n] < 0:
                    out[m, n] = 0


@njit(cache=True)
def _scale_activate(out, alpha, activation):
    rows, cols = out.shape
    for m in range(rows):
        for n in range(cols):
            v = alpha * out[m, n]
            if activation == 1 and v < 0:
                v = 0
            out[m, n] = v


# ---------------------------------------------------------------- python-level API

def compute_dtype(dtype):
    """The dtype a product is computed in: itself for BLAS floats and integers, float32 otherwise."""
    dtype = np.dtype(dtype)
    if dtype in _BLAS_DTYPES or dtype.kind in "iu":
        return dtype
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    raise InvalidArgument(f"matrix product is not defined for dtype {dtype}")


def _blas_operand(x):
    """A 2-D array BLAS takes as is: C- or F-contiguous (a transposed view stays F, no copy)."""
    if x.flags.c_contiguous or x.flags.f_contiguous:
        return x
    return np.ascontiguousarray(x)


def _product_2d(a, b, out):
    if a.dtype in _BLAS_DTYPES:
        if a.shape[1] == 0:
            out[...] = 0
        elif out.size:
            _blas_2d(_blas_operand(a), _blas_operand(b), out)
    else:
        _int_product(np.ascontiguousarray(a), np.ascontiguousarray(b), out)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy.matmul semantics: 1-D operands are promoted and the added axis removed, batch axes broadcast."""
    if a.ndim == 0 or b.ndim == 0:
        raise InvalidArgument(f"MatMul operands must have rank >= 1, got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise InvalidArgument(f"MatMul operands must have one dtype, got {a.dtype} and {b.dtype}")
    result_dtype = a.dtype
    work = compute_dtype(result_dtype)
    if work != result_dtype:
        a, b = a.astype(work), b.astype(work)

    a2 = a[np.newaxis, :] if a.ndim == 1 else a
    b2 = b[:, np.newaxis] if b.ndim == 1 else b
    m, k = a2.shape[-2:]
    k2, n = b2.shape[-2:]
    if k != k2:
        raise InvalidArgument(f"MatMul inner dimensions differ: {a.shape} x {b.shape}")
    if b2.ndim == 2:
        batch = a2.shape[:-2]
    else:
        try:
            batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        except ValueError:
            raise InvalidArgument(f"MatMul batch dimensions do not broadcast: {a.shape} x {b.shape}") from None

    out = np.empty(batch + (m, n), dtype=work)
    if b2.ndim == 2:
        # A stack of rows times one matrix is one 2-D product over all rows (linear layers).
        rows = math.prod(a2.shape[:-1])
        _product_2d(a2.reshape(rows, k), b2, out.reshape(rows, n))
    else:
        _batched(a2, b2, batch, out)

    if a.ndim == 1 and b.ndim == 1:
        out = out.reshape(batch)
    elif a.ndim == 1:
        out = out.reshape(batch + (n,))
    elif b.ndim == 1:
        out = out.reshape(batch + (m,))
    return out if work == result_dtype else out.astype(result_dtype)


def _batched(a, b, batch, out):
    m, k = a.shape[-2:]
    n = b.shape[-1]
    count = math.prod(batch)
    if count == 0 or out.size == 0:
        return
    a_stack = np.ascontiguousarray(a).reshape((-1, m, k))
    b_stack = np.ascontiguousarray(b).reshape((-1, k, n))
    a_index = _batch_index(a.shape[:-2], batch)
    b_index = _batch_index(b.shape[:-2], batch)
    flat = out.reshape((count, m, n))
    if out.dtype in _BLAS_DTYPES:
        if k == 0:
            flat[...] = 0
        else:
            _blas_batches(a_stack, b_stack, a_index, b_index, flat)
    else:
        _int_batches(a_stack, b_stack, a_index, b_index, flat)


@functools.lru_cache(maxsize=256)
def _batch_index(shape, batch):
    """For each batch of the broadcast result (C order), the index into an operand's own batch stack.

    Models repeat the same few shapes on every run, so the answers are cached (read-only).
    """
    own = (1,) * (len(batch) - len(shape)) + tuple(shape)
    positions = np.arange(math.prod(own), dtype=np.int64).reshape(own)
    index = np.ascontiguousarray(np.broadcast_to(positions, batch)).reshape(-1)
    index.flags.writeable = False
    return index


def gemm(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None, alpha: float = 1.0, beta: float = 1.0,
         trans_a: bool = False, trans_b: bool = False, activation: str | None = None) -> np.ndarray:
    """``act(alpha * op(a) @ op(b) + beta * bias)`` for 2-D ``a`` and ``b``, ``op`` an optional transpose.

    ``bias`` broadcasts unidirectionally to the (M, N) result: a scalar, (N,), (1, N), (M, 1) or (M, N).
    ``activation`` is ``None`` or ``"Relu"`` (applied in the same pass as the bias).
    """
    if a.ndim != 2 or b.ndim != 2:
        raise InvalidArgument(f"Gemm operands must be 2-D, got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise InvalidArgument(f"Gemm operands must have one dtype, got {a.dtype} and {b.dtype}")
    if activation not in ACTIVATIONS:
        raise InvalidArgument(f"gemm activation must be one of {sorted(k for k in ACTIVATIONS if k)} or None")
    result_dtype = a.dtype
    work = compute_dtype(result_dtype)
    if work != result_dtype:
        a, b = a.astype(work), b.astype(work)
    a_op = a.T if trans_a else a
    b_op = b.T if trans_b else b
    m, k = a_op.shape
    if b_op.shape[0] != k:
        raise InvalidArgument(f"Gemm inner dimensions differ: op(A) is {a_op.shape}, op(B) is {b_op.shape}")
    n = b_op.shape[1]
    out = np.empty((m, n), dtype=work)
    _product_2d(a_op, b_op, out)

    act = ACTIVATIONS[activation]
    use_bias = bias is not None and beta != 0
    integer = work.kind in "iu"
    if use_bias:
        c = _bias_2d(bias, m, n).astype(work, copy=False)
        alpha_v, beta_v = _epilogue_scalars(alpha, beta, work, integer)
        if integer and isinstance(alpha_v, float):
            wide = out.astype(np.float64)
            _epilogue(wide, alpha_v, c.astype(np.float64), beta_v, act)
            out = wide.astype(work)
        else:
            _epilogue(out, alpha_v, c, beta_v, act)
    elif alpha != 1 or act:
        alpha_v, _ = _epilogue_scalars(alpha, 1.0, work, integer)
        if integer and isinstance(alpha_v, float):
            wide = out.astype(np.float64)
            _scale_activate(wide, alpha_v, act)
            out = wide.astype(work)
        else:
            _scale_activate(out, alpha_v, act)
    return out if work == result_dtype else out.astype(result_dtype)


def _epilogue_scalars(alpha, beta, work, integer):
    if not integer:
        return work.type(alpha), work.type(beta)
    if float(alpha).is_integer() and float(beta).is_integer():
        return work.type(int(alpha)), work.type(int(beta))
    # Non-integral factors on integer data: scale in float64, then truncate as a cast would.
    return float(alpha), float(beta)


def _bias_2d(bias, m, n):
    bias = np.asarray(bias)
    if bias.ndim > 2:
        raise InvalidArgument(f"Gemm bias C of shape {bias.shape} does not broadcast to ({m}, {n})")
    shaped = bias.reshape((1,) * (2 - bias.ndim) + bias.shape)
    if shaped.shape[0] not in (1, m) or shaped.shape[1] not in (1, n):
        raise InvalidArgument(f"Gemm bias C of shape {bias.shape} does not broadcast to ({m}, {n})")
    return np.ascontiguousarray(shaped)
