"""Ablation verdicts (analysis/verdicts.py): paired t, sign-flip, Holm, MDE, controls, LOG rows and the CLI.

Run: pytest tests/test_analysis_verdicts.py
"""

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.verdicts import (
    FAILED,
    INCONCLUSIVE,
    LOG_HEADER,
    LOG_RULE,
    MIN_SEEDS_FOR_BOOTSTRAP,
    VALIDATED,
    append_log,
    format_verdict,
    holm,
    impact_text,
    log_row,
    minimum_detectable_effect,
    paired_verdict,
    result_text,
    signflip_p,
    verdicts_from_runs,
)

REPO = Path(__file__).resolve().parents[1]


def seeds(rng, n, mean, seed_sd=0.03, noise=0.005, shared=None):
    """Per-seed losses: a shared seed effect (same init and data per seed across arms) plus run noise."""
    shared = rng.normal(0, seed_sd, n) if shared is None else shared
    return mean + shared + rng.normal(0, noise, n), shared


def runs_table(base, arms: dict) -> pd.DataFrame:
    """A runs table: the baseline and each arm's values, seed i in row i of every arm."""
    rows = [{"arm": "baseline", "seed": s, "final_val_loss": x} for s, x in enumerate(base)]
    for arm, vals in arms.items():
        rows += [{"arm": arm, "seed": s, "final_val_loss": x} for s, x in enumerate(vals)]
    return pd.DataFrame(rows)


def test_clear_effect_is_validated_at_3_seeds():
    rng = np.random.default_rng(0)
    base, shared = seeds(rng, 3, 2.00)
    var, _ = seeds(rng, 3, 1.90, shared=shared)
    v = paired_verdict(base, var, param="model.deep_query", arm="true")
    assert v.label == VALIDATED
    assert v.n_seeds == 3 and v.effect == pytest.approx(np.mean(var - base))
    assert v.ci95[1] < 0 and v.p_value < 0.05
    assert v.p_value == pytest.approx(stats.ttest_rel(var, base).pvalue)
    assert v.p_adjusted == v.p_value and v.n_arms == 1 and v.promotable
    # the same effect where higher is better is a significant loss
    assert paired_verdict(base, var, lower_is_better=False).label == FAILED
    assert paired_verdict(var, base).label == FAILED


def test_ci_is_the_paired_t_interval_not_a_z_interval():
    # regression: the 95% CI must be scipy's paired-t interval; at 3 seeds t_{0.975,2} = 4.30, not 1.96
    base = np.array([2.00, 2.10, 2.05])
    var = np.array([1.93, 2.01, 2.00])
    v = paired_verdict(base, var)
    ci = stats.ttest_rel(var, base).confidence_interval(confidence_level=0.95)
    assert v.ci95 == pytest.approx((ci.low, ci.high), rel=1e-12)
    d = var - base
    half = (v.ci95[1] - v.ci95[0]) / 2
    assert half / (d.std(ddof=1) / np.sqrt(3)) == pytest.approx(stats.t.ppf(0.975, 2), rel=1e-9)
    # the interval stays 95% whatever alpha is (alpha is the test level, not the interval's)
    assert paired_verdict(base, var, alpha=0.01).ci95 == pytest.approx(v.ci95)


def test_null_ablations_at_3_seeds_keep_the_false_positive_rate_near_alpha():
    # regression: the bootstrap at 3 seeds said p < 0.05 in ~29% of null ablations; the t-test must stay
    # near alpha, and the bootstrap is not reported at all below MIN_SEEDS_FOR_BOOTSTRAP seed pairs
    rng = np.random.default_rng(1)
    base, shared = seeds(rng, 3, 2.00)
    var, _ = seeds(rng, 3, 2.00, shared=shared)
    v = paired_verdict(base, var)
    assert v.label == INCONCLUSIVE and v.ci95[0] < 0 < v.ci95[1]
    found = []
    for s in range(1000):
        r = np.random.default_rng(100 + s)
        b, sh = seeds(r, 3, 2.0)
        w, _ = seeds(r, 3, 2.0, shared=sh)
        found.append(paired_verdict(b, w))
    false_rate = np.mean([x.label != INCONCLUSIVE for x in found])
    assert 0.02 <= false_rate <= 0.09, false_rate
    assert np.mean([x.p_value < 0.05 for x in found]) == pytest.approx(false_rate)
    assert all(np.isnan(x.p_boot) and np.isnan(x.ci95_boot[0]) and np.isnan(x.ci95_boot[1]) for x in found)


