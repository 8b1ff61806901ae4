"""Memory-aware packing: how many trials share a GPU (or the CPU cores), and what each one may use.

    from tune.resources import plan_resources, probe_memory_mb
    plan = plan_resources(cfgs, cores=2, gpus=0)               # CPU: threads per trial and concurrency
    plan = plan_resources(cfgs, cores=16, gpus=1, card_mb=24564) # GPU: a fraction per trial from its memory
    print(plan.describe())
    probe_memory_mb(cfg, micro_batch=8)                        # on a CUDA machine: peak MiB reserved, 3 steps

GPU: each cell's peak training memory times ``headroom``, plus the CUDA context, becomes ``k`` trials per card,
``k`` a power of two (Ray counts fractions against the total GPU count, ray issue 5902: fractions that divide
1 pack cleanly). The memory is measured when a CUDA device is visible (``probe_memory_mb``: the caching
allocator's peak reservation over PROBE_STEPS real optimizer steps, run as a Ray task on a whole GPU), else the
analytic ``fvlm.accounting.memory_estimate_mb``. The plan fills the GPU's *free* memory
(``torch.cuda.mem_get_info``), not its total: another process on the card is not ours to pack into. The Ray
GPU fraction is ``1/k`` and the trial caps its caching allocator at its share (``cap_process_memory``): Ray only
does the bookkeeping, nothing stops a trial from taking the whole card (ray issue 10677). A cell that does not
fit at its micro-batch, or whose probe runs out of memory, is measured again at half the micro-batch (same
samples, same order: the OOM ladder's first rung, taken ahead of time); one that does not fit even at
micro-batch 1 raises ``CellTooLarge`` with the numbers, before anything is launched.

CPU: one torch thread per trial and one trial per core (measured on 2 cores: two 1-thread trials beat one
2-thread trial by ~1.5x on s2, and two-thread trials under contention slow down 10x), unless there are
fewer cells than cores; concurrency is also bounded by RAM (~0.6 GB per Ray worker with torch loaded).
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fvlm import accounting
from fvlm.config import Config, tier_values

CUDA_CONTEXT_MB = (
    600.0  # ASSUMPTION: CUDA context + cuBLAS workspace per process, outside the caching allocator
)
WORKER_RAM_MB = 600.0  # measured: a Ray worker with torch + transformers imported (~555 MB)
MAX_TRIALS_PER_GPU = 8
PROBE_STEPS = 3  # optimizer steps per probe: AdamW's state exists from the second on (probe_memory_mb)

Measure = Callable[[Config, int], float]  # (cfg, micro_batch) -> peak MiB; may raise torch.OutOfMemoryError


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


def run_probe_steps(
    model, opt, data, cfg: Config, micro_batch: int, device: torch.device, steps: int
) -> None:
    """`steps` optimizer steps of `model` through fvlm.train's own step (no OOM ladder: an OOM propagates) on
    the run's training clips. When the run accumulates (batch_size > micro_batch) each step takes two
    micro-batches, so that the second one's activations meet the gradients of the first, as in the loop."""
    from fvlm.train import _step, autocast_dtype

    amp = autocast_dtype(cfg, device)
    clips = micro_batch * (2 if cfg.train.batch_size > micro_batch else 1)
    for i in range(steps):
        batch = data.batch("train", range(i * clips, (i + 1) * clips), stream_seed=cfg.train.seed)
        _step(
            model,
            model,
            opt,
            cfg,
            batch,
            {"step": i, "micro_batch": micro_batch, "injected": []},
            device,
            amp,
        )


