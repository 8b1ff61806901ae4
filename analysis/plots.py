"""Seaborn figures of the scaling analysis (PNG, Agg backend).

Usage:
    from analysis.plots import make_all
    paths, warnings = make_all(analysis, out_dir)     # analysis: analysis.report.Analysis

One function per figure, each taking plain arrays / fit objects and a path:
loss vs compute per tier with the fitted law; IsoFLOP parabolas with their optima; N*(C) and D*(C) with
CI bands; iso-loss contours over (N, C) with the measured points and the compute-optimal frontier;
loss_fine vs loss_coarse and their ratio across configurations; residuals of the parametric fit;
per-tier data curves. A figure that fails is reported as a warning (never silently missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from analysis import isoperf  # noqa: E402
from analysis.laws import IsoFlopFit, LawFit, compute_optimal, theta_to_params  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _style():
    sns.set_theme(style="whitegrid", context="notebook")


def _hue(points: pd.DataFrame) -> tuple[str, bool]:
    """Colour by tier when there are tiers, else by N on a log scale."""
    if "tier" in points.columns and points["tier"].notna().any() and points["tier"].nunique() <= 12:
        return "tier", False
    return "N", True


def plot_loss_vs_compute(points: pd.DataFrame, fit: LawFit | None, path: Path, d_label: str = "D") -> Path:
    """Measured loss over compute, one colour per tier (or N), with the fitted L(N, C / (kappa N))."""
    _style()
    fig, ax = plt.subplots(figsize=(7, 5))
    hue, lognorm = _hue(points)
    cmap = plt.get_cmap("viridis")
    if hue == "tier":
        pts = points.assign(tier=points["tier"].astype(str))
        sizes = pts.groupby("tier")["N"].median().sort_values()
        order = list(sizes.index)
        colors = dict(zip(order, sns.color_palette("viridis", len(order)), strict=True))
        sns.scatterplot(
            data=pts,
            x="C",
            y="loss",
            hue="tier",
            hue_order=order,
            palette=colors,
            ax=ax,
            s=22,
            edgecolor="none",
        )
        curves = [(n, colors[t], pts.loc[pts["tier"] == t, "C"]) for t, n in sizes.items()]
    else:
        norm = LogNorm(points["N"].min(), points["N"].max())
        sns.scatterplot(
            data=points,
            x="C",
            y="loss",
            hue="N",
            hue_norm=norm,
            palette="viridis",
            ax=ax,
            s=22,
            edgecolor="none",
        )
        qs = np.unique(np.quantile(points["N"], [0.05, 0.25, 0.5, 0.75, 0.95]))
        curves = [(n, cmap(norm(n)), points.loc[np.isclose(points["N"], n, rtol=0.3), "C"]) for n in qs]
    if fit is not None:
        for n, color, c in curves:
            c_lo, c_hi = (c.min(), c.max()) if len(c) else fit.ranges["C"]
            cs = np.logspace(np.log10(c_lo), np.log10(c_hi), 60)
            ax.plot(cs, isoperf.predicted_loss(fit.params, n, cs, fit.kappa), color=color, lw=1.3)
    ax.set(
        xscale="log", xlabel="compute C (FLOPs)", ylabel="loss", title="loss vs compute (lines: fitted law)"
    )
    ax.text(0.01, 0.01, d_label, transform=ax.transAxes, fontsize=7, color="0.4")
    return _save(fig, path)


def plot_isoflop(points: pd.DataFrame, iso: IsoFlopFit, path: Path) -> Path:
    """Loss over N per budget with the parabola in log N and its optimum."""
    _style()
    fig, ax = plt.subplots(figsize=(7, 5))
    budgets = [b for b in iso.budgets]
    cmap = plt.get_cmap("magma")
    for i, b in enumerate(budgets):
        sel = _budget_mask(points, b["budget"])
        g = points[sel]
        color = cmap(0.15 + 0.7 * i / max(1, len(budgets) - 1))
        ax.scatter(g["N"], g["loss"], color=color, s=20, label=f"C={b['budget']:.2g}")
        if len(np.unique(g["N"])) >= 3:
            x = np.log(g["N"].to_numpy())
            p = np.polyfit(x, g["loss"].to_numpy(), 2)
            xs = np.linspace(x.min(), x.max(), 80)
            ax.plot(
                np.exp(xs), np.polyval(p, xs), color=color, lw=1.2, ls="-" if b["status"] == "ok" else ":"
            )
        if b["status"] == "ok":
            ax.plot(b["N_opt"], b["loss_opt"], marker="*", color=color, ms=12, mec="k")
    ax.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="loss",
        title="IsoFLOP parabolas (stars: optima; dotted: refused)",
    )
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _budget_mask(points: pd.DataFrame, value: float) -> np.ndarray:
    b = pd.to_numeric(points["budget"], errors="coerce")
    if b.notna().all():
        return np.isclose(b.to_numpy(dtype=float), value, rtol=1e-9)
    # non-numeric budget labels: the budget value is the median compute of the group
    med = points.groupby("budget")["C"].transform("median").to_numpy()
    return np.isclose(med, value, rtol=1e-9)


def _param_band(fit: LawFit, cs: np.ndarray, which: int) -> tuple[np.ndarray, np.ndarray] | None:
    if fit.boot is None or len(fit.boot) < 2:
        return None
    curves = np.array([compute_optimal(theta_to_params(t), cs, fit.kappa)[which] for t in fit.boot])
    return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def plot_optimal_allocation(iso: IsoFlopFit | None, fit: LawFit | None, c_range, path: Path) -> Path:
    """N*(C) and D*(C): approach 2 optima and power law, approach 3 allocation, 95% bands."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    cs = np.logspace(np.log10(c_range[0]), np.log10(c_range[1]), 80)
    for k, (ax, name) in enumerate(zip(axes, ("N", "D"), strict=True)):
        if iso is not None and iso.a is not None:
            ok = [b for b in iso.budgets if b["status"] == "ok"]
            ax.scatter(
                [b["budget"] for b in ok],
                [b[f"{name}_opt"] for b in ok],
                color="C0",
                zorder=3,
                label="approach 2 optima",
            )
            line = iso.n_opt(cs) if name == "N" else iso.d_opt(cs)
            slope, ci = (iso.a, iso.ci95.get("a")) if name == "N" else (iso.b, iso.ci95.get("b"))
            lab = f"approach 2: C^{slope:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            ax.plot(cs, line, color="C0", label=lab)
            lo, hi = iso.band(cs, name)
            ax.fill_between(cs, lo, hi, color="C0", alpha=0.2)
        if fit is not None and fit.joint:
            line = fit.compute_optimal(cs)[k]
            slope = fit.a_opt if name == "N" else fit.b_opt
            ci = fit.ci95.get("a_opt" if name == "N" else "b_opt")
            lab = f"approach 3: C^{slope:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            ax.plot(cs, line, color="C3", label=lab)
            band = _param_band(fit, cs, k)
            if band is not None:
                ax.fill_between(cs, band[0], band[1], color="C3", alpha=0.15)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="compute C (FLOPs)",
            ylabel=f"{name}*(C)",
            title=f"compute-optimal {name} (bands: 95% bootstrap)",
        )
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_iso_loss(points: pd.DataFrame, fit: LawFit, path: Path, iso: IsoFlopFit | None = None) -> Path:
    """Contours of predicted loss over (N, C), the measured points, and the compute-optimal frontier."""
    _style()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    n_lo, n_hi = points["N"].min() / 3, points["N"].max() * 3
    c_lo, c_hi = points["C"].min() / 3, points["C"].max() * 3
    Ns, Cs, L = isoperf.loss_surface(fit.params, (n_lo, n_hi), (c_lo, c_hi), fit.kappa)
    levels = isoperf.loss_levels(np.concatenate([points["loss"].to_numpy(), L.ravel()]), k=10)
    cs = ax.contour(Cs, Ns, L.T, levels=levels, cmap="viridis", linewidths=1)
    ax.clabel(cs, fontsize=7, fmt="%.3g")
    sc = ax.scatter(
        points["C"],
        points["N"],
        c=points["loss"],
        cmap="viridis",
        s=18,
        edgecolor="k",
        lw=0.3,
        norm=plt.Normalize(levels.min(), levels.max()),
    )
    fig.colorbar(sc, ax=ax, label="measured loss")
    fr = isoperf.frontier(fit.params, Cs, fit.kappa)
    ax.plot(fr["C"], fr["N_opt"], color="C3", lw=2, label="compute-optimal frontier (approach 3)")
    if iso is not None and iso.a is not None:
        ok = [b for b in iso.budgets if b["status"] == "ok"]
        ax.scatter(
            [b["budget"] for b in ok],
            [b["N_opt"] for b in ok],
            marker="*",
            s=120,
            color="C1",
            ec="k",
            label="IsoFLOP optima (approach 2)",
            zorder=4,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(c_lo, c_hi),
        ylim=(n_lo, n_hi),
        xlabel="compute C (FLOPs)",
        ylabel="parameters N",
        title="iso-loss contours of the fitted law",
    )
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_residuals(points: pd.DataFrame, fit: LawFit, path: Path) -> Path:
    """Log residuals of the parametric fit against predicted loss, N and D."""
    _style()
    pred = fit.predict(points["N"], points["D"])
    r = np.log(points["loss"].to_numpy()) - np.log(pred)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    for ax, (x, label, logx) in zip(
        axes,
        ((pred, "predicted loss", False), (points["N"], "N", True), (points["D"], "D", True)),
        strict=True,
    ):
        ax.scatter(x, r, s=12, alpha=0.7)
        ax.axhline(0, color="k", lw=0.8)
        for d in (fit.huber_delta, -fit.huber_delta):
            ax.axhline(d, color="C3", lw=0.6, ls=":")
        ax.set(xlabel=label, xscale="log" if logx else "linear")
    axes[0].set_ylabel("log(observed) - log(predicted)")
    fig.suptitle(f"residuals (dotted: Huber delta {fit.huber_delta:g}; robust noise {fit.noise:.3g} in loss)")
    return _save(fig, path)


