"""Honest intervals: none from one seed, a t-interval on log ratios for few seeds, a bootstrap
only from BOOTSTRAP_MIN_SEEDS on; every comparison table names its method."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import stats


def _student_t_cdf_above_zero(q: float, df: int) -> float:
    x = np.linspace(0.0, q, 400001)
    pdf = (math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
           * (1 + x * x / df) ** (-(df + 1) / 2))
    return 0.5 + float(np.trapezoid(pdf, x))


@pytest.mark.parametrize("df", range(1, len(stats.T_975) + 1))
def test_t_quantiles_are_the_0975_quantiles(df):
    assert _student_t_cdf_above_zero(stats.T_975[df - 1], df) == pytest.approx(0.975, abs=1e-5)


def test_three_seeds_get_more_than_their_range():
    ratios = [0.68, 0.681, 0.682]
    iv = stats.interval(ratios)
    assert iv.method == "t"
    assert iv.low < min(ratios) and iv.high > max(ratios)  # the old bootstrap gave the range
    logs = [math.log(r) for r in ratios]
    sd = float(np.std(logs, ddof=1))
    assert math.log(iv.high) - math.log(iv.low) == pytest.approx(2 * stats.T_975[1] * sd / math.sqrt(3))


def test_one_seed_has_no_interval():
    assert stats.interval([0.5]) == stats.Interval(None, None, "none")


def test_bootstrap_only_from_the_minimum_and_it_repeats():
    rng = np.random.default_rng(5)
    few = list(np.exp(rng.normal(0, 0.1, stats.BOOTSTRAP_MIN_SEEDS - 1)))
    many = list(np.exp(rng.normal(0, 0.1, stats.BOOTSTRAP_MIN_SEEDS)))
    assert stats.interval(few).method == "t"
    iv = stats.interval(many)
    assert iv.method == "bootstrap" and stats.interval(many) == iv
    assert min(many) < iv.low < stats.geomean(many) < iv.high < max(many)


def test_compare_text_names_the_method():
    def rec(policy, seed, cycles):
        return {"workload_label": "w", "policy_label": policy, "policy": policy, "seed": seed,
                "cycles": cycles}

    records = [rec("base", s, 100) for s in range(3)] + [rec("p", s, 90 + s) for s in range(3)]
    doc = {"records": records, "meta": {"cost_profile": {"name": "x"}}}
    text = stats.compare_text(doc, None)
    assert "95% CI" not in text
    assert "interval with 3 seeds: 95% t-interval on the log ratios" in text
    assert stats.interval_label(3) == "95% t-interval on the log ratios (3 seeds)"
    data = stats.compare_json(doc, None)
    assert data["comparisons"][0]["method"] == "t" and data["baseline"] == "base"
