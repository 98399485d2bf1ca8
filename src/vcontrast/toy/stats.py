"""Statistics over paired seeds: t-intervals, TOST equivalence and Holm's correction (docs/results/PLAN.md, E2).

The CAL experiments compare two training losses on the same seed pairs: each pair gives one difference
(CAL - MLE), and the analysis runs on those differences. Student's t distribution is computed here (regularised
incomplete beta function by continued fraction, as in Numerical Recipes' `betacf`), so scipy is not needed.

Examples:

```python
>>> t_interval([0.1, 0.3, 0.2])  # mean, low, high (95%)
(0.2, -0.048..., 0.448...)
>>> tost([0.01, -0.01, 0.02, 0.0], margin=0.05)["equivalent"]
True
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["holm", "student_t_cdf", "student_t_ppf", "t_interval", "t_test", "tost"]


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function (modified Lentz); converges fast for x < (a+1) / (a+b+2).
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    # Regularised incomplete beta I_x(a, b).
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _check_df(df: float) -> None:
    if not (isinstance(df, int | float) and df > 0 and math.isfinite(df)):
        raise ValueError(f"`df` (={df!r}) must be a positive finite number")


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with `df` degrees of freedom.

    Examples:

    ```python
    >>> round(student_t_cdf(2.570582, 5), 6)
    0.975
    ```
    """
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def student_t_ppf(p: float, df: float) -> float:
    """The `p`-quantile of Student's t distribution with `df` degrees of freedom (bisection on `student_t_cdf`).

    Examples:

    ```python
    >>> round(student_t_ppf(0.975, 5), 4)
    2.5706
    ```
    """
    _check_df(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"`p` (={p!r}) must be in (0, 1)")
    if p < 0.5:
        return -student_t_ppf(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if student_t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def _mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    x = [float(v) for v in values]
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 paired differences, got {n}")
    if any(math.isnan(v) for v in x):
        raise ValueError(f"paired differences contain NaN: {x}")
    mean = sum(x) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    return mean, sd / math.sqrt(n), n


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t-interval (n - 1 degrees of freedom).

    Args:
        values (`Sequence[float]`): one difference per seed pair (at least 2).
        level (`float`, *optional*, defaults to 0.95): coverage.

    Returns:
        `tuple[float, float, float]`: `(mean, low, high)`.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` (={level!r}) must be in (0, 1)")
    mean, se, n = _mean_se(values)
    half = student_t_ppf(0.5 + level / 2.0, n - 1) * se
    return mean, mean - half, mean + half


def t_test(values: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of mean 0 (1.0 if every difference is 0, 0.0 if they are all the
    same non-zero value)."""
    mean, se, n = _mean_se(values)
    if se == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    return 2.0 * (1.0 - student_t_cdf(abs(mean) / se, n - 1))


def tost(values: Sequence[float], margin: float, alpha: float = 0.05) -> dict[str, float | bool]:
    """Two one-sided t-tests (TOST) of equivalence: is the mean difference inside (-margin, +margin)?

    The null "|mean| >= margin" is rejected when both one-sided tests reject at `alpha`, which is the same as the
    (1 - 2 alpha) t-interval lying inside (-margin, margin).

    Args:
        values (`Sequence[float]`): paired differences (at least 2).
        margin (`float`): the equivalence margin (> 0), in the units of the values.
        alpha (`float`, *optional*, defaults to 0.05): level of each one-sided test.

    Returns:
        `dict`: `"p"` (the larger of the two one-sided p-values), `"equivalent"` (`p < alpha`), `"low"` and
        `"high"` (the (1 - 2 alpha) interval) and `"margin"`.
    """
    if not margin > 0:
        raise ValueError(f"`margin` (={margin!r}) must be positive")
    mean, se, n = _mean_se(values)
    if se == 0.0:
        p = 0.0 if abs(mean) < margin else 1.0
    else:
        p_low = 1.0 - student_t_cdf((mean + margin) / se, n - 1)  # H0: mean <= -margin
        p_high = student_t_cdf((mean - margin) / se, n - 1)  # H0: mean >= +margin
        p = max(p_low, p_high)
    _, low, high = t_interval(values, 1.0 - 2.0 * alpha)
    return {"p": p, "equivalent": p < alpha, "low": low, "high": high, "margin": margin}


def holm(p_values: Sequence[float | None], n_hypotheses: int | None = None) -> list[float | None]:
    """Holm's step-down adjusted p-values.

    Args:
        p_values (`Sequence[float | None]`): raw p-values; `None` for a hypothesis not tested yet, which counts as
            p = 1 (so the adjustment of the others is what it would be at worst once it is tested) and stays `None`.
        n_hypotheses (`int`, *optional*): the family size; defaults to `len(p_values)`.

    Returns:
        `list[float | None]`: adjusted p-values, in the input order.

    Examples:

    ```python
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    ```
    """
    m = len(p_values) if n_hypotheses is None else n_hypotheses
    if m < len(p_values):
        raise ValueError(f"`n_hypotheses` (={m}) is smaller than the number of p-values ({len(p_values)})")
    for p in p_values:
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value {p!r} is not in [0, 1]")
    filled = [1.0 if p is None else float(p) for p in p_values]
    order = sorted(range(len(filled)), key=filled.__getitem__)
    adjusted = [0.0] * len(filled)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * filled[i]))
        adjusted[i] = running
    return [None if p is None else a for p, a in zip(p_values, adjusted, strict=True)]
