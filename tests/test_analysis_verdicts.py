"""Ablation verdicts (analysis/verdicts.py) and the eval-principle checks (analysis/evalcheck.py).

Run: pytest tests/test_analysis_verdicts.py
"""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.evalcheck import check_evals, to_markdown
from analysis.verdicts import (
    FAILED,
    INCONCLUSIVE,
    LOG_HEADER,
    VALIDATED,
    append_log,
    format_verdict,
    log_row,
    paired_verdict,
    verdicts_from_runs,
)


def seeds(rng, n, mean, seed_sd=0.03, noise=0.005, shared=None):
    """Per-seed losses: a shared seed effect (same init and data per seed across arms) plus run noise."""
    shared = rng.normal(0, seed_sd, n) if shared is None else shared
    return mean + shared + rng.normal(0, noise, n), shared


def test_clear_effect_is_validated_at_3_seeds():
    rng = np.random.default_rng(0)
    base, shared = seeds(rng, 3, 2.00)
    var, _ = seeds(rng, 3, 1.90, shared=shared)
    v = paired_verdict(base, var, param="model.deep_query", arm="true")
    assert v.label == VALIDATED
    assert v.n_seeds == 3 and v.effect == pytest.approx(np.mean(var - base))
    assert v.ci95[1] < 0 and v.p_value < 0.05
    assert v.p_value == pytest.approx(stats.ttest_rel(var, base).pvalue)
    # the same effect where higher is better is a significant loss
    assert paired_verdict(base, var, lower_is_better=False).label == FAILED
    assert paired_verdict(var, base).label == FAILED


def test_no_effect_is_inconclusive_at_3_seeds():
    rng = np.random.default_rng(1)
    base, shared = seeds(rng, 3, 2.00)
    var, _ = seeds(rng, 3, 2.00, shared=shared)
    v = paired_verdict(base, var)
    assert v.label == INCONCLUSIVE and v.ci95[0] < 0 < v.ci95[1]
    # over many simulated null ablations, false VALIDATED/FAILED stay near alpha
    labels = []
    for s in range(300):
        r = np.random.default_rng(100 + s)
        b, sh = seeds(r, 3, 2.0)
        w, _ = seeds(r, 3, 2.0, shared=sh)
        labels.append(paired_verdict(b, w, n_boot=200).label)
    false_rate = np.mean([lab != INCONCLUSIVE for lab in labels])
    assert false_rate < 0.1, false_rate


def test_pairing_matters_seed_spread_larger_than_effect():
    # the seed spread (0.03) is 6x the effect (0.005): unpaired it is noise, paired it is clear
    rng = np.random.default_rng(2)
    base, shared = seeds(rng, 5, 2.0, seed_sd=0.03, noise=0.0005)
    var, _ = seeds(rng, 5, 1.995, shared=shared, noise=0.0005)
    assert stats.ttest_ind(var, base).pvalue > 0.05
    assert paired_verdict(base, var).label == VALIDATED


def test_edge_cases_are_inconclusive_with_notes():
    one = paired_verdict([2.0], [1.5])
    assert one.label == INCONCLUSIVE and any("one seed pair" in n for n in one.notes)
    nan = paired_verdict([2.0, 2.1, np.nan], [1.9, 2.0, 1.8])
    assert nan.n_seeds == 2 and any("non-finite" in n for n in nan.notes)
    same = paired_verdict([2.0, 2.1, 2.2], [2.0, 2.1, 2.2])
    assert same.label == INCONCLUSIVE and same.effect == 0
    with pytest.raises(ValueError):
        paired_verdict([1, 2, 3], [1, 2])


def test_verdicts_from_runs_pairs_by_seed_and_reports_dropped_runs():
    rng = np.random.default_rng(3)
    rows = []
    shared = rng.normal(0, 0.03, 4)
    for arm, mean in (("baseline", 2.0), ("deep_query=false", 2.1), ("query_bias=true", 2.0)):
        for s in range(4):
            status = "diverged" if (arm == "query_bias=true" and s == 3) else "complete"
            rows.append(
                {
                    "arm": arm,
                    "seed": s,
                    "status": status,
                    "final_val_loss": mean + shared[s] + rng.normal(0, 0.003),
                }
            )
    runs = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter
    out = {v.arm: v for v in verdicts_from_runs(runs, param="model")}
    assert set(out) == {"deep_query=false", "query_bias=true"}
    assert out["deep_query=false"].label == FAILED and out["deep_query=false"].n_seeds == 4
    qb = out["query_bias=true"]
    assert qb.n_seeds == 3 and qb.seeds == [0, 1, 2]
    assert any("diverged" in n for n in qb.notes)
    dup = pd.concat([runs, runs[runs["arm"] == "baseline"].head(1)])
    with pytest.raises(ValueError, match="several complete runs per seed"):
        verdicts_from_runs(dup, param="model")


