"""THE training loop: ``train(cfg, report) -> summary``. The only place in the project that steps an optimizer.

    python -m fvlm.train --config configs/base.yaml [key=value ...] [--dry-run] [--resume DIR]

Used by this CLI, the Ray trainable (tune/trainable.py), benches and tests. Each iteration reads top to
bottom: evaluate + checkpoint (so the last step is evaluated too), then one optimizer step, then one
console line. Evaluations happen at fixed fractions of the run (log-spaced by default, so one constant-LR
run yields a whole L(D) curve). Failures are visible and stored in the rows: the OOM ladder (halve the
micro-batch and double accumulation -- same samples, same order -- then gradient checkpointing, then give
up; an OOM inside an evaluation halves the evaluation's micro-batch), and divergence (a non-finite loss or
gradient norm ends the run with status ``diverged``, before the optimizer steps on it). Upstream skipped
OOM batches, which silently changed the data an arm saw; this loop never skips a batch.

What a row reports about training: ``train_loss`` is val_loss's quantity (the fine read's caption CE; the
coarse read's in coarse_only) on the training batches, and ``train_objective`` what the optimizer
minimised (plus ``lambda_coarse`` x the coarse CE, plus the reconstruction loss), both averaged over the
optimizer steps since the previous evaluation. ``in_warmup`` marks evaluations of the untrained model
(step 0) and inside LR warmup. Evaluation lives in fvlm/evaluate.py, checkpoints in fvlm/checkpoint.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fvlm import accounting
from fvlm.checkpoint import Checkpoints, load_state, restore_rng_state, rng_state, unwrap_state_dict
from fvlm.config import Config, ConfigError, config_hash, describe, load_config, tier_values
from fvlm.data import check_one_epoch, make_data, split_batch, train_batches
from fvlm.evaluate import coarse_is_trained, evaluate
from fvlm.model import FoveatedVLM, autocast
from fvlm.text import make_codec

Report = Callable[[dict, Path | None], None]


class OOMGiveUp(RuntimeError):
    """The OOM ladder ran out of rungs: a training step at micro-batch 1 with gradient checkpointing, or an
    evaluation at micro-batch 1, still does not fit."""


class StepResult(NamedTuple):
    objective: float  # what the optimizer minimised (the mode's training loss)
    loss: float  # val_loss's quantity on this batch: the fine read's loss (the coarse read's in coarse_only)
    grad_norm: float  # before clipping


# ----------------------------------------------------------------------------- set-up helpers


def pick_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible (use train.device=cpu)")
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.train.device)


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    if cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None  # fp32 on CPU: bf16 matmuls are slow there and the tiny models are not memory bound


def build(cfg: Config, device: torch.device | str = "cpu") -> tuple[FoveatedVLM, object]:
    """The data source (world or shards, with the caption codec: the loaded LLM's own tokenizer and chat
    template, else the world's word tokenizer) and the model, every module initialised from
    (cfg.train.seed, its name); the global CPU stream (what the run draws at training time) is seeded from
    cfg.train.seed."""
    data = make_data(cfg, make_codec(cfg))
    torch.manual_seed(cfg.train.seed)
    model = FoveatedVLM(
        cfg.model, cfg.world, data.vocab_size, data.codec.special_ids, seed=cfg.train.seed
    ).to(device)
    if cfg.model.llm_path or cfg.model.dino_path:
        # loaded weights define the sizes: keep the config (FLOPs, memory, hash) true to what was built
        for key, value in model.backbone_dims().items():
            setattr(cfg.model, key, value)
    return model, data


def run_flops_per_sample(cfg: Config, data, model: FoveatedVLM) -> float:
    """FLOPs per training sample of `cfg` with the LLM's vocabulary (its lm_head's rows: a pretrained LLM's
    embedding table can be larger than its tokenizer) and the data's caption length."""
    vocab = model.llm.get_output_embeddings().weight.shape[0]
    return accounting.flops_per_sample(cfg, vocab, text_len=data.text_length)


