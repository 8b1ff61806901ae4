"""Scaling grid: compute budgets x tiers (an IsoFLOP grid) from configs/grid.yaml, one Ray Tune trial per cell.

Usage:
    python tune/scaling_grid.py                      # the preset for this machine (cpu: 4 budgets x 4 tiers)
    python tune/scaling_grid.py --dry-run            # cells, FLOPs, packing, predicted time; starts nothing
    python tune/scaling_grid.py --resume             # continue a killed run (Tuner.restore)
    python tune/scaling_grid.py --smoke-test --preset cpu
    python analysis/fit_laws.py --store runs/grid-cpu

Each cell trains one tier for budget / flops_per_sample samples (fvlm.accounting), with a constant (or WSD)
schedule so that every intermediate evaluation is a valid (N, D) point. The LR of each tier comes from the
lr_sweep result when present (<storage>/lr-<preset>/best_lr.json, or --lr-from), else from the dial's
1/sqrt(width) transfer; its source is stored with every row (lr_source). Cells already complete in the
store (same config hash) are skipped, so the same command twice runs nothing the second time. Mixing LR
schedules in one experiment is refused unless --mix-schedules (a scaling fit over mixed schedules compares
incomparable points; upstream's cosine runs did exactly that).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repo's packages, not tune/'s siblings

from tune import experiment as ex  # noqa: E402


def build_parser():
    p = ex.make_parser(__doc__, "grid")
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


def lr_table(ctx: ex.Context, path: str | None) -> tuple[dict, str]:
    """{tier: {lr, source}} from an lr sweep, and the file it came from ('' when there is none)."""
    suffix = "-smoke" if ctx.args.smoke_test else ""
    p = Path(path) if path else ctx.storage / f"lr-{ctx.preset}{suffix}" / "best_lr.json"
    if not p.is_file():
        if path:
            raise ex.UsageError(f"--lr-from {p}: no such file (run python tune/lr_sweep.py first)")
        return {}, ""
    try:
        return json.loads(p.read_text()), str(p)
    except json.JSONDecodeError as e:
        raise ex.UsageError(f"{p}: not valid JSON ({e.msg}); rerun python tune/lr_sweep.py") from None


def _parse_list(text: str | None, cast, what: str) -> list | None:
    if text is None:
        return None
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ex.UsageError(f"--{what}: expected a comma list, got {text!r}") from None


def _tier(x: str):
    return int(x) if x.strip().isdigit() else x.strip()


def grid_cells(ctx: ex.Context) -> tuple[list[ex.Cell], list[str]]:
    sec, args = ctx.section, ctx.args
    tiers = _parse_list(args.tiers, _tier, "tiers") or sec["tiers"]
    budgets = _parse_list(args.budgets, float, "budgets") or [float(b) for b in sec["budgets"]]
    seeds = list(range(args.seeds)) if args.seeds else sec.get("seeds", [0])
    schedule = ctx.sets.get("train.schedule") or args.schedule or sec.get("schedule", "constant")
    if schedule not in ("constant", "wsd"):
        raise ex.UsageError(
            "a scaling grid needs train.schedule constant or wsd: cosine makes intermediate evals "
            "invalid scaling points"
        )
    lrs, lr_file = lr_table(ctx, args.lr_from)
    cells, notes = [], []
    for tier in tiers:
        for budget in budgets:
            for seed in seeds:
                over = {
                    **sec.get("overrides", {}),
                    **ex.tier_override(tier),
                    "train.budget_flops": budget,
                    "train.seed": seed,
                    "train.schedule": schedule,
                }
                tier_name = f"s{tier}" if isinstance(tier, int) else str(tier)
                meta = {"arm": tier_name, "lr_source": "dial: 1/sqrt(width) transfer (configs/tiers.yaml)"}
                if tier_name in lrs:
                    over["train.lr"] = float(lrs[tier_name]["lr"])
                    meta["lr_source"] = f"lr_sweep: {lrs[tier_name].get('source', lr_file)}"
                name = f"{tier_name}_b{budget:.2g}_seed{seed}".replace("+", "")
                cell = ctx.make_cell(name, over, meta)
                if cell.steps < int(sec.get("min_steps", 1)):
                    notes.append(
                        f"dropped {name}: {cell.steps} steps < min_steps {sec.get('min_steps')} "
                        f"(budget too small for this tier)"
                    )
                    continue
                cells.append(cell)
    if lr_file:
        notes.append(f"per-tier LR from {lr_file} for {', '.join(sorted(lrs))}")
    check_schedules(ctx, schedule)
    return cells, notes


def check_schedules(ctx: ex.Context, schedule: str) -> None:
    """Refuse to add cells with another schedule to an experiment that already has some (unless allowed)."""
    from analysis.store import find_trial_dirs, load_store

    if ctx.args.mix_schedules or not find_trial_dirs(ctx.exp_dir):
        return
    _, runs = load_store(ctx.exp_dir, refresh=True)
    have = set(runs["lr_schedule"].dropna().astype(str)) if "lr_schedule" in runs else set()
    if have - {schedule}:
        raise ex.UsageError(
            f"{ctx.exp_dir} already holds {', '.join(sorted(have))} runs; this grid uses "
            f"{schedule}: pass --mix-schedules to mix them, or --name for a new experiment"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        ctx = ex.Context.from_args(args, "grid")
        cells, notes = grid_cells(ctx)
        if not cells:
            raise ex.UsageError("no cells: every tier x budget is below min_steps (raise the budgets)")
        return ex.run_cells(ctx, cells, notes)

    return ex.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
