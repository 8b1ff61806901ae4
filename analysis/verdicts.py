"""Ablation verdicts from paired seeds, and the LOG.md row that tune/ablate.py appends.

Usage:
    from analysis.verdicts import paired_verdict, verdicts_from_runs, log_row, append_log, format_verdict
    v = paired_verdict([2.01, 1.98, 2.03], [1.91, 1.90, 1.94], param="model.deep_query", arm="true")
    print(format_verdict(v)); append_log("LOG.md", log_row(v, experiment="ablate-dq", hypothesis="...",
                                                            config="model.deep_query=true"))

Statistics. Seeds are paired across arms (same init and data order per seed), so the unit is the per-seed
difference d_i = variant_i - baseline_i and the effect is mean(d). We report
  * ci95: the paired-t 95% interval mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n) (with 3 seeds a bootstrap
    percentile interval is far too narrow: only 10 distinct resample means exist);
  * p_value: the two-sided paired t-test of mean(d) = 0;
  * p_boot: a two-sided bootstrap test (resampling the centred differences), shown beside the t-test;
  * ci95_boot: the bootstrap percentile interval, for reference.
Labels judge the HYPOTHESIS, whose direction is ``expect``: "better" (the variant should beat the
baseline, the default) or "worse" (the variant should lose, e.g. "shallow query is worse than deep").
"Better" means lower when lower_is_better, else higher. Significant = the paired-t CI excludes 0 and
p_value < alpha.
  VALIDATED    significant, in the expected direction;
  FAILED       significant, against the expected direction;
  INCONCLUSIVE anything else: fewer than 2 pairs, a CI containing 0, or p_value >= alpha.
The impact (adopt the variant / keep the baseline) follows the measured direction, not the hypothesis.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

VALIDATED, FAILED, INCONCLUSIVE = "VALIDATED", "FAILED", "INCONCLUSIVE"
LOG_HEADER = "| Date | Experiment | Hypothesis | Config | Result | Impact |"
LOG_RULE = "|---|---|---|---|---|---|"


@dataclass
class Verdict:
    param: str
    arm: str
    metric: str
    n_seeds: int
    baseline_mean: float
    variant_mean: float
    effect: float  # mean paired difference, variant - baseline
    ci95: tuple[float, float]
    p_value: float  # paired t-test, two-sided
    p_boot: float  # bootstrap test, two-sided
    label: str
    lower_is_better: bool = True
    alpha: float = 0.05
    expect: str = "better"  # the hypothesis' direction for the variant: better | worse
    significant: bool = False
    ci95_boot: tuple[float, float] = (math.nan, math.nan)
    diffs: list[float] = field(default_factory=list)
    seeds: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def variant_better(self) -> bool:
        """The measured direction (whatever the hypothesis expected)."""
        return bool(self.effect < 0 if self.lower_is_better else self.effect > 0)

    @property
    def relative_effect(self) -> float:
        return self.effect / abs(self.baseline_mean) if self.baseline_mean else math.nan


def paired_verdict(
    baseline,
    variant,
    *,
    param: str = "",
    arm: str = "",
    metric: str = "val_loss",
    lower_is_better: bool = True,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    expect: str = "better",
) -> Verdict:
    """Verdict for one variant against the baseline; baseline[i] and variant[i] share seed i."""
    if expect not in ("better", "worse"):
        raise ValueError(f"expect must be 'better' or 'worse', got {expect!r}")
    b = np.asarray(baseline, dtype=float).ravel()
    v = np.asarray(variant, dtype=float).ravel()
    if len(b) != len(v):
        raise ValueError(f"paired seeds need equal lengths: baseline {len(b)}, variant {len(v)}")
    notes = []
    ok = np.isfinite(b) & np.isfinite(v)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} seed pair(s) with a non-finite {metric} dropped")
    b, v = b[ok], v[ok]
    n = len(b)
    d = v - b
    nan2 = (math.nan, math.nan)
    if n == 0:
        return Verdict(
            param,
            arm,
            metric,
            0,
            math.nan,
            math.nan,
            math.nan,
            nan2,
            math.nan,
            math.nan,
            INCONCLUSIVE,
            lower_is_better,
            alpha,
            expect,
            False,
            nan2,
            [],
            [],
            notes + ["no complete seed pairs"],
        )
    effect = float(d.mean())
    if n < 2:
        notes.append("one seed pair: no test is possible")
        ci, p, p_boot, ci_boot = nan2, math.nan, math.nan, nan2
    else:
        sd = float(d.std(ddof=1))
        if sd == 0.0:
            # identical differences: deterministic effect (or none)
            ci = (effect, effect)
            p = 1.0 if effect == 0.0 else 0.0
            notes.append("all paired differences are identical")
        else:
            half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
            ci = (effect - half, effect + half)
            p = float(stats.ttest_rel(v, b).pvalue)
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, (n_boot, n))].mean(axis=1)
        ci_boot = tuple(float(x) for x in np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
        centred = (d - effect)[rng.integers(0, n, (n_boot, n))].mean(axis=1)
        p_boot = float((np.sum(np.abs(centred) >= abs(effect)) + 1) / (n_boot + 1))
        if n < 3:
            notes.append(f"only {n} seeds: the test has little power")
    better = effect < 0 if lower_is_better else effect > 0
    significant = n >= 2 and np.isfinite(p) and p < alpha and not (ci[0] <= 0.0 <= ci[1])
    significant = bool(significant and effect != 0)
    label = (VALIDATED if better == (expect == "better") else FAILED) if significant else INCONCLUSIVE
    return Verdict(
        param=param,
        arm=arm,
        metric=metric,
        n_seeds=n,
        baseline_mean=float(b.mean()),
        variant_mean=float(v.mean()),
        effect=effect,
        ci95=(float(ci[0]), float(ci[1])),
        p_value=p,
        p_boot=p_boot,
        label=label,
        lower_is_better=lower_is_better,
        alpha=alpha,
        expect=expect,
        significant=significant,
        ci95_boot=ci_boot,
        diffs=[float(x) for x in d],
        notes=notes,
    )


def verdicts_from_runs(
    runs_df: pd.DataFrame,
    *,
    param: str,
    metric: str = "final_val_loss",
    baseline_arm: str = "baseline",
    lower_is_better: bool = True,
    expect: str = "better",
) -> list[Verdict]:
    """One verdict per non-baseline arm, pairing runs with the baseline by `seed`.

    Runs whose status is not `complete` (where a status column exists) are dropped, and the dropped seeds
    are named in the verdict's notes; so are seeds missing from either arm.
    """
    for col in ("arm", "seed", metric):
        if col not in runs_df.columns:
            raise ValueError(f"runs table has no {col!r} column")
    df = runs_df.copy()
    df["arm"] = df["arm"].astype(str)
    dropped = pd.DataFrame(columns=df.columns)
    if "status" in df.columns:
        dropped = df[df["status"].astype(str) != "complete"]
        df = df[df["status"].astype(str) == "complete"]
    base = df[df["arm"] == str(baseline_arm)]
    if base["seed"].duplicated().any():
        raise ValueError(
            f"baseline arm {baseline_arm!r} has several complete runs per seed; cannot pair by seed"
        )
    base = base.set_index("seed")[metric]
    out = []
    arms = set(df["arm"]) | set(dropped["arm"].astype(str))
    for arm in sorted(arms):
        if arm == str(baseline_arm):
            continue
        var = df[df["arm"] == arm]
        if var["seed"].duplicated().any():
            raise ValueError(f"arm {arm!r} has several complete runs per seed; cannot pair by seed")
        var = var.set_index("seed")[metric]
        seeds = sorted(set(base.index) & set(var.index), key=str)
        v = paired_verdict(
            base.loc[seeds].to_numpy(dtype=float) if seeds else [],
            var.loc[seeds].to_numpy(dtype=float) if seeds else [],
            param=param,
            arm=arm,
            metric=metric,
            lower_is_better=lower_is_better,
            expect=expect,
        )
        v.seeds = list(seeds)
        unpaired = sorted((set(base.index) ^ set(var.index)), key=str)
        if unpaired:
            v.notes.append(f"seeds without a partner in both arms: {unpaired}")
        bad = dropped[dropped["arm"].astype(str).isin([arm, str(baseline_arm)])]
        if len(bad):
            desc = ", ".join(
                f"{a} seed {s}: {st}" for a, s, st in zip(bad["arm"], bad["seed"], bad["status"], strict=True)
            )
            v.notes.append(f"runs not complete, excluded: {desc}")
        out.append(v)
    return out


def _num(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _p(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else (f"{x:.2g}" if x >= 1e-4 else "<1e-4")


def result_text(v: Verdict) -> str:
    """One line: label, the metric's means, the effect with CI and the tests."""
    return (
        f"{v.label}: {v.metric} {_num(v.baseline_mean)} -> {_num(v.variant_mean)} "
        f"(effect {v.effect:+.4g}, 95% CI [{_num(v.ci95[0])}, {_num(v.ci95[1])}], "
        f"paired t p={_p(v.p_value)}, bootstrap p={_p(v.p_boot)}, {v.n_seeds} seeds)"
    )


