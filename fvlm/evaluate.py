"""Held-out evaluation: both reads' losses, attention statistics, slot accuracy, and the final row's extras.

    from fvlm.evaluate import evaluate
    metrics = evaluate(model, data, cfg, batch_size, device, amp, final=False)   # data: fvlm.data.make_data

The training loop (fvlm/train.py) calls it at every evaluation step, under its OOM ladder: ``batch_size`` is
the loop's current micro-batch, and the losses do not depend on it (token means over exactly the same
clips). ``final=True`` adds the true-inference loss (autoregressive, KV cache), the train/inference gap and
a few sample outputs for the report card (:func:`sample_outputs`).

Where the coarse read is not trained (``coarse_fine`` with ``lambda_coarse = 0``), its caption CE is a
counterfactual number: it is reported as ``val_loss_coarse_untrained``, and ``val_loss_coarse`` and
``loss_ratio`` stay empty (NaN), so that no fit or verdict reads an untrained read as the static arm.
"""

from __future__ import annotations

import json
import math

import torch

from fvlm.config import Config
from fvlm.model import FoveatedVLM, autocast

# metrics every evaluation reports (NaN where a mode has no such read)
ALWAYS = (
    "val_loss_fine",
    "val_loss_coarse",
    "attn_entropy_fine",
    "attn_on_target_fine",
    "attn_entropy_coarse",
    "attn_on_target_coarse",
)


def coarse_is_trained(cfg: Config) -> bool:
    """Whether the optimizer trains the coarse read's caption loss (coarse_only, or lambda_coarse > 0)."""
    return cfg.model.mode == "coarse_only" or cfg.model.lambda_coarse > 0


@torch.no_grad()
def evaluate(
    model: FoveatedVLM,
    data,
    cfg: Config,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
    final: bool = False,
    inject_oom: bool = False,
) -> dict:
    """Held-out losses of both reads, attention statistics, slot accuracy (and at the end the AR pass).

    ``inject_oom`` (fault injection, ``train.inject_oom_eval_steps``): raise a CUDA out-of-memory error
    after the first batch's forward, as a real one would, so that the loop's OOM ladder is tested."""
    was_training = model.training
    model.eval()
    try:
        out = _evaluate(model, data, cfg, batch_size, device, amp, final, inject_oom)
    finally:
        model.train(was_training)  # also after an OOM: the ladder retries and training goes on
    for k in ALWAYS:
        out.setdefault(k, float("nan"))
    if cfg.model.mode == "coarse_fine" and not coarse_is_trained(cfg):
        out["val_loss_coarse_untrained"] = out["val_loss_coarse"]
        out["val_loss_coarse"] = float("nan")
    # the ratio is a claim about two trained reads: report it only when the coarse read is trained
    trained = cfg.model.mode == "coarse_fine" and coarse_is_trained(cfg)
    out["loss_ratio"] = out["val_loss_fine"] / out["val_loss_coarse"] if trained else float("nan")
    if "val_loss_ar" in out:
        out["train_infer_gap"] = out["val_loss_ar"] - out["val_loss_fine"]
    return out


def predicted_captions(data, logits: torch.Tensor, batch: dict) -> list[str]:
    """The teacher-forced argmax of every scored token (logits at position j predict token j+1), decoded by
    the data's codec: words, whichever tokenizer the LLM reads."""
    pred = logits[:, :-1].argmax(-1).cpu()
    mask = batch["loss_mask"][:, 1:].cpu()
    return [data.codec.answer_text(p, m) for p, m in zip(pred, mask, strict=True)]


def _evaluate(model, data, cfg, batch_size, device, amp, final, inject_oom) -> dict:
    sums: dict[str, float] = {}
    seen = 0
    limit = min(cfg.train.eval_samples, data.val_size)
    # FIX (tests/test_train.py::test_oom_ladder_keeps_the_effective_batch_and_the_sample_order): the val
    # losses are token means over exactly `limit` clips at any eval batch size (the OOM ladder halves it):
    # the last batch is cut at `limit`, and each batch's caption CE is its token sum over the set's token
    # count scaled to the batch's sample share, so the sample-weighted mean below is the token mean.
    tokens = data.val_scored_tokens(limit)
    for batch in data.val_batches(batch_size):
        if seen >= limit:
            break
        if seen + len(batch["captions"]) > limit:
            batch = {k: v[: limit - seen] for k, v in batch.items()}
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        n = batch["frames"].shape[0]
        batch["caption_tokens"] = torch.tensor(tokens * n / limit, device=device)
        with autocast(device, amp):
            out = model(batch, compute_coarse=True)
            if inject_oom:
                raise torch.OutOfMemoryError(
                    "CUDA out of memory (injected by train.inject_oom_eval_steps, inside the evaluation)"
                )
            vals = {
                "val_loss": out.loss_fine if out.loss_fine is not None else out.loss_coarse,
                "val_loss_fine": out.loss_fine,
                "val_loss_coarse": out.loss_coarse,
                **out.stats,
            }
            if out.logits is not None:
                acc = data.slot_accuracy(out.logits, batch)
                vals.update({f"val_acc_{k}": v for k, v in acc.items()})
            if final and model.cfg.mode == "coarse_fine":
                vals["val_loss_ar"] = model(batch, mode="autoregressive").loss
        for k, v in vals.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                sums[k] = sums.get(k, 0.0) + float(v) * n
                sums[f"_n_{k}"] = sums.get(f"_n_{k}", 0) + n
        seen += n
    result = {k: sums[k] / sums[f"_n_{k}"] for k in sums if not k.startswith("_n_")}
    if final:
        result["samples_json"] = sample_outputs(model, data, device, amp)
    return result


@torch.no_grad()
def sample_outputs(model: FoveatedVLM, data, device: torch.device, amp, n: int = 4) -> str:
    """The first ``n`` held-out clips: true vs predicted caption (teacher-forced argmax of the scored pass,
    decoded by the codec) and each read's last-layer attention over the patch grid, as JSON for the report
    card, with ``data.source_info()`` (the world config: clips are re-rendered when plotted)."""
    batch = next(data.val_batches(n))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with autocast(device, amp):
        out = model(batch, compute_coarse=True)
    preds = predicted_captions(data, out.logits, batch) if out.logits is not None else None
    rows = []
    for i in range(len(batch["captions"])):
        row = {"val_index": i, "truth": batch["captions"][i]}
        if "clip_ids" in batch:
            row["clip_id"] = batch["clip_ids"][i]
        if preds is not None:
            row["pred"] = preds[i]
        for name in ("coarse", "fine"):
            attn = getattr(out, f"attn_{name}")
            if attn is not None:  # [B, T, L, H, P] -> last layer, head mean, patches only: [T, grid*grid]
                row[f"attn_{name}"] = attn[i, :, -1].float().mean(1)[:, 1:].round(decimals=3).tolist()
        rows.append(row)
    return json.dumps({**data.source_info(), "clips": rows})
