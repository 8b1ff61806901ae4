"""Shared experiment plumbing of the tune CLIs: flags, presets, cells, packing, the Tuner, restore, the store.

    from tune import experiment as ex
    parser = ex.make_parser(__doc__, kind="grid"); args = parser.parse_args()
    ctx = ex.Context.from_args(args, kind="grid")            # preset, storage, experiment dir, grid.yaml section
    cells = [ctx.make_cell(name, overrides, meta) for ...]   # validated configs (ConfigError -> exit 2)
    ex.run_cells(ctx, cells)                                 # skip complete, pack, dry-run or Tune, write the store

Storage is ``--storage`` (default ./runs, made absolute); the experiment name is fixed (``grid-cpu``,
``ablate-deep_query-cpu``, ``lr-cpu/s2``; ``-smoke`` with --smoke-test) so that ``--resume`` finds it
(``Tuner.restore``; ray issue 36062). ``--address`` or ``RAY_ADDRESS`` joins an existing Ray cluster.
``TUNE_GLOBAL_CHECKPOINT_S`` is set low so a killed driver loses at most a second or two of trial state
(ray-notes: with the default, finished trials reran after a SIGKILL). W&B runs only with ``--wandb``, offline
unless logged in, its files under the experiment folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # read when the Tuner is built
# every evaluation checkpoints, so Tune forces frequent state snapshots (wanted, for restore); mute its warning
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# with verbose=0 the legacy reporter prints nothing (the new one still prints its tables): tune/progress.py does
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import yaml  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from fvlm import accounting  # noqa: E402
from fvlm.config import Config, ConfigError, config_hash, load_config, tier_values  # noqa: E402
from fvlm.train import eval_steps, total_steps  # noqa: E402
from tune.resources import CellTooLarge, Plan, plan_resources  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GRID_YAML = REPO / "configs" / "grid.yaml"
BASE_YAML = REPO / "configs" / "base.yaml"
PRESETS = ("cpu", "4090")


class UsageError(ValueError):
    """Bad input: one line naming the fix; the CLI exits 2 before anything is written."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage otherwise)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def make_parser(doc: str, kind: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"tune/{ {'grid': 'scaling_grid', 'lr': 'lr_sweep'}.get(kind, kind) }.py",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset", choices=PRESETS, default=None, help="cpu or 4090 (default: 4090 if CUDA is visible)"
    )
    p.add_argument("--name", default=None, help="experiment name (default: fixed per command and preset)")
    p.add_argument("--storage", default="runs", help="experiment storage folder (default ./runs)")
    p.add_argument(
        "--address", default=None, help="existing Ray cluster (default: $RAY_ADDRESS, else a local one)"
    )
    p.add_argument("--resume", action="store_true", help="continue the experiment through Tuner.restore")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (cells, FLOPs, packing, time) and exit"
    )
    p.add_argument(
        "--smoke-test", action="store_true", help="tiny cells (grid.yaml 'smoke'), seconds per trial"
    )
    p.add_argument("--wandb", action="store_true", help="log to W&B (offline unless logged in)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (0..N-1)")
    p.add_argument("--config", default=str(BASE_YAML), help="base fvlm config (default configs/base.yaml)")
    p.add_argument("--grid-file", default=str(GRID_YAML), help="presets file (default configs/grid.yaml)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fvlm override applied to every cell, e.g. --set train.inject_oom_steps=[2]",
    )
    p.add_argument(
        "--gpu-mem-mb", type=float, default=None, help="GPU memory per card for packing (default: measured)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads per trial on CPU (default: 1 per core)"
    )
    return p


# ----------------------------------------------------------------------------- cells


@dataclass
class Cell:
    name: str
    overrides: dict  # dotted fvlm overrides
    meta: dict  # meta.* keys without the prefix
    cfg: Config
    fps: float = 0.0
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
        return {**self.overrides, **{f"meta.{k}": v for k, v in self.meta.items()}}