def impact_text(v: Verdict) -> str:
    what = f"{v.param}={v.arm}" if v.param else v.arm
    if v.significant and v.variant_better:
        return f"adopt {what} (candidate for --promote)"
    if v.significant:
        return f"keep the baseline; {what} is worse"
    return f"no decision on {what}: effect within noise at {v.n_seeds} seeds (more seeds or a larger budget)"


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ").strip()


def log_row(verdict: Verdict, *, experiment: str, hypothesis: str, config: str, date=None) -> str:
    """One markdown table row: | date | experiment | hypothesis | config | result | impact |"""
    if date is None:
        date = _dt.date.today().isoformat()
    elif isinstance(date, (_dt.date, _dt.datetime)):
        date = date.strftime("%Y-%m-%d")
    cells = [date, experiment, hypothesis, config, result_text(verdict), impact_text(verdict)]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def append_log(log_path, row: str) -> None:
    """Append a row to LOG.md, writing the ablation table header first if the file lacks it."""
    path = Path(log_path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    add = ""
    if LOG_HEADER not in text:
        if text and not text.endswith("\n"):
            add += "\n"
        if text.strip():
            add += "\n"
        add += LOG_HEADER + "\n" + LOG_RULE + "\n"
    elif text and not text.endswith("\n"):
        add += "\n"
    add += row.rstrip("\n") + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(add)


def format_verdict(verdict: Verdict) -> str:
    """Multi-line console summary."""
    v = verdict
    direction = "lower is better" if v.lower_is_better else "higher is better"
    lines = [
        f"{v.param or 'ablation'} = {v.arm}: {v.label} (hypothesis: the variant is {v.expect})",
        f"  metric    {v.metric} ({direction}), {v.n_seeds} paired seeds",
        f"  baseline  {_num(v.baseline_mean)}",
        f"  variant   {_num(v.variant_mean)}",
        f"  effect    {v.effect:+.4g} ({100 * v.relative_effect:+.2f}%), 95% CI [{_num(v.ci95[0])}, {_num(v.ci95[1])}]"
        if np.isfinite(v.relative_effect)
        else f"  effect    {_num(v.effect)}, 95% CI [{_num(v.ci95[0])}, {_num(v.ci95[1])}]",
        f"  tests     paired t p={_p(v.p_value)}, bootstrap p={_p(v.p_boot)} (alpha {v.alpha})",
    ]
    if v.diffs:
        lines.append("  per seed  " + ", ".join(f"{x:+.4g}" for x in v.diffs))
    lines += [f"  note      {n}" for n in v.notes]
    return "\n".join(lines)
