"""The playbook's four eval principles, scored per metric from the result store against real baselines.

Usage:
    from analysis.evalcheck import check_evals, to_markdown
    table = check_evals(evals_df, runs_df=runs_df)      # chance levels come from the rows themselves
    print(to_markdown(table))

The principles are those of HuggingFace's FineWeb / FineTasks task selection ("Scaling FineWeb to 1000+
languages: finding signal in 100s of evaluation tasks", 2024), with their thresholds as defaults:
  monotonicity  the metric improves over training within a run: mean over runs of the Spearman correlation
                of (step, metric), signed so that +1 means "always improving"; pass >= 0.5 (FineTasks);
  low noise     SNR = |mean over seeds - chance| / SD over seeds of one configuration, over its evaluations
                after warmup (mean distance over pooled SD); pass > 20 (FineTasks' threshold). FineTasks divides the mean score by
                the seed SD; a loss has no natural zero, so the signal here is the distance from the chance
                level. Beside it, the ablation effects found in the store in units of the seed SD (an effect
                below ~2 seed SDs cannot be told from noise at a few seeds);
  above chance  the margin over a real baseline EARLY in training (the eval nearest `early_fraction` of each
                run, after warmup), in seed SDs; pass >= 2. Baselines, from the rows: val_loss and the other
                caption losses against `val_loss_blind` (the best caption model that never sees the video),
                loss_ratio against 1.0 (fine no better than coarse), attention on target against the
                random-query arm when the store has one (else the target's share of the patches), attention
                entropy against uniform attention (ln of the number of keys);
  ranking       Kendall tau between the ranking of configurations at the early eval and at the final eval;
                pass >= 0.6 (our threshold; FineTasks reports the correlation without one).
Evaluations inside warmup (the untrained step-0 model, `in_warmup`) are not training points and are left out
of every score; only complete runs are scored. A configuration is a trial's key columns without its seed.
A score that cannot be computed (one seed per configuration, no baseline) is NaN with a note, never a pass.
"""

from __future__ import annotations

import math

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
CONFIG_KEYS = ["experiment", "kind", "generation", "arm", "tier", "budget_flops"]
PASS = {"monotonicity": 0.5, "snr": 20.0, "margin_in_sd": 2.0, "ranking_tau": 0.6, "effect_in_sd": 2.0}
CAPTION_LOSSES = ("train_loss", "val_loss", "val_loss_fine", "val_loss_coarse")


def _num(s) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def chance_levels(evals: pd.DataFrame, metrics: list[str]) -> dict[str, tuple[float, str]]:
    """metric -> (baseline value, where it comes from), from the rows (see the module docstring)."""
    out: dict[str, tuple[float, str]] = {}
    blind = _num(evals["val_loss_blind"]).dropna() if "val_loss_blind" in evals else pd.Series(dtype=float)
    for m in metrics:
        if m in CAPTION_LOSSES and len(blind):
            out[m] = (float(blind.median()), "no-vision bound (val_loss_blind)")
        elif m == "loss_ratio":
            out[m] = (1.0, "1.0 (fine read no better than coarse)")
        elif m.startswith("attn_on_target_"):
            read = m.rsplit("_", 1)[1]
            random_arm = _random_arm(evals)
            if random_arm is not None and m in random_arm and _num(random_arm[m]).notna().any():
                out[m] = (float(_num(random_arm[m]).mean()), "random-query arm")
            elif (
                f"attn_on_target_chance_{read}" in evals
                and _num(evals[f"attn_on_target_chance_{read}"]).notna().any()
            ):
                out[m] = (
                    float(_num(evals[f"attn_on_target_chance_{read}"]).median()),
                    "target's share of the patches",
                )
        elif m.startswith("attn_entropy_"):
            col = m.replace("attn_entropy_", "attn_entropy_uniform_")
            uniform = _num(evals[col]).dropna() if col in evals else pd.Series(dtype=float)
            keys = _keys_per_read(evals)
            if len(uniform):
                out[m] = (
                    float(uniform.median()),
                    f"uniform attention over {round(math.exp(uniform.median()))} keys",
                )
            elif keys:
                out[m] = (math.log(keys), f"uniform attention over {keys} keys")
    return out


