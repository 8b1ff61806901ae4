"""Ablation verdicts from paired seeds, and the LOG.md row that tune/ablate.py appends.

Usage (CLI, any table with one row per arm and seed):
    python analysis/verdicts.py --csv F --arm-col A --seed-col S --metric-col M --baseline NAME \
        [--expect better|worse] [--control ARM ...] [--higher-is-better] [--alpha 0.05]
  prints one line per variant arm: arm, label, effect, 95% CI, p (t), Holm-adjusted p, n seeds, mde
  (and "control" for controls). Bad input: one line on stderr starting "verdicts: error:", exit 2.

Usage (library):
    from analysis.verdicts import paired_verdict, verdicts_from_runs, log_row, append_log, format_verdict
    v = paired_verdict([2.01, 1.98, 2.03], [1.91, 1.90, 1.94], param="model.deep_query", arm="true")
    print(format_verdict(v)); append_log("LOG.md", log_row(v, experiment="ablate-dq", hypothesis="...",
                                                            config="model.deep_query=true"))

Statistics. Seeds are paired across arms (same init and data order per seed), so the unit is the per-seed
difference d_i = variant_i - baseline_i (i = 1..n) and the effect is mean(d). Every verdict reports:

  * ci95: the paired-t 95% interval mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n), taken from
    ``scipy.stats.ttest_rel(variant, baseline).confidence_interval(confidence_level=0.95)`` (at 3 seeds
    t_{0.975, 2} = 4.30, not the normal 1.96: a z- or bootstrap interval is far too narrow there);
  * p_value: the two-sided paired t-test of mean(d) = 0, unadjusted (the primary test; it assumes the
    differences are roughly normal);
  * p_signflip: the exact paired permutation (sign-flip) test: under the null each d_i is as likely to be
    -d_i, so p = the share of the 2^n sign patterns whose |mean| is >= the observed |mean| (all 2^n are
    enumerated for n <= 16, else 100,000 random patterns). It needs no normality, but it is coarse: its
    smallest possible value is 2 / 2^n, i.e. 0.25 at 3 seeds and 0.0625 at 5, so below 6 seeds it can
    never reach p < 0.05 (a note says so). Shown beside the t-test, never used for the label;
  * p_boot, ci95_boot: a bootstrap test (resampling the centred differences) and percentile interval, ONLY
    from MIN_SEEDS_FOR_BOOTSTRAP = 8 seed pairs up; below that they are NaN and the text says "bootstrap:
    n/a below 8 seeds". With 3 seeds only 10 distinct resample means exist, the bootstrap distribution
    is far too narrow, and in simulated null ablations at 3 seeds the bootstrap gave p < 0.05 in ~30% of
    runs (the t-test: ~5%, as it should);
  * p_adjusted, n_arms: an ablation with several variant arms (e.g. oracle and random queries vs the
    baseline) tests several hypotheses at once, so the p-values of one ``verdicts_from_runs`` call are
    corrected with the Holm-Bonferroni step-down procedure (Holm, S. (1979), "A simple sequentially
    rejective multiple test procedure", Scandinavian Journal of Statistics 6(2):65-70): sort the m
    p-values, multiply the k-th smallest by (m - k + 1), make the result monotone and cap it at 1. It
    controls the family-wise error rate at alpha with no assumption on how the arms depend on each other.
    Controls are part of the family. A single ``paired_verdict`` has p_adjusted = p_value, n_arms = 1;
  * mde: the minimum detectable effect, the smallest |true mean difference| the paired t-test detects with
    80% power at the seeds used, the arm's most stringent Holm level alpha / n_arms and the observed sd(d).
    Exact for normal differences: the t statistic then follows a noncentral t with n - 1 degrees of
    freedom and noncentrality delta sqrt(n) / sd, and power(delta) = 0.8 is solved for delta
    (``scipy.stats.nct``, ``scipy.optimize.brentq``). An INCONCLUSIVE verdict is not evidence of no
    effect: it says "underpowered for effects below {mde}", i.e. effects of that size could not be seen.

Labels judge the HYPOTHESIS, whose direction is ``expect``: "better" (the variant should beat the
baseline, the default) or "worse" (the variant should lose, e.g. "shallow query is worse than deep").
"Better" means lower when lower_is_better, else higher. Significant = p_adjusted < alpha and a finite,
non-zero effect.
  VALIDATED    significant, in the expected direction;
  FAILED       significant, against the expected direction;
  INCONCLUSIVE anything else: fewer than 2 pairs, or p_adjusted >= alpha.
The impact (adopt the variant / keep the baseline) follows the measured direction, not the hypothesis.

Controls are bounds, not candidates: an arm such as an oracle query (the best a query can do) or a random
one (the worst) measures the headroom; ``control=True`` verdicts never say "adopt" and are never
``promotable`` (= significant, measured better than the baseline, and not a control).

References: scipy.stats.ttest_rel, TtestResult.confidence_interval, scipy.stats.nct and
scipy.optimize.brentq in the SciPy reference guide (docs.scipy.org); Holm (1979) above; the sign-flip test
as in Good, P. (2005), "Permutation, Parametric and Bootstrap Tests of Hypotheses", Springer.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: import the repo's packages, not siblings of this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
from collections.abc import Iterable, Mapping  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import optimize, stats  # noqa: E402

from fvlm.cli import OneLineParser  # noqa: E402

VALIDATED, FAILED, INCONCLUSIVE = "VALIDATED", "FAILED", "INCONCLUSIVE"
LOG_HEADER = "| Date | Experiment | Hypothesis | Config | Result | Impact |"
LOG_RULE = "|---|---|---|---|---|---|"
MIN_SEEDS_FOR_BOOTSTRAP = 8  # below this the bootstrap is over-confident: p_boot, ci95_boot are NaN
MAX_EXACT_SIGNFLIP = 16  # enumerate all 2^n sign flips up to here, else N_RANDOM_SIGNFLIPS random ones
N_RANDOM_SIGNFLIPS = 100_000
MDE_POWER = 0.8
_NAN2 = (math.nan, math.nan)


@dataclass
class Verdict:
    param: str
    arm: str
    metric: str
    n_seeds: int
    baseline_mean: float
    variant_mean: float
    effect: float  # mean paired difference, variant - baseline
    ci95: tuple[float, float]  # paired-t 95% interval of the effect
    p_value: float  # paired t-test, two-sided, unadjusted
    p_boot: float  # bootstrap test, two-sided; NaN below MIN_SEEDS_FOR_BOOTSTRAP pairs
    label: str
    lower_is_better: bool = True
    alpha: float = 0.05
    expect: str = "better"  # the hypothesis' direction for the variant: better | worse
    significant: bool = False  # p_adjusted < alpha and a finite non-zero effect
    ci95_boot: tuple[float, float] = _NAN2  # NaN below MIN_SEEDS_FOR_BOOTSTRAP pairs
    diffs: list[float] = field(default_factory=list)
    seeds: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    p_signflip: float = math.nan  # exact paired permutation (sign-flip) test, two-sided
    p_adjusted: float = math.nan  # Holm-adjusted p_value over the n_arms arms of one ablation
    n_arms: int = 1  # m, the number of tested arms in the Holm family
    mde: float = math.nan  # |effect| detected with 80% power at alpha / n_arms, n_seeds and sd_diff
    sd_diff: float = math.nan  # sample sd of the paired differences
    control: bool = False  # a bound on the headroom (oracle, random), never a candidate to adopt

    @property
    def variant_better(self) -> bool:
        """The measured direction (whatever the hypothesis expected)."""
        return bool(self.effect < 0 if self.lower_is_better else self.effect > 0)

    @property
    def relative_effect(self) -> float:
        return self.effect / abs(self.baseline_mean) if self.baseline_mean else math.nan

    @property
    def promotable(self) -> bool:
        """Significant, measured better than the baseline, and not a control."""
        return bool(self.significant and self.variant_better and not self.control)


# ---------------------------------------------------------------------------------------------------------
# the tests


def holm(p_values) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values (Holm 1979), in the input order.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of p_(k) is
    max_{j <= k} min(1, (m - j + 1) p_(j)): monotone in p and capped at 1. Rejecting where the adjusted p
    is < alpha controls the family-wise error rate at alpha. NaN inputs stay NaN and do not count toward m.
    """
    p = np.asarray([math.nan if x is None else x for x in p_values], dtype=float).ravel()
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[ok].tolist()}")
    m = int(ok.sum())
    if m:
        idx = np.flatnonzero(ok)
        order = idx[np.argsort(p[idx], kind="stable")]
        adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
        out[order] = np.maximum.accumulate(adj)
    return [float(x) for x in out]


