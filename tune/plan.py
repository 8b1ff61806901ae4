"""Planning a sweep before anything runs: cells, their identity, what is already done, packing, time.

    from tune import plan
    cells = [plan.make_cell(ctx, name, overrides, meta) for ...]  # validated (ConfigError -> UsageError)
    plan.check_distinct(cells)                                  # two cells with one config hash: refused
    todo, skipped = plan.pending(ctx, cells)                    # settled cells in the store are skipped
    p = plan.pack(ctx, todo); plan.print_plan(ctx, todo, p, skipped, notes)

A cell's identity is its config hash (fvlm.config.config_hash: the science plus the code's versions, not
how it is executed), so a cell packed at another micro-batch is the same cell and an ablation arm equal to
its baseline is caught here, before a trial starts (upstream fVLM's "A1 = baseline" bug). A cell counts as
done when the store holds a run of its hash that ended complete, diverged or oom (a rerun gives the same
outcome); `--retry-failed` reruns the diverged and oom ones. `failed` (an error) is always retried.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fvlm import accounting
from fvlm.config import Config, ConfigError, config_hash, load_config, path_overrides, tier_values
from fvlm.contract import SETTLED_STATUSES
from tune.flags import Context, UsageError
from tune.resources import CellTooLarge, Plan, analytic_memory_mb, plan_resources


@dataclass
class Cell:
    name: str
    overrides: dict  # dotted fvlm overrides
    meta: dict  # meta.* keys without the prefix
    cfg: Config
    flops_per_sample: float = 0.0
    steps: int = 0
    samples: int = 0
    params: int = 0
    params_note: str = ""  # e.g. a pretrained vocab unknown offline
    predicted_s: float = 0.0

    @property
    def tier(self) -> str:
        return tier_values(self.cfg.model)[0]

    @property
    def hash(self) -> str:
        return config_hash(self.cfg)

    def trial_config(self) -> dict:
        meta = {**self.meta, "config_hash": self.hash}  # the store names a trial's cell even without rows
        return {**self.overrides, **{f"meta.{k}": v for k, v in meta.items()}}


def make_cell(ctx: Context, name: str, overrides: dict, meta: dict) -> Cell:
    """Validate one cell (ConfigError -> UsageError) and count its steps and FLOPs.

    The command's --set overrides apply last, to every cell; the trial records its base config, generation
    and --set (ctx.generation_meta) so the store can tell runs of different base configs apart."""
    from fvlm.data import check_one_epoch
    from fvlm.train import total_steps

    overrides = {**overrides, **ctx.sets}
    meta = {
        "kind": ctx.kind,
        "experiment": ctx.name,
        "cell": name,
        "exp_dir": str(ctx.exp_dir),
        **ctx.generation_meta(),
        **meta,
    }
    try:
        cfg = load_config(ctx.base_config, overrides)
        overrides.update(path_overrides(cfg))  # absolute: a trial runs in its own working directory
        _, params, params_note = analytic_memory_mb(cfg)
        vocab, text_len, _ = accounting.data_shape(cfg)
        flops = accounting.flops_per_sample(cfg, vocab, text_len=text_len)
        steps, samples = total_steps(cfg, flops)
        check_one_epoch(cfg, samples, accounting.train_clips(cfg))  # refused here, not in the trial
    except ConfigError as e:
        raise UsageError(f"cell {name}: {e}") from None
    return Cell(name, overrides, meta, cfg, flops, steps, samples, params, params_note=params_note)


def check_distinct(cells: list[Cell]) -> None:
    """Refuse a plan in which two cells are the same experiment (equal config hashes): one of them would be
    skipped as done, or both would run the same thing under two names."""
    seen: dict[str, str] = {}
    for c in cells:
        if c.hash in seen:
            raise UsageError(
                f"cells {seen[c.hash]} and {c.name} are the same experiment (config hash {c.hash}): "
                "an override makes them equal; drop it or change the values"
            )
        seen[c.hash] = c.name


# ----------------------------------------------------------------------------- what is already done


def store_runs(exp_dir: Path):
    """runs.parquet of the experiment, rebuilt from its trial folders (None when there are no trials)."""
    from analysis.store import find_trial_dirs, load_store, write_store

    if not find_trial_dirs(exp_dir):
        return None
    write_store(exp_dir)
    _, runs = load_store(exp_dir)
    return runs if len(runs) and "config_hash" in runs else None


def settled_hashes(exp_dir: Path, retry_failed: bool = False) -> dict[str, str]:
    """config hash -> status of the cells the store already settled (complete, diverged, oom; only complete
    with retry_failed)."""
    runs = store_runs(exp_dir)
    if runs is None:
        return {}
    final = ("complete",) if retry_failed else SETTLED_STATUSES
    done = runs[runs["status"].astype(str).isin(final)]
    return dict(zip(done["config_hash"].astype(str), done["status"].astype(str), strict=True))


def pending(ctx: Context, cells: list[Cell]) -> tuple[list[Cell], list[tuple[Cell, str]]]:
    """(cells to run, [(cell, stored status)] skipped because the store settled them)."""
    done = settled_hashes(ctx.exp_dir, ctx.args.retry_failed)
    todo = [c for c in cells if c.hash not in done]
    return todo, [(c, done[c.hash]) for c in cells if c.hash in done]


def check_generations(ctx: Context) -> None:
    """Warn (refuse with --strict) when the experiment folder holds runs of another base config or --set:
    the store would pool them. Analysis selects one generation with fit_laws.py --generation."""
    runs = store_runs(ctx.exp_dir)
    if runs is None:
        return
    col = "generation" if "generation" in runs.columns else None
    gens = runs[col].fillna("unknown").astype(str) if col else None
    others = sorted(set(gens) - {ctx.generation}) if gens is not None else ["unknown"]
    if not others:
        return
    described = []
    for g in others:
        sel = runs[gens == g] if gens is not None else runs
        base = _first(sel, "config.meta.base_config") or "an unrecorded base config"
        sets = _first(sel, "config.meta.sets") or "{}"
        described.append(f"{g} ({len(sel)} runs: {base}, --set {sets})")
    msg = (
        f"{ctx.exp_dir} already holds runs of another base config or --set: {'; '.join(described)}; this "
        f"invocation is generation {ctx.generation} (--set {json.dumps(ctx.sets, default=str)})"
    )
    if ctx.args.strict:
        raise UsageError(msg + "; use --name for a separate experiment (or drop --strict to add to it)")
    print(
        f"warning: {msg}. Analysis pools generations unless told: fit_laws.py --generation {ctx.generation}"
    )


def _first(df, col: str) -> str | None:
    if col not in df.columns:
        return None
    vals = df[col].dropna().astype(str)
    return vals.iloc[0] if len(vals) else None


# ----------------------------------------------------------------------------- packing and prediction


def cluster_shape(ctx: Context) -> tuple[int, int, float]:
    """(cores, gpus, card MiB) for packing: the Ray cluster when connected, else this machine (or the preset)."""
    import torch

    gpu = ctx.preset != "cpu"
    card = ctx.args.gpu_mem_mb or 0.0
    if _ray_connected():
        import ray

        res = ray.cluster_resources()
        cores, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0)) if gpu else 0
    else:
        cores = os.cpu_count() or 1
        gpus = (torch.cuda.device_count() or 1) if gpu else 0
    if gpus and not card:
        card = (
            torch.cuda.get_device_properties(0).total_memory / 2**20
            if torch.cuda.is_available()
            else float(ctx.section.get("card_mem_mb", 0))
        )
    return cores, gpus, card


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


def pack(ctx: Context, cells: list[Cell]) -> Plan:
    """Resources per cell (stored in its meta.* keys) and the concurrency; CellTooLarge -> UsageError."""
    import torch

    cores, gpus, card = cluster_shape(ctx)
    try:
        plan = plan_resources(
            [c.cfg for c in cells],
            cores=cores,
            gpus=gpus,
            card_mb=card,
            headroom=float(ctx.section.get("headroom", 1.2)),
            probe=bool(gpus and torch.cuda.is_available() and not ctx.args.dry_run),
            threads=ctx.args.threads,
        )
    except CellTooLarge as e:
        raise UsageError(f"refused before launch: {e}") from None
    for cell, res in zip(cells, plan.cells, strict=True):
        cell.meta.update(
            cpus=res.cpus,
            gpu_fraction=res.gpu_fraction,
            threads=res.threads,
            mem_cap=res.mem_cap,
            mem_mb=round(res.mem_mb, 1),
        )
        if res.micro_batch != cell.cfg.train.micro_batch:  # an execution field: the cell's hash stays
            cell.overrides["train.micro_batch"] = res.micro_batch
            cell.cfg.train.micro_batch = res.micro_batch
        cell.predicted_s = predict_seconds(ctx, cell, res.threads, res.gpu_fraction)
    return plan


def predict_seconds(ctx: Context, cell: Cell, threads: int, gpu_fraction: float) -> float:
    """Training + evaluation FLOPs at an assumed MFU (grid.yaml `mfu`, measured per tier) + per-trial overhead."""
    from fvlm.train import eval_steps

    mfu_table = ctx.section.get("mfu", {})
    mfu = float(mfu_table.get(cell.tier, mfu_table.get("default", 0.25)))
    if gpu_fraction:
        import torch

        peak = (
            accounting.peak_flops("cuda")[0]
            if torch.cuda.is_available()
            else accounting.PEAK_FLOPS["RTX 4090"]
        )
        rate = peak * mfu * gpu_fraction  # ASSUMPTION: trials sharing a card split its compute
    else:
        rate = threads * accounting.CPU_FLOPS_PER_CORE * mfu
    t = cell.cfg.train
    n_evals = len(eval_steps(cell.cfg, cell.steps))
    eval_flops = n_evals * min(t.eval_samples, cell.cfg.world.val_size) * cell.flops_per_sample / 3
    train_flops = cell.samples * cell.flops_per_sample
    return (train_flops + eval_flops) / rate + float(ctx.section.get("trial_overhead_s", 2.0))


def makespan(durations: list[float], slots: int) -> float:
    """Longest-first list scheduling onto `slots` (Tune starts trials in order; close enough for a plan)."""
    loads = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads) if durations else 0.0


def print_plan(
    ctx: Context, cells: list[Cell], plan: Plan, skipped: list[tuple[Cell, str]], notes: list[str]
) -> None:
    print(f"experiment {ctx.exp_dir} | preset {ctx.preset}{' (smoke test)' if ctx.args.smoke_test else ''}")
    print(
        f"{'cell':<28}{'tier':>6}{'params':>13}{'budget':>10}{'FLOPs/smp':>11}{'steps':>7}{'micro':>6}"
        f"{'mem MiB':>9}{'gpu':>7}{'pred s':>8}  lr"
    )
    for c in cells:
        print(
            f"{c.name:<28}{c.tier:>6}{c.params:>13,}{c.samples * c.flops_per_sample:>10.3g}"
            f"{c.flops_per_sample:>11.3g}{c.steps:>7}{c.cfg.train.micro_batch:>6}{c.meta['mem_mb']:>9.0f}"
            f"{c.meta['gpu_fraction']:>7.3g}{c.predicted_s:>8.0f}  {c.cfg.train.lr:.3g} "
            f"({c.meta.get('lr_source', 'config').split(':')[0]})"
        )
    for note in notes + sorted({f"tier {c.tier} params{c.params_note}" for c in cells if c.params_note}):
        print(f"note: {note}")
    print_skipped(skipped)
    print(plan.describe())
    total = sum(c.samples * c.flops_per_sample for c in cells)
    wall = makespan([c.predicted_s for c in cells], plan.concurrency)
    gpu_h = sum(c.predicted_s * c.meta["gpu_fraction"] for c in cells) / 3600
    core_h = sum(c.predicted_s * c.meta["threads"] for c in cells) / 3600
    print(
        f"{len(cells)} cell(s) to run, {total:.3g} training FLOPs | predicted wall {wall / 60:.1f} min "
        f"({plan.concurrency} at a time) | {gpu_h:.2f} GPU-hours | {core_h:.2f} CPU core-hours"
    )


def print_skipped(skipped: list[tuple[Cell, str]]) -> None:
    if not skipped:
        return
    by_status: dict[str, list[str]] = {}
    for c, status in skipped:
        by_status.setdefault(status, []).append(c.name)
    parts = [f"{len(names)} {status} ({', '.join(names)})" for status, names in sorted(by_status.items())]
    print(f"skipping {len(skipped)} cell(s) the store already settled: " + "; ".join(parts))
    if any(s != "complete" for _, s in skipped):
        print("  (diverged and oom are final outcomes; --retry-failed runs them again)")
