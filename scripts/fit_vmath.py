"""Refit the polynomial coefficients of qrt/kernels/cpu/vmath.py (prints them as float32 values).

Each is a weighted minimax fit by Lawson's iteration (iteratively reweighted least squares) on
Chebyshev nodes, in float64: the weights make the error relative to the function where vmath needs
relative accuracy. vmath.py's comments say which form each polynomial takes.

    python scripts/fit_vmath.py
"""
import math

import numpy as np
from scipy import special


def chebyshev_nodes(lo, hi, n=20000):
    k = np.arange(n)
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / n)


def minimax(x, powers, target, weight, iterations=60):
    """Coefficients c of sum(c[i] * powers[i](x)) minimising max |weight * (fit - target)|."""
    basis = np.stack([p(x) for p in powers], axis=1)
    lawson = np.ones_like(x)
    for _ in range(iterations):
        root = np.sqrt(lawson) * weight
        coefficients = np.linalg.lstsq(basis * root[:, None], target * root, rcond=None)[0]
        error = np.abs((basis @ coefficients - target) * weight)
        lawson = lawson * error
        lawson /= lawson.sum()
    return coefficients, float(error.max())


def report(name, coefficients, error):
    values = ", ".join(repr(float(np.float32(c))) for c in coefficients)
    print(f"{name}: [{values}]  (max weighted error {error:.2e})")


def main():
    # exp: e**r = 1 + r + r**2 q(r) on |r| <= ln2/2, relative error.
    r = chebyshev_nodes(-math.log(2) / 2 * 1.001, math.log(2) / 2 * 1.001)
    report("exp q", *minimax(r, [lambda v, i=i: v ** i for i in range(5)], (np.expm1(r) - r) / r ** 2,
                             r ** 2 / np.exp(r)))
    # tanh: x + x**3 q(x**2) on [0, 0.625], relative error.
    x = chebyshev_nodes(1e-4, 0.625)
    report("tanh q", *minimax(x, [lambda v, i=i: (v * v) ** i for i in range(5)], (np.tanh(x) - x) / x ** 3,
                              x ** 3 / np.tanh(x)))
    # erf, small: x + x p(x**2) on [0, 0.921875], relative error.
    x = chebyshev_nodes(1e-4, 0.921875)
    report("erf p", *minimax(x, [lambda v, i=i: (v * v) ** i for i in range(6)], special.erf(x) / x - 1,
                             x / special.erf(x)))
    # erf, large: log(erfc(x)) = g(x - 0.921875) on [0.921875, 4], absolute error (relative in erfc).
    x = chebyshev_nodes(0.921875, 4.0)
    report("log erfc g", *minimax(x - 0.921875, [lambda v, i=i: v ** i for i in range(9)],
                                  np.log(special.erfc(x)), np.ones_like(x)))


if __name__ == "__main__":
    main()
