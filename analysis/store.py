"""The result store: a Ray Tune experiment directory -> parquet tables (contract: ARCHITECTURE.md section 6).

Usage:
    python -m analysis.store runs/grid-cpu          # (re)build runs/grid-cpu/store/{evals,runs}.parquet
    from analysis.store import write_store, load_store
    evals, runs = load_store("runs/grid-cpu")       # experiment dir, store dir or one parquet file

Reads the trial directories with plain json (params.json = the flat dotted trial config, result.json = one
JSON object per tune.report, error.txt when the trial raised); Ray is not imported. A half-written last line
of result.json (a crash mid-write) is skipped and counted in `bad_lines`. Writes are atomic (temp file and
os.replace) and idempotent: the tables are a pure function of the trial files.

A trial's status is its last row's `status` when that is final (complete, diverged, oom, failed); a trial
whose last row is still `running` but which left an error file is `failed` with the error text; one that
Tune's experiment state marks TERMINATED without a final row was stopped early by a scheduler (ASHA) and is
`stopped`; otherwise it is `running`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fvlm.config import flatten  # the dotted-key flattening configs use (no torch import)
from fvlm.contract import FINAL_METRICS, FINAL_STATUSES, KEY_COLUMNS, METRICS, RUN_CONSTANTS

# extra keys of a final row copied as they are
FINAL_EXTRAS = [
    "val_loss_ar",
    "train_infer_gap",
    "lr_source",
    "lr_schedule",
    "device",
    "gpu_name",
    "trial_started_at",  # the newest start (a resumed trial restarts): which trial of a cell is current
]
# where a key column falls back to in the trial config when the rows lack it
CONFIG_FALLBACK = {
    "experiment": "meta.experiment",
    "kind": "meta.kind",
    "arm": "meta.arm",
    "budget_flops": "train.budget_flops",
    "seed": "train.seed",
    "tier": "model.scale",
    "generation": "meta.generation",
    "config_hash": "meta.config_hash",  # a trial that failed before its first report has no rows
}
_SKIP_DIRS = {"store", "analysis"}
_ERROR_CHARS = 4000


class DataError(ValueError):
    """Unusable input; the message names the problem in one line."""


# ---------------------------------------------------------------------------------------------------------
# reading trial directories


def read_result_lines(path: Path) -> tuple[list[dict], int]:
    """Rows of a result.json (JSON lines); returns (rows, number of unparsable lines skipped)."""
    rows, bad = [], 0
    if not path.exists():
        return rows, bad
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # typically a half-written last line
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
    return rows, bad


def find_trial_dirs(experiment_dir: Path) -> list[Path]:
    """Immediate subdirectories that look like Tune trials (params.json or result.json inside)."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return []
    out = []
    for p in sorted(experiment_dir.iterdir()):
        if (
            p.is_dir()
            and p.name not in _SKIP_DIRS
            and ((p / "params.json").exists() or (p / "result.json").exists())
        ):
            out.append(p)
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _read_error(trial_dir: Path) -> str | None:
    txt = trial_dir / "error.txt"
    if txt.exists():
        text = _ANSI.sub("", txt.read_text(encoding="utf-8", errors="replace")).strip()
        return text[-_ERROR_CHARS:] if text else "error.txt present but empty"
    if (trial_dir / "error.pkl").exists():
        return "error.pkl present (not unpickled: pickles can run code)"
    return None