def probe_memory_mb(cfg: Config, micro_batch: int, steps: int = PROBE_STEPS, device: str = "cuda") -> float:
    """Peak CUDA memory (MiB) the caching allocator reserves over `steps` real optimizer steps at `micro_batch`.

    The model is built by fvlm.train.build and stepped by the loop's optimizer factory. Several steps, because
    AdamW allocates its two moments inside the first step, after that step's activations are freed: only from
    the second step on do moments, gradients and activations coexist (one step underestimated the peak).
    Reserved, not allocated: the per-process cap (cap_process_memory) limits what the caching allocator
    reserves, fragmentation included (PyTorch docs, "CUDA semantics: memory management"). Raises
    torch.OutOfMemoryError when the step does not fit. Run it where the GPU is (cluster_probe)."""
    import copy

    from fvlm.train import build, make_optimizer

    dev = torch.device(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    model = opt = None
    try:
        model, data = build(copy.deepcopy(cfg), dev)  # build() writes the loaded sizes into its config
        opt = make_optimizer(model, cfg, dev)
        run_probe_steps(model, opt, data, cfg, micro_batch, dev, steps)
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_reserved(dev) / 2**20
    finally:
        del model, opt
        gc.collect()
        torch.cuda.empty_cache()


def _probe_or_inf(cfg: Config, micro_batch: int) -> float:
    try:
        return probe_memory_mb(cfg, micro_batch)
    except torch.OutOfMemoryError:
        return math.inf  # an exception through ray.get arrives wrapped; a plain number does not


def cluster_probe() -> Measure:
    """A measure (cfg, micro_batch) -> MiB that runs probe_memory_mb as a Ray task on a whole GPU of the
    cluster, in a fresh worker process per probe (max_calls=1: no allocator state carried over), cached per
    (model, micro-batch); an OOM comes back as inf."""
    import ray

    task = ray.remote(num_gpus=1, max_calls=1)(_probe_or_inf)
    cache: dict[tuple[str, int], float] = {}

    def measure(cfg: Config, micro_batch: int) -> float:
        key = (accounting.model_key(cfg), micro_batch)
        if key not in cache:
            cache[key] = float(ray.get(task.remote(cfg, micro_batch)))
        return cache[key]

    return measure


def free_gpu_mb() -> float | None:
    """Free memory (MiB) of the least free visible GPU, None without CUDA. torch.cuda.mem_get_info is
    cudaMemGetInfo: what other processes (and this one's CUDA context) leave, which is what trials can use."""
    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())) / 2**20


# ----------------------------------------------------------------------------- packing


def trials_per_gpu(need_mb: float, card_mb: float, limit: int = MAX_TRIALS_PER_GPU) -> int:
    """Largest power of two k <= limit with k * need_mb <= card_mb (0 if not even one fits)."""
    k = 0
    while k * 2 <= limit and (k * 2 or 1) * need_mb <= card_mb:
        k = k * 2 or 1
    return k


