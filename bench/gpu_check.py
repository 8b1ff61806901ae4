"""One prepared check of the real path on one NVIDIA GPU: pretrained-shaped models at SmolLM2-135M + DINOv2-small
sizes (random weights, saved in bf16), fvlm.train on CUDA, the memory probe against the real run, and four
fractional trials packed on the card against one, through the tune harness.

    bash bench/gpu_check.sh                                 # set-up + this, <= ~8 min, one JSON + its log
    python bench/gpu_check.py --out bench/gpu_check.json [--parts env,build,train,joint,probe,packing]
    python bench/gpu_check.py --cpu-dry --out /tmp/dry.json # the same code path on the CPU, tiny sizes (CI)

Parts, in order (each in its own try/except with a time limit; its numbers or its error go to the ONE results
file as soon as it ends, so a failure or a kill keeps the rest):
- env: torch and its CUDA build, the card (name, memory total/free, peak FLOP/s from fvlm.accounting), package
  versions. Without a usable CUDA device (a CPU torch build, no driver) every later part is skipped with that
  reason and the exit code is 3 (unless --cpu-dry).
- build: fvlm.pretrained_shapes.save_all at REAL_135M (tokenizer ~4k BPE, LLM vocab 49152) plus an SD-VAE-shaped
  AutoencoderKL, saved with save_pretrained (LLM and DINO in bf16, VAE fp16).
- train: fvlm.train.train from model.llm_path / model.dino_path with model.tier=135M's settings (batch 32,
  micro-batch 8, LR 1e-5 / connector x100), on CUDA: bf16 autocast and fused AdamW (both read back from the
  run); samples/s of the steps after the first evaluation, MFU against fvlm.accounting.peak_flops, peak
  memory (max allocated, and reserved).
- joint: a few steps of model.objective=joint with the saved VAE.
- probe: tune.resources.probe_memory_mb at the run's micro-batch vs the real run's peaks, the analytic
  estimate beside them, and the plan (trials per card, fraction, cap) it gives on this card's free memory.
- packing: tune/scaling_grid.py --smoke-test --preset 4090 at tier 135M (the saved paths) with 1 seed, then 4
  seeds (four fractional trials on the card): wall time, GPU fraction, overlap, aggregate samples/s. Without
  Ray (a bare CUDA image), four concurrent ``python -m fvlm.train`` processes against one instead.
Numbers are single runs on whatever else the card is doing; the JSON names the card and the time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: import the repo's packages

import torch  # noqa: E402

PARTS = ("env", "build", "train", "joint", "probe", "packing")
PACKAGES = ("torch", "transformers", "tokenizers", "diffusers", "safetensors", "ray", "pyarrow", "pandas")
# time limits per part in seconds (real sizes, dry sizes): the whole check must stay within ~8 minutes
LIMITS = {"env": (30, 30), "build": (90, 60), "train": (120, 60), "joint": (60, 60), "probe": (60, 30)}
PACK_RUN_LIMIT = (150, 120)  # each of the two harness invocations


class PartTimeout(Exception):
    """A part ran past its time limit (SIGALRM)."""


class Skip(Exception):
    """A part that cannot run here; the reason is recorded, not an error."""


class Check:
    """The results file and the parts' shared state."""

    def __init__(self, out: Path, dry: bool, work: Path, deadline: float, setup: str) -> None:
        self.out, self.dry, self.work, self.deadline = out, dry, work, deadline
        self.device = torch.device("cpu" if dry else "cuda")
        self.state: dict = {}
        self.fatal = ""  # set when CUDA is not usable: later parts are skipped with this reason
        self.results: dict = {
            "check": "fvlm bench/gpu_check.py",
            "mode": "cpu-dry" if dry else "cuda",
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "setup": setup,
            "card": None,
            "parts": {},
            "errors": [],
            "ok": None,
        }

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=_jsonable))
        os.replace(tmp, self.out)  # atomic: a kill never leaves half a file

    def run(self, name: str, fn, limit_s: float) -> None:
        """Run one part under a time limit; record its result, skip reason or error, then write the file."""
        left = self.deadline - time.time()
        record: dict
        if self.fatal and name != "env":
            record = {"ok": False, "skipped": self.fatal}
        elif left < 10:
            record = {"ok": False, "skipped": f"out of time ({left:.0f} s left of the check's budget)"}
        else:
            limit = int(max(5, min(limit_s, left)))
            print(f"\n=== {name} (limit {limit} s)", flush=True)
            t0 = time.time()
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(limit)
            try:
                record = {"ok": True, **(fn(self) or {})}
            except Skip as e:
                record = {"ok": False, "skipped": str(e)}
            except Exception as e:  # noqa: BLE001 - every failure is recorded, the next part still runs
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
                record = {"ok": False, "error": msg, "traceback": traceback.format_exc().splitlines()[-12:]}
                self.results["errors"].append({"part": name, "error": msg})
            finally:
                signal.alarm(0)
            record["s"] = round(time.time() - t0, 2)
            print(f"=== {name}: {'ok' if record['ok'] else record.get('error') or record.get('skipped')}")
        self.results["parts"][name] = record
        self.write()


