"""The result store (analysis/store.py) and fit_laws on a store, against a hand-written fake Tune experiment.

Run: pytest tests/test_analysis_store.py
The fake experiment has the Tune layout (trial dirs with params.json, result.json lines, error.txt), rows that
follow a known law L = E + A/N^alpha + B/D^beta in samples, a diverged, a failed (with a half-written last
line) and a still-running trial.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis import fit_laws  # noqa: E402
from analysis.laws import compute_optimal  # noqa: E402
from analysis.store import (  # noqa: E402
    DataError,
    find_latest_experiment,
    load_store,
    write_store,
)
from fvlm.contract import KEY_COLUMNS, METRICS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAW = {"E": 1.5, "A": 60.0, "alpha": 0.34, "B": 90.0, "beta": 0.36}
TOKENS_PER_SAMPLE = 64  # flops_per_sample = 6 N * 64, so kappa = C / (N D) = 384
EVALS_PER_RUN = 8  # including the step-0 eval
TIER_N = {1: 2.0e5, 2: 4.4e5, 3: 1.0e6, 4: 2.2e6, 5: 5.0e6}


def law_loss(N, D):
    return LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]


def budgets_for_grid():
    """Three budgets whose compute-optimal N sits inside the tiers (so every parabola has its minimum)."""
    kappa = 6 * TOKENS_PER_SAMPLE
    return [float(c) for c in np.logspace(14.6, 15.4, 3) if compute_optimal(LAW, c, kappa)[0] > 0]


def _row(trial_id, cfg, step, samples, n, status, rng, **extra):
    fps = 6 * n * TOKENS_PER_SAMPLE
    loss = law_loss(n, max(samples, 1.0)) * math.exp(0.002 * rng.standard_normal()) if samples > 0 else 9.0
    row = {
        "step": step,
        "samples_seen": samples,
        "flops_seen": samples * fps,
        "wall_s": 0.5 * step + 1.0,
        "train_loss": loss * 0.98,
        "val_loss": loss,
        "val_loss_fine": loss * 0.97,
        "val_loss_coarse": loss * 1.02,
        "loss_ratio": 0.97 / 1.02,
        "attn_entropy_coarse": 3.0 - 0.1 * math.log1p(step),
        "attn_entropy_fine": 2.8 - 0.1 * math.log1p(step),
        "attn_on_target_coarse": 0.1 + 0.01 * math.log1p(step),
        "attn_on_target_fine": None,
        "lr": 1e-3,
        "grad_norm": 1.0,
        "samples_per_s": 100.0,
        "peak_mem_mb": 50.0,
        "mfu": float("nan"),
        "micro_batch": 8,
        "grad_accum": 1,
        "oom_retries": 0,
        "status": status,
        "params_n": n,
        "params_convention": "all",
        "flops_per_sample": fps,
        "tier": cfg["model.scale"],
        "seed": cfg["train.seed"],
        "config_hash": f"h{trial_id}",
        "experiment": cfg["meta.experiment"],
        "kind": cfg["meta.kind"],
        "arm": cfg["meta.arm"],
        "budget_flops": cfg["train.budget_flops"],
        "trial_id": trial_id,
        "training_iteration": step // 10 + 1,
        "time_total_s": 0.5 * step + 1.0,
        "config": dict(cfg),
        "done": status != "running",
    }
    row.update(extra)
    return row


def make_fake_experiment(
    root: Path, name="grid-fake", schedule="constant", seeds=(0,), extra_trials=True, cosine_tiers=()
) -> Path:
    """A Tune-layout experiment dir: budgets x tiers x seeds grid trials plus failure cases."""
    exp = root / name
    exp.mkdir(parents=True)
    rng = np.random.default_rng(0)
    kappa = 6 * TOKENS_PER_SAMPLE
    k = 0
    for budget in budgets_for_grid():
        for tier, n in TIER_N.items():
            for seed in seeds:
                tid = f"t{k:04d}"
                cfg = {
                    "model.scale": tier,
                    "train.seed": seed,
                    "train.budget_flops": budget,
                    "train.schedule": "cosine" if tier in cosine_tiers else schedule,
                    "meta.kind": "grid",
                    "meta.arm": "baseline",
                    "meta.experiment": name,
                }
                total = budget / (kappa * n)
                lines = []
                for i, frac in enumerate(np.linspace(0.0, 1.0, EVALS_PER_RUN)):
                    status = "complete" if frac == 1.0 else "running"
                    lines.append(
                        _row(
                            tid,
                            cfg,
                            10 * i,
                            total * frac,
                            n,
                            status,
                            rng,
                            **(
                                {"lr_schedule": cfg["train.schedule"], "val_loss_ar": 3.0}
                                if frac == 1.0
                                else {}
                            ),
                        )
                    )
                _write_trial(exp / f"train_fvlm_{tid}_{k}_scale={tier}", cfg, lines)
                k += 1
    if extra_trials:
        cfg = {
            "model.scale": 2,
            "train.seed": 9,
            "train.budget_flops": 1e15,
            "train.schedule": schedule,
            "meta.kind": "grid",
            "meta.arm": "baseline",
            "meta.experiment": name,
        }
        n = TIER_N[2]
        # diverged: final row says so
        rows = [
            _row("div0", cfg, 0, 0, n, "running", rng),
            _row("div0", cfg, 10, 500, n, "diverged", rng, val_loss=float("nan"), error="loss is nan"),
        ]
        _write_trial(exp / "train_fvlm_div0", cfg, rows)
        # failed: rows still running, an error file, and a half-written last line (crash mid-write)
        rows = [_row("fail0", cfg, 0, 0, n, "running", rng), _row("fail0", cfg, 10, 400, n, "running", rng)]
        _write_trial(exp / "train_fvlm_fail0", cfg, rows, tail='{"step": 20, "samples_seen": 8')
        (exp / "train_fvlm_fail0" / "error.txt").write_text("Traceback ...\nRuntimeError: worker died\n")
        # running: no final row, no error
        _write_trial(exp / "train_fvlm_run0", cfg, [_row("run0", cfg, 0, 0, n, "running", rng)])
        # pending: params only
        (exp / "train_fvlm_pend0").mkdir()
        (exp / "train_fvlm_pend0" / "params.json").write_text(json.dumps(cfg))
    # Tune's own files beside the trials
    (exp / "experiment_state-2026-01-01.json").write_text("{}")
    return exp


def _write_trial(d: Path, cfg: dict, rows: list, tail: str = "") -> None:
    d.mkdir()
    (d / "params.json").write_text(json.dumps(cfg))
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (d / "result.json").write_text(text)


@pytest.fixture
def experiment(tmp_path):
    return make_fake_experiment(tmp_path / "runs")


# ---------------------------------------------------------------------------------------------------------
# store


def test_write_store_tables_follow_the_contract(experiment):
    store = write_store(experiment)
    assert store == experiment / "store"
    evals = pd.read_parquet(store / "evals.parquet")
    runs = pd.read_parquet(store / "runs.parquet")
    n_grid = 3 * len(TIER_N)
    assert len(evals) == n_grid * EVALS_PER_RUN + 2 + 2 + 1  # the half-written line is skipped
    for col in KEY_COLUMNS + METRICS + ["config.model.scale", "config.train.seed", "config.meta.kind"]:
        assert col in evals.columns, col
    assert "config" not in evals.columns  # Tune's nested config is flattened from params.json instead
    for col in KEY_COLUMNS + [
        "status",
        "error",
        "final_val_loss",
        "best_val_loss",
        "best_step",
        "final_val_loss_fine",
        "final_val_loss_coarse",
        "final_loss_ratio",
        "wall_s",
        "flops_seen",
        "gpu_hours",
    ]:
        assert col in runs.columns, col
    status = runs.set_index("trial_id")["status"]
    assert (status.drop(["div0", "fail0", "run0", "train_fvlm_pend0"]) == "complete").all()
    assert status["div0"] == "diverged" and status["run0"] == "running"
    assert status["fail0"] == "failed" and status["train_fvlm_pend0"] == "running"
    err = runs.set_index("trial_id")["error"]
    assert "RuntimeError: worker died" in err["fail0"] and err["div0"] == "loss is nan"
    assert pd.isna(err["run0"])
    bad = runs.set_index("trial_id")["bad_lines"]
    assert bad["fail0"] == 1
    t0 = runs.set_index("trial_id").loc["t0000"]
    ev0 = evals[evals["trial_id"] == "t0000"]
    assert t0["final_val_loss"] == pytest.approx(ev0["val_loss"].iloc[-1])
    assert t0["best_val_loss"] == pytest.approx(ev0["val_loss"].min())
    assert t0["lr_schedule"] == "constant" and t0["val_loss_ar"] == 3.0
    assert t0["config.model.scale"] == 1 and t0["tier"] == 1
    assert runs.set_index("trial_id").loc["train_fvlm_pend0", "config.model.scale"] == 2


def test_write_store_is_idempotent_and_atomic(experiment):
    store = write_store(experiment)
    first = [pd.read_parquet(store / f) for f in ("evals.parquet", "runs.parquet")]
    write_store(experiment)
    second = [pd.read_parquet(store / f) for f in ("evals.parquet", "runs.parquet")]
    for a, b in zip(first, second, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert sorted(p.name for p in store.iterdir()) == ["evals.parquet", "runs.parquet"]  # no temp files left


def test_load_store_accepts_experiment_store_dir_and_parquet(experiment):
    evals, runs = load_store(experiment)  # no store yet: built on the way
    assert (experiment / "store" / "evals.parquet").exists()
    e2, r2 = load_store(experiment / "store")
    pd.testing.assert_frame_equal(evals, e2)
    pd.testing.assert_frame_equal(runs, r2)
    e3, r3 = load_store(experiment / "store" / "evals.parquet")  # runs derived from the evals alone
    assert len(e3) == len(evals)
    assert set(r3["trial_id"]) == set(evals["trial_id"])
    assert r3.set_index("trial_id")["status"]["div0"] == "diverged"
    e4, r4 = load_store(experiment / "store" / "runs.parquet")
    assert e4.empty and len(r4) == len(runs)
    with pytest.raises(DataError):
        load_store(experiment / "nope")


def test_find_latest_experiment(tmp_path):
    runs = tmp_path / "runs"
    old = make_fake_experiment(runs, name="old", extra_trials=False)
    os.utime(old, (time.time() - 100, time.time() - 100))
    for p in old.iterdir():
        os.utime(p, (time.time() - 100, time.time() - 100))
    new = make_fake_experiment(runs, name="new", extra_trials=False)
    (runs / "_external").mkdir()  # output folders of --csv are not experiments
    assert find_latest_experiment(runs) == new
    with pytest.raises(DataError):
        find_latest_experiment(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------
# fit_laws on a store


def _run_main(argv, capsys):
    rc = fit_laws.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_fit_laws_on_store_recovers_law_and_writes_outputs(experiment, capsys):
    rc, out, err = _run_main(["--store", str(experiment), "--bootstrap", "40"], capsys)
    assert rc == 0, err
    dest = experiment / "analysis"
    assert out.strip().splitlines()[-1] == str(dest)
    assert (experiment / "store" / "runs.parquet").exists()
    fits = json.loads((dest / "fits.json").read_text())
    par = fits["parametric"]
    for k in (
        "E",
        "A",
        "B",
        "alpha",
        "beta",
        "objective",
        "n_points",
        "a_opt",
        "b_opt",
        "ci95",
        "identified",
        "warnings",
    ):
        assert k in par, k
    assert set(par["ci95"]) >= {"E", "A", "B", "alpha", "beta"}
    assert set(par["identified"]) == {"E", "A", "B", "alpha", "beta"}
    a_true = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    assert par["a_opt"] == pytest.approx(a_true, abs=0.03)
    assert fits["source"]["kappa"] == pytest.approx(6 * TOKENS_PER_SAMPLE)
    assert "samples, not tokens" in fits["source"]["D_definition"]
    assert fits["source"]["points_mode"].startswith("all")  # constant LR: every eval is a point
    iso = fits["isoflop"]
    assert iso["n_budgets"] == 3 and iso["a"] == pytest.approx(a_true, abs=0.05)
    assert set(iso["ci95"]) == {"a", "b"} and isinstance(iso["warnings"], list)
    assert set(fits["per_tier"]) == {str(t) for t in TIER_N}
    for d in fits["per_tier"].values():
        assert {"E", "B", "beta", "warnings"} <= set(d)
    assert any("excluded from the fits: 1 diverged, 1 failed" in w for w in fits["warnings"])
    for png in (
        "loss_vs_compute.png",
        "isoflop.png",
        "optimal_allocation.png",
        "iso_loss.png",
        "residuals.png",
        "data_curves.png",
        "fine_vs_coarse.png",
    ):
        assert (dest / png).stat().st_size > 1000, png
    report = (dest / "REPORT.md").read_text()
    for section in (
        "## Environment",
        "## Configuration",
        "## Metrics per tier and budget",
        "## Fits",
        "## Eval principles",
        "## Warnings",
        "## Cost",
        "## Bloat",
        "## Plots",
        "(isoflop.png)",
        "git commit",
        "GPU-hours",
        "val_loss_fine",
        "loss_ratio",
    ):
        assert section in report, section


def test_fit_laws_flags_mixed_schedules_and_uses_final_points(tmp_path, capsys):
    exp = make_fake_experiment(tmp_path / "runs", cosine_tiers=(1, 2), extra_trials=False)
    rc, out, err = _run_main(["--store", str(exp), "--bootstrap", "0", "--no-plots"], capsys)
    assert rc == 0, err
    fits = json.loads((exp / "analysis" / "fits.json").read_text())
    assert fits["source"]["points_mode"].startswith("final")
    assert fits["parametric"]["n_points"] == 3 * len(TIER_N)
    assert any("mixed LR schedules" in w for w in fits["parametric"]["warnings"])
    assert any("decaying LR schedule (cosine)" in w for w in fits["per_tier"]["1"]["warnings"])


def test_fit_laws_default_is_newest_experiment_under_runs(tmp_path):
    make_fake_experiment(tmp_path / "runs", extra_trials=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "fit_laws.py"), "--bootstrap", "0", "--no-plots"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    dest = Path(res.stdout.strip().splitlines()[-1])
    assert dest.resolve() == (tmp_path / "runs" / "grid-fake" / "analysis").resolve()
    assert (dest / "fits.json").exists() and (dest / "REPORT.md").exists()


def test_fit_laws_store_without_runs_exits_2(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    rc, out, err = _run_main(["--runs", str(tmp_path / "runs")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no experiment" in err
    exp = tmp_path / "runs" / "empty"
    exp.mkdir()
    (exp / "t0").mkdir()
    (exp / "t0" / "params.json").write_text(json.dumps({"model.scale": 1}))
    rc, out, err = _run_main(["--store", str(exp)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert not (exp / "analysis").exists() and not (exp / "store").exists()


def test_trials_a_scheduler_stopped_early_are_stopped_not_running(experiment):
    # ASHA stops a trial without a final row; only Tune's experiment state knows it ended. Written the way
    # Ray 2.60 writes it: trial_data = [[json of the trial, json of its runtime], ...].
    state = {
        "trial_data": [[json.dumps({"trial_id": "run0", "status": "TERMINATED"}), "{}"]],
        "runner_data": {},
    }
    (experiment / "experiment_state-2026-11-26_00-00-00.json").write_text(json.dumps(state))
    runs = pd.read_parquet(write_store(experiment) / "runs.parquet").set_index("trial_id")
    assert runs.loc["run0", "status"] == "stopped"
    assert (
        runs.loc["train_fvlm_pend0", "status"] == "running"
    )  # not in the state file: unknown, still running
    assert runs.loc["div0", "status"] == "diverged"  # a final row wins over Tune's view


def _rewrite_rows(exp: Path, edit) -> None:
    """Apply edit(row) -> row to every result.json line of the fake experiment (a way to vary one field)."""
    for f in exp.glob("*/result.json"):
        rows = [
            json.loads(line)
            for line in f.read_text().splitlines()
            if line.strip().startswith("{") and line.strip().endswith("}")
        ]
        f.write_text("".join(json.dumps(edit(r)) + "\n" for r in rows))


def test_fit_laws_leaves_out_warmup_evals_and_says_how_many(tmp_path, capsys):
    """Issue 7.6: the step-0 eval is the init model and early evals sit in LR warmup; they entered the fits.
    Here the second eval of every grid run is flagged in_warmup with a loss far off the law: left out, the law
    is recovered; counted in fits.json and REPORT.md."""
    exp = make_fake_experiment(tmp_path / "runs", extra_trials=False)

    def warm(r):
        if r["step"] == 10:
            r.update(in_warmup=True, val_loss=r["val_loss"] + 1.0)
        return r

    _rewrite_rows(exp, warm)
    rc, _, err = _run_main(["--store", str(exp), "--bootstrap", "0", "--no-plots"], capsys)
    assert rc == 0, err
    fits = json.loads((exp / "analysis" / "fits.json").read_text())
    n_runs = 3 * len(TIER_N)
    assert fits["source"]["excluded_warmup"] == 2 * n_runs  # the step-0 eval and the flagged one, per run
    assert fits["parametric"]["n_points"] == (EVALS_PER_RUN - 2) * n_runs
    assert fits["parametric"]["E"] == pytest.approx(LAW["E"], rel=0.05)
    assert "inside LR warmup excluded" in (exp / "analysis" / "REPORT.md").read_text()
    rc, _, _ = _run_main(["--store", str(exp), "--bootstrap", "0", "--no-plots", "--include-warmup"], capsys)
    fits = json.loads((exp / "analysis" / "fits.json").read_text())
    assert rc == 0 and fits["source"]["excluded_warmup"] == 0
    assert fits["parametric"]["n_points"] == (EVALS_PER_RUN - 1) * n_runs  # D = 0 is never a point


def test_fit_laws_fits_one_generation_of_a_mixed_experiment(tmp_path, capsys):
    """Issue 7.2: runs of two base configs in one folder were pooled silently. The newest generation is
    fitted by default (with a warning), --generation picks one or pools them, an unknown one exits 2."""
    exp = make_fake_experiment(tmp_path / "runs", extra_trials=False)
    _rewrite_rows(exp, lambda r: {**r, "generation": "genold", "trial_started_at": 1.0})
    other = make_fake_experiment(tmp_path / "other", name="grid-fake", extra_trials=False)
    _rewrite_rows(
        other,
        lambda r: {
            **r,
            "generation": "gennew",
            "trial_started_at": 2.0,
            "trial_id": "n" + r["trial_id"],
            "val_loss": r["val_loss"] + 0.5,
        },
    )
    for d in other.iterdir():
        if d.is_dir():
            d.rename(exp / ("new_" + d.name))
    rc, _, err = _run_main(["--store", str(exp), "--bootstrap", "0", "--no-plots"], capsys)
    assert rc == 0, err
    fits = json.loads((exp / "analysis" / "fits.json").read_text())
    assert fits["source"]["generation"] == "gennew" and fits["source"]["generations"] == ["gennew", "genold"]
    assert any("holds 2 generations" in w for w in fits["warnings"])
    assert fits["parametric"]["E"] == pytest.approx(LAW["E"] + 0.5, rel=0.05)
    rc, _, _ = _run_main(
        ["--store", str(exp), "--bootstrap", "0", "--no-plots", "--generation", "genold"], capsys
    )
    fits = json.loads((exp / "analysis" / "fits.json").read_text())
    assert rc == 0 and fits["parametric"]["E"] == pytest.approx(LAW["E"], rel=0.05)
    rc, _, _ = _run_main(
        ["--store", str(exp), "--bootstrap", "0", "--no-plots", "--generation", "all"], capsys
    )
    fits = json.loads((exp / "analysis" / "fits.json").read_text())
    assert rc == 0 and any("2 generations pooled" in w for w in fits["warnings"])
    rc, _, err = _run_main(["--store", str(exp), "--generation", "nope"], capsys)
    assert rc == 2 and "--generation nope: not in the store" in err and len(err.strip().splitlines()) == 1