def signflip_p(diffs, *, n_random: int = N_RANDOM_SIGNFLIPS, seed: int = 0) -> float:
    """Two-sided exact paired permutation (sign-flip) p-value of mean(diffs) = 0.

    The share of sign patterns s in {-1, +1}^n with |mean(s * d)| >= |mean(d)|: all 2^n patterns for
    n <= MAX_EXACT_SIGNFLIP (then the smallest possible p is 2 / 2^n), else `n_random` random patterns
    with p = (hits + 1) / (n_random + 1). NaN for no differences.
    """
    d = np.asarray(diffs, dtype=float).ravel()
    n = len(d)
    if n == 0 or not np.isfinite(d).all():
        return math.nan
    obs = abs(float(d.sum()))
    tol = 1e-9 * float(np.abs(d).sum())  # ties up to rounding count as "as extreme"
    if n <= MAX_EXACT_SIGNFLIP:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) >= obs - tol))
    rng = np.random.default_rng(seed)
    hits, left = 0, int(n_random)
    while left > 0:
        k = min(left, max(1, 2_000_000 // n))
        signs = 2 * rng.integers(0, 2, (k, n)) - 1
        hits += int(np.sum(np.abs(signs @ d) >= obs - tol))
        left -= k
    return float((hits + 1) / (n_random + 1))


@functools.lru_cache(maxsize=1024)
def _noncentrality_for_power(df: int, level: float, power: float) -> float:
    """The noncentrality lambda where the two-sided level-`level` t-test with `df` dof has `power`."""
    tc = float(stats.t.ppf(1 - level / 2, df))

    def gap(lam: float) -> float:
        upper = float(stats.nct.sf(tc, df, lam))  # P(T > tc)
        lower = float(stats.nct.sf(tc, df, -lam))  # P(T < -tc), by the symmetry T(-lambda) = -T(lambda)
        if not np.isfinite(lower):  # underflow at large lambda, where P(T < -tc) <= Phi(-lambda) ~ 0
            lower = 0.0
        return upper + lower - power

    hi = tc + 4.0
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e9:  # pragma: no cover - unreachable for level < power
            return math.nan
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12))


