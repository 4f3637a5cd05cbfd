"""Matrix products on the CPU: ``matmul`` (numpy semantics) and ``gemm`` (with a fused epilogue).

Float32/float64 products call BLAS through ``np.dot`` inside Numba (one BLAS call per 2-D product, the
batch loop in Numba). Integer products are exact Numba loops that wrap on overflow exactly as numpy's
integer matmul does. float16/bfloat16 operands are computed in float32 and rounded once at the end.

Other kernels (Conv through im2col, the int8 helpers, planner fusions) call the two python-level
functions :func:`matmul` and :func:`gemm`; they take and return numpy arrays.

Layout: 2-D float products pass C- or F-contiguous operands straight to BLAS (a transposed weight is
an F-contiguous view, no copy); batched products use C-contiguous (batch, rows, cols) stacks plus an
index per output batch into each stack, so broadcast batches are never materialized.

Threads: BLAS runs single-threaded under qrt (see ``qrt/__init__.py``), so products big enough to
pay for a parallel launch are split across Numba's threads: bands of output rows (and batches),
each one single-threaded BLAS call. Products with a few rows (small-batch linear layers) are
memory-bound; Numba loops that stream the weight once run them, faster than BLAS's packing.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange

from ...errors import InvalidArgument
from .threads import num_threads

_BLAS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Epilogue activations: the code the kernel switches on. Fusions add an entry and a branch below.
ACTIVATIONS = {None: 0, "Relu": 1}

# Multiply-adds from which a product is split across threads: ~100 us of single-threaded work,
# well above the cost of waking the (passively waiting) OpenMP workers.
PARALLEL_MIN_MACS = 1 << 20
# Output columns per task of the few-rows kernel for transposed weights.
COLUMN_BLOCK = 256
# Rows up to which a product streams B in Numba instead of calling BLAS (see _product_2d); also the
# fewest rows per parallel band of a BLAS product. Only a B of FEW_ROWS_MIN_WEIGHTS elements or more
# costs enough to pack for this to matter.
FEW_ROWS = 16
FEW_ROWS_MIN_WEIGHTS = 1 << 16
# Rows up to which a C-contiguous B is streamed by _few_rows_times_matrix, which reads B once per
# row: measured against single-threaded OpenBLAS (K x N of 768 x 768 to 3072 x 768), streaming is
# 1.0-1.4x faster at 4 rows, 1.2-1.9x slower at 8 and 2.2-3.1x slower at 16. Constant weights do
# not come here on AVX-512 hosts (qrt.kernels.cpu.sgemm.PackedMatrix).
STREAM_MAX_ROWS = 4


# ---------------------------------------------------------------- kernels

@njit(cache=True)
def _blas_2d(a, b, out):
    np.dot(a, b, out)


@njit(cache=True)
def _blas_batches(a, b, a_index, b_index, out):
    for i in range(out.shape[0]):
        np.dot(a[a_index[i]], b[b_index[i]], out[i])


@njit(cache=True, parallel=True)
def _blas_row_bands(a, b, out, bands):
    """out = a @ b with the rows split in ``bands`` single-threaded BLAS calls run in parallel."""
    rows = a.shape[0]
    step = (rows + bands - 1) // bands
    for band in prange(bands):
        first = band * step
        last = min(rows, first + step)
        if first < last:
            np.dot(a[first:last], b, out[first:last])


@njit(cache=True, parallel=True)
def _blas_batches_parallel(a, b, a_index, b_index, out, bands):
    """Batched products, parallel over (batch, band of rows) tasks."""
    count, rows = out.shape[0], out.shape[1]
    step = (rows + bands - 1) // bands
    for task in prange(count * bands):
        i = task // bands
        first = (task % bands) * step
        last = min(rows, first + step)
        if first < last:
            np.dot(a[a_index[i], first:last], b[b_index[i]], out[i, first:last])


@njit(cache=True, parallel=True, fastmath={"contract"})
def _few_rows_times_matrix(a, b, out, tasks):
    """out = a @ b for a (M, K) with few rows and b (K, N) C-contiguous.

    The product is memory-bound: what matters is streaming b once, in order. Each of ``tasks``
    parallel tasks takes a contiguous range of k, so it reads whole rows of b front to back, and
    accumulates M partial rows (four k per pass, so each partial row is loaded and stored once per
    four rows of b); the partial sums are then added.
    """
    rows, depth = a.shape
    cols = b.shape[1]
    partial = np.empty((tasks, rows, cols), dtype=out.dtype)
    step = (depth + tasks - 1) // tasks
    for task in prange(tasks):
        first = task * step
        last = min(depth, first + step)
        for m in range(rows):
            target = partial[task, m]
            for n in range(cols):
                target[n] = 0
            k = first
            while k + 4 <= last:
                a0 = a[m, k]
                a1 = a[m, k + 1]
                a2 = a[m, k + 2]
                a3 = a[m, k + 3]
                b0 = b[k]
                b1 = b[k + 1]
                b2 = b[k + 2]
                b3 = b[k + 3]
                for n in range(cols):
                    target[n] = (((target[n] + a0 * b0[n]) + a1 * b1[n]) + a2 * b2[n]) + a3 * b3[n]
                k += 4
            while k < last:
                av = a[m, k]
                b0 = b[k]
                for n in range(cols):
                    target[n] += av * b0[n]
                k += 1
    for m in range(rows):
        for n in range(cols):
            total = partial[0, m, n]
            for task in range(1, tasks):
                total += partial[task, m, n]
            out[m, n] = total


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})
def _few_rows_times_transposed(a, w, out):
    """out = a @ w.T for a (M, K) with few rows and w (N, K) C-contiguous (a transposed weight):
    one dot product per output, vectorized along K, parallel over blocks of output columns."""
    rows, depth = a.shape
    cols = w.shape[0]
    blocks = (cols + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for block in prange(blocks):
        first = block * COLUMN_BLOCK
        last = min(cols, first + COLUMN_BLOCK)
        for n in range(first, last):
            weights = w[n]
            for m in range(rows):
                source = a[m]
                total = out.dtype.type(0.0)
                for k in range(depth):
                    total += source[k] * weights[k]
                out[m, n] = total


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

@functools.lru_cache(maxsize=64)
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
    if a.dtype not in _BLAS_DTYPES:
        _int_product(np.ascontiguousarray(a), np.ascontiguousarray(b), out)
        return
    rows, depth = a.shape
    cols = b.shape[1]
    if depth == 0:
        out[...] = 0
        return
    if not out.size:
        return
    threads = num_threads()
    parallel = threads > 1 and rows * depth * cols >= PARALLEL_MIN_MACS
    streams = depth * cols >= FEW_ROWS_MIN_WEIGHTS and (1 < rows <= FEW_ROWS or (rows == 1 and parallel))
    transposed = b.flags.f_contiguous and not b.flags.c_contiguous
    if streams and not transposed and rows > STREAM_MAX_ROWS:
        streams = False
    if streams:
        # OpenBLAS packs all of B for every call, which dominates when A has few rows (M=2..16
        # ran 2-4x slower than streaming B once); a single row alone goes to BLAS's gemv unless
        # splitting it across threads pays.
        tasks = threads if parallel else 1
        a = np.ascontiguousarray(a)
        if transposed:
            _few_rows_times_transposed(a, b.T, out)
        else:
            _few_rows_times_matrix(a, np.ascontiguousarray(b), out, tasks)
    elif parallel:
        bands = min(threads, max(1, rows // FEW_ROWS))
        _blas_row_bands(np.ascontiguousarray(a), _blas_operand(b), out, bands)
    else:
        _blas_2d(_blas_operand(a), _blas_operand(b), out)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy.matmul semantics: 1-D operands are promoted and the added axis removed, batch axes broadcast."""
    if a.dtype != b.dtype:
        raise InvalidArgument(f"MatMul operands must have one dtype, got {a.dtype} and {b.dtype}")
    result_dtype = a.dtype
    work = compute_dtype(result_dtype)
    if work != result_dtype:
        a, b = a.astype(work), b.astype(work)
    a_shape, b_shape, batch, rows, k, n, out_shape = _bind_matmul(a.shape, b.shape)
    if a.ndim == 1:
        a = a.reshape(a_shape)
    if b.ndim == 1:
        b = b.reshape(b_shape)
    if rows is not None:
        # A stack of rows times one matrix is one 2-D product over all rows (linear layers).
        out = np.empty((rows, n), dtype=work)
        _product_2d(a.reshape(rows, k), b, out)
    else:
        out = np.empty(batch + (a_shape[-2], n), dtype=work)
        _batched(a, b, batch, out)
    out = out.reshape(out_shape)
    return out if work == result_dtype else out.astype(result_dtype)