def _alarm(signum, frame):
    raise PartTimeout("the part ran past its time limit")


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _free(check: Check) -> None:
    gc.collect()
    if check.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


# ----------------------------------------------------------------------------- parts


def part_env(check: Check) -> dict:
    from fvlm import accounting

    out: dict = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "packages": {p: _version(p) for p in PACKAGES},
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        peak, src = accounting.peak_flops("cuda")
        check.results["card"] = props.name
        out.update(
            device_count=torch.cuda.device_count(),
            card=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_total_mib=_mib(total),
            memory_free_mib=_mib(free),
            peak_flops=peak,
            peak_flops_source=src,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        with contextlib.suppress(Exception):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            out["nvidia_smi"] = smi.stdout.strip()
    elif not check.dry:
        why = (
            f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)"
            if torch.version.cuda is None
            else f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no device "
            "(driver, CUDA_VISIBLE_DEVICES?)"
        )
        check.fatal = f"CUDA not usable: {why}"
        out["cuda_error"] = check.fatal
        print(check.fatal)
    if check.dry:
        peak, src = accounting.peak_flops(check.device)
        out.update(peak_flops=peak, peak_flops_source=src)
    out["cuda_usable"] = not check.fatal and torch.cuda.is_available()
    check.state["peak"] = out.get("peak_flops", float("nan"))
    return out


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def part_build(check: Check) -> dict:
    from fvlm import pretrained_shapes as ps

    shapes = ps.TINY if check.dry else ps.Shapes(llm=ps.REAL_135M.llm, dino=ps.REAL_135M.dino, vae=SD_VAE)
    root = check.work / "models"
    t0 = time.time()
    paths = ps.save_all(root, shapes, device=check.device.type)
    sizes = {
        k: _mib(sum(f.stat().st_size for f in Path(p).iterdir() if f.is_file())) for k, p in paths.items()
    }
    llm = json.loads((Path(paths["llm"]) / "config.json").read_text())
    dino = json.loads((Path(paths["dino"]) / "config.json").read_text())
    check.state["paths"] = paths
    check.state["llm_vocab"] = llm["vocab_size"]
    return {
        "paths": paths,
        "folder_mib": sizes,
        "save_s": round(time.time() - t0, 2),
        "llm": {
            k: llm[k]
            for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "dtype")
        },
        "dino": {
            k: dino[k] for k in ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "dtype")
        },
        "tokenizer_tokens": shapes.tokenizer_vocab,
    }


def _paths(check: Check) -> dict:
    if "paths" not in check.state:
        raise Skip("no saved models (the build part did not complete)")
    return check.state["paths"]


def train_overrides(check: Check, **extra) -> dict:
    """model.tier=135M's schedule and batch at the saved paths; smaller everything in the dry mode."""
    from fvlm.pretrained_shapes import path_overrides

    over = {
        "model.tier": "135M",
        **path_overrides(_paths(check)),
        "world.frame_size": 224,
        "train.device": check.device.type,
        "train.steps": 2 if check.dry else 40,
        "train.eval_points": 1,
        "train.eval_samples": 4 if check.dry else 64,
        "world.val_size": 4 if check.dry else 64,
        "run.out_dir": str(check.work / "runs"),
        "run.log_every": 10,
    }
    if check.dry:
        over.update({"train.batch_size": 4, "train.micro_batch": 2, "world.frames": 4, "train.threads": 1})
    return {**over, **extra}


