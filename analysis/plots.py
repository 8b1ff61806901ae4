"""Seaborn figures of the scaling analysis (PNG, Agg backend).

Usage:
    from analysis.plots import make_all
    paths, warnings = make_all(analysis, out_dir)     # analysis: analysis.report.Analysis
    fig = iso_loss_figure(points, fit, notes=notes)   # any one figure, as a matplotlib Figure (not saved)

One builder per figure, each taking plain arrays / fit objects and returning the Figure (make_all saves and
closes it; tests inspect it): loss vs compute per tier with the fitted law; IsoFLOP parabolas with their
optima; N*(C) and D*(C) with CI bands; iso-loss contours over (N, C) with the measured points and the
compute-optimal frontier; loss_fine vs loss_coarse and their ratio across complete runs; residuals of the
parametric fit; per-tier data curves; sample attention maps.

A part of a figure that rests on parameters the fit does not identify (the approach-3 allocation and
frontier, the iso-loss surface, a 2-budget approach-2 power law) is left out and the reason is added to
`notes`, which make_all turns into warnings; a figure with nothing left to draw is skipped with a warning;
a figure that fails is reported as a warning too (never silently missing, never a crash of the CLI).
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
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from analysis import isoperf  # noqa: E402
from analysis.isoflop import IsoFlopFit  # noqa: E402
from analysis.laws import LawFit, compute_optimal, theta_to_params  # noqa: E402

DPI = 110


class SkipFigure(Exception):
    """Nothing this figure could draw is supported by the data; the message says why."""


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _style():
    sns.set_theme(style="whitegrid", context="notebook")


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def _hue(points: pd.DataFrame) -> tuple[str, bool]:
    """Colour by tier when there are tiers, else by N on a log scale."""
    if "tier" in points.columns and points["tier"].notna().any() and points["tier"].nunique() <= 12:
        return "tier", False
    return "N", True


def complete_runs(runs: pd.DataFrame | None) -> pd.DataFrame | None:
    """Runs with status == "complete" (a diverged, oom, failed or running run has no valid final metric)."""
    if runs is None or "status" not in runs.columns:
        return runs
    return runs[runs["status"].astype(str) == "complete"]


def _surface_reason(fit: LawFit) -> str | None:
    """Why the fitted L(N, C) surface and its frontier are not drawn, or None when they are supported."""
    d = fit.derived("N_opt", float(fit.ranges["C"][1]))
    return None if not d.suppressed else d.why


def loss_vs_compute_figure(
    points: pd.DataFrame, fit: LawFit | None, d_label: str = "D", notes: list[str] | None = None
) -> Figure:
    """Measured loss over compute, one colour per tier (or N), with the fitted L(N, C / (kappa N)).

    Lines are drawn at measured model sizes over their own compute range only: there the fit interpolates
    its data, whether or not the size term is identified.
    """
    _style()
    fig, ax = plt.subplots(figsize=(7, 5))
    hue, _ = _hue(points)
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
        # up to 5 measured sizes spread over log N (the nearest measured size to each quantile)
        sizes = np.unique(points["N"].to_numpy(dtype=float))
        targets = np.quantile(np.log(sizes), [0.05, 0.25, 0.5, 0.75, 0.95])
        picked = np.unique(sizes[[int(np.argmin(np.abs(np.log(sizes) - t))) for t in targets]])
        curves = [(n, cmap(norm(n)), points.loc[np.isclose(points["N"], n, rtol=1e-6), "C"]) for n in picked]
    if fit is not None:
        for n, color, c in curves:
            c_lo, c_hi = (c.min(), c.max()) if len(c) else fit.ranges["C"]
            cs = np.logspace(np.log10(c_lo), np.log10(c_hi), 60)
            ax.plot(cs, isoperf.predicted_loss(fit.params, n, cs, fit.kappa), color=color, lw=1.3)
    ax.set(
        xscale="log", xlabel="compute C (FLOPs)", ylabel="loss", title="loss vs compute (lines: fitted law)"
    )
    ax.text(0.01, 0.01, d_label, transform=ax.transAxes, fontsize=7, color="0.4")
    return fig


def isoflop_figure(points: pd.DataFrame, iso: IsoFlopFit, notes: list[str] | None = None) -> Figure:
    """Loss over N per budget with the parabola in log N and its optimum."""
    _style()
    fig, ax = plt.subplots(figsize=(7, 5))
    budgets = list(iso.budgets)
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
    return fig


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
    with np.errstate(all="ignore"):
        return np.nanpercentile(curves, 2.5, axis=0), np.nanpercentile(curves, 97.5, axis=0)


def optimal_allocation_figure(
    iso: IsoFlopFit | None, fit: LawFit | None, c_range: tuple[float, float], notes: list[str] | None = None
) -> Figure:
    """N*(C) and D*(C): approach 2 optima and power law, approach 3 allocation, 95% bands.

    The approach-2 line needs a and b stated (>= 3 valid budgets); the approach-3 line needs N*/D*
    identified (A, alpha, B, beta). What is not supported is left out with a note; with nothing left the
    figure is skipped (SkipFigure).
    """
    draw_iso = iso is not None and iso.a is not None
    iso_line = draw_iso and not iso.derived("a").suppressed
    if draw_iso and not iso_line:
        _note(notes, f"approach-2 power law not drawn: a {iso.derived('a').text()}")
    reason = _surface_reason(fit) if fit is not None and fit.joint else "no joint fit"
    if fit is not None and fit.joint and reason is not None:
        _note(notes, f"approach-3 allocation not drawn: N*, D* not identified ({reason})")
    draw_fit = fit is not None and fit.joint and reason is None
    if not (draw_iso or draw_fit):
        raise SkipFigure("neither approach 2 nor approach 3 gives an identified allocation")
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    cs = np.logspace(np.log10(c_range[0]), np.log10(c_range[1]), 80)
    for k, (ax, name) in enumerate(zip(axes, ("N", "D"), strict=True)):
        if draw_iso:
            ok = [b for b in iso.budgets if b["status"] == "ok"]
            ax.scatter(
                [b["budget"] for b in ok],
                [b[f"{name}_opt"] for b in ok],
                color="C0",
                zorder=3,
                label="approach 2 optima",
            )
        if iso_line:
            d = iso.derived("a" if name == "N" else "b")
            line = iso.n_opt(cs) if name == "N" else iso.d_opt(cs)
            ax.plot(cs, line, color="C0", label=f"approach 2: C^{d.text()}")
            lo, hi = iso.band(cs, name)
            ax.fill_between(cs, lo, hi, color="C0", alpha=0.2)
        if draw_fit:
            d = fit.derived("a_opt" if name == "N" else "b_opt")
            line = fit.compute_optimal(cs)[k]
            ax.plot(cs, line, color="C3", label=f"approach 3: C^{d.text()}")
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
    return fig


def iso_loss_figure(
    points: pd.DataFrame, fit: LawFit, iso: IsoFlopFit | None = None, notes: list[str] | None = None
) -> Figure:
    """Contours of predicted loss over (N, C), the measured points, and the compute-optimal frontier.

    The colour scale spans the measured losses [min, max] (points and contours share it, so colours agree
    and no measured point is clipped). Contours and frontier need the size and data terms identified;
    without them only the measured points are drawn, with a note.
    """
    _style()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    n_lo, n_hi = points["N"].min() / 3, points["N"].max() * 3
    c_lo, c_hi = points["C"].min() / 3, points["C"].max() * 3
    loss = points["loss"].to_numpy(dtype=float)
    norm = Normalize(float(np.min(loss)), float(np.max(loss)))
    reason = _surface_reason(fit) if fit.joint else "not a joint fit"
    if reason is None:
        Ns, Cs, L = isoperf.loss_surface(fit.params, (n_lo, n_hi), (c_lo, c_hi), fit.kappa)
        levels = isoperf.loss_levels(np.concatenate([loss, L.ravel()]), k=10)
        cs = ax.contour(Cs, Ns, L.T, levels=levels, cmap="viridis", norm=norm, linewidths=1)
        ax.clabel(cs, fontsize=7, fmt="%.3g")
    else:
        _note(notes, f"iso-loss contours and approach-3 frontier not drawn: not identified ({reason})")
    sc = ax.scatter(points["C"], points["N"], c=loss, cmap="viridis", s=18, edgecolor="k", lw=0.3, norm=norm)
    fig.colorbar(sc, ax=ax, label="measured loss")
    if reason is None:
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
        title="iso-loss contours of the fitted law"
        if reason is None
        else "measured loss (fit not identified)",
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left")
    return fig


def residuals_figure(points: pd.DataFrame, fit: LawFit, notes: list[str] | None = None) -> Figure:
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
    return fig


def data_curves_figure(curves: dict, d_label: str = "D", notes: list[str] | None = None) -> Figure:
    """Per-tier L(D) = E + B/D^beta: the evals used and the fitted curve. curves: tier -> (D, loss, fit)."""
    _style()
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (tier, (D, loss, fit)) in enumerate(sorted(curves.items(), key=lambda kv: str(kv[0]))):
        color = f"C{i % 10}"
        ax.scatter(D, loss, s=12, color=color, alpha=0.6)
        if fit is not None:
            ds = np.logspace(np.log10(np.min(D)), np.log10(np.max(D)), 80)
            marks = {k: ("" if fit.identified.get(k, True) else " (n.i.)") for k in ("E", "beta")}
            ax.plot(
                ds,
                fit.predict(D=ds),
                color=color,
                label=f"{tier}: E={fit.params['E']:.3g}{marks['E']}, beta={fit.params['beta']:.3g}{marks['beta']}",
            )
    ax.set(xscale="log", xlabel=d_label, ylabel="loss", title="per-tier data curves L(D) = E + B/D^beta")
    ax.legend(fontsize=8)
    return fig


def fine_vs_coarse_figure(
    evals: pd.DataFrame, runs: pd.DataFrame | None, notes: list[str] | None = None
) -> Figure:
    """Left: val_loss_fine and val_loss_coarse over samples, one line per run; right: final loss_ratio.

    Complete runs only: a diverged, oom, failed or running run's losses are not a result of its config.
    """
    done = complete_runs(runs)
    e = evals.copy()
    if done is not None:
        dropped = len(runs) - len(done)
        if dropped:
            _note(notes, f"{dropped} run(s) that did not complete left out")
        e = e[e["trial_id"].astype(str).isin(set(done["trial_id"].astype(str)))]
    for c in ("samples_seen", "val_loss_fine", "val_loss_coarse"):
        e[c] = pd.to_numeric(e[c], errors="coerce")
    e = e[e["val_loss_fine"].notna() & e["val_loss_coarse"].notna() & (e["samples_seen"] > 0)]
    if e.empty:
        raise SkipFigure("no complete run with val_loss_fine and val_loss_coarse")
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
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
    if done is None:
        axes[1].set_axis_off()
        _note(notes, "no runs table: final loss_ratio panel left empty")
        return fig
    r = done.copy()
    r["final_loss_ratio"] = pd.to_numeric(r.get("final_loss_ratio"), errors="coerce")
    r = r[r["final_loss_ratio"].notna()]
    if r.empty:
        axes[1].set_axis_off()
        return fig
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
    return fig


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
    """samples_figure saved to `out` (its own layout: no tight_layout over the image grid)."""
    fig = samples_figure(samples, max_clips)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def samples_figure(samples: dict, max_clips: int = 3, notes: list[str] | None = None) -> Figure:
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
    return fig


def make_all(analysis, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every figure the analysis supports; returns (paths, warnings: parts left out, skipped or failed figures)."""
    out_dir = Path(out_dir)
    paths, warnings = [], []
    pts, fit, iso = analysis.points, analysis.parametric, analysis.isoflop
    c_range = (float(pts["C"].min()), float(pts["C"].max())) if len(pts) else (1.0, 10.0)
    jobs = [
        (
            "loss_vs_compute.png",
            lambda n: loss_vs_compute_figure(pts, fit, analysis.d_label, notes=n),
            len(pts) > 0,
        )
    ]
    finals = analysis.finals if analysis.finals is not None else pts
    jobs.append(("isoflop.png", lambda n: isoflop_figure(finals, iso, notes=n), iso is not None))
    jobs.append(
        (
            "optimal_allocation.png",
            lambda n: optimal_allocation_figure(iso, fit, c_range, notes=n),
            (iso is not None and iso.a is not None) or (fit is not None),
        )
    )
    jobs.append(("iso_loss.png", lambda n: iso_loss_figure(pts, fit, iso, notes=n), fit is not None))
    jobs.append(("residuals.png", lambda n: residuals_figure(pts, fit, notes=n), fit is not None))
    curves = {t: v for t, v in analysis.curve_data.items() if v[2] is not None}
    jobs.append(
        ("data_curves.png", lambda n: data_curves_figure(curves, analysis.d_label, notes=n), bool(curves))
    )
    ev, ru = analysis.evals, analysis.runs
    has_fc = (
        ev is not None
        and {"val_loss_fine", "val_loss_coarse"} <= set(ev.columns)
        and pd.to_numeric(ev["val_loss_fine"], errors="coerce").notna().any()
        and pd.to_numeric(ev["val_loss_coarse"], errors="coerce").notna().any()
    )
    jobs.append(("fine_vs_coarse.png", lambda n: fine_vs_coarse_figure(ev, ru, notes=n), has_fc))
    samples = pick_samples(ev)
    for name, fn, wanted in jobs:
        if not wanted:
            continue
        notes: list[str] = []
        try:
            paths.append(_save(fn(notes), out_dir / name))
            warnings += [f"plot {name}: {x}" for x in notes]
        except SkipFigure as e:
            plt.close("all")
            warnings.append(f"plot {name} skipped: {e}" + (f" ({'; '.join(notes)})" if notes else ""))
        except Exception as e:  # a figure must not sink the fits; its failure is reported instead
            plt.close("all")
            warnings.append(f"plot {name} failed: {type(e).__name__}: {e}")
    if samples is not None and "world" not in samples[1]:
        # clips from ingested video shards: the report lists their captions; the frames stay in the shards
        warnings.append("plot samples.png skipped: the sample clips come from video shards, not the world")
    elif samples is not None:
        try:
            paths.append(plot_samples(samples[1], out_dir / "samples.png"))
        except Exception as e:  # as above
            plt.close("all")
            warnings.append(f"plot samples.png failed: {type(e).__name__}: {e}")
    return paths, warnings
