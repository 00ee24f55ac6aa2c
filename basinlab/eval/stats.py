"""Confidence intervals over seeds, with numpy and the standard library only.

Runs have few seeds (3-10), where a normal interval is far too narrow, so intervals use
the Student-t quantile. It is computed here (scipy is not a dependency) by bisection on
the t distribution function, written through the regularized incomplete beta function.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return result
    raise ArithmeticError(f"incomplete beta fraction did not converge for a={a}, b={b}, x={x}")


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry on the other
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`, to about 1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def mean_ci(values: Iterable[float | None], level: float = 0.95) -> dict[str, Any]:
    """Mean, std (ddof 1), n and the Student-t interval for the mean, over the finite values.

    Diverged seeds store None/NaN and are dropped, so ``n`` says how many remain; with fewer
    than two there is no spread, and std and the interval are None.
    """
    finite = [float(v) for v in values if _finite(v)]
    stat = {"mean": None, "std": None, "n": len(finite), "ci_low": None, "ci_high": None, "ci_level": level}
    if not finite:
        return stat
    stat["mean"] = float(np.mean(finite))
    if len(finite) < 2:
        return stat
    stat["std"] = float(np.std(finite, ddof=1))
    half_width = t_quantile((1.0 + level) / 2.0, len(finite) - 1) * stat["std"] / math.sqrt(len(finite))
    stat["ci_low"], stat["ci_high"] = stat["mean"] - half_width, stat["mean"] + half_width
    return stat


def paired_differences(
    a_by_seed: Mapping[Any, float | None], b_by_seed: Mapping[Any, float | None], level: float = 0.95
) -> dict[str, Any]:
    """:func:`mean_ci` of a - b over the seeds where both are finite.

    The same seed gives both arms the same initial weights and tasks, so the per-seed
    difference cancels what the seed does to both: a tighter interval than two separate
    ones whenever that shared part dominates the spread.
    """
    shared = [s for s in a_by_seed if s in b_by_seed and _finite(a_by_seed[s]) and _finite(b_by_seed[s])]
    return mean_ci([a_by_seed[s] - b_by_seed[s] for s in shared], level)