@dataclass
class Context:
    args: argparse.Namespace
    kind: str
    preset: str
    section: dict  # the preset's part of grid.yaml, smoke settings merged in with --smoke-test
    storage: Path
    name: str
    sets: dict = field(default_factory=dict)

    @property
    def exp_dir(self) -> Path:
        return self.storage / self.name

    @classmethod
    def from_args(cls, args: argparse.Namespace, kind: str, stem: str | None = None) -> Context:
        """The experiment is named `<stem>-<preset>[-smoke]` (stem defaults to the kind) unless --name."""
        preset = args.preset or detect_preset(args.address)
        grid = load_grid(args.grid_file)
        if preset not in grid["presets"]:
            raise UsageError(
                f"preset {preset!r} not in {args.grid_file}; valid: {', '.join(grid['presets'])}"
            )
        section = dict(grid["presets"][preset])
        if args.smoke_test:
            section = deep_merge(section, grid.get("smoke", {}))
        sets = parse_sets(args.sets)
        default = f"{stem or kind}-{preset}" + ("-smoke" if args.smoke_test else "")
        storage = Path(args.storage).expanduser().resolve()
        return cls(args, kind, preset, section, storage, args.name or default, sets)

    def make_cell(self, name: str, overrides: dict, meta: dict) -> Cell:
        """Validate one cell (ConfigError -> UsageError) and count its steps and FLOPs."""
        overrides = {**overrides, **self.sets}
        base = str(Path(self.args.config).resolve())
        meta = {
            "kind": self.kind,
            "experiment": self.name,
            "base_config": base,
            "cell": name,
            "exp_dir": str(self.exp_dir),
            **meta,
        }
        try:
            cfg = load_config(base, overrides)
            from tune.resources import analytic_memory_mb

            _, params, params_note = analytic_memory_mb(cfg)
            fps = accounting.flops_per_sample(cfg, _vocab(cfg))
            steps, samples = total_steps(cfg, fps)
        except ConfigError as e:
            raise UsageError(f"cell {name}: {e}") from None
        return Cell(name, overrides, meta, cfg, fps, steps, samples, params, params_note=params_note)


def _vocab(cfg: Config) -> int:
    from fvlm.world import VideoWorld

    return len(VideoWorld(cfg.world).tokenizer)


def detect_preset(address: str | None) -> str:
    import torch

    if torch.cuda.is_available():
        return "4090"
    if address or os.environ.get("RAY_ADDRESS"):
        import ray

        init_ray(address, 0, 0)
        return "4090" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    return "cpu"


def load_grid(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"grid file not found: {p} (default configs/grid.yaml)")
    try:
        grid = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(grid, dict) or not isinstance(grid.get("presets"), dict):
        raise UsageError(f"{p}: expected a 'presets' mapping (see configs/grid.yaml)")
    return grid


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_sets(items: list[str]) -> dict:
    from fvlm.config import parse_override

    try:
        return dict(parse_override(i) for i in items)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def tier_override(tier) -> dict:
    """grid.yaml tier entry -> override: an int is model.scale, a string a named real tier."""
    return {"model.scale": int(tier)} if isinstance(tier, int) else {"model.tier": str(tier)}


# ----------------------------------------------------------------------------- store, packing, prediction


def completed_hashes(exp_dir: Path) -> set[str]:
    """Config hashes of the trials already complete in the experiment's store (rebuilt from the trial dirs)."""
    from analysis.store import find_trial_dirs, load_store, write_store

    if not find_trial_dirs(exp_dir):
        return set()
    write_store(exp_dir)
    _, runs = load_store(exp_dir)
    if not len(runs) or "config_hash" not in runs:
        return set()
    return set(runs.loc[runs["status"] == "complete", "config_hash"].dropna().astype(str))


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
        if res.micro_batch != cell.cfg.train.micro_batch:
            cell.overrides["train.micro_batch"] = res.micro_batch
            cell.cfg.train.micro_batch = res.micro_batch
        cell.predicted_s = predict_seconds(ctx, cell, res.threads, res.gpu_fraction)
    return plan