def test_bootstrap_is_reported_only_from_8_seed_pairs():
    assert MIN_SEEDS_FOR_BOOTSTRAP == 8
    rng = np.random.default_rng(4)
    base, shared = seeds(rng, 8, 2.0)
    var, _ = seeds(rng, 8, 1.99, shared=shared)
    seven = paired_verdict(base[:7], var[:7])
    assert np.isnan(seven.p_boot) and all(np.isnan(seven.ci95_boot))
    assert "bootstrap: n/a below 8 seeds" in result_text(seven)
    assert "bootstrap: n/a below 8 seeds" in format_verdict(seven)
    eight = paired_verdict(base, var)
    assert 0 < eight.p_boot <= 1 and eight.ci95_boot[0] < eight.effect < eight.ci95_boot[1]
    assert "bootstrap p=" in result_text(eight) and "n/a below" not in result_text(eight)


def test_signflip_is_the_exact_paired_permutation_test():
    rng = np.random.default_rng(5)
    d = rng.normal(0.3, 1.0, 6)
    ref = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided")
    assert signflip_p(d) == pytest.approx(ref.pvalue, rel=1e-12)
    # at 3 seeds the smallest possible p is 2/2^3 = 0.25, however clear the effect; a note says so
    v = paired_verdict([2.0, 2.1, 2.05], [1.5, 1.61, 1.54])
    assert v.p_signflip == pytest.approx(0.25) and v.p_value < 0.01
    assert any("2/2^3 = 0.25" in n for n in v.notes)
    assert "sign-flip p=0.25" in result_text(v)
    # above 16 pairs: 100k random flips, close to the exact enumeration
    d17 = rng.normal(0.4, 1.0, 17)
    exact = stats.permutation_test(
        (d17,), np.mean, permutation_type="samples", n_resamples=2**17, alternative="two-sided"
    ).pvalue
    assert signflip_p(d17) == pytest.approx(exact, abs=0.01)
    assert signflip_p(np.zeros(4)) == 1.0


def test_holm_step_down():
    assert holm([0.038, 0.042]) == pytest.approx([0.076, 0.076])
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # monotone in p
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    out = holm([0.01, np.nan, 0.04])  # NaN stays NaN and does not count toward m
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.2]) == [0.2] and holm([]) == []
    p = np.random.default_rng(6).uniform(0, 0.2, 7)
    adj = np.array(holm(p))
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all() and (adj >= p).all() and (adj <= 1).all()
    with pytest.raises(ValueError):
        holm([1.5])


def test_two_arms_at_p_038_and_042_are_both_inconclusive_after_holm():
    # regression: each arm alone passes alpha 0.05, but one ablation with two arms tests two hypotheses
    base = np.array([0.90, 0.88, 0.91])
    oracle = base - np.array([0.10, 0.16, 0.21])
    rand = base + np.array([0.10, 0.17, 0.22])
    p_o, p_r = stats.ttest_rel(oracle, base).pvalue, stats.ttest_rel(rand, base).pvalue
    assert 0.025 < p_o < 0.05 and 0.025 < p_r < 0.05
    assert paired_verdict(base, oracle).label == VALIDATED
    assert paired_verdict(base, rand, expect="worse").label == VALIDATED
    runs = runs_table(base, {"oracle": oracle, "random": rand})
    out = {v.arm: v for v in verdicts_from_runs(runs, param="model.query_source", expect={"random": "worse"})}
    for v, p in ((out["oracle"], p_o), (out["random"], p_r)):
        assert v.p_value == pytest.approx(p)  # unadjusted
        assert v.p_adjusted == pytest.approx(2 * min(p_o, p_r)) and v.n_arms == 2
        assert v.label == INCONCLUSIVE and not v.significant and not v.promotable
        assert "Holm p=" in result_text(v) and any("Holm over 2 arms" in n for n in v.notes)
    assert out["random"].expect == "worse" and out["oracle"].expect == "better"


