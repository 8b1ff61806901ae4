"""LR sweep: Optuna TPE + ASHA per tier; writes the per-tier best LR where tune/scaling_grid.py finds it.

Usage:
    python tune/lr_sweep.py                       # every tier of the preset's lr_sweep section (configs/grid.yaml)
    python tune/lr_sweep.py --tiers 2,3 --dry-run
    python tune/lr_sweep.py --resume              # continue killed tier sweeps (Tuner.restore)

Per tier one Tune experiment <storage>/lr-<preset>/<tier>/ (with its own store): TPE over a log range
[dial / f, dial * f] around the dial's LR (the 1/sqrt(width) transfer rule), whose first trial is the dial's
LR itself (points_to_evaluate), and ASHA stopping bad trials at a quarter, half and all of the steps (linear
evals). Every trial trains `budget` FLOPs, the grid's middle budget: an LR is best for a training length, and
the grid reuses it at every budget (ASSUMPTION: the optimum moves little over a 4-8x range of constant-LR
training). The winner is the complete trial of this invocation's generation (base config + --set) with the
lowest final val_loss; <storage>/lr-<preset>/best_lr.json maps lr_key -> {tier, lr, source, dial_lr, val_loss},
where lr_key (fvlm.config.lr_key) is the tier cell's config hash without LR, seed, length and eval settings:
the grid reuses an LR only for cells of the same config. Keys already in that file are skipped unless --redo.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repo's packages, not tune/'s siblings

from fvlm.config import lr_key  # noqa: E402
from tune import flags, runner  # noqa: E402
from tune import plan as planning  # noqa: E402


def build_parser():
    p = flags.make_parser(__doc__, "lr")
    p.add_argument("--tiers", default=None, help="comma list overriding grid.yaml lr_sweep tiers")
    p.add_argument("--trials", type=int, default=None, help="trials per tier (default: grid.yaml)")
    p.add_argument("--redo", action="store_true", help="sweep tiers already in best_lr.json again")
    return p


def best_lr_path(ctx: flags.Context) -> Path:
    return ctx.exp_dir / "best_lr.json"


def tier_context(ctx: flags.Context, tier_name: str) -> flags.Context:
    sub = copy.copy(ctx)
    sub.storage, sub.name = ctx.exp_dir, tier_name  # <storage>/lr-<preset>/<tier>/
    return sub


def tier_cell(ctx: flags.Context, tier, sec: dict) -> tuple[flags.Context, planning.Cell]:
    """The sweep's cell of one tier (LR from the dial) in its own experiment <storage>/lr-<preset>/<tier>/."""
    tier_name = flags.tier_name(tier)
    tctx = tier_context(ctx, tier_name)
    over = {
        **sec.get("overrides", {}),
        **flags.tier_override(tier),
        "train.budget_flops": float(sec["budget"]),
    }
    meta = {"arm": tier_name, "experiment": f"{ctx.name}/{tier_name}", "lr_source": "lr_sweep trial"}
    return tctx, planning.make_cell(tctx, tier_name, over, meta)


def sweep_tier(ctx: flags.Context, tier, sec: dict, trials: int) -> dict | None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tune.progress import Progress, summarize
    from tune.trainable import register

    tier_name = flags.tier_name(tier)
    tctx, cell = tier_cell(ctx, tier, sec)
    plan = planning.pack(
        tctx, [cell] * trials
    )  # trials copies: one thread per trial, `cores` trials at a time
    dial = cell.cfg.train.lr
    factor = float(sec.get("lr_factor", 6.0))
    print(
        f"\n{tier_name}: {trials} trials, {cell.steps} steps ({float(sec['budget']):.3g} FLOPs) each, LR in "
        f"[{dial / factor:.3g}, {dial * factor:.3g}] around the dial's {dial:.3g} | {plan.describe()}"
    )
    if ctx.args.dry_run:
        pred = planning.makespan([cell.predicted_s] * trials, plan.concurrency)
        print(f"{tier_name}: predicted at most {pred / 60:.1f} min (before ASHA stops any trial)")
        return None
    space = {**cell.trial_config(), "train.lr": tune.loguniform(dial / factor, dial * factor)}
    space.pop("meta.config_hash")  # each trial's LR makes its own hash (its rows carry it)
    search = OptunaSearch(metric="val_loss", mode="min", points_to_evaluate=[{"train.lr": dial}], seed=0)
    asha = ASHAScheduler(
        time_attr="step", max_t=cell.steps, grace_period=max(1, cell.steps // 4), reduction_factor=2
    )
    path = str(tctx.exp_dir)
    t0 = time.time()
    if ctx.args.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=register(), resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            register(),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_loss",
                mode="min",
                num_samples=trials,
                scheduler=asha,
                search_alg=ConcurrencyLimiter(search, max_concurrent=plan.concurrency),
                reuse_actors=plan.mode == "cpu",
                trial_dirname_creator=runner.trial_dirname,
            ),
            run_config=runner.run_config(tctx, [Progress(trials, {}, plan.concurrency)]),
        )
    tuner.fit()
    summarize(tctx.exp_dir, t0, plan.concurrency)
    return pick_best(tctx, tier_name, dial, float(sec["budget"]), lr_key(cell.cfg))


