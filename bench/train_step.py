"""Training-step throughput of the default tier: the K/V-cached foveated read vs a naive re-encode.

    python bench/train_step.py [--steps 20] [--repeats 3] [key=value ...]

The foveated model reads each frame several times (one coarse read, ``fine_iters`` fine reads). fvlm
encodes the frame ONCE and every query pass reads the cached per-layer K/V. The naive variant re-runs the
DINO patch layers for every query pass (what a straightforward "append the query token to the patch
sequence and run DINO" implementation costs). Both run the same optimizer step through
``fvlm.train._step`` in this one process, interleaved, so the ratio is the result (absolute numbers
depend on the machine and its load). FLOPs/s uses the analytic FLOPs of the cached model: useful work.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fvlm import accounting
from fvlm.config import load_config
from fvlm.model import FoveatedVLM
from fvlm.train import _step, build, make_optimizer


class NaiveRead(FoveatedVLM):
    """Same model, but every query pass re-encodes the frames instead of reading the cache."""

    def forward(self, batch, mode=None, compute_coarse=False):
        self._frames = batch["frames"].flatten(0, 1)
        return super().forward(batch, mode, compute_coarse)

    def _read(self, cache, queries, bias):
        fresh = self.encoder.encode(self._frames)
        return super()._read(fresh, queries, bias)


def time_steps(model, opt, world, cfg, steps: int) -> float:
    st = {"step": 0, "micro_batch": cfg.train.batch_size, "injected": []}
    t0 = time.perf_counter()
    for i in range(steps):
        batch = world.batch("train", range(i * cfg.train.batch_size, (i + 1) * cfg.train.batch_size))
        _step(model, model, opt, cfg, batch, st, torch.device("cpu"), None)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", default="configs/base.yaml")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    cached, world = build(cfg)
    naive = NaiveRead(cfg.model, cfg.world, len(world.tokenizer), {}, seed=cfg.train.seed)
    naive.load_state_dict(cached.state_dict())
    flops_per_sample = accounting.flops_per_sample(cfg, len(world.tokenizer))
    opts = {
        "cached": make_optimizer(cached, cfg, torch.device("cpu")),
        "naive": make_optimizer(naive, cfg, torch.device("cpu")),
    }
    models = {"cached": cached, "naive": naive}
    for name in models:  # warm-up
        time_steps(models[name], opts[name], world, cfg, 2)
    times: dict[str, list[float]] = {"cached": [], "naive": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit both variants alike
        for name in models:
            times[name].append(time_steps(models[name], opts[name], world, cfg, args.steps))
    print(
        f"{cfg.model.scale=} threads={torch.get_num_threads()} batch={cfg.train.batch_size} "
        f"reads/frame={1 + cfg.model.fine_iters} | {flops_per_sample:.3g} FLOPs/sample (analytic, cached model)"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, dt in med.items():
        sps = cfg.train.batch_size / dt
        print(
            f"{name:7s} {dt * 1000:7.1f} ms/step  {sps:7.1f} samples/s  {sps * flops_per_sample / 1e9:6.2f} GFLOP/s (useful)"
        )
    print(f"speed-up of the K/V cache over re-encoding: {med['naive'] / med['cached']:.2f}x")


if __name__ == "__main__":
    main()
