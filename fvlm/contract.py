"""The row contract: the names that fvlm writes, tune reports and analysis reads. One home for all three.

    from fvlm.contract import METRICS, KEY_COLUMNS, FINAL_STATUSES, CONTRACT_VERSION

A *row* is one evaluation of one run (``fvlm.train.train`` calls ``report(row, checkpoint)``); the Tune
trainable adds the key columns; ``analysis/store.py`` turns the rows of an experiment into
``store/evals.parquet`` (one row per report) and ``store/runs.parquet`` (one row per trial). Users' scripts
read these files, so a name here changes only together with every reader, and ``CONTRACT_VERSION`` changes
whenever a number under an unchanged name would mean something else (it is part of every config hash, so
results made under an older meaning are never reused as if they were current).

No torch import here: the analysis side reads this module without loading a model.
"""

from __future__ import annotations

# Version 2 (2026-12-02): train_loss is the fine caption CE (was the optimised objective); FLOPs per sample
# count backward passes only where gradients flow (frozen backbones); every submodule is initialised from
# (seed, module name), so paired seeds share their init across arms; val_loss_coarse is empty where the
# coarse read is not trained.
CONTRACT_VERSION = 2

# identity of a row: which experiment, trial and cell it belongs to
KEY_COLUMNS = [
    "experiment",
    "kind",
    "trial_id",
    "config_hash",
    "tier",
    "params_n",
    "budget_flops",
    "seed",
    "arm",
    "generation",  # hash of the base config + the command's --set overrides (tune/flags.py)
]

# one value per evaluation
METRICS = [
    "step",
    "samples_seen",
    "flops_seen",
    "wall_s",
    "train_loss",  # the fine caption CE on the training batches since the last eval: val_loss's quantity
    "train_objective",  # what the optimizer minimised (fine + lambda_coarse * coarse, + reconstruction)
    "in_warmup",  # True for the untrained step-0 eval and evals inside LR warmup: excluded from fits
    "val_loss",
    "val_loss_fine",
    "val_loss_coarse",  # empty (NaN) where the coarse read is not trained: see val_loss_coarse_untrained
    "loss_ratio",
    "attn_entropy_coarse",
    "attn_entropy_fine",
    "attn_on_target_coarse",
    "attn_on_target_fine",
    "lr",
    "grad_norm",
    "samples_per_s",
    "peak_mem_mb",
    "mfu",
    "micro_batch",
    "grad_accum",
    "oom_retries",
    "status",
]

# constant over a run, repeated in every row
RUN_CONSTANTS = [
    "params_n",
    "params_convention",
    "flops_per_sample",
    "tier",
    "seed",
    "config_hash",
    "val_loss_blind",  # the no-vision bound of val_loss (best caption model that never sees the video)
]

# extra keys of some rows (not in every row)
OPTIONAL_METRICS = [
    "val_loss_coarse_untrained",  # the coarse read's CE where lambda_coarse = 0: a counterfactual number
    "val_loss_ar",  # final row: true inference (autoregressive, KV cache)
    "train_infer_gap",  # final row: val_loss_ar - val_loss_fine
    "attn_on_target_chance_coarse",  # the target's share of the patches: chance level of attn_on_target
    "attn_on_target_chance_fine",
    "attn_entropy_uniform_coarse",  # ln(keys): the entropy of uniform attention, the baseline of attn_entropy
    "attn_entropy_uniform_fine",
    "samples_json",  # final row: held-out clips, true vs predicted captions and attention maps
    "error",
]

STATUSES = ("running", "complete", "diverged", "oom", "failed", "stopped")
# a run with one of these has a final row: nothing more will be reported for it
FINAL_STATUSES = ("complete", "diverged", "oom", "failed")
# outcomes of the science itself: a rerun gives the same result, so the harness does not repeat them unless
# told to (--retry-failed); `failed` (an error, e.g. a killed worker) is retried by default
SETTLED_STATUSES = ("complete", "diverged", "oom")

# metrics whose last finite value becomes final_<name> in runs.parquet
FINAL_METRICS = [
    "train_loss",
    "train_objective",
    "val_loss",
    "val_loss_fine",
    "val_loss_coarse",
    "val_loss_coarse_untrained",
    "loss_ratio",
    "attn_entropy_coarse",
    "attn_entropy_fine",
    "attn_on_target_coarse",
    "attn_on_target_fine",
    "val_loss_blind",
]