def test_log_row_and_append_log(tmp_path):
    v = paired_verdict([2.0, 2.1, 2.05], [1.9, 2.0, 1.94], param="model.deep_query", arm="true")
    row = log_row(
        v,
        experiment="ablate-dq",
        hypothesis="deep query | beats shallow",
        config="model.deep_query=true",
        date=dt.date(2026, 3, 1),
    )
    cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
    assert len(cells) == 6 and cells[0] == "2026-03-01" and cells[1] == "ablate-dq"
    assert "\\|" in cells[2]  # a pipe inside a cell is escaped
    assert cells[4].startswith("VALIDATED") and "95% CI" in cells[4] and "3 seeds" in cells[4]
    assert cells[5].startswith("adopt model.deep_query=true")
    assert log_row(v, experiment="e", hypothesis="h", config="c").startswith(
        f"| {dt.date.today().isoformat()} |"
    )
    log = tmp_path / "LOG.md"
    log.write_text("# Experiment log\n\nSome prose.")
    append_log(log, row)
    append_log(log, row)
    text = log.read_text()
    assert text.count(LOG_HEADER) == 1 and text.count(row) == 2
    lines = text.splitlines()
    i = lines.index(LOG_HEADER)
    assert lines[i - 1] == "" and lines[i + 1].startswith("|---") and lines[i + 2] == row
    new = tmp_path / "NEW.md"
    append_log(new, row)
    assert new.read_text().splitlines()[0] == LOG_HEADER


def test_format_verdict_is_readable():
    v = paired_verdict([2.0, 2.1, 2.05], [2.0, 2.12, 2.04], param="train.lr", arm="2e-3")
    text = format_verdict(v)
    assert text.splitlines()[0] == "train.lr = 2e-3: INCONCLUSIVE (hypothesis: the variant is better)"
    for key in ("baseline", "variant", "effect", "95% CI", "paired t p=", "per seed"):
        assert key in text


# ---------------------------------------------------------------------------------------------------------
# eval principles


def fake_evals(rng, configs=4, seeds=3, steps=8, good=True):
    rows = []
    for c in range(configs):
        for s in range(seeds):
            for k in range(steps):
                t = (k + 1) / steps
                level = 3.0 - 0.2 * c  # configs keep their order through training
                loss = level + 1.0 / t + rng.normal(0, 0.01) if good else 3.0 + rng.normal(0, 0.5)
                rows.append(
                    {
                        "trial_id": f"c{c}s{s}",
                        "experiment": "e",
                        "kind": "grid",
                        "arm": "baseline",
                        "tier": c,
                        "budget_flops": 1e12,
                        "step": 10 * (k + 1),
                        "samples_seen": 100 * (k + 1),
                        "val_loss": loss,
                        "attn_on_target_fine": 0.1 + 0.05 * t,
                    }
                )
    return pd.DataFrame(rows)


def test_evalcheck_scores_the_four_principles():
    good = check_evals(
        fake_evals(np.random.default_rng(0)), ["val_loss", "attn_on_target_fine"], chance={"val_loss": 10.0}
    )
    g = good.set_index("metric").loc["val_loss"]
    assert g["monotonicity"] > 0.9 and g["pass_monotonicity"]
    assert g["snr"] > 2 and g["pass_noise"]
    assert g["chance_source"] == "given" and g["margin"] > 0 and g["pass_chance"]
    assert g["ranking_tau"] == pytest.approx(1.0) and g["pass_ranking"]
    on_target = good.set_index("metric").loc["attn_on_target_fine"]  # higher is better: rising is monotone
    assert on_target["monotonicity"] > 0.9
    bad = check_evals(fake_evals(np.random.default_rng(1), good=False), ["val_loss"]).iloc[0]
    assert not bad["pass_monotonicity"] and not bad["pass_noise"] and not bad["pass_ranking"]
    assert bad["chance_source"].startswith("first eval")
    md = to_markdown(good)
    assert md.startswith("| metric |") and "val_loss" in md and "✓" in md


def test_evalcheck_says_what_it_cannot_measure():
    ev = fake_evals(np.random.default_rng(0), configs=2, seeds=1)
    row = check_evals(ev, ["val_loss"]).iloc[0]
    assert np.isnan(row["snr"]) and not row["pass_noise"]
    assert "noise not measured" in row["notes"] and "ranking needs >= 3" in row["notes"]


def test_expect_worse_judges_the_hypothesis_not_the_variant():
    # hypothesis "the shallow query is worse": a clearly worse variant VALIDATES it, a better one FAILS it,
    # and the impact follows the measured direction either way
    base = np.array([1.00, 1.02, 0.99])
    worse = base + np.array([0.10, 0.11, 0.09])
    v = paired_verdict(base, worse, param="model.deep_query", arm="False", expect="worse")
    assert v.label == VALIDATED and v.significant and not v.variant_better
    assert "keep the baseline" in log_row(v, experiment="e", hypothesis="h", config="c")
    better = base - np.array([0.10, 0.11, 0.09])
    v2 = paired_verdict(base, better, expect="worse")
    assert v2.label == FAILED and v2.variant_better
    assert "adopt" in log_row(v2, experiment="e", hypothesis="h", config="c")
    with pytest.raises(ValueError):
        paired_verdict(base, worse, expect="sideways")