def test_mde_is_detected_with_80_percent_power_in_simulation():
    # regression: the MDE must come from the noncentral t, exact at few seeds (a z formula is far too small)
    rng = np.random.default_rng(7)
    cases = [
        paired_verdict([0.0, 0.0, 0.0], [0.02, -0.05, 0.04]),  # 3 seeds, one arm: level 0.05
        verdicts_from_runs(  # 5 seeds, two arms: level 0.05 / 2
            runs_table(np.zeros(5), {"a": [0.1, -0.2, 0.05, 0.3, 0.0], "b": [1.0, 1.1, 0.9, 1.2, 1.0]}),
            param="x",
        )[0],
    ]
    assert cases[1].arm == "a" and cases[1].n_arms == 2
    for v in cases:
        n, sd = v.n_seeds, float(np.std(v.diffs, ddof=1))
        assert v.sd_diff == pytest.approx(sd)
        assert v.mde == pytest.approx(minimum_detectable_effect(n, sd, alpha=0.05, n_arms=v.n_arms))
        level = v.alpha / v.n_arms
        d = rng.normal(v.mde, sd, (4000, n))
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
        power = np.mean(2 * stats.t.sf(np.abs(t), n - 1) < level)
        assert power == pytest.approx(0.8, abs=0.05), (n, v.n_arms, power)
        # the z approximation is clearly too optimistic here
        z = (stats.norm.ppf(1 - level / 2) + stats.norm.ppf(0.8)) * sd / np.sqrt(n)
        assert z < 0.85 * v.mde
    assert np.isnan(minimum_detectable_effect(1, 1.0)) and np.isnan(minimum_detectable_effect(3, 0.0))
    assert np.isnan(paired_verdict([1.0, 2.0], [1.5, 2.5]).mde)  # zero spread of the differences


def test_inconclusive_says_what_it_could_not_see():
    v = paired_verdict([2.0, 2.1, 2.05], [2.0, 2.12, 2.04], param="train.lr", arm="2e-3")
    assert v.label == INCONCLUSIVE and np.isfinite(v.mde) and v.mde > abs(v.effect)
    phrase = f"underpowered for effects below {v.mde:.4g}"
    assert phrase in result_text(v) and phrase in format_verdict(v)
    assert phrase in log_row(v, experiment="e", hypothesis="h", config="c")
    clear = paired_verdict([2.0, 2.1, 2.05], [1.5, 1.61, 1.54])
    assert clear.label == VALIDATED and "underpowered" not in result_text(clear)


def test_controls_bound_the_headroom_and_are_never_promoted():
    base = np.array([0.90, 0.88, 0.91, 0.89])
    oracle = base - np.array([0.35, 0.36, 0.34, 0.37])
    cand = base - np.array([0.05, 0.06, 0.05, 0.055])
    rand = base + np.array([0.01, 0.011, 0.009, 0.012])
    v = paired_verdict(base, oracle, param="model.query_source", arm="oracle", control=True)
    assert v.control and v.significant and v.variant_better and v.label == VALIDATED
    assert not v.promotable
    impact = impact_text(v)
    assert impact.startswith("control (bound on the headroom): not a candidate to adopt")
    assert "--promote" not in impact and not impact.startswith("adopt")
    row = log_row(v, experiment="e", hypothesis="h", config="c")
    assert "candidate for --promote" not in row and "| adopt" not in row
    assert "control" in format_verdict(v).splitlines()[0]
    runs = runs_table(base, {"oracle": oracle, "cand": cand, "random": rand})
    out = {
        v.arm: v
        for v in verdicts_from_runs(
            runs, param="q", controls=("oracle", "random"), expect={"oracle": "better", "random": "worse"}
        )
    }
    assert out["oracle"].control and out["random"].control and not out["cand"].control
    assert [a for a, x in out.items() if x.promotable] == ["cand"]
    assert out["random"].label == VALIDATED and out["random"].expect == "worse"
    assert out["cand"].n_arms == 3  # controls are part of the Holm family
    assert impact_text(out["cand"]).startswith("adopt q=cand")
    # a single name is an arm, not a string of characters
    assert verdicts_from_runs(runs, param="q", controls="oracle")[2].control is False
    assert {x.arm for x in verdicts_from_runs(runs, param="q", controls="oracle") if x.control} == {"oracle"}


def test_expect_is_a_string_or_a_mapping_per_arm():
    base = np.array([1.00, 1.02, 0.99])
    runs = runs_table(base, {"worse_arm": base + [0.10, 0.11, 0.09], "other": base + [0.10, 0.12, 0.09]})
    out = {v.arm: v for v in verdicts_from_runs(runs, param="p", expect={"worse_arm": "worse"})}
    assert out["worse_arm"].label == VALIDATED and out["other"].label == FAILED  # missing arm: "better"
    assert all(v.label == VALIDATED for v in verdicts_from_runs(runs, param="p", expect="worse"))
    with pytest.raises(ValueError):
        verdicts_from_runs(runs, param="p", expect={"other": "sideways"})
    with pytest.raises(ValueError):
        verdicts_from_runs(runs, param="p", expect="sideways")


