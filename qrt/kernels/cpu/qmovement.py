"""int8 data movement: QLinearConcat as one pass over the output.

Requantizing an 8-bit input to the output's scale and zero point is a function of one byte, so it
is a 256-byte table built once (by :func:`qrt.kernels.cpu.qelementwise.requantize` itself, so the
table holds exactly what computing each element would give); an input whose parameters already
match is copied. Any concatenation axis is the same loop: with ``outer`` the product of the dims
before the axis, each input is an (outer, inner) block written at a column offset of the
(outer, total) output, so a channels-last concatenation (last axis) and a channels-first one
(axis 1) cost the same single pass.
"""
import numpy as np
from numba import njit, prange

from .qelementwise import _lookup64

# Output bytes per parallel task: large enough to pay for the task, small enough to spread.
_TASK_BYTES = 1 << 15


@njit(cache=True, parallel=True)
def concat_block(x, table, mapped, out, offset):
    """Rows of ``x`` (outer, inner) into columns ``offset ...`` of ``out`` (outer, total), each byte
    through ``table`` when ``mapped``."""
    outer, inner = x.shape
    rows = max(1, _TASK_BYTES // max(inner, 1))
    for task in prange((outer + rows - 1) // rows):
        for r in range(task * rows, min(outer, (task + 1) * rows)):
            src = x[r]
            dst = out[r, offset:offset + inner]
            if mapped:
                for i in range(inner):
                    dst[i] = table[src[i]]
            else:
                for i in range(inner):
                    dst[i] = src[i]


@njit(cache=True, parallel=True)
def concat_block_vbmi(x, table, out, offset):
    """:func:`concat_block` for an input mapped through ``table``, 64 bytes of a row at a time with
    ``vpermi2b`` (only compiled where :data:`qrt.kernels.cpu.qelementwise.TABLE_VBMI`): a channels-last
    concatenation's rows are a few dozen channels, too short for the flat lookup."""
    outer, inner = x.shape
    full = inner - inner % 64
    rows = max(1, _TASK_BYTES // max(inner, 1))
    for task in prange((outer + rows - 1) // rows):
        for r in range(task * rows, min(outer, (task + 1) * rows)):
            src = x[r]
            dst = out[r, offset:offset + inner]
            for start in range(0, full, 64):
                _lookup64(src, table, dst, start)
            for i in range(full, inner):
                dst[i] = table[src[i]]