def minimum_detectable_effect(
    n_pairs: int, sd: float, *, alpha: float = 0.05, n_arms: int = 1, power: float = MDE_POWER
) -> float:
    """The smallest |true mean difference| the paired t-test detects with probability `power`.

    Two-sided paired t-test on `n_pairs` normal differences of sd `sd` at level alpha / n_arms (the most
    stringent Holm step, so the value holds for every arm of the family): the t statistic follows a
    noncentral t with n - 1 dof and noncentrality delta sqrt(n) / sd; power(delta) = `power` is solved
    exactly with scipy.stats.nct and scipy.optimize.brentq. NaN with fewer than 2 pairs or zero sd.
    """
    if n_pairs < 2 or not np.isfinite(sd) or sd <= 0:
        return math.nan
    level = alpha / max(int(n_arms), 1)
    if not 0 < level < power:
        return math.nan
    return _noncentrality_for_power(int(n_pairs) - 1, float(level), float(power)) * sd / math.sqrt(n_pairs)


def _decide(v: Verdict, p_adjusted: float, n_arms: int) -> Verdict:
    """Set the Holm-adjusted p, the family size, the MDE, significance and the label."""
    v.p_adjusted = float(p_adjusted)
    v.n_arms = max(int(n_arms), 1)
    v.mde = minimum_detectable_effect(v.n_seeds, v.sd_diff, alpha=v.alpha, n_arms=v.n_arms)
    significant = np.isfinite(v.p_adjusted) and v.p_adjusted < v.alpha
    v.significant = bool(significant and np.isfinite(v.effect) and v.effect != 0)
    if v.significant:
        v.label = VALIDATED if v.variant_better == (v.expect == "better") else FAILED
    else:
        v.label = INCONCLUSIVE
    return v