def test_edge_cases_are_inconclusive_with_notes():
    one = paired_verdict([2.0], [1.5])
    assert one.label == INCONCLUSIVE and any("one seed pair" in n for n in one.notes)
    assert np.isnan(one.mde) and np.isnan(one.p_signflip) and "fewer than 2 seed pairs" in result_text(one)
    nan = paired_verdict([2.0, 2.1, np.nan], [1.9, 2.0, 1.8])
    assert nan.n_seeds == 2 and any("non-finite" in n for n in nan.notes)
    same = paired_verdict([2.0, 2.1, 2.2], [2.0, 2.1, 2.2])
    assert same.label == INCONCLUSIVE and same.effect == 0
    none = paired_verdict([], [])
    assert none.label == INCONCLUSIVE and none.n_seeds == 0 and any("no complete" in n for n in none.notes)
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
    assert all(v.n_arms == 2 for v in out.values())
    assert holm([v.p_value for v in out.values()]) == pytest.approx([v.p_adjusted for v in out.values()])
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
    assert append_log(log, row) is True
    text = log.read_text()
    assert text.count(LOG_HEADER) == 1 and text.count(row) == 1
    lines = text.splitlines()
    i = lines.index(LOG_HEADER)
    assert lines[i - 1] == "" and lines[i + 1].startswith("|---") and lines[i + 2] == row
    new = tmp_path / "NEW.md"
    assert append_log(new, row) is True
    assert new.read_text().splitlines()[0] == LOG_HEADER
    # a row after prose (notes written below an earlier table) starts a new table: markdown would read a
    # header-less row as text; a row right after a row joins its table
    log.write_text(text + "\nA note on the rows above.\n")
    row2 = log_row(v, experiment="ablate-dq2", hypothesis="h", config="c")
    assert append_log(log, row2) is True
    lines = log.read_text().splitlines()
    assert lines[-3:] == [LOG_HEADER, LOG_RULE, row2] and lines[-4] == ""
    row3 = log_row(v, experiment="ablate-dq3", hypothesis="h", config="c")
    assert append_log(log, row3) is True and log.read_text().splitlines()[-2:] == [row2, row3]


def test_append_log_skips_a_row_already_logged(tmp_path):
    # regression: re-running the verdict step (or a resumed ablation) must not log the same result twice
    v = paired_verdict([2.0, 2.1, 2.05], [1.9, 2.0, 1.94], param="model.deep_query", arm="true")
    row = log_row(v, experiment="e", hypothesis="h | x", config="c", date=dt.date(2026, 3, 1))
    log = tmp_path / "LOG.md"
    assert append_log(log, row) is True
    before = log.read_text()
    assert append_log(log, row) is False
    later = log_row(v, experiment="e", hypothesis="h | x", config="c", date=dt.date(2026, 3, 9))
    assert append_log(log, later) is False  # the same result on another day is still a duplicate
    assert log.read_text() == before
    other = log_row(v, experiment="e2", hypothesis="h | x", config="c", date=dt.date(2026, 3, 1))
    assert append_log(log, other) is True
    assert log.read_text().count("| e2 |") == 1 and log.read_text().count(row) == 1


def test_format_verdict_is_readable():
    v = paired_verdict([2.0, 2.1, 2.05], [2.0, 2.12, 2.04], param="train.lr", arm="2e-3")
    text = format_verdict(v)
    assert text.splitlines()[0] == "train.lr = 2e-3: INCONCLUSIVE (hypothesis: the variant is better)"
    for key in ("baseline", "variant", "effect", "95% CI", "paired t p=", "sign-flip p=", "mde", "per seed"):
        assert key in text


# ---------------------------------------------------------------------------------------------------------
# the CLI: python analysis/verdicts.py --csv ...


