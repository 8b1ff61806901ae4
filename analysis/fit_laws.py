"""CLI: scaling-law fits with CIs, plots and the report card, from a Tune experiment or an external CSV.

Usage:
    python analysis/fit_laws.py                           # the newest experiment under ./runs
    python analysis/fit_laws.py --store runs/grid-cpu     # an experiment dir, store dir or parquet file
    python analysis/fit_laws.py --csv svg_extracted_data.csv \
        --n-col "Model Size" --c-col "Training FLOP" --loss-col loss --exclude-top-loss 5
    (Chinchilla's Fig. 4 as digitised in Epoch AI's analyzing-chinchilla repository, Besiroglu et al. 2024)
    (also: python -m analysis.fit_laws ...)

Writes fits.json, the PNGs and REPORT.md to <experiment>/analysis/ (or --out DIR; for --csv the default is
runs/_external/<csv name>/) and prints that path last. Store input: N = params_n, D = samples_seen
(samples, not tokens), C = flops_seen; approach 2 per budget_flops on the final rows; per-tier data curves
from the intermediate evals of one run per tier. Bad input (missing file or column, NaN, non-positive
N/D/loss, too few rows) exits 2 with one line naming the problem, and nothing is written.

Headlines (stdout, the REPORT.md TL;DR, fits.json) state a derived number (a, b, N*, D*, D*/N*) only when the
parameters it depends on are identified; otherwise "not identified (why)" and null with a *_note in fits.json
(analysis/diagnostics.py, analysis/isoflop.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # many tiny L-BFGS-B problems: BLAS threads only add contention (measured: 5-10x slower on a busy 2-core box)
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
if __package__ in (None, ""):
    # run as a script: import the repo's packages, not siblings of this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import evalcheck, isoflop, laws, plots, report  # noqa: E402
from analysis.fitter import FitError  # noqa: E402
from analysis.store import (  # noqa: E402
    DataError,
    build_frames,
    find_latest_experiment,
    find_trial_dirs,
    load_csv,
    load_store,
    write_store,
)
from fvlm.cli import OneLineParser  # noqa: E402

SAMPLES_LABEL = "D = samples_seen (training samples, not tokens)"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="fit_laws.py",
        error_name="fit_laws",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("input (default: the newest experiment under --runs)")
    src.add_argument("--store", help="experiment dir, store dir or parquet file")
    src.add_argument(
        "--runs", default="runs", help="where to look for the newest experiment (default ./runs)"
    )
    src.add_argument("--csv", help="external data, one row per point")
    src.add_argument("--n-col", help="CSV column with the parameter count N")
    src.add_argument("--loss-col", help="CSV column with the loss")
    src.add_argument("--d-col", help="CSV column with the data size D")
    src.add_argument("--c-col", help="CSV column with compute C (then D = C / (6 N) unless --d-col)")
    src.add_argument("--budget-col", help="CSV column grouping points into IsoFLOP budgets (approach 2)")
    src.add_argument("--tier-col", help="CSV column of model tiers for per-tier data curves")
    src.add_argument("--group-col", help="CSV column of run ids (curves for the larger-model-worse check)")
    src.add_argument("--schedule-col", help="CSV column of LR schedule names (mixing is flagged)")
    src.add_argument(
        "--exclude-top-loss", type=int, default=0, metavar="K", help="drop the K highest-loss rows"
    )
    fit = p.add_argument_group("fit")
    fit.add_argument("--huber-delta", type=float, default=1e-3)
    fit.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no CIs)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--at-compute", type=float, help="compute for N*, D*, D*/N* (default: largest C in the data)"
    )
    fit.add_argument(
        "--points",
        choices=("auto", "final", "all"),
        default="auto",
        help="store: final rows only, or all evals (auto: all when every run uses a constant LR)",
    )
    fit.add_argument(
        "--generation",
        default="latest",
        help="store: which generation (base config + --set) to fit: latest (default), all, or a hash",
    )
    fit.add_argument(
        "--include-warmup",
        action="store_true",
        help="store: keep evals inside LR warmup (excluded by default: not scaling points)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--out", help="output directory")
    out.add_argument("--usd-per-gpu-hour", type=float, default=report.DEFAULT_USD_PER_GPU_HOUR)
    out.add_argument("--no-plots", action="store_true")
    return p


# ---------------------------------------------------------------------------------------------------------
# points


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df.columns else pd.Series(np.nan, index=df.index)


def _schedule(df: pd.DataFrame) -> pd.Series:
    for c in ("config.train.schedule", "lr_schedule"):
        if c in df.columns and df[c].notna().any():
            return df[c].astype(object).where(df[c].notna(), None)
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def select_generation(runs: pd.DataFrame, wanted: str = "latest") -> tuple[pd.DataFrame, dict, list[str]]:
    """Runs of one generation (the base config + --set of the command that made them; tune/flags.py).

    An experiment folder can hold runs of several generations (e.g. the same ablation under another --set):
    pooling them in one fit mixes experiments. `wanted`: "latest" (default; the generation whose newest
    trial started last), "all" (pool, with a warning), or a generation hash."""
    if "generation" not in runs.columns:
        return runs, {}, []
    gen = runs["generation"].astype(object).where(runs["generation"].notna(), "unknown").astype(str)
    gen = gen.where(gen != "", "unknown")
    names = sorted(set(gen))
    info = {"generations": names}
    if wanted == "all":
        warns = [f"{len(names)} generations pooled in one fit: {', '.join(names)}"] if len(names) > 1 else []
        return runs, {**info, "generation": "all"}, warns
    if wanted == "latest":
        if len(names) == 1:
            return runs, {**info, "generation": names[0]}, []
        started = pd.to_numeric(
            runs.get("trial_started_at", pd.Series(0.0, index=runs.index)), errors="coerce"
        )
        pick = gen[started.fillna(-1.0).idxmax()]
        warns = [
            f"the store holds {len(names)} generations (base config + --set): {', '.join(names)}; using the "
            f"newest, {pick} ({int((gen == pick).sum())} runs); --generation all pools them, --generation G "
            "picks one"
        ]
        return runs[gen == pick], {**info, "generation": pick}, warns
    if wanted not in names:
        raise DataError(f"--generation {wanted}: not in the store; it holds {', '.join(names)} (or use all)")
    return runs[gen == wanted], {**info, "generation": wanted}, []


def points_from_store(
    evals: pd.DataFrame,
    runs: pd.DataFrame,
    mode: str = "auto",
    include_warmup: bool = False,
):
    """(points, finals, per-tier curves {tier: (trial_id, D, loss, schedules)}, info, warnings).

    Evals inside LR warmup (`in_warmup`: the untrained step-0 eval and evals before the LR reached its peak)
    are not scaling points: they are left out unless include_warmup, and their number is stated."""
    warnings = []
    if runs is None or not len(runs):
        raise DataError("the store has no runs")
    st = runs["status"].astype(str)
    bad = runs[st.isin(["diverged", "oom", "failed"])]
    if len(bad):
        counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
        warnings.append(f"{len(bad)} run(s) excluded from the fits: {counts}")
    if (st == "running").any():
        warnings.append(f"{int((st == 'running').sum())} run(s) still running (not used)")
    complete = set(runs.loc[st == "complete", "trial_id"].astype(str))
    runs_only = evals is None or not len(evals)
    if runs_only:
        # only runs.parquet: its final values are one point per run
        evals = runs.rename(columns={"final_val_loss": "val_loss"}).assign(report_index=0)
        warnings.append("no evals table: final values of runs.parquet only (no per-tier curves)")
    e = evals[evals["trial_id"].astype(str).isin(complete)].copy()
    if "kind" in e.columns and (e["kind"] == "grid").any() and e["kind"].nunique() > 1:
        e = e[e["kind"] == "grid"]
        warnings.append("points from the scaling-grid runs only (kind == grid)")
    n_warmup = 0
    if "in_warmup" in e.columns and not include_warmup:
        warm = e["in_warmup"].astype(object).where(e["in_warmup"].notna(), False).astype(bool)
        n_warmup = int(warm.sum())
        e = e[~warm]
        if n_warmup:
            warnings.append(
                f"{n_warmup} eval(s) inside LR warmup (the untrained step-0 eval included) excluded from the "
                "fits (--include-warmup keeps them)"
            )
    pts = pd.DataFrame(
        {
            "N": _num(e, "params_n"),
            "D": _num(e, "samples_seen"),
            "C": _num(e, "flops_seen"),
            "loss": _num(e, "val_loss"),
            "budget": _num(e, "budget_flops"),
            "tier": e["tier"].astype(str) if "tier" in e.columns else "all",
            "group": e["trial_id"].astype(str),
            "schedule": _schedule(e),
            "order": _num(e, "report_index").fillna(_num(e, "step")),
            "arm": e["arm"].astype(str) if "arm" in e.columns else None,
        }
    )
    usable = (pts[["N", "D", "C", "loss"]] > 0).all(axis=1) & np.isfinite(pts[["N", "D", "C", "loss"]]).all(
        axis=1
    )
    pts = pts[usable]
    if pts.empty:
        raise DataError(
            "no complete run with finite val_loss, params_n, samples_seen and flops_seen > 0 in the store"
        )
    if "arm" in pts and pts["arm"].nunique() > 1:
        warnings.append("several ablation arms pooled in one fit: " + ", ".join(sorted(pts["arm"].unique())))
    finals = pts.sort_values(["group", "order"]).groupby("group").tail(1)
    scheds = {s for s in pts["schedule"] if s is not None}
    if runs_only:
        mode = "final"
    elif mode == "auto":
        mode = "all" if scheds and scheds <= {"constant"} else "final"
    points = pts if mode == "all" else finals
    if mode == "all":
        warnings.append(
            "all intermediate evals used as points (constant LR): they are correlated within a run"
        )
    # per-tier curves: the longest complete run of each tier
    curves = {}
    for tier, g in [] if runs_only else pts.groupby("tier"):
        best = g.groupby("group")["D"].agg(["max", "size"]).sort_values(["max", "size"], ascending=False)
        tid = best.index[0]
        r = g[g["group"] == tid].sort_values("order")
        curves[str(tier)] = (tid, r["D"].to_numpy(), r["loss"].to_numpy(), list(r["schedule"]))
    kappa = float(np.median(points["C"] / (points["N"] * points["D"])))
    info = {
        "D_definition": SAMPLES_LABEL,
        "kappa": kappa,
        "points_mode": f"{mode} ({'final eval of each run' if mode == 'final' else 'every eval after warmup'})",
        "excluded_warmup": n_warmup,
    }
    return points.drop(columns=["order"]), finals.drop(columns=["order"]), curves, info, warnings


# ---------------------------------------------------------------------------------------------------------
# fits


def run_fits(a: report.Analysis, finals: pd.DataFrame, curves: dict, args) -> report.Analysis:
    """Approach 3, approach 2 and per-tier curves; fills a.parametric/isoflop/per_tier and a.fits."""
    pts = a.points
    a.finals = finals
    kappa = a.source.get("kappa", 6.0)
    at_c = args.at_compute if args.at_compute is not None else float(pts["C"].max())
    col = lambda df, c: df[c].to_numpy() if c in df.columns and df[c].notna().any() else None  # noqa: E731
    t0 = time.perf_counter()
    par_json: dict
    try:
        a.parametric = laws.fit_parametric(
            pts["N"],
            pts["D"],
            pts["loss"],
            huber_delta=args.huber_delta,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            kappa=kappa,
            C=pts["C"],
            schedules=col(pts, "schedule"),
            groups=col(pts, "group"),
            at_compute=at_c,
        )
        par_json = a.parametric.to_json(at_compute=at_c)
    except FitError as e:
        par_json = dict.fromkeys(("E", "A", "B", "alpha", "beta", "objective", "a_opt", "b_opt"))
        par_json.update(n_points=len(pts), ci95={}, identified={}, warnings=[f"no parametric fit: {e}"])
        note = f"not identified: no parametric fit ({e})"
        par_json.update(a_opt_note=note, b_opt_note=note)
    a.timings["parametric fit + bootstrap"] = time.perf_counter() - t0
    fits = {"source": a.source, "settings": a.settings, "parametric": par_json}
    if "budget" in finals.columns and finals["budget"].notna().any():
        t0 = time.perf_counter()
        f = finals[finals["budget"].notna()]
        try:
            a.isoflop = isoflop.fit_isoflop(
                f["N"],
                f["D"],
                f["loss"],
                f["budget"].to_numpy(),
                C=f["C"],
                n_bootstrap=args.bootstrap,
                seed=args.seed,
                schedules=col(f, "schedule"),
            )
            fits["isoflop"] = a.isoflop.to_json()
        except FitError as e:
            fits["isoflop"] = {
                "a": None,
                "a_note": f"not identified: no IsoFLOP fit ({e})",
                "b": None,
                "b_note": f"not identified: no IsoFLOP fit ({e})",
                "ci95": {},
                "n_budgets": 0,
                "warnings": [f"no IsoFLOP fit: {e}"],
            }
        a.timings["isoflop fit"] = time.perf_counter() - t0
    if curves:
        t0 = time.perf_counter()
        per = {}
        for tier, (tid, D, loss, scheds) in curves.items():
            info = {"trial_id": tid, "n_points": int(len(D)), "warnings": []}
            try:
                fit = laws.fit_data_curve(
                    D,
                    loss,
                    huber_delta=args.huber_delta,
                    n_bootstrap=min(args.bootstrap, 200),
                    seed=args.seed,
                    schedules=scheds,
                )
                j = fit.to_json()
                info["warnings"] = j["warnings"]
                per[tier] = {
                    k: j[k] for k in ("E", "B", "beta", "ci95", "identified", "n_points", "objective")
                }
                per[tier].update(trial_id=tid, warnings=j["warnings"])
            except FitError as e:
                fit = None
                info["warnings"] = [f"no data curve: {e}"]
                per[tier] = {
                    "E": None,
                    "B": None,
                    "beta": None,
                    "trial_id": tid,
                    "warnings": info["warnings"],
                }
            a.per_tier[tier], a.per_tier_info[tier], a.curve_data[tier] = fit, info, (D, loss, fit)
        fits["per_tier"] = per
        a.timings["per-tier curves"] = time.perf_counter() - t0
    warnings = list(a.warnings)
    warnings += [f"parametric: {w}" for w in par_json.get("warnings", [])]
    if "isoflop" in fits:
        warnings += [f"isoflop: {w}" for w in fits["isoflop"].get("warnings", [])]
    for tier, d in fits.get("per_tier", {}).items():
        warnings += [f"per_tier {tier}: {w}" for w in d.get("warnings", [])]
    a.warnings = warnings
    fits["warnings"] = warnings
    a.fits = fits
    return a


def _clean(x):
    """JSON-safe: NaN/inf -> null, numpy scalars -> python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_clean(v) for v in x.tolist()]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def write_outputs(a: report.Analysis, out: Path, args) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if not args.no_plots:
        t0 = time.perf_counter()
        paths, plot_warnings = plots.make_all(a, out)
        a.timings["plots"] = time.perf_counter() - t0
        a.warnings += plot_warnings
    a.fits["warnings"] = a.warnings
    a.fits["timing_s"] = dict(a.timings)
    tmp = out / ".fits.json.tmp"
    tmp.write_text(json.dumps(_clean(a.fits), indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, out / "fits.json")
    report.write_report(a, out, plots=paths, usd_per_gpu_hour=args.usd_per_gpu_hour)
    return out


# ---------------------------------------------------------------------------------------------------------
# entry points


def _settings(args) -> dict:
    return {
        "huber_delta": args.huber_delta,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "exclude_top_loss": args.exclude_top_loss,
        "points": args.points,
        "generation": getattr(args, "generation", None),
        "include_warmup": getattr(args, "include_warmup", False),
    }


def analyse_csv(args) -> tuple[report.Analysis, Path]:
    if not args.n_col or not args.loss_col:
        raise DataError("--csv needs --n-col and --loss-col")
    if args.huber_delta <= 0 or args.bootstrap < 0:
        raise DataError("--huber-delta must be > 0 and --bootstrap >= 0")
    df, info = load_csv(
        args.csv,
        n_col=args.n_col,
        loss_col=args.loss_col,
        d_col=args.d_col,
        c_col=args.c_col,
        budget_col=args.budget_col,
        tier_col=args.tier_col,
        group_col=args.group_col,
        schedule_col=args.schedule_col,
        exclude_top_loss=args.exclude_top_loss,
    )
    info.update(kind="csv", points_mode="every row")
    a = report.Analysis(source=info, settings=_settings(args), points=df, d_label=info["D_definition"])
    curves = {}
    if "tier" in df.columns:
        for tier, g in df.groupby("tier"):
            g = g.sort_values("D")
            sched = list(g["schedule"]) if "schedule" in g.columns else None
            curves[str(tier)] = ("all rows", g["D"].to_numpy(), g["loss"].to_numpy(), sched)
    run_fits(a, df, curves, args)
    out = Path(args.out) if args.out else Path(args.runs) / "_external" / Path(args.csv).stem
    return a, out


def analyse_store(args) -> tuple[report.Analysis, Path, Path | None]:
    path = Path(args.store) if args.store else find_latest_experiment(args.runs)
    experiment_dir = None
    if path.is_dir() and find_trial_dirs(path):
        experiment_dir = path
        evals, runs = build_frames(path)  # in memory; the store is written with the outputs
    else:
        evals, runs = load_store(path)
    runs, gen_info, warnings = select_generation(runs, args.generation)
    if len(evals) and "trial_id" in evals.columns:
        evals = evals[evals["trial_id"].astype(str).isin(set(runs["trial_id"].astype(str)))]
    points, finals, curves, info, more = points_from_store(
        evals, runs, args.points, include_warmup=args.include_warmup
    )
    info.update(gen_info)
    warnings += more
    if path.is_file():
        base = path.parent.parent if path.parent.name == "store" else path.parent
    else:
        base = path.parent if path.name == "store" else path
    name = (
        str(runs["experiment"].dropna().iloc[0])
        if "experiment" in runs and runs["experiment"].notna().any()
        else base.name
    )
    info.update(kind="store", path=str(path), experiment=name, n_runs=int(len(runs)), n_evals=int(len(evals)))
    a = report.Analysis(
        source=info,
        settings=_settings(args),
        points=points,
        evals=evals,
        runs=runs,
        warnings=warnings,
        d_label=SAMPLES_LABEL,
    )
    run_fits(a, finals, curves, args)
    try:
        a.eval_table = evalcheck.check_evals(evals, runs_df=runs)
    except Exception as e:  # the eval check is a report section; its failure is shown, not fatal
        a.warnings.append(f"eval check failed: {type(e).__name__}: {e}")
    out = Path(args.out) if args.out else base / "analysis"
    return a, out, experiment_dir


def _headline(name: str, d) -> str:
    """'a=0.514 [0.49, 0.54]' or 'a not identified (alpha is not identified)'."""
    return f"{name} {d.text()}" if d.suppressed else f"{name}={d.text()}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.csv:
            if args.store:
                raise DataError("give either --csv or --store, not both")
            a, out = analyse_csv(args)
            experiment_dir = None
        else:
            a, out, experiment_dir = analyse_store(args)
    except (DataError, FitError) as e:
        print(f"fit_laws: error: {e}", file=sys.stderr)
        return 2
    if experiment_dir is not None:
        write_store(experiment_dir)
    write_outputs(a, out, args)
    f = a.parametric
    if f is not None:
        alloc = ", ".join(_headline(n, f.derived(k)) for n, k in (("a", "a_opt"), ("b", "b_opt")))
        print(f"approach 3: {f.summary()}; {alloc}; objective {f.objective:.10f}")
    if a.isoflop is not None and a.isoflop.a is not None:
        alloc = ", ".join(_headline(n, a.isoflop.derived(n)) for n in ("a", "b"))
        print(f"approach 2: {alloc} over {a.isoflop.n_budgets} budgets")
    print(
        f"{a.source.get('D_definition')}; {len(a.warnings)} warning(s); "
        + ", ".join(f"{k} {v:.1f}s" for k, v in a.timings.items())
    )
    print(out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
