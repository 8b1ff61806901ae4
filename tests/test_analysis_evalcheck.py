"""The eval-suite check (analysis/evalcheck.py): the playbook's four principles against real baselines.

Run: pytest tests/test_analysis_evalcheck.py
"""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.evalcheck import PASS, chance_levels, check_evals, to_markdown


def fake_evals(rng, configs=4, seeds=3, steps=8, good=True, blind=10.0, noise=0.01):
    rows = []
    for c in range(configs):
        for s in range(seeds):
            for k in range(steps + 1):
                t = max(k, 0.5) / steps
                level = 3.0 - 0.2 * c  # configs keep their order through training
                loss = level + 1.0 / t + rng.normal(0, noise) if good else 3.0 + rng.normal(0, 0.5)
                rows.append(
                    {
                        "trial_id": f"c{c}s{s}",
                        "experiment": "e",
                        "kind": "grid",
                        "arm": "baseline",
                        "tier": c,
                        "budget_flops": 1e12,
                        "seed": s,
                        "step": 10 * k,
                        "in_warmup": k == 0,
                        "samples_seen": 100 * k,
                        "val_loss": loss,
                        "val_loss_blind": blind,
                        "attn_on_target_fine": 0.1 + 0.05 * t,
                        "attn_on_target_chance_fine": 0.05,
                        "config.world.frame_size": 32,
                        "config.model.patch_size": 8,
                    }
                )
    return pd.DataFrame(rows)


def test_scores_the_four_principles_with_finetasks_thresholds():
    good = check_evals(fake_evals(np.random.default_rng(0)), ["val_loss", "attn_on_target_fine"])
    g = good.set_index("metric").loc["val_loss"]
    assert g["monotonicity"] > 0.9 and g["pass_monotonicity"]
    assert g["snr"] > 20 and g["pass_noise"]
    assert g["chance_source"].startswith("no-vision bound") and g["chance"] == 10.0
    assert g["margin"] > 0 and g["pass_chance"]
    assert g["ranking_tau"] == pytest.approx(1.0) and g["pass_ranking"]
    on_target = good.set_index("metric").loc["attn_on_target_fine"]  # higher is better: rising is monotone
    assert on_target["monotonicity"] > 0.9 and on_target["chance_source"] == "target's share of the patches"
    bad = check_evals(fake_evals(np.random.default_rng(1), good=False), ["val_loss"]).iloc[0]
    assert not bad["pass_monotonicity"] and not bad["pass_noise"] and not bad["pass_ranking"]
    md = to_markdown(good)
    assert md.startswith("| metric |") and "val_loss" in md and "✓" in md and "no-vision bound" in md
    assert PASS["monotonicity"] == 0.5 and PASS["snr"] == 20.0  # FineTasks' task-selection thresholds


def test_baselines_are_real_ones_from_the_rows():
    """Issue 7.14: val_loss against the no-vision bound, loss_ratio against 1, attention on target against
    the random-query arm, entropy against uniform attention (not the first eval as a proxy)."""
    ev = fake_evals(np.random.default_rng(0), configs=2)
    ev["loss_ratio"] = 0.9
    ev["attn_entropy_fine"] = 1.0
    base = chance_levels(ev, ["val_loss", "loss_ratio", "attn_on_target_fine", "attn_entropy_fine"])
    assert base["val_loss"] == (10.0, "no-vision bound (val_loss_blind)")
    assert base["loss_ratio"][0] == 1.0
    assert base["attn_on_target_fine"] == (0.05, "target's share of the patches")
    assert base["attn_entropy_fine"][0] == pytest.approx(math.log(17))  # 4 x 4 patches + CLS
    rows_only = ev.drop(columns=["config.world.frame_size", "config.model.patch_size"])
    rows_only["attn_entropy_uniform_fine"] = math.log(65)  # what the model reports (an 8 x 8 fine grid)
    assert chance_levels(rows_only, ["attn_entropy_fine"])["attn_entropy_fine"][0] == pytest.approx(
        math.log(65)
    )
    rnd = ev[ev["tier"] == 0].assign(**{"arm": "random", "config.model.query_source": "random"})
    rnd["attn_on_target_fine"] = 0.3
    both = pd.concat(
        [ev.assign(**{"config.model.query_source": "llm"}), rnd.assign(trial_id=rnd["trial_id"] + "r")]
    )
    assert chance_levels(both, ["attn_on_target_fine"])["attn_on_target_fine"] == (0.3, "random-query arm")


def test_above_chance_is_scored_early_not_at_the_end():
    """A metric that sits at its baseline for the first half of training and then improves is above
    chance at the end but not early: the early margin must not pass (it passed when scored at the end)."""
    rng = np.random.default_rng(3)
    ev = fake_evals(rng, configs=3)
    late = np.where(ev["step"] <= 40, 10.0 + rng.normal(0, 0.01, len(ev)), 5.0 + rng.normal(0, 0.01, len(ev)))
    ev["val_loss"] = late
    row = check_evals(ev, ["val_loss"]).iloc[0]
    assert row["early_step"] == 20 and abs(row["margin"]) < 0.05 and not row["pass_chance"]


def test_warmup_rows_and_unfinished_runs_are_left_out():
    ev = fake_evals(np.random.default_rng(0))
    clean = check_evals(ev, ["val_loss"]).iloc[0]
    spoiled = ev.copy()
    spoiled.loc[spoiled["in_warmup"], "val_loss"] = 0.0  # an absurd init value inside warmup
    assert check_evals(spoiled, ["val_loss"]).iloc[0]["monotonicity"] == pytest.approx(clean["monotonicity"])
    runs = pd.DataFrame({"trial_id": sorted(ev["trial_id"].unique())})
    runs["status"] = ["diverged" if t == "c0s0" else "complete" for t in runs["trial_id"]]
    assert check_evals(ev, ["val_loss"], runs_df=runs).iloc[0]["n_trials"] == clean["n_trials"] - 1


def test_ablation_effects_are_compared_with_the_seed_noise():
    base = fake_evals(np.random.default_rng(0), configs=1, seeds=3, noise=0.02)
    seed_sd = base[base["step"] == 80]["val_loss"].std()  # the final eval's spread over the 3 seeds
    shift = 0.5 * seed_sd  # an effect of half a seed SD: below the noise
    arm = base.assign(arm="false", trial_id=base["trial_id"] + "v", val_loss=base["val_loss"] - shift)
    row = check_evals(pd.concat([base, arm]), ["val_loss"]).iloc[0]
    assert row["effect_in_sd"] == pytest.approx(0.5) and not row["pass_effects"]
    big = pd.concat([base, arm.assign(val_loss=arm["val_loss"] - 0.2)])
    assert check_evals(big, ["val_loss"]).iloc[0]["pass_effects"]


def test_says_what_it_cannot_measure():
    ev = fake_evals(np.random.default_rng(0), configs=2, seeds=1).drop(columns=["val_loss_blind"])
    row = check_evals(ev, ["val_loss"]).iloc[0]
    assert np.isnan(row["snr"]) and not row["pass_noise"] and not row["pass_chance"]
    assert "noise not measured" in row["notes"] and "ranking needs >= 3" in row["notes"]
    assert "no baseline" in row["notes"]