def plot_data_curves(curves: dict, path: Path, d_label: str = "D") -> Path:
    """Per-tier L(D) = E + B/D^beta: the evals used and the fitted curve. curves: tier -> (D, loss, fit)."""
    _style()
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (tier, (D, loss, fit)) in enumerate(sorted(curves.items(), key=lambda kv: str(kv[0]))):
        color = f"C{i % 10}"
        ax.scatter(D, loss, s=12, color=color, alpha=0.6)
        if fit is not None:
            ds = np.logspace(np.log10(np.min(D)), np.log10(np.max(D)), 80)
            ax.plot(
                ds,
                fit.predict(D=ds),
                color=color,
                label=f"{tier}: E={fit.params['E']:.3g}, beta={fit.params['beta']:.3g}",
            )
    ax.set(xscale="log", xlabel=d_label, ylabel="loss", title="per-tier data curves L(D) = E + B/D^beta")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_fine_vs_coarse(evals: pd.DataFrame, runs: pd.DataFrame, path: Path) -> Path:
    """Left: val_loss_fine and val_loss_coarse over samples, one line per run; right: final loss_ratio."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    e = evals.copy()
    for c in ("samples_seen", "val_loss_fine", "val_loss_coarse"):
        e[c] = pd.to_numeric(e[c], errors="coerce")
    e = e[e["val_loss_fine"].notna() & e["val_loss_coarse"].notna() & (e["samples_seen"] > 0)]
    hue = "arm" if "arm" in e.columns and e["arm"].nunique() > 1 else "tier"
    hue_order = [str(v) for v in sorted(e[hue].dropna().unique(), key=lambda v: (str(type(v)), v))]
    e[hue] = e[hue].astype(str)
    long = e.melt(
        id_vars=[hue, "trial_id", "samples_seen"],
        value_vars=["val_loss_fine", "val_loss_coarse"],
        var_name="pass",
        value_name="loss",
    )
    sns.lineplot(
        data=long,
        x="samples_seen",
        y="loss",
        hue=hue,
        hue_order=hue_order,
        style="pass",
        units="trial_id",
        estimator=None,
        ax=axes[0],
        lw=0.9,
        alpha=0.8,
    )
    axes[0].set(xscale="log", title="val_loss_fine (solid) and val_loss_coarse (dashed), per run")
    axes[0].legend(fontsize=7)
    r = runs.copy()
    r["final_loss_ratio"] = pd.to_numeric(r.get("final_loss_ratio"), errors="coerce")
    r = r[r["final_loss_ratio"].notna()]
    r["config"] = _config_label(r)
    keys = [c for c in ("arm", "tier", "budget_flops") if c in r.columns]
    order = list(dict.fromkeys(r.sort_values(keys)["config"])) if keys else sorted(r["config"].unique())
    sns.pointplot(
        data=r,
        x="final_loss_ratio",
        y="config",
        order=order,
        ax=axes[1],
        errorbar=("ci", 95),
        linestyle="none",
    )
    sns.stripplot(
        data=r, x="final_loss_ratio", y="config", order=order, ax=axes[1], color="k", size=3, alpha=0.5
    )
    axes[1].axvline(1.0, color="C3", lw=0.8, ls=":")
    axes[1].set(title="final loss_fine / loss_coarse (< 1: fine helps)", ylabel="")
    return _save(fig, path)


def _config_label(df: pd.DataFrame) -> pd.Series:
    """'arm=..., tier=..., budget=...' from the key columns that vary (numbers in short form)."""
    parts = [c for c in ("arm", "tier", "budget_flops") if c in df.columns and df[c].nunique(dropna=True) > 1]
    if not parts:
        parts = [c for c in ("arm", "tier") if c in df.columns][:1]
    if not parts:
        return pd.Series("all", index=df.index)

    def fmt(name, v):
        short = "budget" if name == "budget_flops" else name
        return (
            f"{short}={v:.3g}"
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            else f"{short}={v}"
        )

    return df[parts].apply(lambda r: ", ".join(fmt(c, r[c]) for c in parts), axis=1)


def pick_samples(evals: pd.DataFrame | None) -> tuple[str, dict] | None:
    """The sample outputs (train.py's ``samples_json``) of the complete run with the lowest final val_loss."""
    if evals is None or "samples_json" not in evals.columns:
        return None
    rows = evals[evals["samples_json"].notna()]
    if "val_loss" in rows.columns:
        rows = rows.sort_values("val_loss")
    if not len(rows):
        return None
    r = rows.iloc[0]
    label = f"{r.get('experiment', '')} trial {r.get('trial_id', '')} ({r.get('tier', '')}, arm {r.get('arm', '')})"
    return label, json.loads(r["samples_json"])


def plot_samples(samples: dict, out: Path, max_clips: int = 3) -> Path:
    """Held-out clips re-rendered from the world config, with each read's attention over the patch grid."""
    from fvlm.config import WorldConfig
    from fvlm.world import VideoWorld

    world = VideoWorld(WorldConfig(**samples["world"]))
    clips = samples["clips"][:max_clips]
    reads = [r for r in ("coarse", "fine") if f"attn_{r}" in clips[0]]
    t = world.cfg.frames
    n_rows = len(clips) * len(reads)
    fig, axes = plt.subplots(n_rows, t, figsize=(1.3 * t, 1.45 * n_rows), squeeze=False)
    for c, clip in enumerate(clips):
        frames = world.clip("val", clip["val_index"])["frames"]  # [T, 3, H, W]
        for r, read in enumerate(reads):
            attn = np.asarray(clip[f"attn_{read}"])  # [T, grid*grid]
            grid = int(round(np.sqrt(attn.shape[1])))
            for k in range(t):
                ax = axes[c * len(reads) + r, k]
                ax.imshow(np.transpose(frames[k], (1, 2, 0)), interpolation="nearest")
                size = frames.shape[-1]
                ax.imshow(
                    attn[k].reshape(grid, grid),
                    cmap="magma",
                    alpha=0.55,
                    extent=(0, size, size, 0),
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_ylabel(read, fontsize=8)
            title = f"truth: {clip['truth']}" + (f"  |  pred: {clip['pred']}" if "pred" in clip else "")
            if r == 0:
                axes[c * len(reads), 0].set_title(title, fontsize=8, loc="left")
    fig.subplots_adjust(left=0.05, right=0.99, top=0.95, bottom=0.01, wspace=0.05, hspace=0.3)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def make_all(analysis, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every figure the analysis supports; returns (paths, warnings for figures that failed)."""
    out_dir = Path(out_dir)
    paths, warnings = [], []
    pts, fit, iso = analysis.points, analysis.parametric, analysis.isoflop
    c_range = (float(pts["C"].min()), float(pts["C"].max())) if len(pts) else (1.0, 10.0)
    jobs = [
        ("loss_vs_compute.png", lambda p: plot_loss_vs_compute(pts, fit, p, analysis.d_label), len(pts) > 0)
    ]
    finals = analysis.finals if analysis.finals is not None else pts
    jobs.append(("isoflop.png", lambda p: plot_isoflop(finals, iso, p), iso is not None))
    jobs.append(
        (
            "optimal_allocation.png",
            lambda p: plot_optimal_allocation(iso, fit, c_range, p),
            (iso is not None and iso.a is not None) or (fit is not None),
        )
    )
    jobs.append(("iso_loss.png", lambda p: plot_iso_loss(pts, fit, p, iso), fit is not None))
    jobs.append(("residuals.png", lambda p: plot_residuals(pts, fit, p), fit is not None))
    curves = {t: v for t, v in analysis.curve_data.items() if v[2] is not None}
    jobs.append(("data_curves.png", lambda p: plot_data_curves(curves, p, analysis.d_label), bool(curves)))
    ev, ru = analysis.evals, analysis.runs
    has_fc = (
        ev is not None
        and {"val_loss_fine", "val_loss_coarse"} <= set(ev.columns)
        and pd.to_numeric(ev["val_loss_fine"], errors="coerce").notna().any()
        and pd.to_numeric(ev["val_loss_coarse"], errors="coerce").notna().any()
    )
    jobs.append(("fine_vs_coarse.png", lambda p: plot_fine_vs_coarse(ev, ru, p), has_fc))
    samples = pick_samples(ev)
    jobs.append(("samples.png", lambda p: plot_samples(samples[1], p), samples is not None))
    for name, fn, wanted in jobs:
        if not wanted:
            continue
        try:
            paths.append(fn(out_dir / name))
        except Exception as e:  # a figure must not sink the fits; its failure is reported instead
            plt.close("all")
            warnings.append(f"plot {name} failed: {type(e).__name__}: {e}")
    return paths, warnings
