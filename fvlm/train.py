"""THE training loop: ``train(cfg, report) -> summary``. The only place in the project that steps an optimizer.

    python -m fvlm.train --config configs/base.yaml [key=value ...] [--dry-run] [--resume DIR]

Used by this CLI, the Ray trainable (tune/trainable.py), benches and tests. Each iteration reads top to
bottom: evaluate + checkpoint (so the last step is evaluated too), then one optimizer step, then one
console line. Evaluations happen at fixed fractions of the run (log-spaced by default, so one constant-LR
run yields a whole L(D) curve). Failures are visible and stored in the rows: the OOM ladder (halve the
micro-batch and double accumulation -- same samples, same order -- then gradient checkpointing, then give
up), and divergence (NaN/inf ends the run with status ``diverged``). Upstream skipped OOM batches, which
silently changed the data an arm saw; this loop never skips a batch.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fvlm import accounting
from fvlm.config import Config, ConfigError, config_hash, describe, load_config, tier_values
from fvlm.model import FoveatedVLM
from fvlm.world import VideoWorld

Report = Callable[[dict, Path | None], None]
FINAL_STATUSES = ("complete", "diverged", "oom", "failed")


class OOMGiveUp(RuntimeError):
    """The OOM ladder ran out of rungs (micro-batch 1 with gradient checkpointing still does not fit)."""


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


def build(cfg: Config, device: torch.device | str = "cpu") -> tuple[FoveatedVLM, VideoWorld]:
    """The world (with its tokenizer) and the model, initialised from cfg.train.seed."""
    tokenizer = None
    if cfg.model.tokenizer_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer_path)
    world = VideoWorld(cfg.world, tokenizer)
    tok = world.tokenizer
    special = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    torch.manual_seed(cfg.train.seed)
    model = FoveatedVLM(cfg.model, cfg.world, len(tok), special).to(device)
    if cfg.model.llm_path or cfg.model.dino_path:
        # loaded weights define the sizes: keep the config (FLOPs, memory, hash) true to what was built
        for key, value in model.backbone_dims().items():
            setattr(cfg.model, key, value)
    return model, world


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
    n = cfg.train.eval_points
    if cfg.train.eval_spacing == "log":
        points = np.geomspace(1, steps, n)
    else:
        points = np.linspace(steps / n, steps, n)
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


def unwrap_state_dict(state: dict) -> dict:
    """Strip torch.compile's ``_orig_mod.`` prefix so compiled and eager models share checkpoints."""
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """``<dir>/step_XXXXXXX/state.pt``: the last ``keep`` plus the best by val_loss; atomic writes."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root, self.keep = root, keep
        root.mkdir(parents=True, exist_ok=True)

    def save(self, state: dict, step: int, val_loss: float) -> Path:
        final = self.root / f"step_{step:07d}"
        tmp = self.root / f".tmp_step_{step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        meta = self.root / "index.json"
        index = json.loads(meta.read_text())["val_loss"] if meta.exists() else {}
        index[final.name] = val_loss if math.isfinite(val_loss) else None
        best = min((k for k, v in index.items() if v is not None), key=lambda k: index[k], default=None)
        recent = sorted(index)[-self.keep :]
        for name in list(index):
            if name not in recent and name != best:
                shutil.rmtree(self.root / name, ignore_errors=True)
                index.pop(name)
        tmp_meta = meta.with_suffix(".tmp")
        tmp_meta.write_text(json.dumps({"best": best, "latest": final.name, "val_loss": index}, indent=1))
        os.replace(tmp_meta, meta)
        return final

    @staticmethod
    def latest(root: Path) -> Path | None:
        dirs = sorted(p for p in Path(root).glob("step_*") if (p / "state.pt").exists())
        return dirs[-1] if dirs else None


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        found = path / "state.pt" if (path / "state.pt").exists() else Checkpoints.latest(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint under {path}")
        path = found if found.name == "state.pt" else found / "state.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: FoveatedVLM,
    world: VideoWorld,
    cfg: Config,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
    final: bool = False,
) -> dict:
    """Held-out losses of both reads, attention statistics, slot accuracy (and at the end the AR pass)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    seen = 0
    limit = min(cfg.train.eval_samples, cfg.world.val_size)
    # FIX (tests/test_train.py::test_oom_ladder_keeps_the_effective_batch_and_the_sample_order): the val
    # losses are token means over exactly `limit` clips at any eval batch size (the OOM ladder halves it):
    # the last batch is cut at `limit`, and each batch's caption CE is its token sum over the set's token
    # count scaled to the batch's sample share, so the sample-weighted mean below is the token mean.
    tokens = int(world.val_set()["loss_mask"][:limit, 1:].sum())
    for batch in world.val_batches(batch_size):
        if seen >= limit:
            break
        if seen + len(batch["captions"]) > limit:
            batch = {k: v[: limit - seen] for k, v in batch.items()}
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        n = batch["frames"].shape[0]
        batch["caption_tokens"] = torch.tensor(tokens * n / limit, device=device)
        with autocast(device, amp):
            out = model(batch, compute_coarse=True)
            vals = {
                "val_loss": out.loss_fine if out.loss_fine is not None else out.loss_coarse,
                "val_loss_fine": out.loss_fine,
                "val_loss_coarse": out.loss_coarse,
                **out.stats,
            }
            if out.logits is not None:
                vals.update({f"val_acc_{k}": v for k, v in world.slot_accuracy(out.logits, batch).items()})
            if final and model.cfg.mode == "coarse_fine":
                vals["val_loss_ar"] = model(batch, mode="autoregressive").loss
        for k, v in vals.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                sums[k] = sums.get(k, 0.0) + float(v) * n
                sums[f"_n_{k}"] = sums.get(f"_n_{k}", 0) + n
        seen += n
    samples = sample_outputs(model, world, device, amp) if final else None
    model.train(was_training)
    out = {k: sums[k] / sums[f"_n_{k}"] for k in sums if not k.startswith("_n_")}
    if samples is not None:
        out["samples_json"] = samples
    for k in (
        "val_loss_fine",
        "val_loss_coarse",
        "attn_entropy_fine",
        "attn_on_target_fine",
        "attn_entropy_coarse",
        "attn_on_target_coarse",
    ):
        out.setdefault(k, float("nan"))
    # the ratio is a claim about two trained reads: report it only when the coarse read is trained
    trained_coarse = cfg.model.lambda_coarse > 0 and cfg.model.mode == "coarse_fine"
    out["loss_ratio"] = out["val_loss_fine"] / out["val_loss_coarse"] if trained_coarse else float("nan")
    if "val_loss_ar" in out:
        out["train_infer_gap"] = out["val_loss_ar"] - out["val_loss_fine"]
    return out


