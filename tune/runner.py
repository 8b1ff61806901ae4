"""Running a planned sweep on Ray Tune: the cluster, the Tuner, restore, W&B, and the outcome of the run.

    from tune import runner
    return runner.run_cells(ctx, cells, notes)   # skip settled cells, pack, dry-run or Tune, summary, exit code

``TUNE_GLOBAL_CHECKPOINT_S`` is set low so a killed driver loses at most a second or two of trial state
(with the default, finished trials reran after a SIGKILL). ``--address`` or ``RAY_ADDRESS`` joins an existing
Ray cluster. W&B runs only with ``--wandb``, offline unless logged in, its files under the experiment folder.
The exit code covers this invocation's cells only: 0 when each reached a settled outcome (complete, diverged,
oom; the last two are listed), 1 when any failed with an error or did not finish.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # read when the Tuner is built
# every evaluation checkpoints, so Tune forces frequent state snapshots (wanted, for restore); mute its warning
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# with verbose=0 the legacy reporter prints nothing (the new one still prints its tables): tune/progress.py does
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from tune import plan as planning  # noqa: E402
from tune.flags import Context, UsageError  # noqa: E402


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


def _cell_searcher(configs: list[dict]):
    from ray.tune.search import Searcher

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

    return CellSearcher(configs)


def run_cells(ctx: Context, cells: list[planning.Cell], notes: list[str] | None = None) -> int:
    """Refuse equal cells, skip settled ones, pack, then dry-run or run the Tuner (or --resume); summary."""
    from tune.progress import Progress, summarize

    if ctx.args.resume:
        return resume(ctx)
    planning.check_distinct(cells)
    planning.check_generations(ctx)
    todo, skipped = planning.pending(ctx, cells)
    names = {c.hash: c.name for c in cells}
    if not todo:
        print(f"all {len(cells)} cell(s) already settled in {ctx.exp_dir}/store; nothing to run")
        planning.print_skipped(skipped)
        return 0 if ctx.args.dry_run else summarize(ctx.exp_dir, time.time(), None, names)
    if not ctx.args.dry_run:
        cores, gpus, _ = planning.cluster_shape(ctx)
        init_ray(ctx.args.address, cores, gpus)
    plan = planning.pack(ctx, todo)
    planning.print_plan(ctx, todo, plan, skipped, notes or [])
    if ctx.args.dry_run:
        return 0
    from ray import tune

    from tune.trainable import register

    t0 = time.time()
    tuner = tune.Tuner(
        register(),
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=_cell_searcher([c.trial_config() for c in todo]),
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
    return summarize(ctx.exp_dir, t0, plan.concurrency, names)


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
    """Tuner.restore of the experiment; the outcome covers the trials of the restored experiment."""
    from ray import tune

    from fvlm.config import ConfigError, config_hash, load_config
    from tune.progress import summarize
    from tune.trainable import register, split_config

    path = str(ctx.exp_dir)
    if not tune.Tuner.can_restore(path):
        raise UsageError(f"nothing to resume at {path}; run the same command without --resume")
    cores, gpus, _ = planning.cluster_shape(ctx)
    init_ray(ctx.args.address, cores, gpus)
    t0 = time.time()
    tuner = tune.Tuner.restore(path, trainable=register(), resume_unfinished=True, resume_errored=True)
    print(f"resuming {path}: unfinished and errored trials continue from their last checkpoints")
    results = tuner.fit()
    names = {}
    for r in results:  # every trial of the restored experiment, reported or not: recompute its identity
        overrides, meta = split_config(r.config or {})
        try:
            h = config_hash(load_config(meta.get("base_config") or ctx.base_config, overrides))
        except ConfigError:
            continue
        names[h] = str(meta.get("cell", h))
    return summarize(ctx.exp_dir, t0, None, names or None)
