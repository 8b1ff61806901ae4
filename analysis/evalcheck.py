"""The playbook's four eval principles, scored per metric from the result store.

Usage:
    from analysis.evalcheck import check_evals, to_markdown
    table = check_evals(evals_df, chance={"val_loss": math.log(vocab_size)})
    print(to_markdown(table))

Principles (../shared/seeds/research-playbook.md section 1.3, from the SmolLM / FineWeb playbooks):
  monotonicity  the metric improves over steps within a run: mean Spearman rho of (step, metric) over
                runs, signed so that +1 means "always improving";
  low noise     the spread across seeds of one configuration (pooled SD of the final value) against the
                spread between configurations: snr = between-config SD / seed SD;
  above chance  the margin of the final value over a chance baseline (given per metric, else the first
                eval of each run, an untrained model's value, as a proxy), in seed SDs;
  ranking       Kendall tau between the ranking of configurations at an early eval (the one nearest
                early_fraction of each run) and at the final eval.
A configuration is a trial's key columns without its seed (experiment, kind, arm, tier, budget_flops).
Each score has a pass flag at the thresholds below; a score that cannot be computed (e.g. one seed per
configuration) is NaN with a note, never a pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

LOWER_IS_BETTER = {
    "train_loss": True,
    "val_loss": True,
    "val_loss_fine": True,
    "val_loss_coarse": True,
    "loss_ratio": True,
    "attn_entropy_coarse": True,
    "attn_entropy_fine": True,
    "attn_on_target_coarse": False,
    "attn_on_target_fine": False,
}
DEFAULT_METRICS = list(LOWER_IS_BETTER)
CONFIG_KEYS = ["experiment", "kind", "arm", "tier", "budget_flops"]
PASS = {"monotonicity": 0.6, "snr": 2.0, "margin_in_sd": 2.0, "ranking_tau": 0.6}


def _finite(s) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def check_evals(
    evals_df: pd.DataFrame,
    metrics: list[str] | None = None,
    *,
    chance: dict[str, float] | None = None,
    early_fraction: float = 0.25,
    lower_is_better: dict[str, bool] | None = None,
    runs_df: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per metric with the four scores, their pass flags and notes.

    With runs_df, only trials whose status is `complete` are scored (a diverged run is not seed noise).
    """
    chance = chance or {}
    direction = {**LOWER_IS_BETTER, **(lower_is_better or {})}
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in evals_df.columns]
    if runs_df is not None and "status" in runs_df.columns and len(runs_df):
        done = set(runs_df.loc[runs_df["status"].astype(str) == "complete", "trial_id"].astype(str))
        evals_df = evals_df[evals_df["trial_id"].astype(str).isin(done)]
    df = evals_df.copy()
    if "samples_seen" in df.columns:
        df = df[~(_finite(df["samples_seen"]) <= 0)]  # the step-0 eval is not a training point ...
    first = evals_df  # ... but it is the chance proxy
    keys = [k for k in CONFIG_KEYS if k in df.columns]
    order_col = "step" if "step" in df.columns else "report_index"
    rows = []
    for m in metrics:
        sign = -1.0 if direction.get(m, True) else 1.0  # +1 = improving
        notes = []
        d = df[["trial_id", order_col, m] + keys].copy()
        d[m] = _finite(d[m])
        d[order_col] = _finite(d[order_col])
        d = d[np.isfinite(d[m]) & np.isfinite(d[order_col])]
        if d.empty:
            rows.append({"metric": m, "n_trials": 0, "notes": "no finite values"})
            continue
        # monotonicity
        rhos = []
        for _, g in d.groupby("trial_id"):
            if len(g) >= 3 and g[m].nunique() > 1:
                rhos.append(sign * stats.spearmanr(g[order_col], g[m]).statistic)
        mono = float(np.mean(rhos)) if rhos else np.nan
        if not rhos:
            notes.append("no run with >= 3 evals for monotonicity")
        # finals and early values per trial
        per_trial = []
        for tid, g in d.sort_values(order_col).groupby("trial_id"):
            final_step = g[order_col].iloc[-1]
            early_i = int(np.argmin(np.abs(g[order_col].to_numpy() - early_fraction * final_step)))
            rec = {k: g[k].iloc[0] for k in keys}
            rec.update(trial_id=tid, final=g[m].iloc[-1], early=g[m].iloc[early_i])
            per_trial.append(rec)
        pt = pd.DataFrame(per_trial)
        cfg = pt.groupby(keys, dropna=False) if keys else pt.groupby(np.zeros(len(pt)))
        sizes = cfg.size()
        seed_var = [g["final"].var(ddof=1) for _, g in cfg if len(g) >= 2]
        seed_sd = float(np.sqrt(np.mean(seed_var))) if seed_var else np.nan
        if not seed_var:
            notes.append("no configuration with >= 2 seeds: noise not measured")
        means = cfg[["final", "early"]].mean()
        between_sd = float(means["final"].std(ddof=1)) if len(means) >= 2 else np.nan
        snr = (
            between_sd / seed_sd
            if np.isfinite(seed_sd) and seed_sd > 0 and np.isfinite(between_sd)
            else np.nan
        )
        # above chance
        if m in chance:
            chance_v, chance_src = float(chance[m]), "given"
        else:
            f = first[["trial_id", order_col, m]].copy()
            f[m] = _finite(f[m])
            f = f[np.isfinite(f[m])].sort_values(order_col).groupby("trial_id").head(1)
            chance_v, chance_src = float(f[m].mean()), "first eval (proxy)"
        margin = sign * (float(pt["final"].mean()) - chance_v)
        margin_sd = margin / seed_sd if np.isfinite(seed_sd) and seed_sd > 0 else np.nan
        # ranking consistency
        if len(means) >= 3:
            res = stats.kendalltau(means["early"], means["final"])
            tau, tau_p = float(res.statistic), float(res.pvalue)
        else:
            tau, tau_p = np.nan, np.nan
            notes.append(f"{len(means)} configuration(s): ranking needs >= 3")
        rows.append(
            {
                "metric": m,
                "lower_is_better": direction.get(m, True),
                "n_trials": int(len(pt)),
                "n_configs": int(len(sizes)),
                "monotonicity": mono,
                "seed_sd": seed_sd,
                "between_sd": between_sd,
                "snr": snr,
                "chance": chance_v,
                "chance_source": chance_src,
                "margin": margin,
                "margin_in_sd": margin_sd,
                "ranking_tau": tau,
                "ranking_p": tau_p,
                "pass_monotonicity": bool(mono >= PASS["monotonicity"]) if np.isfinite(mono) else False,
                "pass_noise": bool(snr >= PASS["snr"]) if np.isfinite(snr) else False,
                "pass_chance": bool(margin_sd >= PASS["margin_in_sd"]) if np.isfinite(margin_sd) else False,
                "pass_ranking": bool(tau >= PASS["ranking_tau"]) if np.isfinite(tau) else False,
                "notes": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """Markdown table of check_evals' result (scores with a check mark where they pass)."""
    if table.empty:
        return "_no metrics to check_\n"

    def cell(row, score, flag, fmt="{:.2f}"):
        v = row.get(score)
        if v is None or not np.isfinite(v):
            return "n/a"
        return fmt.format(v) + (" ✓" if row.get(flag) else " ✗")

    lines = [
        "| metric | runs | configs | monotonicity | seed SD | SNR | margin over chance (SDs) | early/final tau | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        sd = r.get("seed_sd")
        lines.append(
            f"| {r['metric']} | {_int(r.get('n_trials'))} | {_int(r.get('n_configs'))} "
            f"| {cell(r, 'monotonicity', 'pass_monotonicity')} "
            f"| {'n/a' if sd is None or not np.isfinite(sd) else f'{sd:.3g}'} "
            f"| {cell(r, 'snr', 'pass_noise', '{:.1f}')} | {cell(r, 'margin_in_sd', 'pass_chance', '{:.1f}')} "
            f"| {cell(r, 'ranking_tau', 'pass_ranking')} | {r.get('notes', '') or ''} |"
        )
    return "\n".join(lines) + "\n"


def _int(v) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "0"
