"""Memory-aware packing: how many trials share a GPU (or the CPU cores), and what each one may use.

    from tune.resources import plan_resources, cell_memory_mb
    plan = plan_resources(cfgs, cores=2, gpus=0)               # CPU: threads per trial and concurrency
    plan = plan_resources(cfgs, cores=16, gpus=1, card_mb=24564) # GPU: a fraction per trial from its memory
    print(plan.describe())

GPU: each cell's peak training memory (a probe step measuring ``torch.cuda.max_memory_allocated`` when a
CUDA device is visible, else the analytic ``fvlm.accounting.memory_estimate_mb``) times ``headroom``, plus
the CUDA context, becomes ``k`` trials per card, ``k`` a power of two (Ray counts fractions against the
total GPU count, ray issue 5902: fractions that divide 1 pack cleanly). The Ray GPU fraction is ``1/k``
and the trial caps its caching allocator at its share (``cap_process_memory``): Ray only does the
bookkeeping, nothing stops a trial from taking the whole card (ray issue 10677). A cell that does not fit
at its micro-batch gets a smaller one (same samples, same order: the OOM ladder's first rung, taken ahead
of time); one that does not fit even at micro-batch 1 raises ``CellTooLarge`` with the numbers, before
anything is launched.

CPU: one torch thread per trial and one trial per core (measured on 2 cores: two 1-thread trials beat one
2-thread trial by ~1.5x on s2, and two-thread trials under contention slow down 10x), unless there are
fewer cells than cores; concurrency is also bounded by RAM (~0.6 GB per Ray worker with torch loaded).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from fvlm import accounting
from fvlm.config import Config, tier_values

CUDA_CONTEXT_MB = (
    600.0  # ASSUMPTION: CUDA context + cuBLAS workspace per process, outside the caching allocator
)
WORKER_RAM_MB = 600.0  # measured: a Ray worker with torch + transformers imported (~555 MB)
MAX_TRIALS_PER_GPU = 8


class CellTooLarge(ValueError):
    """A cell that cannot fit on the card even at micro-batch 1; the message carries the numbers."""


@dataclass
class CellResources:
    cpus: float  # Ray CPU resource of the trial
    gpu_fraction: float  # Ray GPU resource (0 on CPU)
    threads: int  # torch intra-op threads
    mem_mb: float  # estimated (or probed) peak training memory at `micro_batch`
    mem_source: str  # "probe" | "analytic"
    micro_batch: int  # possibly lowered from the config so that the cell fits its share
    mem_cap: float  # torch.cuda.set_per_process_memory_fraction for the trial (0 = no cap)


@dataclass
class Plan:
    mode: str  # "cpu" | "gpu"
    cores: int
    gpus: int
    card_mb: float
    concurrency: int
    cells: list[CellResources]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.mode == "cpu":
            t = self.cells[0].threads if self.cells else 1
            return (
                f"CPU packing: {self.concurrency} trial(s) at a time on {self.cores} core(s), {t} torch "
                f"thread(s) each; " + "; ".join(self.notes)
            )
        per = sorted({round(1 / c.gpu_fraction) for c in self.cells})
        lines = [
            f"GPU packing: {self.gpus} GPU(s) of {self.card_mb:.0f} MiB, {self.cores} CPU cores; "
            f"{'/'.join(map(str, per))} trial(s) share a GPU; at most {self.concurrency} at a time"
        ]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- memory of one cell


def analytic_memory_mb(cfg: Config, micro_batch: int | None = None) -> tuple[float, int, str]:
    """(peak MiB, params, note) from fvlm.accounting.memory_estimate_mb at `micro_batch` (default: the config's)."""
    params, vocab, note = accounting.params_from_config(cfg)
    _, text_len, _ = accounting.data_shape(cfg)
    mb = micro_batch or cfg.train.micro_batch
    return accounting.memory_estimate_mb(cfg, params, mb, vocab, text_len=text_len), params, note


def probe_memory_mb(cfg: Config, micro_batch: int) -> float:
    """Peak CUDA memory (MiB) of one real training step at `micro_batch` (forward, backward, AdamW step).

    One step is not a training loop: the model is built by fvlm.train.build and stepped once by the same
    optimizer factory, so the peak includes AdamW's moments. Run it where the GPU is (probe_on_cluster).
    """
    from fvlm.train import autocast, autocast_dtype, build, make_optimizer

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model, world = build(cfg, device)
    opt = make_optimizer(model, cfg, device)
    batch = world.batch("train", range(micro_batch), stream_seed=cfg.train.seed)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    try:
        with autocast(device, autocast_dtype(cfg, device)):
            loss = model(batch).loss
        loss.backward()
        opt.step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    except torch.OutOfMemoryError:
        return math.inf
    finally:
        del model, opt
        torch.cuda.empty_cache()


def probe_on_cluster(cfgs: dict[str, Config], micro_batches: dict[str, int]) -> dict[str, float]:
    """Probe each distinct model on a whole GPU of the Ray cluster (one Ray task each, in sequence)."""
    import ray

    @ray.remote(num_gpus=1, max_calls=1)  # a fresh process per probe: no cached allocator state
    def _probe(cfg: Config, mb: int) -> float:
        return probe_memory_mb(cfg, mb)

    return {k: ray.get(_probe.remote(c, micro_batches[k])) for k, c in cfgs.items()}


# ----------------------------------------------------------------------------- packing


def trials_per_gpu(need_mb: float, card_mb: float, limit: int = MAX_TRIALS_PER_GPU) -> int:
    """Largest power of two k <= limit with k * need_mb <= card_mb (0 if not even one fits)."""
    k = 0
    while k * 2 <= limit and (k * 2 or 1) * need_mb <= card_mb:
        k = k * 2 or 1
    return k


def _fit_micro_batch(cfg: Config, card_mb: float, headroom: float, measure) -> tuple[int, float]:
    """The largest micro-batch (halving from the config's, dividing the batch) whose need fits the card."""
    mb = cfg.train.micro_batch
    while True:
        mem = measure(cfg, mb)
        if mem * headroom + CUDA_CONTEXT_MB <= card_mb or mb == 1:
            return mb, mem
        mb = max(1, mb // 2)
        while cfg.train.batch_size % mb:
            mb -= 1


def plan_resources(
    cfgs: list[Config],
    *,
    cores: int,
    gpus: int = 0,
    card_mb: float = 0.0,
    headroom: float = 1.2,
    probe: bool = False,
    max_per_gpu: int = MAX_TRIALS_PER_GPU,
    ram_mb: float | None = None,
    threads: int = 0,
) -> Plan:
    """Resources of every cell (same order as `cfgs`) and the concurrency; raises CellTooLarge before launch.

    `probe=True` measures each distinct model on the GPU (needs CUDA in a Ray cluster); otherwise memory is
    the analytic estimate. `threads` forces torch threads per trial on CPU (0 = one per core, see above).
    """
    cores = max(1, int(cores))
    if ram_mb is None:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    if gpus <= 0:
        return _plan_cpu(cfgs, cores, ram_mb, threads)

    probed: dict[str, float] = {}
    if probe:
        keys = {accounting.model_key(c): c for c in cfgs}
        probed = probe_on_cluster(keys, {k: c.train.micro_batch for k, c in keys.items()})

    def measure(cfg: Config, mb: int) -> float:
        key = accounting.model_key(cfg)
        if probe and mb == cfg.train.micro_batch and key in probed:
            return probed[key]
        if probe:  # a lowered micro-batch: scale the measured activations by the analytic ratio
            full, _, _ = analytic_memory_mb(cfg, cfg.train.micro_batch)
            low, _, _ = analytic_memory_mb(cfg, mb)
            return probed[key] * low / full
        return analytic_memory_mb(cfg, mb)[0]

    cells, notes = [], []
    per_gpu_counts: dict[int, int] = {}
    for cfg in cfgs:
        tier = tier_values(cfg.model)[0]
        mb, mem = _fit_micro_batch(cfg, card_mb, headroom, measure)
        need = mem * headroom + CUDA_CONTEXT_MB
        if need > card_mb:
            raise CellTooLarge(
                f"tier {tier} needs {need:.0f} MiB at micro_batch 1 ({mem:.0f} MiB {'probed' if probe else 'estimated'}"
                f" x headroom {headroom} + {CUDA_CONTEXT_MB:.0f} MiB CUDA context) but the card has {card_mb:.0f} MiB;"
                " drop the tier, use fewer frames, or freeze a backbone"
            )
        # each trial also needs CPU to feed it: at least half a core per trial
        k = min(trials_per_gpu(need, card_mb, max_per_gpu), _pow2_floor(2 * cores // gpus))
        frac = 1.0 / k
        cap = max(0.05, frac - CUDA_CONTEXT_MB / card_mb)
        cpus = cores / (k * gpus)
        threads_ = max(1, int(cpus))
        cells.append(CellResources(cpus, frac, threads_, mem, "probe" if probe else "analytic", mb, cap))
        if mb != cfg.train.micro_batch:
            notes.append(
                f"tier {tier}: micro_batch {cfg.train.micro_batch} -> {mb} to fit (grad_accum "
                f"x{cfg.train.micro_batch // mb}, same samples)"
            )
        per_gpu_counts[k] = per_gpu_counts.get(k, 0) + 1
        why = (
            f"tier {tier}: {mem:.0f} MiB x {headroom} + {CUDA_CONTEXT_MB:.0f} context = {need:.0f} MiB "
            f"-> {k} per {card_mb:.0f} MiB card (gpu {frac:g}, memory cap {cap:.3f})"
        )
        if why not in notes:
            notes.append(why)
    concurrency = max(1, int(gpus * max(per_gpu_counts)))
    return Plan("gpu", cores, gpus, card_mb, concurrency, cells, notes)


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _plan_cpu(cfgs: list[Config], cores: int, ram_mb: float, threads: int) -> Plan:
    n = max(1, len(cfgs))
    threads = threads or max(1, cores // min(cores, n))
    concurrency = max(1, min(cores // threads, n))
    mems = [analytic_memory_mb(c)[0] for c in cfgs] or [0.0]
    by_ram = max(1, int(0.8 * ram_mb // (WORKER_RAM_MB + max(mems))))
    notes = [
        f"{threads} thread(s) x {concurrency} trial(s) (1 thread per trial beats 2 per trial on small cells)"
    ]
    if by_ram < concurrency:
        notes.append(
            f"RAM limits concurrency to {by_ram} ({max(mems):.0f} MiB per trial + {WORKER_RAM_MB:.0f} worker)"
        )
        concurrency = by_ram
    cells = [
        CellResources(float(threads), 0.0, threads, m, "analytic", c.train.micro_batch, 0.0)
        for c, m in zip(cfgs, mems, strict=False)
    ]
    return Plan("cpu", cores, 0, 0.0, concurrency, cells, notes)


def cap_process_memory(fraction: float) -> None:
    """Cap this process's CUDA caching allocator at `fraction` of the card (no-op without CUDA)."""
    if fraction and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, fraction))
