"""REPORT.md: the report card of one analysis (ARCHITECTURE.md section 7, the playbook's section 2.1).

Usage:
    from analysis.report import Analysis, write_report
    write_report(analysis, out_dir, plots=[...])      # -> out_dir / "REPORT.md"

Sections: environment (hardware, versions, git commit), configuration, metrics per tier and budget, the
fits with 95% CIs, eval principles, warnings, cost (wall clock, GPU-hours, dollars at a configurable
$/GPU-hour), bloat (lines of code, dependencies) and the plots (relative links).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.diagnostics import HESSIAN_COND_THRESHOLD, format_ci
from analysis.isoflop import IsoFlopFit
from analysis.laws import LawFit

REPO_ROOT = Path(__file__).resolve().parents[1]
# assumption: what one rented RTX 4090 costs per hour (community clouds ask roughly $0.3-0.7)
DEFAULT_USD_PER_GPU_HOUR = 0.50
TABLE_METRICS = [
    "final_val_loss",
    "final_val_loss_fine",
    "final_val_loss_coarse",
    "final_val_loss_coarse_untrained",
    "final_loss_ratio",
    "final_attn_entropy_coarse",
    "final_attn_entropy_fine",
]


@dataclass
class Analysis:
    """Everything one run of fit_laws produced, for fits.json, the plots and the report."""

    source: dict
    settings: dict
    points: pd.DataFrame
    finals: pd.DataFrame | None = None  # the final point of each run (approach 2 uses these)
    parametric: LawFit | None = None
    isoflop: IsoFlopFit | None = None
    per_tier: dict = field(default_factory=dict)  # tier -> LawFit | None
    per_tier_info: dict = field(default_factory=dict)  # tier -> {trial_id, n_points, warnings}
    curve_data: dict = field(default_factory=dict)  # tier -> (D, loss, LawFit | None)
    evals: pd.DataFrame | None = None
    runs: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)
    fits: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    eval_table: pd.DataFrame | None = None
    d_label: str = "D"

    @property
    def title(self) -> str:
        return self.source.get("experiment") or Path(self.source.get("path", "analysis")).stem


# ---------------------------------------------------------------------------------------------------------
# environment and bloat


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode != 0:
            return "unknown (no commit)"
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out.stdout.strip() + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git unavailable)"


def _gpu_names() -> str:
    if not shutil.which("nvidia-smi"):
        return "none detected"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return "; ".join(x.strip() for x in out.stdout.splitlines() if x.strip()) or "none detected"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f"{pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "platform": platform.platform(),
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores" + (f", {mem} RAM" if mem else ""),
        "gpu": _gpu_names(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in ("torch", "ray", "numpy", "scipy", "pandas", "seaborn")},
        "git_commit": _git_commit(),
    }


def bloat(root: Path = REPO_ROOT) -> dict:
    """Non-blank lines of Python per package, and the dependency count from pyproject.toml."""
    loc = {}
    for pkg in ("fvlm", "tune", "analysis"):
        n = 0
        for f in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            n += sum(
                1 for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
            )
        loc[pkg] = n
    deps, optional = None, None
    pp = root / "pyproject.toml"
    if pp.exists():
        proj = tomllib.loads(pp.read_text(encoding="utf-8")).get("project", {})
        deps = len(proj.get("dependencies", []))
        optional = sum(len(v) for v in proj.get("optional-dependencies", {}).values())
    return {
        "lines_of_code": loc,
        "total_lines": sum(loc.values()),
        "dependencies": deps,
        "optional_dependencies": optional,
    }


# ---------------------------------------------------------------------------------------------------------
# sections


def _n(x, fmt="{:.4g}") -> str:
    try:
        return "n/a" if x is None or not np.isfinite(float(x)) else fmt.format(float(x))
    except (TypeError, ValueError):
        return str(x)


def _ci(ci, est=None) -> str:
    """'[lo, hi]'; 'n/a' without a CI, with a NaN bound, or when the estimate it surrounds is NaN."""
    return format_ci(ci, est)


def _config_section(a: Analysis) -> list[str]:
    s = a.settings
    lines = [
        f"- source: {a.source.get('kind')} `{a.source.get('path')}`",
        f"- D: {a.source.get('D_definition', 'n/a')}; compute C = kappa N D with kappa = {_n(a.source.get('kappa'))}",
        f"- points: {len(a.points)} used ({a.source.get('points_mode', 'all rows')})"
        + (f"; excluded rows: {a.source['excluded']}" if a.source.get("excluded") else "")
        + (
            f"; {a.source['excluded_warmup']} eval(s) inside LR warmup excluded (not scaling points)"
            if a.source.get("excluded_warmup")
            else ""
        ),
        f"- fit: Huber delta {s.get('huber_delta')} on log residuals (sum), L-BFGS-B multi-start, "
        f"{s.get('bootstrap')} bootstrap resamples (seed {s.get('seed')})",
    ]
    gens = a.source.get("generations") or []
    if len(gens) > 1:
        lines.append(
            f"- generation (base config + --set): {a.source.get('generation')} of {len(gens)} in the store "
            f"({', '.join(gens)})"
        )
    runs = a.runs
    if runs is not None and len(runs):
        origin = [
            f"{name} {', '.join(f'`{v}`' for v in sorted(runs[col].dropna().astype(str).unique())[:4])}"
            for name, col in (
                ("base config", "config.meta.base_config"),
                ("--set", "config.meta.sets"),
                ("generation", "config.meta.generation"),
            )
            if col in runs.columns and runs[col].notna().any()
        ]
        if origin:
            lines.append("- runs made from: " + "; ".join(origin))
        # the trial's own bookkeeping (meta.cell, meta.config_hash, resources) is not configuration
        cfg = [c for c in runs.columns if c.startswith("config.") and not c.startswith("config.meta.")]
        const = {c[7:]: runs[c].iloc[0] for c in cfg if runs[c].astype(str).nunique() == 1}
        varying = {
            c[7:]: sorted(runs[c].astype(str).unique()) for c in cfg if runs[c].astype(str).nunique() > 1
        }
        if varying:
            lines.append(
                "- varied across runs: "
                + "; ".join(f"`{k}` in {{{', '.join(v[:8])}}}" for k, v in varying.items())
            )
        if const:
            lines.append("")
            lines.append("<details><summary>shared configuration</summary>\n")
            lines += [f"- `{k}` = {v}" for k, v in sorted(const.items())]
            lines.append("\n</details>")
    return lines


def _untrained_coarse_note(runs: pd.DataFrame) -> str:
    """Where the coarse read is not trained (lambda_coarse = 0) its CE is a counterfactual: say so."""
    col = "final_val_loss_coarse_untrained"
    if col not in runs.columns or not pd.to_numeric(runs[col], errors="coerce").notna().any():
        return ""
    return (
        " val_loss_coarse and loss_ratio are empty for runs whose coarse read is not trained "
        "(lambda_coarse = 0); their coarse read's CE is shown as val_loss_coarse_untrained, a counterfactual "
        "number (a static read nobody trained to caption), not a competitor."
    )


def metric_table(runs: pd.DataFrame) -> str:
    """Mean (sd) of the final metrics per tier and budget (and arm when there are several).

    Means and sds are over complete runs only (status == "complete"): a diverged, oom, failed or still
    running run has no valid final metric. The status column counts every run of the group, so failures
    stay visible (and are listed in "Runs that did not complete").
    """
    if runs is None or not len(runs):
        return "_no runs_\n"
    keys = [k for k in ("tier", "budget_flops") if k in runs.columns]
    if "arm" in runs.columns and runs["arm"].nunique(dropna=True) > 1:
        keys.append("arm")
    cols = [
        m
        for m in TABLE_METRICS
        if m in runs.columns and pd.to_numeric(runs[m], errors="coerce").notna().any()
    ]
    head = (
        "| " + " | ".join(keys + ["complete runs", "status"] + [c.replace("final_", "") for c in cols]) + " |"
    )
    lines = [head, "|" + "---|" * (len(keys) + 2 + len(cols))]
    groups = runs.groupby(keys, dropna=False) if keys else [((), runs)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        status = ", ".join(f"{n} {s}" for s, n in g["status"].value_counts().items()) if "status" in g else ""
        cells = [_n(k, "{:.3g}") if isinstance(k, (int, float, np.number)) else str(k) for k in key]
        done = g[g["status"].astype(str) == "complete"] if "status" in g else g
        cells += [str(len(done)), status]
        for c in cols:
            v = pd.to_numeric(done[c], errors="coerce").dropna()
            cells.append(
                "n/a" if v.empty else (f"{v.mean():.4g}" + (f" ({v.std(ddof=1):.2g})" if len(v) > 1 else ""))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _joint_lines(f: LawFit) -> list[str]:
    """The joint diagnostic in two lines (bootstrap correlations, Hessian condition)."""
    jd = f.joint_diagnostic
    if jd is None:
        return []
    cond = f"{jd.hessian_condition:.3g}" if np.isfinite(jd.hessian_condition) else "n/a"
    out = [
        f"Hessian of the objective (centred log space, free parameters {', '.join(jd.free)}): condition "
        f"number {cond} (flagged above {HESSIAN_COND_THRESHOLD:.0e})."
    ]
    if jd.corr is not None:
        pairs = [
            (jd.names[i], jd.names[j], jd.corr[i, j])
            for i in range(len(jd.names))
            for j in range(i + 1, len(jd.names))
            if np.isfinite(jd.corr[i, j])
        ]
        if pairs:
            top = max(pairs, key=lambda p: abs(p[2]))
            flagged = "; ".join(f"{x} and {y} ({c:+.4f})" for x, y, c in jd.flagged) or "none"
            out.append(
                f"Bootstrap correlations (centred log space): largest |corr| {abs(top[2]):.4f} ({top[0]} vs "
                f"{top[1]}); not separately identified: {flagged}."
            )
    return out


def _optimal_line(f: LawFit, co: dict) -> str:
    """'At C = ...: N* = ..., D* = ..., D*/N* = ...', with withheld numbers said as such."""
    C = co["C"]
    parts = [f.derived(k, C) for k in ("N_opt", "D_opt", "tokens_per_param")]
    ext = " (**extrapolated**)" if co.get("extrapolated") else ""
    if all(p.suppressed for p in parts) and len({p.note for p in parts}) == 1:
        return f"At C = {C:.3g}: N*, D* and D*/N* {parts[0].text()}{ext}"
    n, d, r = (p.text("{:.3g}") for p in parts)
    return f"At C = {C:.3g}: N* = {n}, D* = {d}, D*/N* = {r}{ext}"


def _fits_section(a: Analysis) -> list[str]:
    out = []
    f = a.parametric
    if f is not None:
        out += [
            "### Approach 3: L(N, D) = E + A/N^alpha + B/D^beta",
            "",
            "| parameter | estimate | 95% CI | identified |",
            "|---|---|---|---|",
        ]
        for k in ("E", "A", "alpha", "B", "beta"):
            out.append(
                f"| {k} | {_n(f.params[k])} | {_ci(f.ci95.get(k), f.params[k])} | "
                f"{'yes' if f.identified.get(k) else '**no**'} |"
            )
        for name, label in (("a_opt", "a = beta/(alpha+beta)"), ("b_opt", "b = alpha/(alpha+beta)")):
            d = f.derived(name)
            if d.suppressed:
                out.append(f"| {label} | {d.status} ({d.why}) | n/a | **no** |")
            else:
                mark = "yes" if d.status == "ok" else d.status
                out.append(f"| {label} | {_n(d.value, '{:.3f}')} | {_ci(d.ci95, d.value)} | {mark} |")
        out.append("")
        out.append(
            f"Objective {f.objective:.10f} (Huber sum) over {f.n_points} points; {f.n_at_best} of {f.n_starts} starts "
            f"reached it; projected gradient {f.grad_norm:.2g}; bootstrap {0 if f.boot is None else len(f.boot)} "
            f"of {f.n_bootstrap} refits."
        )
        out += _joint_lines(f)
        co = a.fits.get("parametric", {}).get("compute_optimal")
        if co:
            out.append(_optimal_line(f, co))
        out.append("")
    iso = a.isoflop
    if iso is not None:
        out += ["### Approach 2: IsoFLOP parabolas", ""]
        if iso.a is not None:
            da, db = iso.derived("a"), iso.derived("b")
            out.append(
                f"N* ~ C^a with a = {da.text()}; D* ~ C^b with b = {db.text()} ({iso.n_budgets} budgets; "
                "bootstrap within budgets"
                + (
                    f"; t intervals a {_ci(iso.ci95_ols.get('a'), da.value)}, b {_ci(iso.ci95_ols.get('b'), db.value)}"
                    if iso.ci95_ols and not da.suppressed
                    else ""
                )
                + ")"
            )
        out += [
            "",
            "| budget C | points | sizes | N* | D* | loss* | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in iso.budgets:
            out.append(
                f"| {b['budget']:.3g} | {b['n_points']} | {b['n_sizes']} | {_n(b.get('N_opt'))} | {_n(b.get('D_opt'))} "
                f"| {_n(b.get('loss_opt'))} | {b['status']} |"
            )
        out.append("")
    if a.per_tier_info:
        out += [
            "### Per-tier data curves: L(D) = E + B/D^beta",
            "",
            "| tier | run | points | E | B | beta | warnings |",
            "|---|---|---|---|---|---|---|",
        ]
        for tier, info in sorted(a.per_tier_info.items(), key=lambda kv: str(kv[0])):
            fit = a.per_tier.get(tier)
            if fit is None:
                out.append(
                    f"| {tier} | {info.get('trial_id', '')} | {info.get('n_points', 0)} | | | | {'; '.join(info.get('warnings', []))} |"
                )
                continue
            cells = [
                f"{_n(fit.params[k])} {_ci(fit.ci95.get(k), fit.params[k])}"
                + ("" if fit.identified.get(k, True) else " (not identified)")
                for k in ("E", "B", "beta")
            ]
            out.append(
                f"| {tier} | {info.get('trial_id', '')} | {fit.n_points} | "
                + " | ".join(cells)
                + f" | {len(fit.warnings)} |"
            )
        out.append("")
    return out


def _failures_section(runs: pd.DataFrame | None) -> list[str]:
    """Runs that did not complete, with the last line of their error: failures stay visible."""
    if runs is None or not len(runs) or "status" not in runs.columns:
        return []
    bad = runs[runs["status"].astype(str) != "complete"]
    if bad.empty:
        return []
    out = [
        "## Runs that did not complete",
        "",
        "| trial | tier | budget | seed | arm | status | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in bad.iterrows():
        err = r.get("error")
        err = "" if err is None or (isinstance(err, float) and np.isnan(err)) else str(err)
        last = next((x.strip() for x in reversed(err.splitlines()) if x.strip()), "")
        cells = [
            r.get("trial_id"),
            r.get("tier"),
            _n(r.get("budget_flops"), "{:.3g}"),
            r.get("seed"),
            r.get("arm"),
            r.get("status"),
            last[:160].replace("|", "\\|"),
        ]
        out.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return out + [""]


def _cost_section(a: Analysis, usd_per_gpu_hour: float) -> list[str]:
    out = []
    runs = a.runs
    if runs is not None and len(runs) and "wall_s" in runs.columns:
        wall = pd.to_numeric(runs["wall_s"], errors="coerce")
        gpu_h = pd.to_numeric(runs.get("gpu_hours", pd.Series(dtype=float)), errors="coerce")
        out.append(
            f"- wall clock: {wall.sum() / 3600:.3g} h summed over {int(wall.notna().sum())} runs "
            f"(longest run {wall.max() / 60:.3g} min)"
        )
        if gpu_h.notna().any():
            total = float(gpu_h.sum())
            out.append(
                f"- GPU-hours: {total:.3g} -> ${total * usd_per_gpu_hour:.2f} at ${usd_per_gpu_hour:.2f}/GPU-hour"
            )
        else:
            out.append("- GPU-hours: n/a (no GPU time recorded: CPU runs)")
        if "flops_seen" in runs.columns:
            out.append(
                f"- training compute: {pd.to_numeric(runs['flops_seen'], errors='coerce').sum():.3g} FLOPs"
            )
    t = a.timings
    if t:
        out.append("- analysis time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    return out or ["- n/a (external data)"]


def _data_section(evals) -> list[str]:
    """Which data the runs trained on; on ingested shards, why attention on target is empty."""
    col = "config.data.source"
    if evals is None or col not in evals or not (evals[col].astype(str) == "shards").any():
        return []
    folders = sorted(set(evals.loc[evals[col].astype(str) == "shards", "config.data.shards"].astype(str)))
    return [
        "## Data",
        "",
        f"Runs on ingested video shards ({', '.join(folders)}): real clips carry no target boxes, so "
        "attn_on_target_coarse / attn_on_target_fine are empty (NaN) there, and there is no exact no-vision "
        "bound for their captions (val_loss_blind is NaN; train.log prints the val captions' unigram entropy as a "
        "weaker reference).",
        "",
    ]


def _samples_section(a: Analysis) -> list[str]:
    """Captions vs truth of the best run's held-out clips (teacher-forced argmax; see samples.png)."""
    from analysis.plots import pick_samples

    picked = pick_samples(a.evals)
    if picked is None:
        return []
    label, samples = picked
    rows = ["| val clip | truth | predicted (teacher-forced) |", "|---|---|---|"]
    rows += [
        f"| {c.get('clip_id', c['val_index'])} | {c['truth']} | {c.get('pred', 'n/a')} |"
        for c in samples["clips"]
    ]
    where = (
        "attention maps in samples.png"
        if "world" in samples
        else f"clips from the shards in {samples.get('shards')}"
    )
    return ["## Sample outputs", "", f"From {label}; {where}.", "", *rows, ""]