@functools.lru_cache(maxsize=512)
def _bind_matmul(a_shape, b_shape):
    """Everything about a product that depends on the operand shapes only, worked out once per pair.

    Returns the operands' shapes with 1-D ones promoted, the broadcast batch shape, the row count
    when the product is one 2-D product (B is a matrix) or None, K, N and the result's shape.
    """
    if not a_shape or not b_shape:
        raise InvalidArgument(f"MatMul operands must have rank >= 1, got shapes {a_shape} and {b_shape}")
    a2 = (1,) + a_shape if len(a_shape) == 1 else a_shape
    b2 = b_shape + (1,) if len(b_shape) == 1 else b_shape
    m, k = a2[-2:]
    k2, n = b2[-2:]
    if k != k2:
        raise InvalidArgument(f"MatMul inner dimensions differ: {a_shape} x {b_shape}")
    if len(b2) == 2:
        batch = a2[:-2]
    else:
        try:
            batch = np.broadcast_shapes(a2[:-2], b2[:-2])
        except ValueError:
            raise InvalidArgument(f"MatMul batch dimensions do not broadcast: {a_shape} x {b_shape}") from None
    if len(a_shape) == 1 and len(b_shape) == 1:
        out_shape = batch
    elif len(a_shape) == 1:
        out_shape = batch + (n,)
    elif len(b_shape) == 1:
        out_shape = batch + (m,)
    else:
        out_shape = batch + (m, n)
    rows = math.prod(a2[:-1]) if len(b2) == 2 else None
    return a2, b2, batch, rows, k, n, out_shape


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
        threads = num_threads()
        if k == 0:
            flat[...] = 0
        elif threads < 2 or count * m * k * n < PARALLEL_MIN_MACS:
            _blas_batches(a_stack, b_stack, a_index, b_index, flat)
        else:
            # Enough (batch, row band) tasks to keep every thread busy when batches are few.
            bands = min(max(1, -(-threads // count)), max(1, m // FEW_ROWS))
            _blas_batches_parallel(a_stack, b_stack, a_index, b_index, flat, bands)
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
        c = _bias_2d(bias, m, n)
        if c.dtype != work:
            c = c.astype(work)
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


@functools.lru_cache(maxsize=256)
def _epilogue_scalars(alpha, beta, work, integer):
    if not integer:
        return work.type(alpha), work.type(beta)
    if float(alpha).is_integer() and float(beta).is_integer():
        return work.type(int(alpha)), work.type(int(beta))
    # Non-integral factors on integer data: scale in float64, then truncate as a cast would.
    return float(alpha), float(beta)


def _bias_2d(bias, m, n):
    if bias.ndim == 1 and bias.shape[0] in (1, n):
        return bias.reshape(1, bias.shape[0])     # a row vector, the common case: a view, no checks left
    bias = np.asarray(bias)
    if bias.ndim > 2:
        raise InvalidArgument(f"Gemm bias C of shape {bias.shape} does not broadcast to ({m}, {n})")
    shaped = bias.reshape((1,) * (2 - bias.ndim) + bias.shape)
    if shaped.shape[0] not in (1, m) or shaped.shape[1] not in (1, n):
        raise InvalidArgument(f"Gemm bias C of shape {bias.shape} does not broadcast to ({m}, {n})")
    return np.ascontiguousarray(shaped)
