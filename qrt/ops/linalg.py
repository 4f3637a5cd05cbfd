"""Linear algebra: MatMul, Gemm and Einsum.

MatMul and Gemm call :mod:`qrt.kernels.cpu.gemm`. Einsum lowers every equation to views and matrix
products: repeated indices in one operand become a strided diagonal view, an index only one operand
has (and the output lacks) is summed as a product with a ones vector, and each pair of operands is
contracted as one batched matmul ``(batch, M, K) x (batch, K, N)`` after transposing the shared
batch indices to the front and the contracted ones to the inner axis.
"""
from __future__ import annotations

import math
import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import InvalidArgument, InvalidModel
from ..kernels.cpu import gemm as kernels
from ..kernels.cpu import sgemm
from ..registry import register
from .base import Op


@register("MatMul", 1)
class MatMul(Op):
    _packed = None     # a constant float32 2-D B packed once (sgemm.PackedMatrix), by prepare()

    def prepare(self, constants):
        if sgemm.packs_matrix(constants[1]):
            self._packed = sgemm.PackedMatrix(constants[1])

    def run(self, a, b):
        packed = self._packed
        if packed is not None and a.dtype == np.float32 and a.ndim >= 2 and a.shape[-1] == packed.depth:
            if a.ndim == 2:
                return packed.product(a)
            return packed.product(a.reshape(-1, packed.depth)).reshape(a.shape[:-1] + (packed.cols,))
        return kernels.matmul(a, b)


@register("Gemm", 7)
class Gemm(Op):
    """Y = alpha * op(A) @ op(B) + beta * C, C broadcast unidirectionally to (M, N).

    C is a required input through opset 10 and optional from 11 on (:class:`Gemm11`).
    """

    c_optional = False

    def __init__(self, alpha=1.0, beta=1.0, transA=0, transB=0):
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.trans_a = bool(transA)
        self.trans_b = bool(transB)

    _packed = None     # op(B), constant float32, packed once (sgemm.PackedMatrix), by prepare()
    _constant_c = None     # a constant C, and beta * C padded as the packed kernel reads it, by prepare()
    _packed_bias = None

    def prepare(self, constants):
        b = constants[1]
        if self.alpha == 1.0 and sgemm.packs_matrix(b):
            self._packed = sgemm.PackedMatrix(b.T if self.trans_b else b)
            c = constants[2] if len(constants) > 2 else None
            if c is not None:
                self._packed_bias = self._column_bias(c)
                self._constant_c = c

    def run(self, a, b, c=None):
        if c is None and not self.c_optional:
            raise InvalidArgument("Gemm before opset 11 requires input C")
        out = self._packed_product(a, c, 0, 0.0, 0.0)
        if out is not None:
            return out
        return kernels.gemm(a, b, c, alpha=self.alpha, beta=self.beta, trans_a=self.trans_a,
                            trans_b=self.trans_b)

    def _column_bias(self, c):
        """beta * C padded for the packed kernel, or None where C is not one value per column (or beta is 0)."""
        packed = self._packed
        if self.beta == 0 or c.dtype != np.float32 or c.size not in (1, packed.cols) or c.ndim > 2 \
                or (c.ndim == 2 and c.shape[0] != 1):
            return None
        return packed.padded_bias(np.broadcast_to(c.reshape(-1), (packed.cols,)) * np.float32(self.beta))

    def _packed_product(self, a, c, act, act_alpha, act_beta):
        """act(op(A) @ B + beta * C) on the packed weight, or None where it does not apply: a float32
        2-D A of the right depth and C absent or one value per column."""
        packed = self._packed
        if packed is None or a.dtype != np.float32 or a.ndim != 2:
            return None
        a_op = a.T if self.trans_a else a
        if a_op.shape[1] != packed.depth:
            return None
        bias = None
        if c is not None and self.beta != 0:
            bias = self._packed_bias if c is self._constant_c else self._column_bias(c)
            if bias is None:
                return None
        return packed.product(a_op, bias, act, act_alpha, act_beta)


@register("Gemm", 6)
class Gemm6(Gemm):
    """Opset 6: C is required and ``broadcast`` says whether it may be smaller than (M, N)."""

    def __init__(self, alpha=1.0, beta=1.0, broadcast=0, transA=0, transB=0):
        super().__init__(alpha=alpha, beta=beta, transA=transA, transB=transB)


@register("Gemm", 11)
class Gemm11(Gemm):
    c_optional = True


# ---------------------------------------------------------------- Einsum

_ELLIPSIS = "..."


