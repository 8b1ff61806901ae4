"""Scaling grid: compute budgets x tiers (an IsoFLOP grid) from configs/grid.yaml, one Ray Tune trial per cell.

Usage:
    python tune/scaling_grid.py                      # the preset for this machine (cpu: 4 budgets x 4 tiers)
    python tune/scaling_grid.py --dry-run            # cells, FLOPs, packing, predicted time; starts nothing
    python tune/scaling_grid.py --resume             # continue a killed run (Tuner.restore)
    python tune/scaling_grid.py --smoke-test --preset cpu
    python analysis/fit_laws.py --store runs/grid-cpu

Each cell trains one tier for budget / flops_per_sample samples (fvlm.accounting), with a constant (or WSD)
schedule so that every intermediate evaluation is a valid (N, D) point. The LR of each cell comes from the
lr_sweep result when present (<storage>/lr-<preset>/best_lr.json, or --lr-from) and swept for the same
config (its lr_key: the cell's config hash without LR, seed, length and eval settings; an LR swept for
another world or base config is not reused), else from the dial's 1/sqrt(width) transfer; its source is
stored with every row (lr_source). Cells the store already settled (same config hash; complete, diverged or
oom) are skipped, so the same command twice runs nothing the second time. Mixing LR
schedules in one experiment is refused unless --mix-schedules (a scaling fit over mixed schedules compares
incomparable points; upstream's cosine runs did exactly that).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repo's packages, not tune/'s siblings

from fvlm.config import lr_key  # noqa: E402
from tune import flags, runner  # noqa: E402
from tune import plan as planning  # noqa: E402


def build_parser():
    p = flags.make_parser(__doc__, "grid")
    p.add_argument(
        "--schedule",
        choices=("constant", "wsd"),
        default=None,
        help="LR schedule of every cell (default: grid.yaml); cosine invalidates intermediate evals",
    )
    p.add_argument(
        "--mix-schedules",
        action="store_true",
        help="allow a schedule different from the one already in this experiment's store",
    )
    p.add_argument(
        "--lr-from", default=None, help="best_lr.json of an lr sweep (default: <storage>/lr-<preset>/)"
    )
    p.add_argument("--tiers", default=None, help="comma list overriding grid.yaml tiers, e.g. 1,2,3")
    p.add_argument("--budgets", default=None, help="comma list overriding grid.yaml budgets, e.g. 1e11,4e11")
    return p


def lr_table(ctx: flags.Context, path: str | None) -> tuple[dict, str]:
    """{lr_key: {tier, lr, source, ...}} from an lr sweep, and the file it came from ('' when there is none)."""
    suffix = "-smoke" if ctx.args.smoke_test else ""
    p = Path(path) if path else ctx.storage / f"lr-{ctx.preset}{suffix}" / "best_lr.json"
    if not p.is_file():
        if path:
            raise flags.UsageError(f"--lr-from {p}: no such file (run python tune/lr_sweep.py first)")
        return {}, ""
    try:
        table = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise flags.UsageError(f"{p}: not valid JSON ({e.msg}); rerun python tune/lr_sweep.py") from None
    if not isinstance(table, dict):
        raise flags.UsageError(f"{p}: expected a JSON object; rerun python tune/lr_sweep.py")
    return {k: v for k, v in table.items() if isinstance(v, dict) and "lr" in v}, str(p)


def _parse_list(text: str | None, cast, what: str) -> list | None:
    if text is None:
        return None
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise flags.UsageError(f"--{what}: expected a comma list, got {text!r}") from None


def _tier(x: str):
    return int(x) if x.strip().isdigit() else x.strip()


def grid_cells(ctx: flags.Context) -> tuple[list[planning.Cell], list[str]]:
    sec, args = ctx.section, ctx.args
    tiers = _parse_list(args.tiers, _tier, "tiers") or sec["tiers"]
    budgets = _parse_list(args.budgets, float, "budgets") or [float(b) for b in sec["budgets"]]
    seeds = list(range(args.seeds)) if args.seeds else sec.get("seeds", [0])
    schedule = ctx.sets.get("train.schedule") or args.schedule or sec.get("schedule", "constant")
    if schedule not in ("constant", "wsd"):
        raise flags.UsageError(
            "a scaling grid needs train.schedule constant or wsd: cosine makes intermediate evals "
            "invalid scaling points"
        )
    lrs, lr_file = lr_table(ctx, args.lr_from)
    used, unmatched = set(), {}
    cells, notes = [], []
    for tier in tiers:
        for budget in budgets:
            for seed in seeds:
                over = {
                    **sec.get("overrides", {}),
                    **flags.tier_override(tier),
                    "train.budget_flops": budget,
                    "train.seed": seed,
                    "train.schedule": schedule,
                }
                name = f"{flags.tier_name(tier)}_b{budget:.2g}_seed{seed}".replace("+", "")
                meta = {
                    "arm": flags.tier_name(tier),
                    "lr_source": "dial: 1/sqrt(width) transfer (configs/tiers.yaml)",
                }
                cell = planning.make_cell(ctx, name, over, meta)
                key = lr_key(cell.cfg)
                if key in lrs and "train.lr" not in ctx.sets:
                    meta["lr_source"] = f"lr_sweep: {lrs[key].get('source', lr_file)}"
                    cell = planning.make_cell(ctx, name, {**over, "train.lr": float(lrs[key]["lr"])}, meta)
                    used.add(key)
                else:
                    unmatched.setdefault(flags.tier_name(tier), key)
                if cell.steps < int(sec.get("min_steps", 1)):
                    notes.append(
                        f"dropped {name}: {cell.steps} steps < min_steps {sec.get('min_steps')} "
                        f"(budget too small for this tier)"
                    )
                    continue
                cells.append(cell)
    if used:
        tiers_used = sorted({lrs[k].get("tier", "?") for k in used})
        notes.append(f"per-tier LR from {lr_file} for {', '.join(tiers_used)}")
    for tier_name, key in sorted(unmatched.items()):
        stale = [k for k, v in lrs.items() if v.get("tier") == tier_name and k != key]
        if stale or (tier_name in lrs and "tier" not in lrs[tier_name]):
            notes.append(
                f"{lr_file} has an LR for {tier_name} swept under another config (lr_key "
                f"{', '.join(stale) or 'missing: an older file'}; this grid's is {key}): not used, the dial's LR "
                "instead (rerun tune/lr_sweep.py with the same --config/--set)"
            )
    check_schedules(ctx, schedule)
    return cells, notes


def check_schedules(ctx: flags.Context, schedule: str) -> None:
    """Refuse to add cells with another schedule to an experiment that already has some (unless allowed)."""
    from analysis.store import find_trial_dirs, load_store

    if ctx.args.mix_schedules or not find_trial_dirs(ctx.exp_dir):
        return
    _, runs = load_store(ctx.exp_dir, refresh=True)
    have = set(runs["lr_schedule"].dropna().astype(str)) if "lr_schedule" in runs else set()
    if have - {schedule}:
        raise flags.UsageError(
            f"{ctx.exp_dir} already holds {', '.join(sorted(have))} runs; this grid uses "
            f"{schedule}: pass --mix-schedules to mix them, or --name for a new experiment"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        ctx = flags.Context.from_args(args, "grid")
        cells, notes = grid_cells(ctx)
        if not cells:
            raise flags.UsageError("no cells: every tier x budget is below min_steps (raise the budgets)")
        return runner.run_cells(ctx, cells, notes)

    return flags.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