def predict_seconds(ctx: Context, cell: Cell, threads: int, gpu_fraction: float) -> float:
    """Training + evaluation FLOPs at an assumed MFU (grid.yaml `mfu`, measured per tier) + per-trial overhead."""
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
    eval_flops = n_evals * min(t.eval_samples, cell.cfg.world.val_size) * cell.fps / 3
    return (cell.samples * cell.fps + eval_flops) / rate + float(ctx.section.get("trial_overhead_s", 2.0))


def makespan(durations: list[float], slots: int) -> float:
    """Longest-first list scheduling onto `slots` (Tune starts trials in order; close enough for a plan)."""
    loads = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads) if durations else 0.0


def print_plan(ctx: Context, cells: list[Cell], plan: Plan, skipped: list[Cell], notes: list[str]) -> None:
    print(f"experiment {ctx.exp_dir} | preset {ctx.preset}{' (smoke test)' if ctx.args.smoke_test else ''}")
    print(
        f"{'cell':<28}{'tier':>6}{'params':>13}{'budget':>10}{'FLOPs/smp':>11}{'steps':>7}{'micro':>6}"
        f"{'mem MiB':>9}{'gpu':>7}{'pred s':>8}  lr"
    )
    for c in cells:
        print(
            f"{c.name:<28}{c.tier:>6}{c.params:>13,}{c.samples * c.fps:>10.3g}{c.fps:>11.3g}{c.steps:>7}"
            f"{c.cfg.train.micro_batch:>6}{c.meta['mem_mb']:>9.0f}{c.meta['gpu_fraction']:>7.3g}"
            f"{c.predicted_s:>8.0f}  {c.cfg.train.lr:.3g} ({c.meta.get('lr_source', 'config').split(':')[0]})"
        )
    for note in notes + sorted({f"tier {c.tier} params{c.params_note}" for c in cells if c.params_note}):
        print(f"note: {note}")
    if skipped:
        print(
            f"skipping {len(skipped)} cell(s) already complete in the store: {', '.join(c.name for c in skipped)}"
        )
    print(plan.describe())
    total = sum(c.samples * c.fps for c in cells)
    wall = makespan([c.predicted_s for c in cells], plan.concurrency)
    gpu_h = sum(c.predicted_s * c.meta["gpu_fraction"] for c in cells) / 3600
    core_h = sum(c.predicted_s * c.meta["threads"] for c in cells) / 3600
    print(
        f"{len(cells)} cell(s) to run, {total:.3g} training FLOPs | predicted wall {wall / 60:.1f} min "
        f"({plan.concurrency} at a time) | {gpu_h:.2f} GPU-hours | {core_h:.2f} CPU core-hours"
    )


# ----------------------------------------------------------------------------- Ray and Tune


def init_ray(address: str | None, cores: int, gpus: int) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=cores, num_gpus=gpus, include_dashboard=False, log_to_driver=False)


def wandb_callbacks(ctx: Context) -> list:
    if not ctx.args.wandb:
        return []
    import netrc

    from ray.air.integrations.wandb import WandbLoggerCallback

    try:
        logged_in = bool(os.environ.get("WANDB_API_KEY")) or bool(
            netrc.netrc().authenticators("api.wandb.ai")
        )
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        os.environ.setdefault("WANDB_MODE", "offline")  # Ray checks the env var, not the callback's mode
    ctx.exp_dir.mkdir(parents=True, exist_ok=True)  # dir=: offline runs land in <experiment>/wandb/
    # mode= reaches wandb.init inside Ray's logging actor, whose environment is the cluster's, not ours
    mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
    return [
        WandbLoggerCallback(
            project=f"foveated-vlm-{ctx.kind}",
            group=ctx.name,
            dir=str(ctx.exp_dir),
            upload_timeout=60,
            **mode,
        )
    ]


def trial_dirname(trial) -> str:
    """<cell>_<trial_id>: tune/trainable.py finds its storage folder by this name (train.log, stored rows)."""
    return f"{trial.config.get('meta.cell', 'trial')}_{trial.trial_id}"