def pick_best(tctx: flags.Context, tier_name: str, dial: float, budget: float, key: str) -> dict | None:
    """The best complete trial of this generation (runs of another base config or --set may share the folder)."""
    from analysis.store import load_store

    _, runs = load_store(tctx.exp_dir, refresh=True)
    if len(runs) and "generation" in runs:
        runs = runs[runs["generation"].astype(str) == tctx.generation]
    done = runs[(runs["status"] == "complete") & runs["final_val_loss"].notna()] if len(runs) else runs
    if not len(done):
        print(f"{tier_name}: no complete trial of this config; best_lr.json unchanged")
        return None
    best = done.loc[done["final_val_loss"].idxmin()]
    lr = float(best["config.train.lr"])
    print(
        f"{tier_name}: best LR {lr:.3g} (dial {dial:.3g}, x{lr / dial:.2f}) final val_loss "
        f"{best['final_val_loss']:.4f} over {len(done)} complete of {len(runs)} trials"
    )
    return {
        "tier": tier_name,
        "lr_key": key,
        "generation": tctx.generation,
        "lr": lr,
        "dial_lr": dial,
        "val_loss": float(best["final_val_loss"]),
        "budget_flops": budget,
        "trials": int(len(runs)),
        "complete": int(len(done)),
        "source": f"{tctx.storage.name}/{tier_name} trial {best['trial_id']}: final val_loss "
        f"{best['final_val_loss']:.4f} at {budget:.3g} FLOPs",
    }


def write_best(path: Path, results: dict) -> None:
    table = json.loads(path.read_text()) if path.is_file() else {}
    table.update(results)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    os.replace(tmp, path)
    print(f"\nbest LR per tier and config (lr_key) -> {path}")
    for key, row in sorted(table.items(), key=lambda kv: (str(kv[1].get("tier")), kv[0])):
        print(
            f"  {row.get('tier', '?'):<6} {key:<13} {row['lr']:.3g} (dial {row['dial_lr']:.3g}) {row['source']}"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        ctx = flags.Context.from_args(args, "lr")
        sec = ctx.section["lr_sweep"]
        tiers = (
            [int(t) if t.strip().isdigit() else t.strip() for t in args.tiers.split(",")]
            if args.tiers
            else sec["tiers"]
        )
        trials = args.trials or int(sec.get("trials", 6))
        have = json.loads(best_lr_path(ctx).read_text()) if best_lr_path(ctx).is_file() else {}
        if not args.dry_run:
            cores, gpus, _ = planning.cluster_shape(ctx)
            runner.init_ray(args.address, cores, gpus)
        results, missing = {}, []
        for tier in tiers:
            name = flags.tier_name(tier)
            key = lr_key(tier_cell(ctx, tier, sec)[1].cfg)
            if key in have and not (args.redo or args.resume or args.dry_run):
                print(
                    f"{name}: already in {best_lr_path(ctx)} for this config (lr_key {key}, lr "
                    f"{have[key]['lr']:.3g}); --redo to sweep again"
                )
                continue
            found = sweep_tier(ctx, tier, sec, trials)
            if found:
                results[key] = found
                write_best(
                    best_lr_path(ctx), {key: found}
                )  # after every tier: a killed sweep keeps its tiers
            elif not args.dry_run:
                missing.append(name)
        if missing:
            print(f"no LR found for {', '.join(missing)} (no complete trial of this config): exit 1")
        return 1 if missing else 0

    return flags.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