def _train(check: Check, name: str, over: dict) -> dict:
    """fvlm.train.train with `over`; the numbers of its final row, its optimizer and autocast dtype, peaks."""
    import fvlm.train as ft
    from fvlm import accounting
    from fvlm.config import load_config

    cfg = load_config(None, {**over, "run.name": name})
    seen: dict = {}
    make_optimizer = ft.make_optimizer

    def spy(model, cfg_, device):  # the optimizer train() really builds: is it the fused AdamW?
        opt = make_optimizer(model, cfg_, device)
        seen["fused"] = bool(opt.defaults.get("fused"))
        return opt

    rows: list[dict] = []
    _free(check)
    ft.make_optimizer = spy
    try:
        t0 = time.time()
        summary = ft.train(cfg, lambda row, _path: rows.append(row), log=lambda s: print(f"[{name}] {s}"))
        wall = time.time() - t0
    finally:
        ft.make_optimizer = make_optimizer
    final = rows[-1]
    vocab, text_len, _ = accounting.data_shape(cfg)
    llm_vocab = check.state.get("llm_vocab", vocab)
    # the rows count lm_head FLOPs with the tokenizer's length; the LLM embeds llm_vocab ids
    fps_llm = accounting.flops_per_sample(cfg, llm_vocab, text_len=text_len)
    sps = final["samples_per_s"]
    out = {
        "status": summary["status"],
        "error": summary["error"],
        "steps": summary["steps"],
        "batch_size": cfg.train.batch_size,
        "micro_batch": final["micro_batch"],
        "grad_accum": final["grad_accum"],
        "ladder": final["ladder"],
        "wall_s": round(wall, 1),
        "autocast": str(ft.autocast_dtype(cfg, check.device)),
        "fused_adamw": seen.get("fused"),
        "samples_per_s": sps,
        "samples_per_s_note": "training steps between the first post-warmup evaluation and the last",
        "flops_per_sample": final["flops_per_sample"],
        "flops_per_sample_llm_vocab": fps_llm,
        "mfu": final["mfu"],
        "mfu_llm_vocab": accounting.mfu(fps_llm, sps, check.state.get("peak", float("nan"))),
        "params": final["params_n"],
        "peak_mem_allocated_mib": round(final["peak_mem_mb"], 1),
        "val_loss": final.get("val_loss"),
        "loss_ratio": final.get("loss_ratio"),
    }
    if check.device.type == "cuda":
        out["peak_mem_reserved_mib"] = _mib(torch.cuda.max_memory_reserved())
    if final.get("samples_json"):
        out["sample"] = json.loads(final["samples_json"])["clips"][0]
        out["sample"] = {k: out["sample"].get(k) for k in ("truth", "pred")}
    if summary["status"] != "complete":
        raise RuntimeError(f"the run ended {summary['status']}: {summary['error']}")
    return out, cfg


def part_train(check: Check) -> dict:
    out, cfg = _train(check, "gpu-check-train", train_overrides(check))
    check.state["train"] = out
    check.state["train_overrides"] = train_overrides(check)
    return out


def part_joint(check: Check) -> dict:
    paths = _paths(check)
    if "vae" not in paths:
        raise Skip("no saved VAE")
    over = train_overrides(
        check,
        **{"model.objective": "joint", "model.vae_path": paths["vae"], "train.steps": 2 if check.dry else 6},
    )
    if not check.dry:
        over.update({"train.batch_size": 8, "train.micro_batch": 8})
    return _train(check, "gpu-check-joint", over)[0]