def _random_arm(evals: pd.DataFrame) -> pd.DataFrame | None:
    col = "config.model.query_source"
    if col in evals and (evals[col].astype(str) == "random").any():
        sel = evals[evals[col].astype(str) == "random"]
        return sel[~sel["in_warmup"].astype(bool)] if "in_warmup" in sel else sel
    return None


def _keys_per_read(evals: pd.DataFrame) -> int | None:
    """Patches + CLS of the coarse read, from the run configs (the same for every run, or None)."""
    if "config.world.frame_size" not in evals or "config.model.patch_size" not in evals:
        return None
    fs, ps = _num(evals["config.world.frame_size"]), _num(evals["config.model.patch_size"])
    grids = (fs // ps).dropna().unique()
    return int(grids[0] ** 2 + 1) if len(grids) == 1 else None


def check_evals(
    evals_df: pd.DataFrame,
    metrics: list[str] | None = None,
    *,
    chance: dict[str, float] | None = None,
    early_fraction: float = 0.25,
    lower_is_better: dict[str, bool] | None = None,
    runs_df: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per metric with the four scores, their pass flags and notes (`chance` overrides baselines)."""
    direction = {**LOWER_IS_BETTER, **(lower_is_better or {})}
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in evals_df.columns]
    if runs_df is not None and "status" in runs_df.columns and len(runs_df):
        done = set(runs_df.loc[runs_df["status"].astype(str) == "complete", "trial_id"].astype(str))
        evals_df = evals_df[evals_df["trial_id"].astype(str).isin(done)]
    df = evals_df.copy()
    if "in_warmup" in df.columns:
        df = df[~df["in_warmup"].fillna(False).astype(bool)]
    elif "samples_seen" in df.columns:
        df = df[~(_num(df["samples_seen"]) <= 0)]  # rows without the flag: at least drop the untrained eval
    baselines = chance_levels(evals_df, metrics)
    baselines.update({k: (float(v), "given") for k, v in (chance or {}).items()})
    keys = [k for k in CONFIG_KEYS if k in df.columns]
    order_col = "step" if "step" in df.columns else "report_index"
    rows = []
    for m in metrics:
        sign = -1.0 if direction.get(m, True) else 1.0  # +1 = improving
        notes = []
        d = df[["trial_id", order_col, m] + keys + (["seed"] if "seed" in df.columns else [])].copy()
        d[m], d[order_col] = _num(d[m]), _num(d[order_col])
        d = d[np.isfinite(d[m]) & np.isfinite(d[order_col])]
        if d.empty:
            rows.append({"metric": m, "n_trials": 0, "notes": "no finite values after warmup"})
            continue
        rhos = [
            sign * stats.spearmanr(g[order_col], g[m]).statistic
            for _, g in d.groupby("trial_id")
            if len(g) >= 3 and g[m].nunique() > 1
        ]
        mono = float(np.mean(rhos)) if rhos else np.nan
        if not rhos:
            notes.append("no run with >= 3 evals after warmup for monotonicity")
        per_trial = []
        for tid, g in d.sort_values(order_col).groupby("trial_id"):
            steps = g[order_col].to_numpy()
            early_i = int(np.argmin(np.abs(steps - early_fraction * steps[-1])))
            rec = {k: g[k].iloc[0] for k in keys}
            rec.update(trial_id=tid, final=g[m].iloc[-1], early=g[m].iloc[early_i], early_step=steps[early_i])
            per_trial.append(rec)
        pt = pd.DataFrame(per_trial)
        cfg = pt.groupby(keys, dropna=False) if keys else pt.groupby(np.zeros(len(pt)))
        early_var = [g["early"].var(ddof=1) for _, g in cfg if len(g) >= 2]
        final_var = [g["final"].var(ddof=1) for _, g in cfg if len(g) >= 2]
        early_sd = float(np.sqrt(np.mean(early_var))) if early_var else np.nan
        seed_sd = float(np.sqrt(np.mean(final_var))) if final_var else np.nan
        if not final_var:
            notes.append("no configuration with >= 2 seeds: noise not measured")
        base_v, base_src = baselines.get(m, (np.nan, "none"))
        if not np.isfinite(base_v):
            notes.append("no baseline for this metric: above-chance and SNR not measured")
        snr = _snr(d, keys, order_col, m, base_v)
        margin = sign * (float(pt["early"].mean()) - base_v) if np.isfinite(base_v) else np.nan
        margin_sd = margin / early_sd if np.isfinite(early_sd) and early_sd > 0 else np.nan
        effect_sd = _ablation_effects(pt, keys, seed_sd)
        means = cfg[["final", "early"]].mean()
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
                "n_configs": int(len(means)),
                "monotonicity": mono,
                "seed_sd": seed_sd,
                "snr": snr,
                "chance": base_v,
                "chance_source": base_src,
                "early_step": float(pt["early_step"].median()),
                "margin": margin,
                "margin_in_sd": margin_sd,
                "effect_in_sd": effect_sd,
                "ranking_tau": tau,
                "ranking_p": tau_p,
                "pass_monotonicity": _pass(mono, PASS["monotonicity"]),
                "pass_noise": _pass(snr, PASS["snr"], strict=True),
                "pass_chance": _pass(margin_sd, PASS["margin_in_sd"]),
                "pass_effects": _pass(effect_sd, PASS["effect_in_sd"]),
                "pass_ranking": _pass(tau, PASS["ranking_tau"]),
                "notes": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows)


def _pass(value: float, threshold: float, strict: bool = False) -> bool:
    if value is None or not np.isfinite(value):
        return False
    return bool(value > threshold if strict else value >= threshold)


def _snr(d: pd.DataFrame, keys: list[str], order_col: str, m: str, base: float) -> float:
    """Over the (configuration, eval step) groups with >= 2 seeds: mean |seed mean - baseline| over the pooled
    seed SD (root mean of the groups' variances). A ratio of averages: with 3 seeds a single group's SD can
    be near 0, so an average of per-group ratios would be dominated by luck."""
    if not np.isfinite(base):
        return np.nan
    signal, var = [], []
    for _, g in d.groupby(keys + [order_col], dropna=False) if keys else d.groupby(order_col):
        if len(g) >= 2:
            signal.append(abs(float(g[m].mean()) - base))
            var.append(float(g[m].var(ddof=1)))
    if not var or np.mean(var) <= 0:
        return np.nan
    return float(np.mean(signal) / np.sqrt(np.mean(var)))


def _ablation_effects(pt: pd.DataFrame, keys: list[str], seed_sd: float) -> float:
    """Median |final mean of an arm - final mean of its baseline| / seed SD over the ablation arms in the store
    (NaN without ablation arms or a seed SD)."""
    if (
        "arm" not in pt
        or not (pt["arm"].astype(str) == "baseline").any()
        or not np.isfinite(seed_sd)
        or seed_sd <= 0
    ):
        return np.nan
    group = [k for k in keys if k != "arm"]
    effects = []
    for _, g in pt.groupby(group, dropna=False) if group else [((), pt)]:
        arms = g.groupby(g["arm"].astype(str))["final"].mean()
        if "baseline" in arms and len(arms) > 1:
            effects += [abs(v - arms["baseline"]) / seed_sd for a, v in arms.items() if a != "baseline"]
    return float(np.median(effects)) if effects else np.nan


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
        "| metric | runs | configs | monotonicity (>= 0.5) | seed SD | SNR (> 20) | baseline | early margin over "
        "baseline, in SDs (>= 2) | ablation effects, in seed SDs | early/final tau (>= 0.6) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        sd = r.get("seed_sd")
        base = r.get("chance")
        base_txt = (
            "n/a" if base is None or not np.isfinite(base) else f"{base:.3g} ({r.get('chance_source')})"
        )
        lines.append(
            f"| {r['metric']} | {_int(r.get('n_trials'))} | {_int(r.get('n_configs'))} "
            f"| {cell(r, 'monotonicity', 'pass_monotonicity')} "
            f"| {'n/a' if sd is None or not np.isfinite(sd) else f'{sd:.3g}'} "
            f"| {cell(r, 'snr', 'pass_noise', '{:.1f}')} | {base_txt} "
            f"| {cell(r, 'margin_in_sd', 'pass_chance', '{:.1f}')} "
            f"| {cell(r, 'effect_in_sd', 'pass_effects', '{:.1f}')} "
            f"| {cell(r, 'ranking_tau', 'pass_ranking')} | {r.get('notes', '') or ''} |"
        )
    return "\n".join(lines) + "\n"


def _int(v) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "0"
