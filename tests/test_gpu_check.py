"""bench/gpu_check.sh and bench/gpu_check.py without a GPU: the --cpu-dry mode runs the same code path at tiny
sizes on the CPU (set-up, results file, every part), and without --cpu-dry a machine without CUDA is reported
as such. The GPU numbers themselves come only from a run on a CUDA machine.

Run: pytest tests/test_gpu_check.py        (the packing part, a real local Ray cluster twice, is marked slow)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def env(tmp_path: Path) -> dict:
    out = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out.update(
        OUT=str(tmp_path / "out"), PYTHON=sys.executable, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"
    )
    return out


def run(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    """The check as a user runs it: from the repo root, its output in the test's folder."""
    return subprocess.run(args, cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=timeout)


def test_the_script_runs_the_cpu_dry_mode_into_one_results_file(tmp_path):
    parts = "env,build,train,joint,probe"
    res = run(
        ["bash", "bench/gpu_check.sh", "--cpu-dry", "--parts", parts, "--work", str(tmp_path / "work")],
        tmp_path,
        300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.log"]
    r = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert r["mode"] == "cpu-dry" and r["ok"] is True and r["errors"] == [], r["errors"]
    assert r["setup"] == f"PYTHON={sys.executable}"
    assert list(r["parts"]) == parts.split(",") and all(p["ok"] for p in r["parts"].values())
    build, train, joint, probe = (r["parts"][k] for k in ("build", "train", "joint", "probe"))
    assert build["llm"]["dtype"] == build["dino"]["dtype"] == "bfloat16" and build["dino"]["patch_size"] == 14
    assert train["status"] == joint["status"] == "complete" and train["steps"] == 2
    assert train["samples_per_s"] > 0 and train["mfu"] > 0 and train["fused_adamw"] is False  # CPU: not fused
    assert isinstance(train["sample"]["pred"], str) and train["sample"]["truth"]
    assert probe["probe_steps"] == 3 and probe["plan"]["trials_per_card"] >= 1
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "=== train: ok" in log and "gpu_check: exit 0" in log


def test_without_cuda_the_check_says_so_and_skips_the_gpu_parts(tmp_path):
    out = tmp_path / "r.json"
    args = [sys.executable, "bench/gpu_check.py", "--parts", "env,build", "--out", str(out)]
    res = run([*args, "--work", str(tmp_path)], tmp_path, 120)
    assert res.returncode == 3, res.stdout + res.stderr
    r = json.loads(out.read_text())
    assert r["ok"] is False and r["parts"]["env"]["cuda_available"] is False
    assert r["parts"]["env"]["cuda_usable"] is False and "CPU build" in r["parts"]["env"]["cuda_error"]
    assert r["parts"]["build"]["skipped"].startswith("CUDA not usable: torch ")
    assert "CUDA not usable" in res.stdout


@pytest.mark.slow
def test_the_cpu_dry_packing_part_runs_one_then_four_trials_through_the_harness(tmp_path):
    out = tmp_path / "r.json"
    args = [sys.executable, "bench/gpu_check.py", "--cpu-dry", "--parts", "build,packing", "--out", str(out)]
    res = run([*args, "--work", str(tmp_path / "work")], tmp_path, 400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    pack = json.loads(out.read_text())["parts"]["packing"]
    assert pack["ok"] and pack["method"].startswith("tune/scaling_grid.py")
    one, four = pack["pack-1"], pack["pack-4"]
    assert (one["trials"], four["trials"]) == (1, 4) and four["statuses"] == ["complete"] * 4
    assert four["gpu_fraction"] == [0.25] and four["all_overlapped"]  # four fractional trials at once
    assert pack["speedup_4_vs_1"] > 0
