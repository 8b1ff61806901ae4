"""Ablation: one knob from configs/ablations.yaml against the baseline, over paired seeds, with a verdict.

Usage:
    python tune/ablate.py --list                         # the checklist with hypotheses
    python tune/ablate.py --param deep_query             # baseline + variants x 3 seeds, verdict, LOG.md row
    python tune/ablate.py --param fine_iters --values 2 --seeds 5
    python tune/ablate.py --param deep_query --promote   # a significant winner is written into configs/base.yaml
    python tune/ablate.py --param deep_query --smoke-test --log /tmp/LOG.md

Every arm trains the same steps on the same data: seed i of every arm sets train.seed=i, which fixes both the
init and the data order (paired seeds). The run length comes from the preset's `ablation` section of
configs/grid.yaml (cpu: scale 2, 250 steps; a few minutes for 3 seeds x 2 arms on 2 cores), the entry's
`context` overrides go to every arm, baseline included. The statistics (paired t CI and test, bootstrap,
VALIDATED / FAILED / INCONCLUSIVE judged against the entry's `expect` direction) live in
analysis/verdicts.py, shared with the report.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repo's packages, not tune/'s siblings

import yaml  # noqa: E402

from tune import experiment as ex  # noqa: E402

ABLATIONS_YAML = ex.REPO / "configs" / "ablations.yaml"


def build_parser():
    p = ex.make_parser(__doc__, "ablate")
    p.add_argument("--param", default=None, help="checklist name (see --list)")
    p.add_argument("--values", nargs="+", default=None, help="variant values instead of the checklist's")
    p.add_argument("--list", action="store_true", help="print the checklist with hypotheses and exit")
    p.add_argument(
        "--promote",
        action="store_true",
        help="write a variant that beats the baseline significantly into the base config",
    )
    p.add_argument("--log", default=str(ex.REPO / "LOG.md"), help="experiment log to append the verdict to")
    p.add_argument("--ablations", default=str(ABLATIONS_YAML), help="checklist file")
    return p


def load_checklist(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ex.UsageError(f"checklist not found: {p} (default configs/ablations.yaml)")
    return yaml.safe_load(p.read_text()) or {}


def print_checklist(checklist: dict) -> None:
    for name, e in checklist.items():
        values = ", ".join(ex.fmt_value(v) for v in e["values"])
        ctx = (
            f" (every arm: {', '.join(f'{k}={ex.fmt_value(v)}' for k, v in e['context'].items())})"
            if e.get("context")
            else ""
        )
        print(
            f"{name:<20} {e['key']} -> {values}{ctx}\n{'':<20} metric {e.get('metric', 'val_loss')}, "
            f"expect {e.get('expect', 'better')}: {e['hypothesis']}"
        )


def entry_for(checklist: dict, param: str | None) -> dict:
    if not param:
        raise ex.UsageError(f"give --param NAME (or --list); valid names: {', '.join(checklist)}")
    if param not in checklist:
        raise ex.UsageError(f"unknown ablation '{param}'; valid names: {', '.join(checklist)}")
    return checklist[param]


def arm_cells(ctx: ex.Context, param: str, entry: dict, values: list, seeds: int) -> list[ex.Cell]:
    """Baseline + one arm per value, each over seeds 0..seeds-1 (same train.seed = same init and data)."""
    common = {**ctx.section.get("ablation", {}), **entry.get("context", {})}
    arms = [("baseline", {})] + [(ex.fmt_value(v), {entry["key"]: v}) for v in values]
    cells = []
    for arm, over in arms:
        for seed in range(seeds):
            meta = {
                "arm": arm,
                "param": param,
                "lr_source": "dial: 1/sqrt(width) transfer (configs/tiers.yaml)",
            }
            cells.append(
                ctx.make_cell(
                    f"{param}_{_slug(arm)}_seed{seed}", {**common, **over, "train.seed": seed}, meta
                )
            )
    return cells


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def expect_for(entry: dict, arm: str) -> str:
    """The hypothesis' direction for one arm: `expect` is better | worse, or a mapping value -> direction."""
    expect = entry.get("expect", "better")
    if isinstance(expect, dict):
        return {ex.fmt_value(k): d for k, d in expect.items()}.get(arm, "better")
    return str(expect)


