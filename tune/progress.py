"""What a user watches while a sweep runs, and the summary after it (driver side).

    Progress(total_trials, predicted_s_by_cell, concurrency)   # a tune.Callback: one line per report
    summarize(experiment_dir, t0, concurrency, cells)          # store; each cell's outcome; overhead; exit code
    cell_outcomes(runs, {config_hash: cell_name})              # the newest (or settled) trial of each cell

One console line per evaluation of any trial: elapsed time, trials done, cell, tier, budget, step, val loss,
samples/s, the trial's ETA (its remaining steps at its current speed) and the run's ETA (the plan's predicted
time of the unfinished cells, rescaled by how far the finished ones were off, over the concurrency).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray import tune

from fvlm.contract import SETTLED_STATUSES


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m"


class Progress(tune.Callback):
    HEADER = (
        f"{'elapsed':>8} {'done':>7}  {'cell':<26}{'tier':>6}{'budget':>9}{'step':>13}{'val_loss':>10}"
        f"{'samples/s':>11}{'trial ETA':>11}{'run ETA':>9}"
    )

    def __init__(self, total: int, predicted_s: dict[str, float], concurrency: int) -> None:
        self.total, self.predicted, self.concurrency = total, dict(predicted_s), max(1, concurrency)
        self.t0, self.done, self.done_cells, self.ratio = time.time(), set(), set(), []

    def setup(self, **info) -> None:  # also after Tuner.restore: the clock restarts
        self.t0 = time.time()
        print(self.HEADER, flush=True)

    def _run_eta(self) -> float:
        if not self.predicted:
            return float("nan")
        left = sum(s for c, s in self.predicted.items() if c not in self.done_cells)
        scale = sum(self.ratio) / len(self.ratio) if self.ratio else 1.0
        return left * scale / self.concurrency

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        cell = str(result.get("cell") or trial.config.get("meta.cell", trial.trial_id))
        step, total = result.get("step", 0), result.get("total_steps", 0)
        sps = result.get("samples_per_s", float("nan"))
        batch = (result.get("micro_batch") or 1) * (result.get("grad_accum") or 1)
        eta = (total - step) * batch / sps if sps and math.isfinite(sps) and sps > 0 else float("nan")
        val = result.get("val_loss", float("nan"))
        status = result.get("status", "")
        if status not in ("running", ""):
            self.done.add(trial.trial_id)
            self.done_cells.add(cell)
            pred = self.predicted.get(cell)
            if pred and result.get("wall_s"):
                self.ratio.append(float(result["wall_s"]) / pred)
            eta_txt = status
        else:
            eta_txt = _fmt_s(eta)
        print(
            f"{_fmt_s(time.time() - self.t0):>8} {len(self.done):>3}/{self.total:<3}  {cell[:25]:<26}"
            f"{str(result.get('tier', '')):>6}{float(result.get('budget_flops', 0)):>9.2g}{f'{step}/{total}':>13}"
            f"{val:>10.4f}{sps:>11.0f}{eta_txt:>11}{_fmt_s(self._run_eta()):>9}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        if trial.trial_id not in self.done and last.get("status") == "running":  # stopped early (ASHA)
            self.done.add(trial.trial_id)
            print(
                f"{_fmt_s(time.time() - self.t0):>8} {len(self.done):>3}/{self.total:<3}  "
                f"{str(last.get('cell', trial.trial_id))[:25]:<26} stopped by the scheduler at step "
                f"{last.get('step')} (val_loss {last.get('val_loss', float('nan')):.4f})",
                flush=True,
            )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(
            f"{_fmt_s(time.time() - self.t0):>8} trial {trial.trial_id} ({trial.config.get('meta.cell')}) "
            f"raised an error; see {trial.path}/error.txt",
            flush=True,
        )


def cell_outcomes(runs, cells: dict[str, str]) -> list[dict]:
    """{name, hash, status, error, trial_id} per cell of an invocation: the newest trial of each config hash
    (a trial a killed driver left `running` is older than its rerun, so it does not count); `missing` when
    the store has no trial of that hash."""
    import pandas as pd

    out = []
    for h, name in cells.items():
        mine = (
            runs[runs["config_hash"].astype(str) == h]
            if len(runs) and "config_hash" in runs
            else runs.iloc[:0]
        )
        if not len(mine):
            out.append(
                {"name": name, "hash": h, "status": "missing", "error": "no trial ran", "trial_id": None}
            )
            continue
        started = pd.to_numeric(
            mine.get("trial_started_at", pd.Series(0.0, index=mine.index)), errors="coerce"
        )
        if mine["status"].astype(str).isin(SETTLED_STATUSES).any():  # a settled trial (e.g. skipped as done)
            settled = mine[mine["status"].astype(str).isin(SETTLED_STATUSES)]
            started = started[settled.index]
            mine = settled
        r = mine.loc[started.fillna(-1.0).idxmax()]
        err = r.get("error")
        err = "" if err is None or (isinstance(err, float) and math.isnan(err)) else str(err)
        first = next((x.strip() for x in reversed(err.splitlines()) if x.strip()), "")
        out.append(
            {"name": name, "hash": h, "status": str(r["status"]), "error": first, "trial_id": r["trial_id"]}
        )
    return out


def summarize(exp_dir: Path, t0: float, concurrency: int | None, cells: dict[str, str] | None = None) -> int:
    """Write the store; print this invocation's outcomes, cost and Ray overhead (run started at epoch `t0`).

    `cells` maps config hash -> cell name for this invocation (None: every trial in the store). Exit code 0
    when every cell reached a settled outcome (complete, diverged, oom), 1 when any failed or is missing."""
    from analysis.store import load_store, write_store

    wall_s = time.time() - t0
    store = write_store(exp_dir)
    evals, runs = load_store(store)
    if cells is None:
        cells = {str(h): str(h) for h in runs.get("config_hash", []) if isinstance(h, str)}
    outcomes = cell_outcomes(runs, cells)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    print(
        f"\n{exp_dir.name}: {len(outcomes)} cell(s) in this run: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + (f" ({len(runs)} trial(s) in the store in all)" if len(runs) != len(outcomes) else "")
    )
    for o in outcomes:
        if o["status"] != "complete":
            print(f"  {o['status']:<9} {o['name']}" + (f": {o['error'][:200]}" if o["error"] else ""))
    this_run = evals[evals["trial_started_at"] >= t0] if "trial_started_at" in evals else evals.iloc[:0]
    trial_s = float(this_run.groupby("trial_id")["wall_s"].max().sum()) if len(this_run) else 0.0
    if concurrency:
        # overhead: what the slots spent outside fvlm.train (worker start, imports, scheduling, syncing)
        busy = trial_s / (concurrency * wall_s) if wall_s > 0 else float("nan")
        print(
            f"wall {wall_s:.0f}s | summed in-trial time {trial_s:.0f}s over {concurrency} slot(s) "
            f"({this_run['trial_id'].nunique()} trials) | slot utilisation {100 * busy:.0f}% | "
            f"Ray overhead ~{wall_s - trial_s / concurrency:.0f}s"
        )
    elif len(this_run):
        print(f"wall {wall_s:.0f}s | summed in-trial time {trial_s:.0f}s")
    print(f"store: {store}")
    return 0 if all(o["status"] in SETTLED_STATUSES for o in outcomes) else 1