def _parse_term(term: str, equation: str):
    """Labels of one term: letters as themselves, the ellipsis as one ``"..."`` marker."""
    labels = []
    i = 0
    while i < len(term):
        if term.startswith(_ELLIPSIS, i):
            if _ELLIPSIS in labels:
                raise InvalidModel(f"Einsum equation {equation!r}: a term has more than one ellipsis")
            labels.append(_ELLIPSIS)
            i += 3
        elif term[i].isascii() and term[i].isalpha():
            labels.append(term[i])
            i += 1
        else:
            raise InvalidModel(f"Einsum equation {equation!r}: invalid character {term[i]!r}")
    return labels


class EinsumEquation:
    """A parsed equation: per-operand label lists and the output labels, the ellipsis still symbolic."""

    def __init__(self, equation: str):
        self.equation = equation
        text = equation.replace(" ", "")
        if text.count("->") > 1:
            raise InvalidModel(f"Einsum equation {equation!r} has more than one '->'")
        lhs, arrow, rhs = text.partition("->")
        self.inputs = [_parse_term(t, equation) for t in lhs.split(",")]
        self.explicit = bool(arrow)
        self.output = _parse_term(rhs, equation) if arrow else None
        if self.output is not None:
            letters = [c for c in self.output if c != _ELLIPSIS]
            if len(set(letters)) != len(letters):
                raise InvalidModel(f"Einsum equation {equation!r}: an output index is repeated")
            known = {c for term in self.inputs for c in term}
            missing = [c for c in self.output if c not in known]
            if missing:
                raise InvalidModel(f"Einsum equation {equation!r}: output indices {missing} appear in no input")

    def bind(self, shapes):
        """Concrete labels for these input shapes: each ellipsis becomes right-aligned labels '0', '1', ..."""
        if len(shapes) != len(self.inputs):
            raise InvalidArgument(f"Einsum equation {self.equation!r} has {len(self.inputs)} term(s), "
                                  f"got {len(shapes)} input(s)")
        ellipsis_rank = 0
        per_input = []
        for term, shape in zip(self.inputs, shapes):
            letters = len([c for c in term if c != _ELLIPSIS])
            if _ELLIPSIS in term:
                extra = len(shape) - letters
                if extra < 0:
                    raise InvalidArgument(f"Einsum term {''.join(term)!r} needs rank >= {letters}, got {shape}")
                ellipsis_rank = max(ellipsis_rank, extra)
            elif letters != len(shape):
                raise InvalidArgument(f"Einsum term {''.join(term)!r} has {letters} indices but its input has "
                                      f"shape {shape}")
            per_input.append(term)
        ellipsis_labels = [str(d) for d in range(ellipsis_rank)]
        bound = []
        for term, shape in zip(per_input, shapes):
            labels = []
            for c in term:
                if c == _ELLIPSIS:
                    extra = len(shape) - (len(term) - 1)
                    labels.extend(ellipsis_labels[ellipsis_rank - extra:])
                else:
                    labels.append(c)
            bound.append(labels)
        if self.explicit:
            output = []
            for c in self.output:
                output.extend(ellipsis_labels if c == _ELLIPSIS else [c])
        else:
            counts = {}
            for term in self.inputs:
                for c in term:
                    if c != _ELLIPSIS:
                        counts[c] = counts.get(c, 0) + 1
            output = ellipsis_labels + sorted(c for c, n in counts.items() if n == 1)
        return bound, output


def _label_sizes(bound, arrays, equation):
    sizes = {}
    for labels, x in zip(bound, arrays):
        for label, size in zip(labels, x.shape):
            known = sizes.get(label)
            if known is None or known == 1:
                sizes[label] = size
            elif size not in (1, known):
                raise InvalidArgument(f"Einsum equation {equation!r}: index {label!r} has sizes {known} and {size}")
    return sizes


def _diagonal(x, labels):
    """Collapse repeated labels of one operand into one axis (a strided view, no copy)."""
    if len(set(labels)) == len(labels):
        return x, labels
    order = []
    for label in labels:
        if label not in order:
            order.append(label)
    shape, strides = [], []
    for label in order:
        axes = [i for i, l in enumerate(labels) if l == label]
        sizes = {x.shape[i] for i in axes}
        if len(sizes) != 1:
            raise InvalidArgument(f"Einsum: repeated index {label!r} spans dimensions of sizes {sorted(sizes)}")
        shape.append(x.shape[axes[0]])
        strides.append(sum(x.strides[i] for i in axes))
    return as_strided(x, shape=tuple(shape), strides=tuple(strides), writeable=False), order