@torch.no_grad()
def sample_outputs(model: FoveatedVLM, world: VideoWorld, device: torch.device, amp, n: int = 4) -> str:
    """The first ``n`` held-out clips: true vs predicted caption (teacher-forced argmax of the scored pass)
    and each read's last-layer attention over the patch grid, as JSON for the report card. The clips
    themselves are re-rendered from (world config, val index) when plotted."""
    batch = next(world.val_batches(n))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with autocast(device, amp):
        out = model(batch, compute_coarse=True)
    rows = []
    for i in range(len(batch["captions"])):
        row = {"val_index": i, "truth": batch["captions"][i]}
        if out.logits is not None:
            scored = batch["loss_mask"][i, 1:] == 1
            ids = out.logits[i, :-1].argmax(-1)[scored].tolist()
            row["pred"] = " ".join(world.vocab[t] for t in ids if world.vocab[t] not in ("<eos>", "<bos>"))
        for name in ("coarse", "fine"):
            attn = getattr(out, f"attn_{name}")
            if attn is not None:  # [B, T, L, H, P] -> last layer, head mean, patches only: [T, grid*grid]
                row[f"attn_{name}"] = attn[i, :, -1].float().mean(1)[:, 1:].round(decimals=3).tolist()
        rows.append(row)
    return json.dumps({"world": asdict(world.cfg), "clips": rows})


def autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


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

    ``report(row, checkpoint_path)`` is called after every evaluation with the contract metrics (design
    section 4) and the checkpoint just written. ``resume`` is a checkpoint (dir or state.pt) to continue
    from exactly: same data position, RNG, optimizer and schedule.
    """
    log = log or (lambda s: None)
    t0 = time.time()
    device = pick_device(cfg)
    amp = autocast_dtype(cfg, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model, world = build(cfg, device)
    vocab = len(world.tokenizer)
    fps = accounting.flops_per_sample(cfg, vocab)
    steps, samples = total_steps(cfg, fps)
    params = accounting.count_params(model)
    tier, _ = tier_values(cfg.model)
    peak, peak_src = accounting.peak_flops(device)
    constants = {
        "params_n": params["total"],
        "params_convention": accounting.PARAMS_CONVENTION,
        "flops_per_sample": fps,
        "tier": tier,
        "seed": cfg.train.seed,
        "config_hash": config_hash(cfg),
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
        "oom_retries": 0,
        "ladder": [],
        "injected": [],
        "last_eval": -1,
        "best_val_loss": float("inf"),
        "best_step": -1,
    }
    if resume is not None:
        state = load_state(resume)
        model.load_state_dict(unwrap_state_dict(state["model"]))
        opt.load_state_dict(state["optimizer"])
        st.update(state["loop"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["ladder_ckpt"]:
            model.enable_gradient_checkpointing()
        log(f"resumed from {resume} at step {st['step']} ({st['samples_seen']} samples)")

    log(describe(cfg))
    log(
        f"params {params['total']:,} ({accounting.PARAMS_CONVENTION}; dino {params['dino']:,}, llm {params['llm']:,}, "
        f"connector {params['connector']:,}) | {fps:.3g} FLOPs/sample | {steps} steps x {cfg.train.batch_size} = "
        f"{samples:,} samples | device {device} ({peak_src})"
    )
    evals = eval_steps(cfg, steps)
    interval = {"loss": 0.0, "n": 0, "grad_norm": 0.0, "train_s": 0.0, "samples": 0}
    status, error, last_row = "running", "", {}
    start_wall = st["wall_s"] - (
        time.time() - t0
    )  # wall clock counts set-up time, and continues across resumes

    def row(metrics: dict, status_: str) -> dict:
        sps = interval["samples"] / interval["train_s"] if interval["train_s"] > 0 else float("nan")
        train_loss = interval["loss"] / interval["n"] if interval["n"] else float("nan")
        return {
            "step": st["step"],
            "samples_seen": st["samples_seen"],
            "flops_seen": st["flops_seen"],
            "wall_s": st["wall_s"],
            "train_loss": train_loss,
            "lr": opt.param_groups[-1]["lr"],
            "lr_connector": opt.param_groups[0]["lr"],
            "grad_norm": interval["grad_norm"] / interval["n"] if interval["n"] else float("nan"),
            "samples_per_s": sps,
            "peak_mem_mb": peak_mem_mb(device),
            "mfu": accounting.mfu(fps, sps, peak),
            "micro_batch": st["micro_batch"],
            "grad_accum": st["grad_accum"],
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
            "rng": {"torch": torch.get_rng_state()},
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
        interval.update(loss=0.0, n=0, grad_norm=0.0, train_s=0.0, samples=0)
        return r

    model.train()
    while True:
        st["wall_s"] = start_wall + time.time() - t0
        # ---- evaluate + checkpoint at the top, so the last step is evaluated too
        if st["step"] in evals and st["last_eval"] != st["step"]:
            final = st["step"] >= steps
            metrics = evaluate(model, world, cfg, st["micro_batch"], device, amp, final=final)
            st["last_eval"] = st["step"]
            if not math.isfinite(metrics.get("val_loss", float("nan"))):  # diverged between two train steps
                status, error = (
                    "diverged",
                    f"non-finite val_loss {metrics.get('val_loss')} at step {st['step']}",
                )
                emit({**metrics, "error": error}, status)
                log(f"DIVERGED: {error}")
                break
            r = emit(metrics, "complete" if final else "running")
            log(
                f"eval step {st['step']} | val_loss {r['val_loss']:.4f} | fine {r['val_loss_fine']:.4f} | "
                f"coarse {r['val_loss_coarse']:.4f} | ratio {r['loss_ratio']:.4f} | entropy coarse "
                f"{r['attn_entropy_coarse']:.3f} fine {r['attn_entropy_fine']:.3f} | on-target coarse "
                f"{r['attn_on_target_coarse']:.3f} fine {r['attn_on_target_fine']:.3f}"
            )
            if final:
                status = "complete"
                break
        # ---- one optimizer step over the next batch_size samples of the stream (never skipped)
        step_t0 = time.time()
        lr_mult = lr_factor(cfg, st["step"], steps)
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * lr_mult
        indices = range(st["samples_seen"], st["samples_seen"] + cfg.train.batch_size)
        try:
            loss, grad_norm = _step_with_ladder(runner, model, opt, world, cfg, indices, st, device, amp, log)
        except OOMGiveUp as e:
            status, error = "oom", str(e)
            emit({"val_loss": float("nan"), "error": error}, status)
            log(f"OOM: {error}")
            break
        st["step"] += 1
        st["samples_seen"] += cfg.train.batch_size
        st["flops_seen"] += fps * cfg.train.batch_size
        dt = time.time() - step_t0
        interval["train_s"] += dt
        interval["samples"] += cfg.train.batch_size
        if not math.isfinite(loss):
            status, error = "diverged", f"non-finite loss {loss} at step {st['step']}"
            st["wall_s"] = start_wall + time.time() - t0
            emit({"val_loss": float("nan"), "error": error}, status)
            log(f"DIVERGED: {error}")
            break
        interval["loss"] += loss
        interval["grad_norm"] += grad_norm
        interval["n"] += 1
        if st["step"] % cfg.run.log_every == 0:
            sps = cfg.train.batch_size / dt
            eta = (steps - st["step"]) * dt
            log(
                f"step {st['step']:5d}/{steps} | loss {loss:.4f} | lr {opt.param_groups[-1]['lr']:.2e} | "
                f"dt {dt * 1000:.0f}ms | {sps:.0f} samples/s | mfu {100 * accounting.mfu(fps, sps, peak):.2f}% | "
                f"eta {eta:.0f}s"
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


def _step_with_ladder(runner, model, opt, world, cfg, indices, st, device, amp, log) -> tuple[float, float]:
    """One optimizer step; on CUDA OOM: halve the micro-batch and double accumulation (same samples, same
    order), then gradient checkpointing, then give up. Every rung is recorded in ``st['ladder']``."""
    while True:
        try:
            return _step(runner, model, opt, world, cfg, indices, st, device, amp)
        except torch.OutOfMemoryError as e:
            opt.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
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
            st["ladder"].append(rung)
            print(f"[oom ladder] {rung}", file=sys.stderr)


def _step(runner, model, opt, world, cfg, indices, st, device, amp) -> tuple[float, float]:
    if st["step"] in cfg.train.inject_oom_steps and st["step"] not in st["injected"]:
        st["injected"].append(st["step"])  # fault injection for tests: a CUDA OOM the real ladder must handle
        raise torch.OutOfMemoryError(
            f"CUDA out of memory (injected by train.inject_oom_steps at step {st['step']})"
        )
    mb, total = st["micro_batch"], len(indices)
    opt.zero_grad(set_to_none=True)
    loss_sum = 0.0
    chunks = [
        world.batch("train", indices[s : s + mb], stream_seed=cfg.train.seed) for s in range(0, total, mb)
    ]
    if len(chunks) > 1:
        # FIX (tests/test_train.py::test_oom_ladder_keeps_the_effective_batch_and_the_sample_order): the caption
        # CE is a mean over scored tokens and captions have 5 or 7, so weighting each micro-batch's token mean
        # by its sample share changed the objective with micro_batch (5e-4 relative on one step). Each
        # micro-batch's token sum is divided by the effective batch's token count, scaled to its sample share.
        scored = sum(int(c["loss_mask"][:, 1:].sum()) for c in chunks)
        for c in chunks:
            c["caption_tokens"] = torch.tensor(scored * len(c["captions"]) / total)  # a tensor: no recompiles
    for batch in chunks:
        weight = len(batch["captions"]) / total  # sample share: the same effective batch at any micro-batch
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device, amp):
            out = runner(batch)
        (out.loss * weight).backward()
        loss_sum += float(out.loss.detach()) * weight
    params = [p for g in opt.param_groups for p in g["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm))
    if math.isfinite(loss_sum):
        opt.step()
    return loss_sum, grad_norm


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
    world = VideoWorld(cfg.world)
    print(
        f"\n{summary['status']}: {summary['steps']} steps, {summary['samples_seen']:,} samples, "
        f"{summary['wall_s']:.1f}s wall"
    )
    print(
        f"val_loss_fine {summary.get('val_loss_fine', float('nan')):.4f} | val_loss_coarse "
        f"{summary.get('val_loss_coarse', float('nan')):.4f} | loss_ratio {summary.get('loss_ratio', float('nan')):.4f} "
        f"| attn_entropy coarse {summary.get('attn_entropy_coarse', float('nan')):.3f} fine "
        f"{summary.get('attn_entropy_fine', float('nan')):.3f}"
    )
    print(
        f"baselines: unigram entropy {world.unigram_entropy():.4f} | blind (grammar-aware) {world.blind_entropy():.4f} "
        f"| train/inference gap {summary.get('train_infer_gap', float('nan')):+.4f}"
    )
    print(f"summary: {out / 'summary.json'}")
    return 0 if summary["status"] == "complete" else 1


def dry_run(cfg: Config) -> int:
    model, world = build(cfg)
    vocab = len(world.tokenizer)
    fps = accounting.flops_per_sample(cfg, vocab)
    steps, samples = total_steps(cfg, fps)
    params = accounting.count_params(model)
    mem = accounting.memory_estimate_mb(cfg, params["total"], cfg.train.micro_batch, vocab)
    print(describe(cfg))
    print(
        f"params {params['total']:,} ({accounting.PARAMS_CONVENTION}) | {fps:.3g} FLOPs/sample | "
        f"{steps} steps x {cfg.train.batch_size} = {samples:,} samples = {fps * samples:.3g} FLOPs | "
        f"memory estimate {mem:.0f} MiB at micro_batch {cfg.train.micro_batch} | evals at {eval_steps(cfg, steps)}"
    )
    print(f"config_hash {config_hash(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