def verdicts(ctx: ex.Context, param: str, entry: dict) -> list:
    from analysis.store import load_store
    from analysis.verdicts import append_log, format_verdict, log_row, verdicts_from_runs

    _, runs = load_store(ctx.exp_dir, refresh=True)
    metric = f"final_{entry.get('metric', 'val_loss')}"
    runs = runs[runs["arm"].notna()]
    base = ex.fmt_value(_baseline_value(ctx, entry["key"]))
    # what every arm shared: the entry's context and the command's --set overrides (the row must say it)
    shared = {**entry.get("context", {}), **ctx.sets}
    context = ", ".join(f"{k}={ex.fmt_value(x)}" for k, x in shared.items())
    out = []
    for arm in sorted(set(runs["arm"].astype(str)) - {"baseline"}):
        pair = runs[runs["arm"].astype(str).isin(["baseline", arm])]
        found = verdicts_from_runs(
            pair,
            param=entry["key"],
            metric=metric,
            expect=expect_for(entry, arm),
            lower_is_better=bool(entry.get("lower_is_better", True)),
        )
        for v in found:
            print("\n" + format_verdict(v))
            config = f"{entry['key']}: {base} -> {v.arm}; {_length(ctx)}" + (
                f"; every arm {context}" if context else ""
            )
            append_log(
                ctx.args.log, log_row(v, experiment=ctx.name, hypothesis=entry["hypothesis"], config=config)
            )
        out += found
    print(f"\nverdict row(s) appended to {ctx.args.log}")
    return out


def _baseline_value(ctx: ex.Context, key: str):
    from fvlm.config import flatten, load_config, to_dict

    cfg = load_config(ctx.args.config, {**ctx.section.get("ablation", {}), **ctx.sets})
    return flatten(to_dict(cfg))[key]


def _length(ctx: ex.Context) -> str:
    a = ctx.section.get("ablation", {})
    return ", ".join(
        f"{k}={ex.fmt_value(v)}" for k, v in a.items() if k.startswith(("model.scale", "train.steps"))
    )


def promote(ctx: ex.Context, key: str, found: list) -> None:
    """Write the best significantly-better arm's value into the base config (a text edit keeping comments).

    A winner beats the baseline significantly (paired-t CI excludes 0, p < alpha) whatever the hypothesis
    expected: a FAILED "variant is worse" hypothesis with a better variant is still a winner."""
    from fvlm.config import ConfigError, load_config

    winners = [v for v in found if v.significant and v.variant_better]
    if not winners:
        print("--promote: no variant beats the baseline significantly; the base config is unchanged")
        return
    best = min(winners, key=lambda v: v.effect if v.lower_is_better else -v.effect)
    path = Path(ctx.args.config)
    text = set_yaml_value(path.read_text(), key, best.arm)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    try:
        load_config(tmp)  # never leave a base config that does not load
    except ConfigError as e:
        tmp.unlink()
        raise ex.UsageError(f"--promote would break {path}: {e}") from None
    tmp.replace(path)
    print(f"--promote: {path}: {key} = {best.arm} (effect {best.effect:+.4g}, {best.metric})")


def set_yaml_value(text: str, key: str, value: str) -> str:
    """Set `section.leaf: value` in a two-level YAML text, adding the leaf (or the section) if missing."""
    section, leaf = key.split(".", 1)
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if re.match(rf"^{re.escape(section)}:\s*(#.*)?$", line)), None
    )
    if start is None:
        return text.rstrip("\n") + f"\n\n{section}:\n  {leaf}: {value}\n"
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "#"))),
        len(lines),
    )
    for i in range(start + 1, end):
        m = re.match(rf"^(\s+){re.escape(leaf)}:\s*[^#]*?(\s*#.*)?$", lines[i])
        if m:
            lines[i] = f"{m.group(1)}{leaf}: {value}{m.group(2) or ''}"
            return "\n".join(lines) + "\n"
    last = max(i for i in range(start, end) if lines[i].strip())
    lines.insert(last + 1, f"  {leaf}: {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        checklist = load_checklist(args.ablations)
        if args.list:
            print_checklist(checklist)
            return 0
        entry = entry_for(checklist, args.param)
        ctx = ex.Context.from_args(args, "ablate", stem=f"ablate-{args.param}")
        values = [yaml.safe_load(v) for v in args.values] if args.values else entry["values"]
        cells = arm_cells(ctx, args.param, entry, values, args.seeds or 3)
        rc = ex.run_cells(ctx, cells)
        if args.dry_run:
            return rc
        found = verdicts(ctx, args.param, entry)
        if args.promote:
            promote(ctx, entry["key"], found)
        return rc

    return ex.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