def total_steps(cfg: Config, flops_per_sample: float) -> tuple[int, int]:
    """(steps, samples): from train.samples, else train.budget_flops / flops_per_sample, else train.steps."""
    t = cfg.train
    if t.samples:
        samples = t.samples
    elif t.budget_flops:
        samples = int(t.budget_flops // flops_per_sample)
    elif t.steps:
        samples = t.steps * t.batch_size
    else:
        raise ConfigError(
            "set one of train.samples, train.budget_flops or train.steps (e.g. train.steps=300)"
        )
    steps = samples // t.batch_size
    if steps < 1:
        raise ConfigError(
            f"the run is shorter than one batch ({samples} samples < train.batch_size {t.batch_size})"
        )
    if t.data_size and steps * t.batch_size > t.data_size:
        raise ConfigError(
            f"{steps} steps x batch {t.batch_size} exceed train.data_size {t.data_size} (one epoch max)"
        )
    return steps, steps * t.batch_size


def eval_steps(cfg: Config, steps: int) -> list[int]:
    """Step 0 (the init model, a reference) plus `eval_points` evaluations after LR warmup, log- or
    linearly spaced up to the last step. Evals inside warmup are no scaling points (they carry in_warmup
    and no fit uses them), so spending the log-spaced points there left a small cell with half a curve."""
    n = cfg.train.eval_points
    first = min(steps, int(steps * cfg.train.warmup_ratio) + 1)  # the first step after warmup
    if cfg.train.eval_spacing == "log":
        points = np.geomspace(first, steps, n)
    else:
        points = np.linspace(max(first, steps / n), steps, n)
    return sorted({0, steps, *(int(round(p)) for p in points)})


def lr_factor(cfg: Config, step: int, steps: int) -> float:
    """Multiplier on every group's peak LR: linear warmup from 0, then constant, WSD or cosine."""
    t = cfg.train
    warmup = int(steps * t.warmup_ratio)
    if step < warmup:
        return step / warmup
    if t.schedule == "constant":
        return 1.0
    if t.schedule == "wsd":
        decay = max(1, int(steps * t.decay_ratio))
        start = steps - decay
        if step < start:
            return 1.0
        return 1.0 - (1.0 - t.min_lr_ratio) * (step - start) / decay
    progress = (step - warmup) / max(1, steps - warmup)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: FoveatedVLM, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    t = cfg.train
    lrs = {"connector": t.lr * t.connector_lr_ratio, "dino": t.lr, "llm": t.lr}
    groups = [
        {"params": ps, "lr": lrs[name], "name": name} for name, ps in model.param_groups().items() if ps
    ]
    for g in groups:
        g["peak_lr"] = g["lr"]
    return torch.optim.AdamW(groups, weight_decay=t.weight_decay, fused=device.type == "cuda")


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def in_warmup(cfg: Config, step: int, steps: int) -> bool:
    """True for the untrained model (step 0) and while every update so far ran under the LR warmup ramp.
    analysis/store.py derives the same rule for rows written before the flag existed: keep them equal."""
    return step <= 0 or step <= int(steps * cfg.train.warmup_ratio)


def blind_bound(cfg: Config, data) -> float:
    """val_loss's no-vision bound: the data's blind caption entropy where val_loss is the caption CE (NaN on
    shards: real captions have no known distribution); NaN where val_loss is not the caption CE (reconstruct
    and joint add a reconstruction MSE that the caption bound does not bound)."""
    return data.blind_entropy() if cfg.model.objective == "caption" else float("nan")


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    report: Report | None = None,
    *,
    resume: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train ``cfg`` to completion (or divergence / OOM give-up); return the summary dict.

    ``report(row, checkpoint_path)`` is called after every evaluation with the contract metrics
    (fvlm/contract.py) and the checkpoint just written. ``resume`` is a checkpoint (dir or state.pt) to
    continue from exactly: same data position, RNG, optimizer and schedule.
    """
    log = log or (lambda s: None)
    t0 = time.time()
    device = pick_device(cfg)
    amp = autocast_dtype(cfg, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model, data = build(cfg, device)
    flops_per_sample = run_flops_per_sample(cfg, data, model)
    steps, samples = total_steps(cfg, flops_per_sample)
    check_one_epoch(cfg, samples, data.train_size)
    params = accounting.count_params(model)
    tier, _ = tier_values(cfg.model)
    peak, peak_src = accounting.peak_flops(device)
    constants = {
        "params_n": params["total"],
        "params_convention": accounting.PARAMS_CONVENTION,
        "flops_per_sample": flops_per_sample,
        "tier": tier,
        "seed": cfg.train.seed,
        "config_hash": config_hash(cfg),
        "val_loss_blind": blind_bound(cfg, data),
        "lr_schedule": cfg.train.schedule,
    }
    ckpts = Checkpoints(
        Path(checkpoint_dir or Path(cfg.run.out_dir) / cfg.run.name / "checkpoints"), cfg.train.keep_last
    )
    opt = make_optimizer(model, cfg, device)
    runner = torch.compile(model) if cfg.train.compile else model

    st = {
        "step": 0,
        "samples_seen": 0,
        "flops_seen": 0.0,
        "wall_s": 0.0,
        "micro_batch": cfg.train.micro_batch,
        "grad_accum": cfg.train.batch_size // cfg.train.micro_batch,
        "eval_micro_batch": cfg.train.micro_batch,
        "oom_retries": 0,
        "ladder": [],
        "injected": [],
        "injected_eval": [],
        "last_eval": -1,
        "best_val_loss": float("inf"),
        "best_step": -1,
    }
    if resume is not None:
        state = load_state(resume)
        model.load_state_dict(unwrap_state_dict(state["model"]))
        opt.load_state_dict(state["optimizer"])
        st.update(state["loop"])
        restore_rng_state(state["rng"])
        if state["ladder_ckpt"]:
            model.enable_gradient_checkpointing()
        log(f"resumed from {resume} at step {st['step']} ({st['samples_seen']} samples)")

    log(describe(cfg))
    log(
        f"params {params['total']:,} ({accounting.PARAMS_CONVENTION}; dino {params['dino']:,}, llm "
        f"{params['llm']:,}, connector {params['connector']:,}) | {flops_per_sample:.3g} FLOPs/sample | "
        f"{steps} steps x {cfg.train.batch_size} = {samples:,} samples | device {device} ({peak_src})"
    )
    evals = eval_steps(cfg, steps)
    interval = {"loss": 0.0, "objective": 0.0, "n": 0, "grad_norm": 0.0, "train_s": 0.0, "samples": 0}
    status, error, last_row = "running", "", {}
    # wall clock counts set-up time, and continues across resumes
    start_wall = st["wall_s"] - (time.time() - t0)

    def mean(key: str) -> float:
        return interval[key] / interval["n"] if interval["n"] else float("nan")

    def row(metrics: dict, status_: str) -> dict:
        sps = interval["samples"] / interval["train_s"] if interval["train_s"] > 0 else float("nan")
        return {
            "step": st["step"],
            "samples_seen": st["samples_seen"],
            "flops_seen": st["flops_seen"],
            "wall_s": st["wall_s"],
            "train_loss": mean("loss"),
            "train_objective": mean("objective"),
            "in_warmup": in_warmup(cfg, st["step"], steps),
            "lr": opt.param_groups[-1]["lr"],
            "lr_connector": opt.param_groups[0]["lr"],
            "grad_norm": mean("grad_norm"),
            "samples_per_s": sps,
            "peak_mem_mb": peak_mem_mb(device),
            "mfu": accounting.mfu(flops_per_sample, sps, peak),
            "micro_batch": st["micro_batch"],
            "grad_accum": st["grad_accum"],
            "eval_micro_batch": _eval_batch(st),
            "oom_retries": st["oom_retries"],
            "ladder": "; ".join(st["ladder"]),
            "status": status_,
            **constants,
            **metrics,
        }

    def checkpoint_state() -> dict:
        return {
            "model": unwrap_state_dict(model.state_dict()),
            "optimizer": opt.state_dict(),
            "loop": dict(st),
            "rng": rng_state(device),
            "ladder_ckpt": model.cfg.gradient_checkpointing,
            "config": asdict(cfg),
        }

    def emit(metrics: dict, status_: str) -> dict:
        nonlocal last_row
        r = row(metrics, status_)
        vl = r.get("val_loss", float("nan"))
        if math.isfinite(vl) and vl < st["best_val_loss"]:
            st["best_val_loss"], st["best_step"] = vl, st["step"]
        path = ckpts.save(checkpoint_state(), st["step"], vl)
        if report is not None:
            report(r, path)
        last_row = r
        interval.update(loss=0.0, objective=0.0, n=0, grad_norm=0.0, train_s=0.0, samples=0)
        return r

    def stop(status_: str, error_: str) -> None:
        nonlocal status, error
        status, error = status_, error_
        st["wall_s"] = start_wall + time.time() - t0
        emit({"val_loss": float("nan"), "error": error}, status)
        log(f"{status.upper()}: {error}")

    batches = train_batches(data, cfg, st["samples_seen"], device)  # from the resumed position on
    model.train()
    while True:
        st["wall_s"] = start_wall + time.time() - t0
        # ---- evaluate + checkpoint at the top, so the last step is evaluated too
        if st["step"] in evals and st["last_eval"] != st["step"]:
            final = st["step"] >= steps
            try:
                metrics = _evaluate_with_ladder(model, data, cfg, st, device, amp, final)
            except OOMGiveUp as e:
                stop("oom", str(e))
                break
            st["last_eval"] = st["step"]
            if not math.isfinite(metrics.get("val_loss", float("nan"))):  # diverged between two train steps
                error = f"non-finite val_loss {metrics.get('val_loss')} at step {st['step']}"
                status = "diverged"
                emit({**metrics, "error": error}, status)
                log(f"DIVERGED: {error}")
                break
            r = emit(metrics, "complete" if final else "running")
            coarse = (
                f"coarse {r['val_loss_coarse']:.4f}"
                if coarse_is_trained(cfg) or cfg.model.mode != "coarse_fine"
                else f"coarse (untrained) {r['val_loss_coarse_untrained']:.4f}"
            )
            log(
                f"eval step {st['step']} | val_loss {r['val_loss']:.4f} | fine {r['val_loss_fine']:.4f} | "
                f"{coarse} | ratio {r['loss_ratio']:.4f} | entropy coarse {r['attn_entropy_coarse']:.3f} fine "
                f"{r['attn_entropy_fine']:.3f} | on-target coarse {r['attn_on_target_coarse']:.3f} fine "
                f"{r['attn_on_target_fine']:.3f}"
            )
            if final:
                status = "complete"
                break
        # ---- one optimizer step over the next batch_size samples of the stream (never skipped)
        step_t0 = time.time()
        lr_mult = lr_factor(cfg, st["step"], steps)
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * lr_mult
        batch = next(batches)
        try:
            res = _step_with_ladder(runner, model, opt, cfg, batch, st, device, amp)
        except OOMGiveUp as e:
            stop("oom", str(e))
            break
        st["step"] += 1
        st["samples_seen"] += cfg.train.batch_size
        st["flops_seen"] += flops_per_sample * cfg.train.batch_size
        dt = time.time() - step_t0
        interval["train_s"] += dt
        interval["samples"] += cfg.train.batch_size
        if not math.isfinite(res.objective):
            stop("diverged", f"non-finite loss {res.objective} at step {st['step']}")
            break
        if not math.isfinite(res.grad_norm):
            # FIX (tests/test_train.py::test_a_non_finite_gradient_with_a_finite_loss_diverges_unstepped):
            # the optimizer stepped on any finite loss, so an inf/NaN gradient (clipping scales it by NaN)
            # made every weight NaN and the run diverged a step later, from a checkpoint of NaN weights
            stop(
                "diverged",
                f"non-finite grad norm {res.grad_norm} with a finite loss {res.objective:.4g} at step "
                f"{st['step']}: the optimizer did not step (the weights are those before this step)",
            )
            break
        interval["loss"] += res.loss
        interval["objective"] += res.objective
        interval["grad_norm"] += res.grad_norm
        interval["n"] += 1
        if st["step"] % cfg.run.log_every == 0:
            sps = cfg.train.batch_size / dt
            eta = (steps - st["step"]) * dt
            log(
                f"step {st['step']:5d}/{steps} | loss {res.loss:.4f} | objective {res.objective:.4f} | lr "
                f"{opt.param_groups[-1]['lr']:.2e} | dt {dt * 1000:.0f}ms | {sps:.0f} samples/s | mfu "
                f"{100 * accounting.mfu(flops_per_sample, sps, peak):.2f}% | eta {eta:.0f}s"
            )

    summary = {
        "status": status,
        "error": error,
        "steps": st["step"],
        "total_steps": steps,
        "samples_seen": st["samples_seen"],
        "flops_seen": st["flops_seen"],
        "wall_s": last_row.get("wall_s"),
        "best_val_loss": st["best_val_loss"],
        "best_step": st["best_step"],
        "ladder": st["ladder"],
        "checkpoint_dir": str(ckpts.root),
        **constants,
        **{k: v for k, v in last_row.items() if k.startswith(("val_", "attn_", "loss_ratio", "train_infer"))},
    }
    return summary


# ----------------------------------------------------------------------------- the OOM ladder


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _record(st: dict, rung: str) -> None:
    st["ladder"].append(rung)
    print(f"[oom ladder] {rung}", file=sys.stderr)


def _eval_batch(st: dict) -> int:
    """The evaluation's micro-batch: the training one, or smaller after an OOM inside an evaluation."""
    return min(st["micro_batch"], st["eval_micro_batch"])


def _evaluate_with_ladder(model, data, cfg, st, device, amp, final) -> dict:
    """One evaluation; on CUDA OOM: halve the evaluation's micro-batch (the losses are token means over the
    same clips at any batch size), and at micro-batch 1 give up (no gradients are kept in an evaluation,
    so gradient checkpointing would not help). Every rung is recorded in ``st['ladder']``."""
    while True:
        inject = st["step"] in cfg.train.inject_oom_eval_steps and st["step"] not in st["injected_eval"]
        if inject:
            st["injected_eval"].append(st["step"])  # fault injection for tests: once per listed step
        try:
            return evaluate(model, data, cfg, _eval_batch(st), device, amp, final=final, inject_oom=inject)
        except torch.OutOfMemoryError as e:
            _free(device)
            st["oom_retries"] += 1
            if _eval_batch(st) <= 1:
                raise OOMGiveUp(
                    f"out of memory in the evaluation at step {st['step']} even at micro_batch 1 "
                    f"({str(e).splitlines()[0]}); use a smaller tier or fewer frames"
                ) from e
            st["eval_micro_batch"] = _eval_batch(st) // 2
            _record(st, f"step {st['step']}: OOM in evaluation -> eval micro_batch {st['eval_micro_batch']}")


def _step_with_ladder(runner, model, opt, cfg, batch, st, device, amp) -> StepResult:
    """One optimizer step; on CUDA OOM: halve the micro-batch and double accumulation (same samples, same
    order), then gradient checkpointing, then give up. Every rung is recorded in ``st['ladder']``."""
    while True:
        try:
            return _step(runner, model, opt, cfg, batch, st, device, amp)
        except torch.OutOfMemoryError as e:
            opt.zero_grad(set_to_none=True)
            _free(device)
            st["oom_retries"] += 1
            if st["micro_batch"] > 1:
                st["micro_batch"] //= 2
                st["grad_accum"] *= 2
                rung = f"step {st['step']}: OOM -> micro_batch {st['micro_batch']} x grad_accum {st['grad_accum']}"
            elif not model.cfg.gradient_checkpointing:
                model.enable_gradient_checkpointing()
                rung = f"step {st['step']}: OOM at micro_batch 1 -> gradient checkpointing on"
            else:
                raise OOMGiveUp(
                    f"out of memory at step {st['step']} even at micro_batch 1 with gradient "
                    f"checkpointing ({str(e).splitlines()[0]}); use a smaller tier or fewer frames"
                ) from e
            _record(st, rung)


def _step(runner, model, opt, cfg, batch, st, device, amp) -> StepResult:
    """One optimizer step over the effective batch ``batch`` in micro-batches of ``st['micro_batch']``. The
    optimizer steps only on a finite loss and a finite gradient norm (the loop ends the run otherwise)."""
    if st["step"] in cfg.train.inject_oom_steps and st["step"] not in st["injected"]:
        st["injected"].append(st["step"])  # fault injection for tests: a CUDA OOM the real ladder must handle
        raise torch.OutOfMemoryError(
            f"CUDA out of memory (injected by train.inject_oom_steps at step {st['step']})"
        )
    total = len(batch["captions"])
    opt.zero_grad(set_to_none=True)
    objective, loss = 0.0, 0.0
    chunks = split_batch(batch, st["micro_batch"])
    if len(chunks) > 1:
        # FIX (tests/test_train.py::test_oom_ladder_keeps_the_effective_batch_and_the_sample_order): the caption
        # CE is a mean over scored tokens and captions have 5 or 7, so weighting each micro-batch's token mean
        # by its sample share changed the objective with micro_batch (5e-4 relative on one step). Each
        # micro-batch's token sum is divided by the effective batch's token count, scaled to its sample share.
        scored = sum(int(c["loss_mask"][:, 1:].sum()) for c in chunks)
        for c in chunks:
            c["caption_tokens"] = torch.tensor(scored * len(c["captions"]) / total)  # a tensor: no recompiles
    for chunk in chunks:
        weight = len(chunk["captions"]) / total  # sample share: the same effective batch at any micro-batch
        chunk = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in chunk.items()}
        with autocast(device, amp):
            out = runner(chunk)
        if st["step"] in cfg.train.inject_nan_steps:  # fault injection for tests: a diverged step
            out.loss = out.loss * float("nan")
        (out.loss * weight).backward()
        # FIX (tests/test_train.py::test_train_loss_is_val_loss_quantity_and_train_objective_the_optimised_one):
        # train_loss was the objective (fine + lambda_coarse * coarse: 4.84 vs val_loss 3.26 at init)
        read = out.loss_fine if out.loss_fine is not None else out.loss_coarse
        objective += float(out.loss.detach()) * weight
        loss += float(read.detach()) * weight
    params = [p for g in opt.param_groups for p in g["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm))
    if math.isfinite(objective) and math.isfinite(grad_norm):
        opt.step()
    return StepResult(objective, loss, grad_norm)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fvlm.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/base.yaml", help="YAML base config")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.deep_query=false")
    ap.add_argument("--dry-run", action="store_true", help="print the derived plan and exit")
    ap.add_argument("--resume", default=None, help="checkpoint dir (or state.pt) to resume from exactly")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            return dry_run(cfg)
        out = Path(cfg.run.out_dir) / cfg.run.name
        out.mkdir(parents=True, exist_ok=True)
        rows_path = out / "metrics.jsonl"
        if args.resume is None:
            rows_path.unlink(missing_ok=True)

        def report(r: dict, _ckpt: Path | None) -> None:
            with open(rows_path, "a") as f:
                f.write(json.dumps(r, default=float) + "\n")

        summary = train(cfg, report, resume=args.resume, checkpoint_dir=out / "checkpoints")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=float))
    os.replace(tmp, out / "summary.json")
    print(
        f"\n{summary['status']}: {summary['steps']} steps, {summary['samples_seen']:,} samples, "
        f"{summary['wall_s']:.1f}s wall"
    )
    nan = float("nan")
    coarse = (
        f"val_loss_coarse (untrained) {summary['val_loss_coarse_untrained']:.4f}"
        if "val_loss_coarse_untrained" in summary
        else f"val_loss_coarse {summary.get('val_loss_coarse', nan):.4f}"
    )
    print(
        f"val_loss_fine {summary.get('val_loss_fine', nan):.4f} | {coarse} | loss_ratio "
        f"{summary.get('loss_ratio', nan):.4f} "
        f"| attn_entropy coarse {summary.get('attn_entropy_coarse', float('nan')):.3f} fine "
        f"{summary.get('attn_entropy_fine', float('nan')):.3f}"
    )
    data = make_data(cfg)
    print(
        f"baselines: unigram entropy {data.unigram_entropy():.4f} | blind (grammar-aware) "
        f"{data.blind_entropy():.4f} | train/inference gap {summary.get('train_infer_gap', float('nan')):+.4f}"
    )
    print(f"summary: {out / 'summary.json'}")
    return 0 if summary["status"] == "complete" else 1


def dry_run(cfg: Config) -> int:
    model, data = build(cfg)
    flops_per_sample = run_flops_per_sample(cfg, data, model)
    steps, samples = total_steps(cfg, flops_per_sample)
    params = accounting.count_params(model)
    mem = accounting.memory_estimate_mb(
        cfg, params["total"], cfg.train.micro_batch, data.vocab_size, text_len=data.text_length
    )
    print(describe(cfg))
    print(
        f"params {params['total']:,} ({accounting.PARAMS_CONVENTION}) | {flops_per_sample:.3g} FLOPs/sample | "
        f"{steps} steps x {cfg.train.batch_size} = {samples:,} samples = {flops_per_sample * samples:.3g} FLOPs | "
        f"memory estimate {mem:.0f} MiB at micro_batch {cfg.train.micro_batch} | evals at {eval_steps(cfg, steps)}"
    )
    print(f"config_hash {config_hash(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