def _cli(args, cwd=REPO):
    return subprocess.Popen(
        [sys.executable, "analysis/verdicts.py", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fields(line: str) -> dict:
    """Parse `arm: LABEL effect=.. ci95=[lo, hi] p_t=.. p_holm=.. n=.. mde=..[ control]`."""
    arm, rest = line.split(": ", 1)
    label, rest = rest.split(" ", 1)
    start, end = rest.index("ci95=["), rest.index("]")
    lo, hi = rest[start + 6 : end].split(", ")
    tokens = (rest[:start] + rest[end + 1 :]).split()
    kv = dict(tok.split("=", 1) for tok in tokens if "=" in tok)
    flags = [tok for tok in tokens if "=" not in tok]
    assert flags in ([], ["control"]), line
    return {"arm": arm, "label": label, "ci": [float(lo), float(hi)], "control": flags == ["control"], **kv}


def test_cli_prints_one_line_per_arm_and_exits_2_on_bad_input(tmp_path):
    rng = np.random.default_rng(8)
    base = 0.9 + rng.normal(0, 0.03, 4)
    vals = {
        "llm": base,
        "oracle": base - [0.35, 0.30, 0.41, 0.38],
        "random": base + rng.normal(0.01, 0.01, 4),
    }
    vals["1e-3"] = base + rng.normal(-0.02, 0.03, 4)  # a numeric-looking arm name stays a name
    rows = [
        {"run": f"{a}{s}", "query": a, "seed": s, "val": x} for a, v in vals.items() for s, x in enumerate(v)
    ]
    good = tmp_path / "good.csv"
    pd.DataFrame(rows).sample(frac=1.0, random_state=1).to_csv(good, index=False)
    cols = ["--arm-col", "query", "--seed-col", "seed", "--metric-col", "val"]

    def write(name, frame):
        frame.to_csv(tmp_path / name, index=False)
        return tmp_path / name

    frame = pd.DataFrame(rows)
    text_metric = frame.astype({"val": object})
    text_metric.loc[3, "val"] = "diverged"
    one_pair = frame[(frame["query"] == "llm") | (frame["seed"] == 0)]
    bad = {
        "missing file": (["--csv", tmp_path / "nope.csv", *cols, "--baseline", "llm"], "no such file"),
        "missing column": (
            [
                "--csv",
                good,
                "--arm-col",
                "query",
                "--seed-col",
                "seed",
                "--metric-col",
                "loss",
                "--baseline",
                "llm",
            ],
            "--metric-col 'loss' is not a column",
        ),
        "baseline": (["--csv", good, *cols, "--baseline", "LLM"], "--baseline 'LLM' is not a value"),
        "duplicates": (
            ["--csv", write("dup.csv", pd.concat([frame, frame.head(1)])), *cols, "--baseline", "llm"],
            "duplicate (arm, seed)",
        ),
        "non-numeric": (
            ["--csv", write("text.csv", text_metric), *cols, "--baseline", "llm"],
            "non-numeric value 'diverged'",
        ),
        "one pair": (["--csv", write("one.csv", one_pair), *cols, "--baseline", "llm"], "2 or more seeds"),
        "unknown flag": (["--csv", good, *cols, "--baseline", "llm", "--bogus"], "unrecognized arguments"),
        "control": (["--csv", good, *cols, "--baseline", "llm", "--control", "oracel"], "--control 'oracel'"),
    }
    procs = {"good": _cli(["--csv", good, *cols, "--baseline", "llm", "--control", "oracle", "random"])}
    procs["higher"] = _cli(
        ["--csv", good, *cols, "--baseline", "llm", "--higher-is-better", "--expect", "worse"]
    )
    procs.update({k: _cli(args) for k, (args, _) in bad.items()})
    res = {k: (p.wait(timeout=120), *p.communicate()) for k, p in procs.items()}

    rc, out, err = res["good"]
    assert rc == 0 and err == "", err
    lines = out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["1e-3", "oracle", "random"]
    p_t = {a: stats.ttest_rel(vals[a], base).pvalue for a in ("1e-3", "oracle", "random")}
    adj = dict(zip(p_t, holm(list(p_t.values())), strict=True))
    for line in lines:
        f = _fields(line)
        a = f["arm"]
        t = stats.ttest_rel(vals[a], base)
        ci = t.confidence_interval(confidence_level=0.95)
        assert float(f["effect"]) == pytest.approx(np.mean(vals[a] - base), rel=1e-5)
        assert f["ci"] == pytest.approx([ci.low, ci.high], rel=1e-5)
        assert float(f["p_t"]) == pytest.approx(t.pvalue, rel=1e-5)
        assert float(f["p_holm"]) == pytest.approx(adj[a], rel=1e-5)
        assert f["n"] == "4" and f["control"] == (a in ("oracle", "random"))
        sd = np.std(vals[a] - base, ddof=1)
        assert float(f["mde"]) == pytest.approx(minimum_detectable_effect(4, sd, n_arms=3), rel=1e-5)
        effect = np.mean(vals[a] - base)
        want = (VALIDATED if effect < 0 else FAILED) if adj[a] < 0.05 and effect != 0 else INCONCLUSIVE
        assert f["label"] == want, line
    assert _fields(lines[1])["label"] == VALIDATED  # the oracle is far better
    rc, out, err = res["higher"]
    assert (
        rc == 0 and _fields(out.splitlines()[1])["label"] == VALIDATED
    )  # lower is worse when higher is better

    for k, (_, needle) in bad.items():
        rc, out, err = res[k]
        assert rc == 2 and out == "", (k, rc, out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("verdicts: error:"), (k, err)
        assert needle in err and "Traceback" not in err, (k, err)


# ---------------------------------------------------------------------------------------------------------
# eval principles


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
