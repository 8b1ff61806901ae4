"""The Ray Tune trainable: one flat config dict -> ``fvlm.train.train`` -> one ``tune.report`` per evaluation.

    from tune.trainable import TRAINABLE_NAME, register
    register()                                   # once per driver process
    tune.Tuner(TRAINABLE_NAME, param_space=...)  # or tune.Tuner.restore(path, trainable=TRAINABLE_NAME)

A trial's config is the result-store contract (ARCHITECTURE.md section 6): dotted fvlm overrides plus
``meta.*`` keys (kind, arm, experiment, cell, base_config, generation, sets, threads, gpu_fraction, mem_cap,
lr_source). The
``meta.*`` keys are stripped before ``fvlm.config.load_config``. Paths are absolute: a trial's working
directory is a Ray temp folder, not the driver's.

Every row the loop reports goes to Tune with the loop's checkpoint directory (``state.pt``) plus the keys the
store needs (experiment, kind, arm, budget_flops) and where the LR came from. ``tune.get_checkpoint()``
resumes the loop exactly (data position, RNG, optimizer, schedule). On resume, rows already in the
experiment's storage are neither reported again nor, when one is final, retrained (see stored_rows). The OOM ladder runs inside the loop; its
rungs are in every row (micro_batch, grad_accum, oom_retries, ladder).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from ray import tune

from fvlm import accounting
from fvlm.config import load_config
from fvlm.contract import FINAL_STATUSES
from fvlm.train import pick_device, total_steps, train

TRAINABLE_NAME = "fvlm"  # fixed: Tuner.restore finds the trainable by this name
ROW_FILE = "row.json"  # the reported row, stored beside state.pt in every checkpoint


def split_config(config: dict) -> tuple[dict, dict]:
    """(fvlm overrides, meta) from a flat trial config."""
    overrides = {k: v for k, v in config.items() if not k.startswith("meta.")}
    meta = {k[len("meta.") :]: v for k, v in config.items() if k.startswith("meta.")}
    return overrides, meta


def trial_resources(config: dict) -> dict:
    """Ray resources of one trial, chosen by the driver's plan (tune/resources.py) and stored in its config."""
    res = {"cpu": float(config.get("meta.cpus", 1.0))}
    if config.get("meta.gpu_fraction"):
        res["gpu"] = float(config["meta.gpu_fraction"])
    return res


def fvlm_trainable(config: dict) -> None:
    overrides, meta = split_config(config)
    cfg = load_config(meta["base_config"], overrides)
    threads = int(meta.get("threads") or 1)
    torch.set_num_threads(threads)  # before anything runs: oversubscribed OpenMP threads slow torch 10-100x
    device = pick_device(cfg)
    if device.type == "cuda" and meta.get("mem_cap"):
        from tune.resources import cap_process_memory

        cap_process_memory(float(meta["mem_cap"]))
    vocab, text_len, _ = accounting.data_shape(cfg)
    flops_per_sample = accounting.flops_per_sample(cfg, vocab, text_len=text_len)
    steps, samples = total_steps(cfg, flops_per_sample)
    extras = {
        "experiment": meta.get("experiment", ""),
        "kind": meta.get("kind", ""),
        "arm": meta.get("arm", ""),
        "cell": meta.get("cell", ""),
        "generation": meta.get("generation", ""),
        "budget_flops": cfg.train.budget_flops
        or samples * flops_per_sample,  # planned compute if set by steps
        "total_steps": steps,
        "lr_source": meta.get("lr_source", ""),
        "threads": threads,
        "gpu_fraction": float(meta.get("gpu_fraction") or 0.0),
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "trial_started_at": time.time(),
    }
    work = Path(tempfile.mkdtemp(prefix="fvlm-trial-"))
    log_file = open(trial_log_path(meta, tune.get_context().get_trial_id()), "a")  # noqa: SIM115 - closed below

    def log(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()

    checkpoint = tune.get_checkpoint()
    stored = stored_rows(meta.get("exp_dir"), tune.get_context().get_trial_id())  # [] for a fresh trial
    stored_upto = max((r.get("step", -1) for r in stored), default=-1)

    def report(row: dict, checkpoint_path: Path | None) -> None:
        out = {**row, **extras}
        if row["step"] <= stored_upto and row["status"] == "running":
            return  # recorded before the driver died (see stored_rows): reporting it again would duplicate it
        if checkpoint_path is None:
            tune.report(out)
            return
        (Path(checkpoint_path) / ROW_FILE).write_text(json.dumps(out, default=float))
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_path)))

    try:
        if any(r.get("status") in FINAL_STATUSES for r in stored):
            log("the stored rows end with a final row: nothing left to do")
            return
        if checkpoint is None:
            train(cfg, report, checkpoint_dir=work / "checkpoints", log=log)
            return
        with checkpoint.as_directory() as ckpt_dir:
            last = Path(ckpt_dir) / ROW_FILE
            if last.exists() and json.loads(last.read_text()).get("status") in FINAL_STATUSES:
                log(f"checkpoint {ckpt_dir} holds the final row: nothing left to do")
                return
            resume = work / "resume"
            shutil.copytree(ckpt_dir, resume)  # a private copy: Tune may delete old checkpoints meanwhile
        train(cfg, report, resume=resume, checkpoint_dir=work / "checkpoints", log=log)
    finally:
        log_file.close()
        shutil.rmtree(work, ignore_errors=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # a reused actor keeps the allocator's cache (ray issue 32698)


def trial_log_path(meta: dict, trial_id: str) -> Path:
    """<experiment>/<cell>_<trial_id>/train.log in storage, written directly: a reused actor's
    tune.get_context().get_trial_dir() is a working dir that Tune does not copy to storage (measured), and a
    resumed trial appends to the same file. Falls back to a temp file without meta.exp_dir."""
    if not meta.get("exp_dir"):
        return Path(tempfile.gettempdir()) / f"fvlm-{trial_id}.log"
    # the folder name is tune.runner.trial_dirname's
    trial_dir = Path(meta["exp_dir"]) / f"{meta.get('cell', 'trial')}_{trial_id}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    return trial_dir / "train.log"


def stored_rows(exp_dir: str | None, trial_id: str) -> list[dict]:
    """Rows of this trial already in the experiment's storage (result.json), read on resume.

    Tune saves the experiment state (with each trial's latest checkpoint) and then copies the driver's files,
    result.json included, to storage in a background thread, so after a SIGKILL the stored rows can be ahead
    of the checkpoint Tune restores: a trial can even be recorded complete yet resume from an earlier
    checkpoint (seen in one of the first SIGKILL test runs). Those rows are not reported again, and a trial
    whose stored rows end with a final row is not retrained.
    """
    if not exp_dir:
        return []
    rows = []
    for path in Path(exp_dir).glob(f"*_{trial_id}/result.json"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a half-copied last line
    return rows


def register() -> str:
    """Register the trainable (with per-trial resources from its config) under TRAINABLE_NAME."""
    tune.register_trainable(TRAINABLE_NAME, tune.with_resources(fvlm_trainable, trial_resources))
    return TRAINABLE_NAME