def part_probe(check: Check) -> dict:
    """The probe at the training run's micro-batch vs that run's peaks, and the plan it gives this card."""
    from fvlm.config import load_config
    from fvlm.train import build, make_optimizer
    from tune import resources

    over = check.state.get("train_overrides") or train_overrides(check)
    cfg = load_config(None, over)
    mb = cfg.train.micro_batch
    _free(check)
    out: dict = {"micro_batch": mb, "probe_steps": resources.PROBE_STEPS}
    analytic, _, _ = resources.analytic_memory_mb(cfg, mb)
    out["analytic_mib"] = round(analytic, 1)
    if check.device.type == "cuda":
        t0 = time.time()
        probed = resources.probe_memory_mb(cfg, mb)
        out["probe_s"] = round(time.time() - t0, 1)
        out["probe_reserved_mib"] = round(probed, 1)
        free, total = (_mib(x) for x in torch.cuda.mem_get_info(0))
        card = total
    else:  # no CUDA statistics on the CPU: run the probe's own steps, and plan with the analytic estimate
        model, data = build(cfg, check.device)
        opt = make_optimizer(model, cfg, check.device)
        resources.run_probe_steps(model, opt, data, cfg, mb, check.device, resources.PROBE_STEPS)
        del model, opt
        probed, free, card = analytic, 24564.0, 24564.0
        out["probe_reserved_mib"] = None
        out["note"] = "cpu-dry: the probe's steps ran on the CPU; memory numbers are the analytic estimate"
    real = check.state.get("train", {})
    for key in ("peak_mem_allocated_mib", "peak_mem_reserved_mib"):
        if real.get(key) and out["probe_reserved_mib"]:
            out[f"probe_over_{key.removeprefix('peak_mem_')}"] = round(
                out["probe_reserved_mib"] / real[key], 3
            )
    out["real_run"] = {
        k: real.get(k) for k in ("peak_mem_allocated_mib", "peak_mem_reserved_mib", "micro_batch")
    }
    plan = resources.plan_resources(
        [cfg] * 4,
        cores=os.cpu_count() or 1,
        gpus=1,
        card_mb=card,
        free_mb=free,
        probe=check.device.type == "cuda",
        measure=lambda c, m: probed if m == mb else resources.analytic_memory_mb(c, m)[0],
    )
    cell = plan.cells[0]
    out["plan"] = {
        "free_mib": free,
        "card_mib": card,
        "gpu_fraction": cell.gpu_fraction,
        "trials_per_card": round(1 / cell.gpu_fraction),
        "mem_cap": round(cell.mem_cap, 4),
        "micro_batch": cell.micro_batch,
        "describe": plan.describe(),
    }
    return out


def part_packing(check: Check) -> dict:
    """One trial, then four, of the same tier through the real harness (or plain processes without Ray)."""
    paths = _paths(check)
    _free(check)
    if importlib.util.find_spec("ray") is None:
        return _packing_processes(check)
    from fvlm import accounting
    from fvlm.config import load_config
    from tune import flags

    sets = {
        "model.llm_path": paths["llm"],
        "model.dino_path": paths["dino"],
        "world.frame_size": 224,
    }
    if check.dry:
        sets["world.frames"] = 4
    smoke = flags.load_grid(flags.GRID_YAML)["smoke"]["overrides"]  # the cells' batch: what the budget buys
    probe = load_config(None, {**smoke, **flags.tier_override("135M"), **sets, "train.steps": 1})
    vocab, text_len, _ = accounting.data_shape(probe)
    steps = 2 if check.dry else 40
    budget = (
        steps * probe.train.batch_size * accounting.flops_per_sample(probe, vocab, text_len=text_len) * 1.01
    )
    out: dict = {
        "method": "tune/scaling_grid.py --smoke-test --preset 4090 --tiers 135M",
        "steps_per_trial": steps,
    }
    limit = PACK_RUN_LIMIT[check.dry]
    for seeds in (1, 4):
        name = f"pack-{seeds}"
        cmd = [sys.executable, str(REPO / "tune" / "scaling_grid.py"), "--smoke-test", "--preset", "4090"]
        cmd += ["--tiers", "135M", "--budgets", f"{budget:.6g}", "--seeds", str(seeds), "--name", name]
        cmd += ["--storage", str(check.work / "grid")] + [
            x for k, v in sets.items() for x in ("--set", f"{k}={v}")
        ]
        out[name] = _harness_run(
            check, cmd, check.work / "grid" / name, min(limit, check.deadline - time.time())
        )
    one, four = out["pack-1"].get("aggregate_samples_per_s"), out["pack-4"].get("aggregate_samples_per_s")
    if one and four:
        out["speedup_4_vs_1"] = round(four / one, 3)
    return out