def write_report(
    a: Analysis, out_dir: Path, plots: list[Path] = (), usd_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR
) -> Path:
    """Write out_dir/REPORT.md and return its path."""
    out_dir = Path(out_dir)
    env = environment()
    blo = bloat()
    L = [
        f"# Report card: {a.title}",
        "",
        f"_generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by analysis/fit_laws.py_",
        "",
    ]
    f = a.parametric
    tl = []
    if f is not None:  # headlines only where the fit supports them (analysis/diagnostics.py's rule)
        d = f.derived("a_opt")
        tl.append(f"approach 3: a {d.text()}" if d.suppressed else f"approach 3 gives a = {d.text()}")
    if a.isoflop is not None:
        d = a.isoflop.derived("a")
        tl.append(f"approach 2: a {d.text()}" if d.suppressed else f"approach 2 gives a = {d.text()}")
    tl.append(f"{len(a.warnings)} warning(s)")
    L += ["**TL;DR**: " + "; ".join(tl) + ".", ""]
    L += ["## Environment", ""]
    L += [
        f"- hardware: {env['cpu']}; GPU: {env['gpu']}",
        f"- platform: {env['platform']}",
        f"- python {env['python']}, " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
        f"- git commit: {env['git_commit']}",
        "",
    ]
    L += ["## Configuration", ""] + _config_section(a) + [""]
    if a.runs is not None and len(a.runs):
        L += [
            "## Metrics per tier and budget",
            "",
            "Mean (sd) of the final evaluation over complete runs; the status column counts every run."
            + _untrained_coarse_note(a.runs),
            "",
            metric_table(a.runs),
        ]
    L += _failures_section(a.runs)
    L += _data_section(a.evals)
    L += ["## Fits", ""] + _fits_section(a)
    if a.eval_table is not None and len(a.eval_table):
        from analysis.evalcheck import to_markdown

        L += [
            "## Eval principles",
            "",
            "Monotonicity, seed noise, margin over chance, early/final ranking "
            "(analysis/evalcheck.py; ✓ = passes its threshold).",
            "",
            to_markdown(a.eval_table),
        ]
    L += _samples_section(a)
    L += ["## Warnings", ""] + ([f"- {w}" for w in a.warnings] or ["- none"]) + [""]
    L += ["## Cost", ""] + _cost_section(a, usd_per_gpu_hour) + [""]
    loc = ", ".join(f"{k} {v}" for k, v in blo["lines_of_code"].items())
    L += [
        "## Bloat",
        "",
        f"- lines of Python (non-blank): {loc}; total {blo['total_lines']}",
        f"- dependencies (pyproject): {blo['dependencies']} runtime, {blo['optional_dependencies']} optional",
        "",
    ]
    if plots:
        L += ["## Plots", ""]
        for p in plots:
            L += [f"![{Path(p).stem}]({Path(p).name})", ""]
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(L), encoding="utf-8")
    return path