def _sum_out(x, labels, drop):
    """Sum the axes whose labels are in ``drop``: a product of the (keep, drop)-flattened array with ones."""
    drop_axes = [i for i, l in enumerate(labels) if l in drop]
    if not drop_axes:
        return x, labels
    keep_axes = [i for i in range(len(labels)) if i not in drop_axes]
    kept = [labels[i] for i in keep_axes]
    keep_shape = tuple(x.shape[i] for i in keep_axes)
    reduced = math.prod([x.shape[i] for i in drop_axes])
    rows = math.prod(keep_shape)
    flat = np.transpose(x, keep_axes + drop_axes).reshape((rows, reduced))
    summed = kernels.matmul(flat, np.ones(reduced, dtype=x.dtype))
    return summed.reshape(keep_shape), kept


def _squeeze_labels(x, labels, drop):
    axes = tuple(i for i, l in enumerate(labels) if l in drop)
    return np.squeeze(x, axis=axes) if axes else x, [l for l in labels if l not in drop]


def _contract(a, la, b, lb, keep):
    """The pairwise product of two labelled operands, summing shared labels not in ``keep``."""
    shared = [l for l in la if l in lb]
    contracted = [l for l in shared if l not in keep]
    # A contracted index of size 1 on one side only broadcasts: sum the other side's axis first.
    a_single = {l for l in contracted if a.shape[la.index(l)] == 1 and b.shape[lb.index(l)] != 1}
    b_single = {l for l in contracted if b.shape[lb.index(l)] == 1 and a.shape[la.index(l)] != 1}
    if a_single or b_single:
        a, la = _squeeze_labels(a, la, a_single)
        b, lb = _sum_out(b, lb, a_single)
        b, lb = _squeeze_labels(b, lb, b_single)
        a, la = _sum_out(a, la, b_single)
        shared = [l for l in la if l in lb]
        contracted = [l for l in shared if l not in keep]
    batch = [l for l in shared if l in keep]
    a_only = [l for l in la if l not in lb]
    b_only = [l for l in lb if l not in la]

    a_t = np.transpose(a, [la.index(l) for l in batch + a_only + contracted])
    b_t = np.transpose(b, [lb.index(l) for l in batch + contracted + b_only])
    nb = len(batch)
    a_batch = a_t.shape[:nb]
    b_batch = b_t.shape[:nb]
    a_rows = a_t.shape[nb:nb + len(a_only)]
    b_cols = b_t.shape[nb + len(contracted):]
    depth = math.prod(a_t.shape[nb + len(a_only):])
    m = math.prod(a_rows)
    n = math.prod(b_cols)
    product = kernels.matmul(a_t.reshape(a_batch + (m, depth)), b_t.reshape(b_batch + (depth, n)))
    out_batch = product.shape[:nb]
    return product.reshape(out_batch + a_rows + b_cols), batch + a_only + b_only


def einsum(equation: EinsumEquation, arrays):
    bound, output = equation.bind([x.shape for x in arrays])
    _label_sizes(bound, arrays, equation.equation)
    result_dtype = arrays[0].dtype
    for x in arrays[1:]:
        if x.dtype != result_dtype:
            raise InvalidArgument(f"Einsum inputs must share one dtype, got {[str(x.dtype) for x in arrays]}")
    work = kernels.compute_dtype(result_dtype)
    operands = []
    for x, labels in zip(arrays, bound):
        x = x.astype(work) if x.dtype != work else x
        operands.append(_diagonal(x, labels))

    def needed_after(position):
        later = set(output)
        for _, labels in operands[position + 1:]:
            later.update(labels)
        return later

    # Indices that only one operand has and the output lacks are summed before any product.
    reduced = []
    for i, (x, labels) in enumerate(operands):
        elsewhere = set(output)
        for j, (_, other) in enumerate(operands):
            if j != i:
                elsewhere.update(other)
        reduced.append(_sum_out(x, labels, {l for l in labels if l not in elsewhere}))
    operands = reduced

    result, labels = operands[0]
    for position in range(1, len(operands)):
        b, lb = operands[position]
        result, labels = _contract(result, labels, b, lb, needed_after(position))

    result, labels = _sum_out(result, labels, {l for l in labels if l not in output})
    result = np.transpose(result, [labels.index(l) for l in output]) if labels else result
    # ascontiguousarray would turn a 0-d result into shape (1,).
    return np.ascontiguousarray(result).reshape(result.shape).astype(result_dtype, copy=False)


@register("Einsum", 12)
class Einsum(Op):
    def __init__(self, equation=None):
        if equation is None:
            raise InvalidModel("Einsum requires the 'equation' attribute")
        self.equation = EinsumEquation(equation)

    def run(self, *inputs):
        return einsum(self.equation, inputs)
