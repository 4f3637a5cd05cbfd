"""Ranges a tensor needs when every reader saturates: SiLU and Sigmoid inputs.

A calibrated MinMax range covers every value the calibration data produced, but where every reader
of a tensor maps all values beyond some point to (almost) the same result, those values need no
int8 levels of their own. The HardSwish rule (:func:`qrt.quantization.static.hardswish_floor`) is
the exact case: HardSwish is 0 below -3. Sigmoid and SiLU (x * sigmoid(x)) only approach their
limits, so the bound is where the difference from the limit is below a quarter of a step of the
reader's own quantized output (half a step would already round to the limit; the other half is a
margin for the requantization's own rounding): clamping the input there changes no value the output's
QuantizeLinear writes (the output range always includes the limit, 0 or 1, which MinMax ranges do).
For SiLU the floor is also where the Sigmoid's own int8 output is 0: in QDQ form the product reads the
quantized Sigmoid, and one step of it times a large negative x is not small.

Measured on ddddocr's YOLOX detector, whose 80 Conv outputs are each read by SiLU only and swing to
-48 where SiLU's output range starts at -0.28 (floors near -7): output SQNR 17.7 -> 21.6 dB with
per-channel Conv weights, the default (tests/test_real_models_defaults.py). With per-tensor weights the
same floors lowered it, 11.5 -> 10.8 dB (at half a step and without the Sigmoid condition: 9.8 dB); why
was not found, and the rules come together (OnnxruntimeParity turns both off).
"""
from __future__ import annotations

import math

from .graph import GraphIndex


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _solve(f, low: float, high: float) -> float:
    """The x in [low, high] where the increasing function f crosses 0 (bisection)."""
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if f(mid) < 0 else (low, mid)
    return high


def _silu_mul(g: GraphIndex, node, x: str):
    """The Mul of SiLU(x) = x * Sigmoid(x) that ``node`` (a reader of x) belongs to, or None."""
    if node.op_type == "Sigmoid":
        readers = g.consumers.get(node.output[0], [])
        if len(readers) == 1 and readers[0].op_type == "Mul" and x in readers[0].input:
            return readers[0]
        return None
    if node.op_type == "Mul" and len(node.input) == 2:
        other = node.input[1] if node.input[0] == x else node.input[0]
        gate = g.producer.get(other)
        if gate is not None and gate.op_type == "Sigmoid" and gate.input[0] == x:
            return node
    return None


def _logit_of_one_minus(p: float) -> float:
    """x with sigmoid(x) = 1 - p, so sigmoid(-x) = p."""
    return math.log((1.0 - p) / p)


def _quarter_step(ranges, name: str, levels):
    """A quarter of the quantization step of ``name``'s calibrated range, or None when it was not
    calibrated."""
    if name not in ranges:
        return None
    rmin, rmax = ranges[name]
    span = max(rmax, 0.0) - min(rmin, 0.0)
    return 0.25 * span / levels(name) if span > 0 else None


def saturation_bounds(g: GraphIndex, name: str, ranges, levels):
    """(low, high) outside which every reader of ``name`` writes what it writes at the bound, to
    within a quarter of a step of its quantized output; None when some reader does not saturate.

    Readers: Sigmoid(name) (both sides: |sigmoid(x) - 0 or 1| <= a quarter step) and the two nodes of
    SiLU(name) = name * Sigmoid(name) (below only: |SiLU(x)| <= a quarter step of the Mul's output,
    on SiLU's decreasing branch x < -1.28, and sigmoid(x) <= a quarter step of the Sigmoid's). ``ranges`` holds the calibrated ranges of the readers'
    outputs; ``levels(tensor)`` the number of steps of its activation type (255 for 8 bits).
    """
    readers = g.consumers.get(name, [])
    if not readers or name in g.graph_outputs:
        return None
    low, high = math.inf, -math.inf
    for node in readers:
        mul = _silu_mul(g, node, name)
        if mul is not None:
            gate = node if node.op_type == "Sigmoid" else g.producer[node.input[0] if node.input[1] == name
                                                                        else node.input[1]]
            out, sig = _quarter_step(ranges, mul.output[0], levels), _quarter_step(ranges, gate.output[0], levels)
            if out is None or sig is None or out >= 0.27 or sig >= 0.5:
                return None   # SiLU's minimum is -0.278: no floor below it to find
            # |x| sigmoid(x) falls from 0.278 at x = -1.28 to 0. Below the floor the Sigmoid's int8
            # output is 0 and so the product's, with a margin for the requantization's rounding.
            floor = min(_solve(lambda x: abs(x) * _sigmoid(x) - out, -60.0, -1.28), -_logit_of_one_minus(sig))
            low = min(low, floor)
            high = math.inf
        elif node.op_type == "Sigmoid":
            step = _quarter_step(ranges, node.output[0], levels)
            if step is None or step >= 0.5:
                return None
            bound = _logit_of_one_minus(step)
            low, high = min(low, -bound), max(high, bound)
        else:
            return None
    return low, high