def _check_expect(expect: str) -> str:
    if expect not in ("better", "worse"):
        raise ValueError(f"expect must be 'better' or 'worse', got {expect!r}")
    return expect


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
    control: bool = False,
) -> Verdict:
    """Verdict for one variant against the baseline; baseline[i] and variant[i] share seed i.

    One arm alone: p_adjusted = p_value and n_arms = 1 (``verdicts_from_runs`` applies Holm over arms).
    `control=True` marks a bound on the headroom (oracle, random): judged, but never promotable.
    """
    _check_expect(expect)
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
    out = Verdict(
        param=param,
        arm=arm,
        metric=metric,
        n_seeds=n,
        baseline_mean=float(b.mean()) if n else math.nan,
        variant_mean=float(v.mean()) if n else math.nan,
        effect=float(d.mean()) if n else math.nan,
        ci95=_NAN2,
        p_value=math.nan,
        p_boot=math.nan,
        label=INCONCLUSIVE,
        lower_is_better=lower_is_better,
        alpha=alpha,
        expect=expect,
        diffs=[float(x) for x in d],
        notes=notes,
        control=bool(control),
    )
    if n == 0:
        notes.append("no complete seed pairs")
        return _decide(out, math.nan, 1)
    if n < 2:
        notes.append("one seed pair: no test is possible")
        return _decide(out, math.nan, 1)
    effect = out.effect
    out.sd_diff = sd = float(d.std(ddof=1))
    if sd == 0.0:
        # identical differences: a deterministic effect (or none); the t statistic is undefined
        out.ci95 = (effect, effect)
        out.p_value = 1.0 if effect == 0.0 else 0.0
        notes.append("all paired differences are identical: no t-test (p set to 0, or 1 for no effect)")
    else:
        res = stats.ttest_rel(v, b)
        ci = res.confidence_interval(confidence_level=0.95)
        out.ci95 = (float(ci.low), float(ci.high))
        out.p_value = float(res.pvalue)
    out.p_signflip = signflip_p(d, seed=seed)
    if 2.0 / 2**n >= alpha:
        notes.append(
            f"sign-flip p cannot go below 2/2^{n} = {2.0 / 2**n:.3g} at {n} seeds (never < alpha {alpha})"
        )
    if n >= MIN_SEEDS_FOR_BOOTSTRAP:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, (n_boot, n))].mean(axis=1)
        out.ci95_boot = tuple(float(x) for x in np.percentile(means, [2.5, 97.5]))
        centred = (d - effect)[rng.integers(0, n, (n_boot, n))].mean(axis=1)
        out.p_boot = float((np.sum(np.abs(centred) >= abs(effect)) + 1) / (n_boot + 1))
    if n < 3:
        notes.append(f"only {n} seeds: the test has little power")
    return _decide(out, out.p_value, 1)


def _expect_for(expect, arm: str) -> str:
    if isinstance(expect, Mapping):
        return _check_expect({str(k): x for k, x in expect.items()}.get(arm, "better"))
    return _check_expect(expect)