class CellSearcher(Searcher):
    """A Tune searcher that hands out a fixed list of flat configs, one per trial, in order.

    Tune's grid search builds a cross product of nested keys; our cells are heterogeneous flat dicts
    (dotted keys, per-arm keys), which BasicVariantGenerator's points_to_evaluate rejects unless every key
    is in the param space. Its state (the next index) is saved with the experiment for Tuner.restore.
    """

    def __init__(self, configs: list[dict]) -> None:
        super().__init__()
        self.configs, self.next = list(configs), 0

    def suggest(self, trial_id: str):
        if self.next >= len(self.configs):
            return Searcher.FINISHED
        self.next += 1
        return dict(self.configs[self.next - 1])

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"configs": self.configs, "next": self.next}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.configs, self.next = state["configs"], state["next"]


def run_cells(ctx: Context, cells: list[Cell], notes: list[str] | None = None) -> int:
    """Skip complete cells, pack, then dry-run or run the Tuner (or --resume), then write the store."""
    from tune.progress import Progress, summarize

    if ctx.args.resume:
        return resume(ctx)
    done = completed_hashes(ctx.exp_dir)
    pending = [c for c in cells if c.hash not in done]
    if not pending:
        print(f"all {len(cells)} cell(s) already complete in {ctx.exp_dir}/store; nothing to run")
        return 0
    if not ctx.args.dry_run:
        cores, gpus, _ = cluster_shape(ctx)
        init_ray(ctx.args.address, cores, gpus)
    plan = pack(ctx, pending)  # may lower a micro-batch, which is part of the hash: check again after
    todo = [c for c in pending if c.hash not in done]
    skipped = [c for c in cells if id(c) not in {id(t) for t in todo}]
    if not todo:
        print(f"all {len(cells)} cell(s) already complete in {ctx.exp_dir}/store; nothing to run")
        return 0
    print_plan(ctx, todo, plan, skipped, notes or [])
    if ctx.args.dry_run:
        return 0
    from ray import tune

    from tune.trainable import register

    name = register()
    t0 = time.time()
    tuner = tune.Tuner(
        name,
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=CellSearcher([c.trial_config() for c in todo]),
            num_samples=len(todo),
            max_concurrent_trials=plan.concurrency,
            reuse_actors=plan.mode == "cpu",
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(
            ctx, [Progress(len(todo), {c.name: c.predicted_s for c in todo}, plan.concurrency)]
        ),
    )
    tuner.fit()
    return summarize(ctx.exp_dir, t0, plan.concurrency)


def run_config(ctx: Context, callbacks: list):
    from ray import tune

    return tune.RunConfig(
        name=ctx.name,
        storage_path=str(ctx.storage),
        verbose=0,
        failure_config=tune.FailureConfig(
            max_failures=1
        ),  # a crashed trial retries once, from its checkpoint
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks + wandb_callbacks(ctx),
    )


def resume(ctx: Context) -> int:
    from ray import tune

    from tune.progress import summarize
    from tune.trainable import register

    path = str(ctx.exp_dir)
    if not tune.Tuner.can_restore(path):
        raise UsageError(f"nothing to resume at {path}; run the same command without --resume")
    cores, gpus, _ = cluster_shape(ctx)
    init_ray(ctx.args.address, cores, gpus)
    t0 = time.time()
    tuner = tune.Tuner.restore(path, trainable=register(), resume_unfinished=True, resume_errored=True)
    print(f"resuming {path}: unfinished and errored trials continue from their last checkpoints")
    tuner.fit()
    return summarize(ctx.exp_dir, t0, None)


def main_guard(fn) -> int:
    """Run a CLI body: UsageError / ConfigError -> one line on stderr, exit 2."""
    try:
        return fn()
    except (UsageError, ConfigError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2


def fmt_value(v) -> str:
    """A config value as the YAML literal a user would type (true, 0.5, coarse_only)."""
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) >= 1e6:
        return f"{v:.3g}"
    return json.dumps(v) if isinstance(v, (bool, type(None))) else str(v)
