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

from tune import flags, runner  # noqa: E402
from tune import plan as planning  # noqa: E402

ABLATIONS_YAML = flags.REPO / "configs" / "ablations.yaml"


def build_parser():
    p = flags.make_parser(__doc__, "ablate")
    p.add_argument("--param", default=None, help="checklist name (see --list)")
    p.add_argument("--values", nargs="+", default=None, help="variant values instead of the checklist's")
    p.add_argument("--list", action="store_true", help="print the checklist with hypotheses and exit")
    p.add_argument(
        "--promote",
        action="store_true",
        help="write a variant that beats the baseline significantly into the base config",
    )
    p.add_argument(
        "--log", default=str(flags.REPO / "LOG.md"), help="experiment log to append the verdict to"
    )
    p.add_argument("--ablations", default=str(ABLATIONS_YAML), help="checklist file")
    return p


def load_checklist(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise flags.UsageError(f"checklist not found: {p} (default configs/ablations.yaml)")
    return yaml.safe_load(p.read_text()) or {}


def print_checklist(checklist: dict) -> None:
    for name, e in checklist.items():
        values = ", ".join(flags.fmt_value(v) for v in e["values"])
        ctx = (
            f" (every arm: {', '.join(f'{k}={flags.fmt_value(v)}' for k, v in e['context'].items())})"
            if e.get("context")
            else ""
        )
        print(
            f"{name:<20} {e['key']} -> {values}{ctx}\n{'':<20} metric {e.get('metric', 'val_loss')}, "
            f"expect {e.get('expect', 'better')}: {e['hypothesis']}"
        )


def entry_for(checklist: dict, param: str | None) -> dict:
    if not param:
        raise flags.UsageError(f"give --param NAME (or --list); valid names: {', '.join(checklist)}")
    if param not in checklist:
        raise flags.UsageError(f"unknown ablation '{param}'; valid names: {', '.join(checklist)}")
    return checklist[param]


def arm_cells(ctx: flags.Context, param: str, entry: dict, values: list, seeds: int) -> list[planning.Cell]:
    """Baseline + one arm per value, each over seeds 0..seeds-1 (same train.seed = same init and data).

    Refused before anything runs (exit 2): a --set or a `context` override on the ablated key (it would
    override every arm, so each arm equals the baseline: upstream fVLM's "A1 = baseline" bug), and a value
    equal to the baseline's. runner.run_cells also refuses any two cells with one config hash."""
    key = entry["key"]
    if key in ctx.sets:
        raise flags.UsageError(
            f"--set {key}={flags.fmt_value(ctx.sets[key])} overrides the ablated key in every arm, so every arm "
            f"would equal the baseline; give the variants with --values instead"
        )
    if key in entry.get("context", {}):
        raise flags.UsageError(
            f"{ctx.args.ablations}: entry '{param}' sets its own key {key} in `context` (every arm): remove it"
        )
    common = {**ctx.section.get("ablation", {}), **entry.get("context", {})}
    arms = [("baseline", {})] + [(flags.fmt_value(v), {key: v}) for v in values]
    cells = []
    for arm, over in arms:
        for seed in range(seeds):
            meta = {
                "arm": arm,
                "param": param,
                "lr_source": "dial: 1/sqrt(width) transfer (configs/tiers.yaml)",
            }
            cells.append(
                planning.make_cell(
                    ctx, f"{param}_{_slug(arm)}_seed{seed}", {**common, **over, "train.seed": seed}, meta
                )
            )
    base_value = _value(cells[0].cfg, key)
    source = "--values" if ctx.args.values else f"the checklist ({ctx.args.ablations})"
    for (arm, _), first in zip(arms[1:], cells[seeds::seeds], strict=True):
        if _value(first.cfg, key) == base_value:
            raise flags.UsageError(
                f"{key}={arm} from {source} equals the baseline's value ({flags.fmt_value(base_value)}, from "
                f"{ctx.args.config} and --set): that arm would be the baseline again; pick another value"
            )
    return cells


def _value(cfg, key: str):
    from fvlm.config import flatten, to_dict

    return flatten(to_dict(cfg))[key]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def expect_for(entry: dict, arm: str) -> str:
    """The hypothesis' direction for one arm: `expect` is better | worse, or a mapping value -> direction."""
    expect = entry.get("expect", "better")
    if isinstance(expect, dict):
        return {flags.fmt_value(k): d for k, d in expect.items()}.get(arm, "better")
    return str(expect)


def verdicts(ctx: flags.Context, param: str, entry: dict, cells: list[planning.Cell]) -> list:
    """Verdicts over THIS invocation's cells (the newest trial of each config hash): an experiment folder can
    hold runs of other --set or --values, which must not be paired with these (they made a traceback)."""
    from analysis.headroom import headroom_from_runs
    from analysis.store import load_store
    from analysis.verdicts import append_log, format_verdict, log_row, table_row, verdicts_from_runs
    from tune.progress import cell_outcomes

    _, runs = load_store(ctx.exp_dir, refresh=True)
    current = {o["trial_id"] for o in cell_outcomes(runs, {c.hash: c.name for c in cells}) if o["trial_id"]}
    runs = runs[runs["trial_id"].isin(current)]
    metric = f"final_{entry.get('metric', 'val_loss')}"
    base = flags.fmt_value(_value(cells[0].cfg, entry["key"]))
    # what every arm shared: the entry's context and the command's --set overrides (the row must say it)
    shared = {**entry.get("context", {}), **ctx.sets}
    context = ", ".join(f"{k}={flags.fmt_value(x)}" for k, x in shared.items())
    arms = sorted({str(a) for a in runs["arm"]} - {"baseline"})
    expect = {arm: expect_for(entry, arm) for arm in arms}
    found = verdicts_from_runs(
        runs,
        param=entry["key"],
        metric=metric,
        expect=expect,
        lower_is_better=bool(entry.get("lower_is_better", True)),
        controls=tuple(flags.fmt_value(c) for c in entry.get("controls", [])),
    )
    appended = 0
    for v in found:
        print("\n" + format_verdict(v))
        config = f"{entry['key']}: {base} -> {v.arm}; {_length(ctx)}" + (
            f"; every arm {context}" if context else ""
        )
        row = log_row(v, experiment=ctx.name, hypothesis=entry["hypothesis"], config=config)
        appended += bool(append_log(ctx.args.log, row))
    rows = len(found)
    h = headroom_from_runs(runs, metric=metric, static="static", learned="baseline", oracle="oracle")
    if h is not None:  # the arms bound the learned query: the share of the oracle's headroom it captures
        print("\nheadroom of the learned query: " + h.text() + "".join(f"; {n}" for n in h.notes))
        config = f"{entry['key']}: static / {base} / oracle on {metric}; {_length(ctx)}" + (
            f"; every arm {context}" if context else ""
        )
        hyp = "H = (static - learned) / (static - oracle): the share of the oracle's headroom the LLM query captures"
        appended += bool(append_log(ctx.args.log, table_row(ctx.name, hyp, config, h.text(), h.impact())))
        rows += 1
    skipped = rows - appended
    print(
        f"\n{appended} verdict row(s) appended to {ctx.args.log}"
        + (f"; {skipped} already there (not appended again)" if skipped else "")
    )
    return found


def _length(ctx: flags.Context) -> str:
    a = {**ctx.section.get("ablation", {}), **ctx.sets}  # a --set of the length wins, as in the cells
    return ", ".join(
        f"{k}={flags.fmt_value(v)}" for k, v in a.items() if k.startswith(("model.scale", "train.steps"))
    )


def promote(ctx: flags.Context, key: str, found: list) -> None:
    """Write the best significantly-better arm's value into the base config (a text edit keeping comments).

    A winner beats the baseline significantly (Holm-adjusted paired t) whatever the hypothesis expected: a
    FAILED "variant is worse" hypothesis with a better variant is still a winner. Controls (oracle, random
    queries) bound the headroom and are never promoted."""
    from fvlm.config import ConfigError, load_config

    winners = [v for v in found if v.promotable]
    if not winners:
        print(
            "--promote: no variant (controls excluded) beats the baseline significantly; base config unchanged"
        )
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
        raise flags.UsageError(f"--promote would break {path}: {e}") from None
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
        ctx = flags.Context.from_args(args, "ablate", stem=f"ablate-{args.param}")
        values = [yaml.safe_load(v) for v in args.values] if args.values else entry["values"]
        cells = arm_cells(ctx, args.param, entry, values, args.seeds or 3)
        rc = runner.run_cells(ctx, cells)
        if args.dry_run:
            return rc
        found = verdicts(ctx, args.param, entry, cells)
        if args.promote:
            promote(ctx, entry["key"], found)
        return rc

    return flags.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