def verdicts_from_runs(
    runs_df: pd.DataFrame,
    *,
    param: str,
    metric: str = "final_val_loss",
    baseline_arm: str = "baseline",
    lower_is_better: bool = True,
    expect: str | Mapping[str, str] = "better",
    controls: Iterable[str] = (),
    alpha: float = 0.05,
) -> list[Verdict]:
    """One verdict per non-baseline arm, pairing runs with the baseline by `seed`, Holm over the arms.

    `expect` is "better" | "worse" for every arm, or a mapping arm -> direction ("better" for arms it
    lacks). Arms named in `controls` (e.g. ("oracle", "random")) are bounds, not candidates: they enter
    the Holm family but are never promotable. Runs whose status is not `complete` (where a status column
    exists) are dropped, and the dropped seeds are named in the verdict's notes; so are seeds missing from
    either arm.
    """
    for col in ("arm", "seed", metric):
        if col not in runs_df.columns:
            raise ValueError(f"runs table has no {col!r} column")
    if isinstance(expect, Mapping):
        for x in expect.values():
            _check_expect(x)
    else:
        _check_expect(expect)
    controls = {str(controls)} if isinstance(controls, str) else {str(c) for c in controls}
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
            alpha=alpha,
            expect=_expect_for(expect, arm),
            control=arm in controls,
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
    adjusted = holm([v.p_value for v in out])
    m = sum(np.isfinite(p) for p in adjusted)
    for v, p_adj in zip(out, adjusted, strict=True):
        _decide(v, p_adj, m)
        if m > 1 and np.isfinite(p_adj):
            v.notes.append(f"Holm over {m} arms: p {_p(v.p_value)} -> {_p(p_adj)}")
    return out


# ---------------------------------------------------------------------------------------------------------
# text


