"""The float32 transcendentals of qrt.kernels.cpu.vmath against float64 references, in ulps.

Inputs: every 2**-12th float32 bit pattern (both signs: ~1M values spanning subnormals to the
largest finite), dense sweeps of each function's transition regions, and ±0, ±inf, NaN. The
reference is numpy/scipy in float64; the error of a result y against it is |y - ref| in units of
the float32 spacing at the (rounded) reference, so subnormal results are judged on the subnormal
grid. The bounds are the ones vmath's docstring states; a broken polynomial or range reduction
misses them by orders of magnitude.
"""
import numpy as np
import pytest
from numba import njit
from scipy import special

from qrt.kernels.cpu import vmath


@njit(cache=True)
def _apply(kind, x, out):
    for i in range(x.shape[0]):
        if kind == 0:
            out[i] = vmath.exp(x[i])
        elif kind == 1:
            out[i] = vmath.sigmoid(x[i])
        elif kind == 2:
            out[i] = vmath.tanh(x[i])
        else:
            out[i] = vmath.erf(x[i])


def _sigmoid64(x):
    return special.expit(x)


# name -> (kernel code, float64 reference, max ulps, regions to sweep densely)
FUNCTIONS = {
    "exp": (0, np.exp, 1, [(-104.5, -86.0), (-2.0, 2.0), (86.0, 89.0)]),
    "sigmoid": (1, _sigmoid64, 3, [(-105.0, -80.0), (-20.0, 20.0)]),
    "tanh": (2, np.tanh, 2, [(-1.0, 1.0), (0.5, 0.75), (8.0, 10.0)]),
    "erf": (3, special.erf, 2, [(-1.0, 1.0), (0.85, 1.0), (3.5, 4.5)]),
}


def _inputs(regions):
    patterns = np.arange(0, 1 << 31, 1 << 12, dtype=np.int64).astype(np.uint32)
    positive = patterns.view(np.float32)
    positive = positive[np.isfinite(positive)]
    dense = [np.linspace(lo, hi, 200_001, dtype=np.float32) for lo, hi in regions]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.17549435e-38,
                         np.finfo(np.float32).max, -np.finfo(np.float32).max], dtype=np.float32)
    return np.concatenate([positive, -positive, *dense, specials])


def _ulp_errors(result, reference64):
    rounded = reference64.astype(np.float32)
    spacing = np.spacing(np.abs(rounded)).astype(np.float64)
    # At a power of two the spacing below is half the spacing above; judge by the finer one.
    spacing = np.minimum(spacing, np.spacing(np.nextafter(np.abs(rounded), np.float32(0))).astype(np.float64))
    spacing[spacing == 0] = np.spacing(np.float32(0))
    with np.errstate(invalid="ignore"):
        return np.abs(result.astype(np.float64) - reference64) / spacing


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_float32_within_stated_ulps(name):
    kind, reference, max_ulps, regions = FUNCTIONS[name]
    x = _inputs(regions)
    out = np.empty_like(x)
    _apply(kind, x, out)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        expected = reference(x.astype(np.float64))
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(out), nan), x[np.isnan(out) != nan][:5]
    with np.errstate(over="ignore"):
        expected32 = expected.astype(np.float32)
    finite = ~nan & np.isfinite(expected32)
    infinite = ~nan & ~finite
    assert np.array_equal(out[infinite], expected32[infinite])
    errors = _ulp_errors(out[finite], expected[finite])
    worst = int(np.argmax(errors))
    assert errors[worst] <= max_ulps, (f"{name}({x[finite][worst]!r}) = {out[finite][worst]!r}, "
                                       f"reference {expected[finite][worst]!r}: {errors[worst]:.2f} ulp")
    # Odd functions keep the sign of zero.
    if name in ("tanh", "erf"):
        assert np.signbit(out[x == 0]).tolist() == np.signbit(x[x == 0]).tolist()


@njit(cache=True)
def _apply64(kind, x, out):
    for i in range(x.shape[0]):
        if kind == 0:
            out[i] = vmath.exp(x[i])
        elif kind == 1:
            out[i] = vmath.sigmoid(x[i])
        elif kind == 2:
            out[i] = vmath.tanh(x[i])
        else:
            out[i] = vmath.erf(x[i])


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_float64_keeps_libm(name):
    kind, reference, _, _ = FUNCTIONS[name]
    x = np.linspace(-30, 30, 10_001)
    out = np.empty_like(x)
    _apply64(kind, x, out)
    np.testing.assert_allclose(out, reference(x), rtol=1e-15, atol=1e-300)