def _harness_run(check: Check, cmd: list[str], exp: Path, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of this machine
    t0 = time.time()
    # its own process group, so that a timeout also ends the Ray processes the driver started
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        text, _ = proc.communicate(timeout=max(10, timeout))
        rc = proc.returncode
    except (subprocess.TimeoutExpired, PartTimeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        rc = "timeout"
    out: dict = {"rc": rc, "wall_s": round(time.time() - t0, 1)}
    lines = text.splitlines()
    out["plan_lines"] = [ln for ln in lines if "share a GPU" in ln or "MiB x" in ln or "free of" in ln][:6]
    out["tail"] = lines[-8:]
    print("\n".join(lines[-20:]))
    try:
        from analysis.store import load_store

        evals, runs = load_store(exp, refresh=True)
    except Exception as e:  # noqa: BLE001 - no store: the run's output above says why
        out["store_error"] = f"{type(e).__name__}: {e}"[:300]
        return out
    spans = evals.groupby("trial_id").agg(
        start=("trial_started_at", "min"), end=("timestamp", "max"), samples=("samples_seen", "max")
    )
    finals = evals[evals["status"] != "running"]
    out.update(
        trials=len(runs),
        statuses=sorted(runs["status"].astype(str)),
        gpu_fraction=sorted({float(x) for x in evals["gpu_fraction"].dropna()}),
        all_overlapped=bool((spans["end"] > spans["start"].max()).all()),
        span_s=round(float(spans["end"].max() - spans["start"].min()), 1),
        aggregate_samples_per_s=round(
            float(spans["samples"].sum() / (spans["end"].max() - spans["start"].min())), 2
        ),
        trial_samples_per_s=[round(float(x), 2) for x in finals["samples_per_s"].dropna()],
        trial_peak_mem_mib=[round(float(x), 1) for x in finals["peak_mem_mb"].dropna()],
    )
    if "mem_mb" in runs:
        out["planned_mem_mib"] = sorted({float(x) for x in runs["mem_mb"].dropna()})
    if rc != 0:
        raise RuntimeError(f"scaling_grid exited {rc}: {' | '.join(lines[-3:])}")
    return out


def _packing_processes(check: Check) -> dict:
    """Without Ray: N concurrent `python -m fvlm.train` processes of the training part's config, N = 1 then 4."""
    over = train_overrides(check, **{"train.steps": 2 if check.dry else 20, "train.eval_samples": 8})
    out: dict = {"method": "concurrent python -m fvlm.train processes (ray is not importable here)"}
    for n in (1, 4):
        t0 = time.time()
        procs = []
        for i in range(n):
            args = [f"{k}={v}" for k, v in {**over, "run.name": f"proc-{n}-{i}", "train.seed": i}.items()]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "fvlm.train", *args], cwd=REPO, stdout=subprocess.DEVNULL
                )
            )
        rcs = [p.wait(timeout=max(10, check.deadline - time.time())) for p in procs]
        wall = time.time() - t0
        sums = [
            json.loads((check.work / "runs" / f"proc-{n}-{i}" / "summary.json").read_text()) for i in range(n)
        ]
        samples = sum(s["samples_seen"] for s in sums)
        out[f"procs-{n}"] = {
            "rc": rcs,
            "wall_s": round(wall, 1),
            "statuses": [s["status"] for s in sums],
            "aggregate_samples_per_s_incl_startup": round(samples / wall, 2),
        }
    a, b = (
        out["procs-1"]["aggregate_samples_per_s_incl_startup"],
        out["procs-4"]["aggregate_samples_per_s_incl_startup"],
    )
    out["speedup_4_vs_1"] = round(b / a, 3) if a else None
    return out


# an SD-VAE-shaped AutoencoderKL (stabilityai/sd-vae-ft-mse's block widths and layers) for the real sizes
def _sd_vae():
    from fvlm.pretrained_shapes import VAEShape

    return VAEShape(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


SD_VAE = _sd_vae()
RUN = {"env": part_env, "build": part_build, "train": part_train, "joint": part_joint, "probe": part_probe}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "gpu_check.json"), help="the results file (JSON)")
    ap.add_argument("--cpu-dry", action="store_true", help="tiny sizes on the CPU: the code path, no numbers")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--work", default=None, help="models and runs (default: a folder under the temp dir)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="the whole check's time; later parts skip")
    ap.add_argument("--setup", default="", help="how the shell script set up Python (recorded)")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; valid: {', '.join(PARTS)}")
    work = Path(args.work or Path(tempfile.gettempdir()) / f"fvlm-gpu-check{'-dry' if args.cpu_dry else ''}")
    work.mkdir(parents=True, exist_ok=True)
    check = Check(Path(args.out), args.cpu_dry, work, time.time() + args.budget_s, args.setup)
    check.write()
    for name in PARTS:
        if name not in parts:
            continue
        fn = RUN.get(name, part_packing)
        limit = LIMITS.get(name, (2 * PACK_RUN_LIMIT[0] + 30, 2 * PACK_RUN_LIMIT[1] + 30))[args.cpu_dry]
        check.run(name, fn, limit)
    recorded = check.results["parts"]
    check.results["ok"] = bool(recorded) and all(r["ok"] for r in recorded.values()) and not check.fatal
    check.results["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    check.write()
    print(f"\nresults: {check.out} | ok {check.results['ok']} | errors {len(check.results['errors'])}")
    if check.fatal:
        return 3
    return 0 if check.results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