def _num(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _p(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else (f"{x:.2g}" if x >= 1e-4 else "<1e-4")


def _level(v: Verdict) -> str:
    return f"alpha {v.alpha:g}" + (f"/{v.n_arms}" if v.n_arms > 1 else "")


def _power_text(v: Verdict) -> str:
    """What an INCONCLUSIVE verdict could not see."""
    if np.isfinite(v.mde):
        return f"underpowered for effects below {_num(v.mde)} (80% power, {_level(v)}, {v.n_seeds} seeds)"
    if v.n_seeds < 2:
        return "no power at all: fewer than 2 seed pairs"
    return "minimum detectable effect undefined: the paired differences have zero spread"


def _tests_text(v: Verdict) -> str:
    parts = [f"paired t p={_p(v.p_value)}"]
    if v.n_arms > 1:
        parts.append(f"Holm p={_p(v.p_adjusted)} over {v.n_arms} arms")
    parts.append(f"sign-flip p={_p(v.p_signflip)}")
    if v.n_seeds >= MIN_SEEDS_FOR_BOOTSTRAP:
        parts.append(f"bootstrap p={_p(v.p_boot)}")
    else:
        parts.append(f"bootstrap: n/a below {MIN_SEEDS_FOR_BOOTSTRAP} seeds")
    return ", ".join(parts)


def result_text(v: Verdict) -> str:
    """One line: label, the metric's means, the effect with CI, the tests, and the power if INCONCLUSIVE."""
    label = v.label + (" (control)" if v.control else "")
    text = (
        f"{label}: {v.metric} {_num(v.baseline_mean)} -> {_num(v.variant_mean)} "
        f"(effect {_num(v.effect) if not np.isfinite(v.effect) else f'{v.effect:+.4g}'}, "
        f"95% CI [{_num(v.ci95[0])}, {_num(v.ci95[1])}], {_tests_text(v)}, {v.n_seeds} seeds)"
    )
    if v.label == INCONCLUSIVE:
        text += f"; {_power_text(v)}"
    return text


def impact_text(v: Verdict) -> str:
    what = f"{v.param}={v.arm}" if v.param else v.arm
    if v.control:
        head = "control (bound on the headroom): not a candidate to adopt"
        if v.significant:
            side = "better" if v.variant_better else "worse"
            return f"{head}; {what} is significantly {side} than the baseline"
        return f"{head}; {what} is within noise of the baseline at {v.n_seeds} seeds"
    if v.significant and v.variant_better:
        return f"adopt {what} (candidate for --promote)"
    if v.significant:
        return f"keep the baseline; {what} is worse"
    return f"no decision on {what}: effect within noise at {v.n_seeds} seeds (more seeds or a larger budget)"


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ").strip()


def table_row(experiment: str, hypothesis: str, config: str, result: str, impact: str, date=None) -> str:
    """One markdown row of the LOG.md table: | date | experiment | hypothesis | config | result | impact |"""
    if date is None:
        date = _dt.date.today().isoformat()
    elif isinstance(date, (_dt.date, _dt.datetime)):
        date = date.strftime("%Y-%m-%d")
    cells = [date, experiment, hypothesis, config, result, impact]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def log_row(verdict: Verdict, *, experiment: str, hypothesis: str, config: str, date=None) -> str:
    """The LOG.md row of one verdict."""
    return table_row(experiment, hypothesis, config, result_text(verdict), impact_text(verdict), date)


def _row_key(line: str) -> str | None:
    """A table row without its first (date) cell, whitespace-normalised; None for a non-row line."""
    s = line.strip()
    if not s.startswith("|"):
        return None
    _, sep, rest = s[1:].partition("|")  # the date cell holds no pipe (log_row escapes them in cells)
    return " ".join(rest.split()) if sep else None


def append_log(log_path, row: str) -> bool:
    """Append a row to LOG.md; a table header first unless the file ends with a table row.

    A row that is already in the file (equal once the date cell is ignored) is not appended again.
    Returns True if the row was appended, False if it was skipped as a duplicate.
    """
    path = Path(log_path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    key = _row_key(row)
    if key is not None and any(_row_key(line) == key for line in text.splitlines()):
        return False
    add = "\n" if text and not text.endswith("\n") else ""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[-1].lstrip().startswith("|"):
        # a table needs its header right above its rows: after a paragraph, markdown would read the row as
        # text, so a new table starts (the log is append-only, notes go between the tables)
        add += ("\n" if text.strip() else "") + LOG_HEADER + "\n" + LOG_RULE + "\n"
    add += row.rstrip("\n") + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(add)
    return True


def format_verdict(verdict: Verdict) -> str:
    """Multi-line console summary."""
    v = verdict
    direction = "lower is better" if v.lower_is_better else "higher is better"
    kind = "control; " if v.control else ""
    lines = [
        f"{v.param or 'ablation'} = {v.arm}: {v.label} ({kind}hypothesis: the variant is {v.expect})",
        f"  metric    {v.metric} ({direction}), {v.n_seeds} paired seeds",
        f"  baseline  {_num(v.baseline_mean)}",
        f"  variant   {_num(v.variant_mean)}",
        f"  effect    {v.effect:+.4g} ({100 * v.relative_effect:+.2f}%), 95% CI [{_num(v.ci95[0])}, {_num(v.ci95[1])}]"
        if np.isfinite(v.relative_effect)
        else f"  effect    {_num(v.effect)}, 95% CI [{_num(v.ci95[0])}, {_num(v.ci95[1])}]",
        f"  tests     {_tests_text(v)} ({_level(v)})",
        f"  power     mde {_num(v.mde)}: |effect| detected with 80% power at {_level(v)}, {v.n_seeds} seeds, "
        f"sd of differences {_num(v.sd_diff)}",
    ]
    if v.label == INCONCLUSIVE:
        lines.append(f"  verdict   {_power_text(v)}")
    if v.control:
        lines.append(f"  impact    {impact_text(v)}")
    if v.diffs:
        lines.append("  per seed  " + ", ".join(f"{x:+.4g}" for x in v.diffs))
    lines += [f"  note      {n}" for n in v.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# CLI


class UsageError(Exception):
    """Bad CLI input: one line on stderr, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="verdicts.py",
        error_name="verdicts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--csv", required=True, help="the table, one row per (arm, seed)")
    p.add_argument("--arm-col", required=True, help="column naming the arm of each row")
    p.add_argument("--seed-col", required=True, help="column with the seed; arms are paired by it")
    p.add_argument("--metric-col", required=True, help="column with the metric (numeric)")
    p.add_argument("--baseline", required=True, help="the baseline arm's name in --arm-col")
    p.add_argument("--expect", choices=("better", "worse"), default="better", help="hypothesis direction")
    p.add_argument(
        "--control", nargs="+", action="extend", default=[], metavar="ARM", help="arms that are bounds"
    )
    p.add_argument("--higher-is-better", action="store_true", help="the metric improves upwards")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (default 0.05)")
    return p


def _g(x: float, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "nan"
    return f"{x:+.6g}" if sign else f"{x:.6g}"


def cli_line(v: Verdict) -> str:
    """The CLI's line for one arm: key=value fields, 6 significant digits."""
    return (
        f"{v.arm}: {v.label} effect={_g(v.effect, sign=True)} ci95=[{_g(v.ci95[0])}, {_g(v.ci95[1])}] "
        f"p_t={_g(v.p_value)} p_holm={_g(v.p_adjusted)} n={v.n_seeds} mde={_g(v.mde)}"
        + (" control" if v.control else "")
    )


def _load_table(args) -> pd.DataFrame:
    path = Path(args.csv)
    if not path.is_file():
        raise UsageError(f"--csv {args.csv}: no such file; pass the path of a CSV file")
    try:
        df = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"--csv {args.csv}: cannot read it as CSV ({msg}); pass a comma-separated file"
        ) from None
    cols = list(df.columns)
    for flag, col in (
        ("--arm-col", args.arm_col),
        ("--seed-col", args.seed_col),
        ("--metric-col", args.metric_col),
    ):
        if col not in df.columns:
            raise UsageError(
                f"{flag} {col!r} is not a column of {args.csv}; its columns are: {', '.join(cols)}"
            )
    for flag, col in (("--arm-col", args.arm_col), ("--seed-col", args.seed_col)):
        empty = df[col].isna()
        if empty.any():
            raise UsageError(
                f"{flag} {col!r} is empty in {int(empty.sum())} row(s) (CSV line {int(np.flatnonzero(empty)[0]) + 2}); "
                "every row needs an arm and a seed"
            )
    raw = df[args.metric_col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & values.isna()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UsageError(
            f"--metric-col {args.metric_col!r} has non-numeric value {raw.iloc[i]!r} (CSV line {i + 2}); "
            "clean the column or pick a numeric one"
        )
    table = pd.DataFrame(
        {
            "arm": df[args.arm_col].astype(str).str.strip(),
            "seed": df[args.seed_col].str.strip(),
            "metric": values,
        }
    )
    arms = sorted(set(table["arm"]))
    if args.baseline not in arms:
        raise UsageError(
            f"--baseline {args.baseline!r} is not a value of {args.arm_col!r}; its arms are: {', '.join(arms)}"
        )
    if len(arms) < 2:
        raise UsageError(
            f"{args.arm_col!r} holds only the baseline {args.baseline!r}; there is no arm to compare"
        )
    for c in args.control:
        if c == args.baseline or c not in arms:
            raise UsageError(
                f"--control {c!r} is not a variant arm of {args.arm_col!r}; its arms are: {', '.join(arms)}"
            )
    dup = table.duplicated(["arm", "seed"], keep=False)
    if dup.any():
        first = table[dup].iloc[0]
        n_dup = int(table.duplicated(["arm", "seed"]).sum())
        raise UsageError(
            f"{n_dup} duplicate (arm, seed) row(s), e.g. ({first['arm']!r}, {first['seed']!r}); "
            "keep one row per arm and seed (average repeats first if that is what you mean)"
        )
    return table


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0 < args.alpha < 1:
            raise UsageError(f"--alpha {args.alpha:g} must lie strictly between 0 and 1")
        table = _load_table(args)
        found = verdicts_from_runs(
            table,
            param="",
            metric="metric",
            baseline_arm=args.baseline,
            lower_is_better=not args.higher_is_better,
            expect=args.expect,
            controls=args.control,
            alpha=args.alpha,
        )
        if not any(v.n_seeds >= 2 for v in found):
            raise UsageError(
                f"no arm shares 2 or more seeds (with finite {args.metric_col!r}) with the baseline "
                f"{args.baseline!r} in {args.seed_col!r}; a paired test needs >= 2 seeds per arm"
            )
    except UsageError as e:
        print(f"verdicts: error: {e}", file=sys.stderr)
        return 2
    for v in found:
        v.metric = args.metric_col
        print(cli_line(v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