def read_trial(trial_dir: Path) -> dict:
    """One trial: {trial_id, config (flat dotted), rows, error, bad_lines, dir}."""
    trial_dir = Path(trial_dir)
    config: dict = {}
    pj = trial_dir / "params.json"
    if pj.exists():
        try:
            config = flatten(json.loads(pj.read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            config = {}
    rows, bad = read_result_lines(trial_dir / "result.json")
    if not config:
        for r in rows:
            if isinstance(r.get("config"), dict):
                config = flatten(r["config"])
                break
    trial_id = next((str(r["trial_id"]) for r in rows if r.get("trial_id") not in (None, "")), None)
    return {
        "trial_id": trial_id or trial_dir.name,
        "config": config,
        "rows": rows,
        "error": _read_error(trial_dir),
        "bad_lines": bad,
        "dir": str(trial_dir),
    }


# ---------------------------------------------------------------------------------------------------------
# frames


def _scalar(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return v


def _fix_types(df: pd.DataFrame) -> pd.DataFrame:
    """Make every column parquet-safe: object columns of mixed types become strings."""
    for c in df.columns:
        if df[c].dtype == object:
            vals = df[c].dropna()
            types = {type(v) for v in vals}
            if types <= {bool} or types <= {str}:
                continue
            if all(
                isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in vals
            ):
                df[c] = pd.to_numeric(df[c], errors="coerce")
            else:
                df[c] = df[c].map(
                    lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                )
    return df


def _order_columns(df: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    head = [c for c in first if c in df.columns]
    cfg = sorted(c for c in df.columns if c.startswith("config."))
    rest = [c for c in df.columns if c not in head and c not in cfg]
    return df[head + rest + cfg]


def _trial_keys(trial: dict, experiment: str) -> dict:
    """Key columns and run constants of a trial: from its rows, else from its config."""
    keys: dict = {}
    for r in trial["rows"]:
        for k in KEY_COLUMNS + RUN_CONSTANTS:
            if keys.get(k) is None and r.get(k) is not None:
                keys[k] = r[k]
    for k, ck in CONFIG_FALLBACK.items():
        if keys.get(k) is None and trial["config"].get(ck) is not None:
            keys[k] = trial["config"][ck]
    keys.setdefault("experiment", None)
    if keys["experiment"] is None:
        keys["experiment"] = experiment
    keys["trial_id"] = trial["trial_id"]
    return keys


def tune_trial_states(experiment_dir: Path) -> dict[str, str]:
    """trial_id -> Tune's own status (TERMINATED, ERROR, ...) from the newest experiment_state-*.json.

    Needed for trials a scheduler (ASHA) stopped early: they end without a final row of their own."""
    states = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
        out = {}
        for entry in data.get("trial_data", []):
            trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            out[str(trial.get("trial_id"))] = str(trial.get("status"))
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}  # a state file Ray was writing when we read it: no extra information


def build_frames(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(evals, runs) from the trial directories of a Tune experiment."""
    experiment_dir = Path(experiment_dir)
    trials = [read_trial(d) for d in find_trial_dirs(experiment_dir)]
    tune_states = tune_trial_states(experiment_dir)
    records, meta = [], {}
    for t in trials:
        keys = _trial_keys(t, experiment_dir.name)
        cfg = {f"config.{k}": _scalar(v) for k, v in t["config"].items()}
        meta[t["trial_id"]] = {
            "keys": keys,
            "config": cfg,
            "error": t["error"],
            "bad_lines": t["bad_lines"],
            "tune_status": tune_states.get(str(t["trial_id"])),
        }
        for i, r in enumerate(t["rows"]):
            rec = {k: _scalar(v) for k, v in r.items() if k != "config"}
            rec.update({k: v for k, v in keys.items() if rec.get(k) is None})
            rec["report_index"] = i
            rec.setdefault("status", "running")
            if rec.get("status") is None:
                rec["status"] = "running"
            rec.update(cfg)
            records.append(rec)
    evals = pd.DataFrame.from_records(records)
    if len(evals):
        for m in KEY_COLUMNS + METRICS:  # every contract column exists, empty where the rows lack it
            if m not in evals.columns:
                evals[m] = None if m in KEY_COLUMNS else np.nan
        evals = evals.sort_values(["trial_id", "report_index"], kind="stable").reset_index(drop=True)
        # a trial restored from a checkpoint reports the steps after it again: the later report wins
        step = pd.to_numeric(evals["step"], errors="coerce")
        dup = step.notna() & evals.assign(_s=step).duplicated(["trial_id", "_s"], keep="last")
        for tid, n in evals.loc[dup, "trial_id"].value_counts().items():
            meta[tid]["duplicate_rows"] = int(n)
        evals = evals[~dup].reset_index(drop=True)
        evals["in_warmup"] = _in_warmup(evals)
        evals = _order_columns(_fix_types(evals), KEY_COLUMNS + ["report_index"] + METRICS)
    else:
        evals = pd.DataFrame(columns=KEY_COLUMNS + ["report_index"] + METRICS)
    runs = runs_from_evals(evals, meta)
    return evals, runs


def _in_warmup(evals: pd.DataFrame) -> pd.Series:
    """The rows' own in_warmup flag; for rows written before the flag existed (contract version 1), derived
    the same way fvlm.train does: the step-0 eval, or step <= int(total_steps * train.warmup_ratio)."""
    step = pd.to_numeric(evals["step"], errors="coerce")
    total = pd.to_numeric(evals.get("total_steps", pd.Series(np.nan, index=evals.index)), errors="coerce")
    ratio = pd.to_numeric(
        evals.get("config.train.warmup_ratio", pd.Series(0.05, index=evals.index)), errors="coerce"
    ).fillna(0.05)  # 0.05: fvlm.config.TrainConfig's default, for rows that predate the flag
    derived = (step <= 0) | (step <= np.floor(total * ratio)).fillna(False)
    own = evals["in_warmup"] if "in_warmup" in evals.columns else pd.Series(np.nan, index=evals.index)
    return own.where(own.notna(), derived).astype(bool)


def _last_finite(s: pd.Series):
    v = pd.to_numeric(s, errors="coerce")
    v = v[np.isfinite(v)]
    return float(v.iloc[-1]) if len(v) else np.nan


def runs_from_evals(evals: pd.DataFrame, meta: dict | None = None) -> pd.DataFrame:
    """One row per trial: keys, status, error, final and best metrics, cost. `meta` (from build_frames)
    adds trials without rows and the error files; without it, what the evals alone give."""
    meta = meta or {}
    out = []
    groups = dict(tuple(evals.groupby("trial_id", sort=True))) if len(evals) else {}
    for tid in sorted(set(groups) | set(meta)):
        g = groups.get(tid)
        info = meta.get(tid, {})
        row: dict = dict(info.get("keys", {}))
        row.update(info.get("config", {}))
        error = info.get("error")
        if g is None or not len(g):
            row["status"] = "failed" if error else "running"
            row["error"] = error
            row["n_evals"] = 0
            out.append(row)
            continue
        g = g.sort_values("report_index", kind="stable") if "report_index" in g else g
        last = g.iloc[-1]
        for k in KEY_COLUMNS + RUN_CONSTANTS:
            if k in g.columns:
                vals = g[k].dropna()
                if len(vals):
                    row[k] = vals.iloc[0]
        for c in g.columns:
            if c.startswith("config."):
                row.setdefault(c, last[c])
        status = str(last.get("status")) if last.get("status") is not None else "running"
        row_error = last.get("error") if "error" in g.columns else None
        if isinstance(row_error, float) and math.isnan(row_error):
            row_error = None
        if status not in FINAL_STATUSES:
            # no final row: an error file means failed; Tune's TERMINATED means a scheduler stopped it early
            status = (
                "failed" if error else "stopped" if info.get("tune_status") == "TERMINATED" else "running"
            )
        row["status"] = status
        row["error"] = row_error or (error if status != "complete" else None)
        for m in FINAL_METRICS:
            row[f"final_{m}"] = _last_finite(g[m]) if m in g.columns else np.nan
        vl = (
            pd.to_numeric(g["val_loss"], errors="coerce")
            if "val_loss" in g.columns
            else pd.Series(dtype=float)
        )
        if vl.notna().any():
            i = vl.idxmin()
            row["best_val_loss"] = float(vl.loc[i])
            row["best_step"] = g.loc[i, "step"] if "step" in g.columns else np.nan
        else:
            row["best_val_loss"], row["best_step"] = np.nan, np.nan
        for c in FINAL_EXTRAS:
            if c in g.columns:
                vals = g[c].dropna()
                row[c] = vals.iloc[-1] if len(vals) else None
        if row.get("lr_schedule") is None and "config.train.schedule" in g.columns:
            row["lr_schedule"] = last["config.train.schedule"]
        for c in ("step", "samples_seen", "flops_seen"):
            row[c] = _last_finite(g[c]) if c in g.columns else np.nan
        wall = _last_finite(g["wall_s"]) if "wall_s" in g.columns else np.nan
        if not np.isfinite(wall) and "time_total_s" in g.columns:
            wall = _last_finite(g["time_total_s"])
        row["wall_s"] = wall
        for c, how in (
            ("peak_mem_mb", "max"),
            ("oom_retries", "max"),
            ("samples_per_s", "median"),
            ("mfu", "median"),
        ):
            if c in g.columns:
                v = pd.to_numeric(g[c], errors="coerce")
                row[c] = float(getattr(v, how)()) if v.notna().any() else np.nan
        for c in ("micro_batch", "grad_accum"):
            if c in g.columns:
                row[c] = _last_finite(g[c])
        row["gpu_hours"] = _gpu_hours(g, wall)
        row["n_evals"] = int(len(g))
        row["bad_lines"] = info.get("bad_lines", 0)
        row["duplicate_rows"] = info.get("duplicate_rows", 0)
        out.append(row)
    runs = pd.DataFrame.from_records(out)
    if not len(runs):
        return pd.DataFrame(columns=KEY_COLUMNS + ["status", "error"])
    for k in KEY_COLUMNS:
        if k not in runs.columns:
            runs[k] = None
    return _order_columns(_fix_types(runs), KEY_COLUMNS + ["status", "error"])


def _gpu_hours(g: pd.DataFrame, wall: float) -> float:
    """GPU-hours where the rows say so: an explicit gpu_hours, else wall time x the trial's GPU fraction
    (the share of a card it was packed into; a whole card on CUDA without one). NaN for CPU runs."""
    if "gpu_hours" in g.columns:
        v = _last_finite(g["gpu_hours"])
        if np.isfinite(v):
            return v
    if not np.isfinite(wall):
        return np.nan
    frac = np.nan
    for c in ("gpu_fraction", "config.meta.gpu_fraction"):
        if c in g.columns and np.isfinite(_last_finite(g[c])):
            frac = _last_finite(g[c])
            break
    on_cuda = "device" in g.columns and (g["device"].astype(str) == "cuda").any()
    if on_cuda and not (frac > 0):
        frac = 1.0
    return wall * frac / 3600.0 if frac > 0 else np.nan


# ---------------------------------------------------------------------------------------------------------
# writing and loading


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_store(experiment_dir) -> Path:
    """Write <experiment_dir>/store/{evals,runs}.parquet; returns the store directory."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise DataError(f"no experiment directory at {experiment_dir}")
    evals, runs = build_frames(experiment_dir)
    store = experiment_dir / "store"
    store.mkdir(exist_ok=True)
    _atomic_parquet(evals, store / "evals.parquet")
    _atomic_parquet(runs, store / "runs.parquet")
    return store


def load_store(path, *, refresh: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(evals, runs) from an experiment dir, a store dir, or one parquet file.

    An experiment dir without a store (or with refresh=True) that has trial dirs gets its store built first.
    From evals.parquet alone the runs table is derived (without error files); from runs.parquet alone the
    evals table is empty.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"{path} is not a parquet file")
        df = pd.read_parquet(path)
        if "best_val_loss" in df.columns or "n_evals" in df.columns:
            return pd.DataFrame(columns=KEY_COLUMNS + METRICS), df
        return df, runs_from_evals(df)
    if not path.is_dir():
        raise DataError(f"no such store, experiment dir or parquet file: {path}")
    if (path / "evals.parquet").exists() or (path / "runs.parquet").exists():
        store = path
    else:
        store = path / "store"
        if refresh or not (store / "evals.parquet").exists():
            if not find_trial_dirs(path):
                raise DataError(f"{path} has no store and no Tune trial directories")
            store = write_store(path)
    evals = pd.read_parquet(store / "evals.parquet") if (store / "evals.parquet").exists() else None
    if (store / "runs.parquet").exists():
        runs = pd.read_parquet(store / "runs.parquet")
    elif evals is not None:
        runs = runs_from_evals(evals)
    else:
        raise DataError(f"{store} has neither evals.parquet nor runs.parquet")
    if evals is None:
        evals = pd.DataFrame(columns=KEY_COLUMNS + METRICS)
    return evals, runs


def is_experiment_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "store" / "evals.parquet").exists() or bool(find_trial_dirs(path)))


def find_latest_experiment(storage="runs") -> Path:
    """The most recently modified experiment under `storage` (dirs with trials or a store; names starting
    with '_' or '.' are skipped)."""
    storage = Path(storage)
    if not storage.is_dir():
        raise DataError(f"no experiments: {storage} does not exist (run a sweep, or pass --store/--csv)")
    best, best_t = None, -1.0
    for p in storage.iterdir():
        if p.name.startswith(("_", ".")) or not is_experiment_dir(p):
            continue
        t = max([p.stat().st_mtime] + [c.stat().st_mtime for c in p.iterdir()])
        if t > best_t:
            best, best_t = p, t
    if best is None:
        raise DataError(f"no experiment directories under {storage}")
    return best


# ---------------------------------------------------------------------------------------------------------
# external data


def load_csv(
    path,
    *,
    n_col: str,
    loss_col: str,
    d_col: str | None = None,
    c_col: str | None = None,
    budget_col: str | None = None,
    tier_col: str | None = None,
    group_col: str | None = None,
    schedule_col: str | None = None,
    exclude_top_loss: int = 0,
    min_rows: int = 6,
) -> tuple[pd.DataFrame, dict]:
    """External points as a frame with columns N, D, C, loss (+ budget, tier, group, schedule).

    D comes from d_col, or from c_col as D = C / (6 N) (stated in the returned info); C defaults to 6 N D.
    exclude_top_loss drops the K highest-loss rows (the Chinchilla replication dropped 5).
    Raises DataError naming the problem for a missing file or column, NaN, non-positive values, too few rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such CSV file: {path}")
    if d_col is None and c_col is None:
        raise DataError("give --d-col (data size) or --c-col (compute, then D = C / (6 N))")
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot parse {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    wanted = {"N": n_col, "loss": loss_col, "D": d_col, "C": c_col}
    extra = {"budget": budget_col, "tier": tier_col, "group": group_col, "schedule": schedule_col}
    for col in [c for c in list(wanted.values()) + list(extra.values()) if c is not None]:
        if col not in raw.columns:
            raise DataError(
                f"column {col!r} not in {path.name} (columns: {', '.join(map(str, raw.columns))})"
            )
    df = pd.DataFrame(index=raw.index)
    for name, col in wanted.items():
        if col is None:
            continue
        v = pd.to_numeric(raw[col], errors="coerce")
        bad = ~np.isfinite(v.to_numpy(dtype=float))
        if bad.any():
            rows = ", ".join(str(int(i) + 2) for i in np.flatnonzero(bad)[:5])
            raise DataError(f"column {col!r} has {int(bad.sum())} NaN/non-numeric values (CSV lines {rows})")
        if (v <= 0).any():
            rows = ", ".join(str(int(i) + 2) for i in np.flatnonzero(v.to_numpy() <= 0)[:5])
            raise DataError(
                f"column {col!r} must be positive: {int((v <= 0).sum())} values <= 0 (CSV lines {rows})"
            )
        df[name] = v.astype(float)
    info = {
        "path": str(path),
        "n_rows": int(len(raw)),
        "columns": {k: v for k, v in {**wanted, **extra}.items() if v},
    }
    if d_col is None:
        df["D"] = df["C"] / (6.0 * df["N"])
        info["D_definition"] = f"D = C / (6 N) from column {c_col!r} (tokens, as in Chinchilla)"
        info["kappa"] = 6.0
    elif c_col is None:
        df["C"] = 6.0 * df["N"] * df["D"]
        info["D_definition"] = f"D from column {d_col!r}; C = 6 N D"
        info["kappa"] = 6.0
    else:
        info["D_definition"] = f"D from column {d_col!r}, C from column {c_col!r}"
        info["kappa"] = float(np.median(df["C"] / (df["N"] * df["D"])))
    for name, col in extra.items():
        if col is not None:
            df[name] = raw[col].to_numpy()
    if exclude_top_loss:
        if exclude_top_loss < 0:
            raise DataError(f"--exclude-top-loss must be >= 0, got {exclude_top_loss}")
        order = np.argsort(df["loss"].to_numpy(), kind="stable")
        keep = np.sort(order[: max(0, len(df) - exclude_top_loss)])
        info["excluded"] = [int(i) for i in np.setdiff1d(np.arange(len(df)), keep)]
        df = df.iloc[keep]
    df = df.reset_index(drop=True)
    if len(df) < min_rows:
        raise DataError(f"too few rows: {len(df)} after exclusions (need at least {min_rows})")
    info["n_used"] = int(len(df))
    return df, info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m analysis.store EXPERIMENT_DIR", file=sys.stderr)
        return 2
    try:
        store = write_store(Path(argv[0]))
    except DataError as e:
        print(f"store: error: {e}", file=sys.stderr)
        return 2
    print(store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
