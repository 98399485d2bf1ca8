"""Paired-seed statistics of the CAL experiments against closed forms of Student's t (1, 2 and 3 degrees of freedom),
table values, and scipy where it is installed."""

import math
import random

import pytest

from vcontrast.toy.stats import holm, student_t_cdf, student_t_ppf, t_interval, t_test, tost


def _cdf_closed_form(t: float, df: int) -> float:
    # Student's t CDF in closed form for small integer df (hand computation, no special functions).
    if df == 1:
        return 0.5 + math.atan(t) / math.pi
    if df == 2:
        return 0.5 + t / (2 * math.sqrt(2 + t * t))
    if df == 3:
        return 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi
    raise ValueError(df)


@pytest.mark.parametrize("df", [1, 2, 3])
@pytest.mark.parametrize("t", [-12.0, -2.5, -0.3, 0.0, 0.7, 1.9, 4.4, 30.0])
def test_cdf_matches_closed_forms(t, df):
    assert student_t_cdf(t, df) == pytest.approx(_cdf_closed_form(t, df), abs=1e-12)


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [(0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 5, 2.570582), (0.95, 10, 1.812461), (0.975, 30, 2.042272)],
)
def test_quantiles_match_tables(p, df, table):
    assert student_t_ppf(p, df) == pytest.approx(table, abs=2e-6)
    assert student_t_ppf(1 - p, df) == pytest.approx(-table, abs=2e-6)


def test_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(50):
        df, t, p = rng.randint(1, 40), rng.uniform(-8, 8), rng.uniform(0.01, 0.99)
        assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-10)
        assert student_t_ppf(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-8)


def test_t_interval_and_t_test_by_hand():
    mean, low, high = t_interval([0.1, 0.3, 0.2])  # sd 0.1, se 0.1 / sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.2, 0.2 - half, 0.2 + half), abs=1e-6)
    t = 2 / (1 / math.sqrt(3))  # [1, 2, 3]: mean 2, sd 1
    assert t_test([1, 2, 3]) == pytest.approx(2 * (1 - _cdf_closed_form(t, 2)), abs=1e-12)
    assert t_test([0.0, 0.0]) == 1.0 and t_test([0.5, 0.5]) == 0.0


def test_tost_by_hand():
    values = [0.01, -0.01, 0.02, 0.0]
    mean = 0.005
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / 3) / 2
    p_low = 1 - _cdf_closed_form((mean + 0.05) / se, 3)
    p_high = _cdf_closed_form((mean - 0.05) / se, 3)
    out = tost(values, 0.05)
    assert out["p"] == pytest.approx(max(p_low, p_high), abs=1e-12) and out["equivalent"]
    assert not tost([0.04, 0.06, 0.05], 0.05)["equivalent"]  # centred on the margin


def test_tost_agrees_with_the_90_percent_interval():
    rng = random.Random(1)
    for _ in range(200):
        values = [rng.gauss(rng.uniform(-0.06, 0.06), 0.02) for _ in range(rng.randint(2, 6))]
        out = tost(values, 0.05)
        _, low, high = t_interval(values, 0.90)
        assert (low, high) == pytest.approx((out["low"], out["high"]))
        assert out["equivalent"] == (-0.05 < low and high < 0.05)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.04, 0.001, 0.2, 0.012]) == pytest.approx([0.08, 0.004, 0.2, 0.036])
    assert holm([0.01, None], n_hypotheses=4) == [pytest.approx(0.04), None]  # untested ones count as p = 1
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # step-down: never below an earlier adjusted p


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: t_interval([1.0]), "at least 2"),
        (lambda: t_interval([1.0, math.nan]), "NaN"),
        (lambda: t_interval([1.0, 2.0], level=1.5), "level"),
        (lambda: tost([1.0, 2.0], margin=0), "margin"),
        (lambda: student_t_ppf(1.0, 3), "p"),
        (lambda: student_t_cdf(0.0, 0), "df"),
        (lambda: holm([1.5]), "p-value"),
        (lambda: holm([0.1, 0.2], n_hypotheses=1), "n_hypotheses"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