def fit_micro_batch(
    cfg: Config, budget_mb: float, headroom: float, measure: Measure
) -> tuple[int, float, list[tuple[int, float]]]:
    """(micro-batch, its memory, [(micro-batch, memory) tried]): the largest micro-batch, halving from the
    config's (dividing the batch), whose measured need fits `budget_mb`. A measurement that runs out of memory
    (torch.OutOfMemoryError, or inf from cluster_probe) is re-measured at half the micro-batch, like any other
    that does not fit; at micro-batch 1 the last measurement is returned for the caller to refuse."""
    mb = cfg.train.micro_batch
    tried: list[tuple[int, float]] = []
    while True:
        try:
            mem = float(measure(cfg, mb))
        except torch.OutOfMemoryError:
            mem = math.inf
        tried.append((mb, mem))
        if mem * headroom + CUDA_CONTEXT_MB <= budget_mb or mb == 1:
            return mb, mem, tried
        mb = max(1, mb // 2)
        while cfg.train.batch_size % mb:
            mb -= 1


def _analytic(cfg: Config, micro_batch: int) -> float:
    return analytic_memory_mb(cfg, micro_batch)[0]


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
    measure: Measure | None = None,
    free_mb: float | None = None,
) -> Plan:
    """Resources of every cell (same order as `cfgs`) and the concurrency; raises CellTooLarge before launch.

    `probe=True` measures each model on a GPU of the Ray cluster (cluster_probe) at each micro-batch tried;
    otherwise memory is the analytic estimate. `measure` replaces either (a function (cfg, micro_batch) ->
    MiB that may raise torch.OutOfMemoryError; tests inject one). The plan fills `free_mb` (default: the free
    memory of the visible GPU, free_gpu_mb(); the card's `card_mb` when none is visible), never more than
    `card_mb`. `threads` forces torch threads per trial on CPU (0 = one per core, see above).
    """
    cores = max(1, int(cores))
    if ram_mb is None:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    if gpus <= 0:
        return _plan_cpu(cfgs, cores, ram_mb, threads)

    cells, notes = [], []
    free = free_mb if free_mb is not None else free_gpu_mb()  # before any probe holds memory
    budget = min(card_mb, free) if free is not None and card_mb else (free or card_mb)
    if budget < card_mb:
        notes.append(f"planning against {budget:.0f} MiB free of the card's {card_mb:.0f} MiB (mem_get_info)")
    if measure is None:
        measure = cluster_probe() if probe else _analytic
    source = "probe" if probe else "analytic"
    per_gpu_counts: dict[int, int] = {}
    for cfg in cfgs:
        tier = tier_values(cfg.model)[0]
        mb, mem, tried = fit_micro_batch(cfg, budget, headroom, measure)
        need = mem * headroom + CUDA_CONTEXT_MB
        where = f"the card has {budget:.0f} MiB" + (" free" if budget < card_mb else "")
        if math.isinf(mem):
            raise CellTooLarge(
                f"tier {tier} ran out of memory in the probe at every micro_batch down to 1 (tried "
                f"{', '.join(str(b) for b, _ in tried)}); {where}: drop the tier, use fewer frames, or freeze "
                "a backbone"
            )
        if need > budget:
            raise CellTooLarge(
                f"tier {tier} needs {need:.0f} MiB at micro_batch 1 ({mem:.0f} MiB {'probed' if probe else 'estimated'}"
                f" x headroom {headroom} + {CUDA_CONTEXT_MB:.0f} MiB CUDA context) but {where};"
                " drop the tier, use fewer frames, or freeze a backbone"
            )
        # each trial also needs CPU to feed it: at least half a core per trial
        k = min(trials_per_gpu(need, budget, max_per_gpu), _pow2_floor(2 * cores // gpus))
        frac = 1.0 / k
        # the cap is a fraction of the card's total memory (torch.cuda.set_per_process_memory_fraction)
        cap = max(0.05, (budget / k - CUDA_CONTEXT_MB) / (card_mb or budget))
        cpus = cores / (k * gpus)
        threads_ = max(1, int(cpus))
        cells.append(CellResources(cpus, frac, threads_, mem, source, mb, cap))
        ooms = [b for b, m in tried if math.isinf(m)]
        if ooms:
            note = (
                f"tier {tier}: the probe ran out of memory at micro_batch {', '.join(map(str, ooms))} -> {mb} "
                f"(grad_accum x{cfg.train.micro_batch // mb}, same samples)"
            )
        else:
            note = (
                f"tier {tier}: micro_batch {cfg.train.micro_batch} -> {mb} to fit (grad_accum "
                f"x{cfg.train.micro_batch // mb}, same samples)"
            )
        if mb != cfg.train.micro_batch and note not in notes:
            notes.append(note)
        per_gpu_counts[k] = per_gpu_counts.get(k, 0) + 1
        why = (
            f"tier {tier}: {mem:.0f} MiB x {headroom} + {CUDA_CONTEXT_MB:.0f} context = {need:.0f} MiB "
            f"-> {k} per {budget:.0f} MiB (gpu {frac:g}, memory cap {cap:.3f})"
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
