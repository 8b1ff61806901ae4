"""analysis/headroom.py: H = (static - learned) / (static - oracle) with Fieller's interval."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.headroom import headroom, headroom_from_runs


def _arms(rng, h_true: float, n: int, room: float = 0.35, noise: float = 0.03):
    static = 0.70 + rng.normal(0, noise, n)
    oracle = static - room + rng.normal(0, noise, n)
    learned = static - h_true * room + rng.normal(0, noise, n)
    return static, learned, oracle


def test_the_estimate_is_the_ratio_of_mean_gains():
    h = headroom([0.7, 0.8, 0.6], [0.6, 0.8, 0.5], [0.3, 0.4, 0.2])
    assert h.h == pytest.approx((0.1 + 0.0 + 0.1) / 3 / 0.4)
    assert h.identified and h.ci95[0] < h.h < h.ci95[1] and h.n == 3


@pytest.mark.parametrize("n", [3, 5])
def test_fieller_interval_covers_the_true_headroom_at_about_95_percent(n):
    """Simulated paired arms with a known H: the 95% interval covers it in ~95% of experiments (a z or
    bootstrap interval at 3 seeds covers far less: the t quantile is 4.30, not 1.96)."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        h = headroom(*_arms(rng, 0.4, n))
        assert h.identified
        hits += h.ci95[0] <= 0.4 <= h.ci95[1]
    assert 0.93 <= hits / 2000 <= 0.97


def test_no_headroom_means_not_identified_and_no_interval():
    rng = np.random.default_rng(1)
    static = 0.7 + rng.normal(0, 0.03, 3)
    h = headroom(static, static + rng.normal(0, 0.03, 3), static + rng.normal(0, 0.03, 3))
    assert not h.identified and all(math.isnan(x) for x in h.ci95)
    assert "not identified" in h.text()


def test_from_runs_pairs_by_seed_and_skips_what_is_not_complete():
    rows = []
    for seed, (s, lrn, o) in enumerate(
        [(0.7, 0.6, 0.3), (0.8, 0.75, 0.4), (0.6, 0.5, 0.25), (0.7, 0.1, 0.2)]
    ):
        for arm, v in (("static", s), ("baseline", lrn), ("oracle", o)):
            rows.append({"arm": arm, "seed": seed, "final_val_loss": v, "status": "complete"})
    rows[-2]["status"] = "diverged"  # seed 3's learned arm: out, and the seed with it
    h = headroom_from_runs(pd.DataFrame(rows))
    assert h.n == 3 and h.h == pytest.approx(headroom([0.7, 0.8, 0.6], [0.6, 0.75, 0.5], [0.3, 0.4, 0.25]).h)
    assert any("3" in note for note in h.notes)
    assert headroom_from_runs(pd.DataFrame([r for r in rows if r["arm"] != "oracle"])) is None
