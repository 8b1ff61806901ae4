"""The Ray Tune harness end to end on a real local Ray cluster, with --smoke-test sized cells.

Run: pytest tests/test_tune_harness.py            (a few minutes on 2 cores; -m "not slow" for the quick part)
In-process tests share the session's `ray_cluster` (2 CPUs + 1 logical GPU, tests/conftest.py). The SIGKILL
test runs the driver as a subprocess that starts its own local cluster (RAY_ADDRESS removed), so killing it
leaves the session cluster alone.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.store import load_store
from fvlm.contract import KEY_COLUMNS, METRICS
from tune import ablate, flags, lr_sweep, scaling_grid
from tune.resources import analytic_memory_mb

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["--smoke-test", "--preset", "cpu"]


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if (p / "params.json").exists()) if exp.exists() else []


def final_rows(exp: Path) -> pd.DataFrame:
    evals, _ = load_store(exp, refresh=True)
    return evals[evals["status"] != "running"]


# ----------------------------------------------------------------------------- no trials


def test_dry_run_starts_no_trial(tmp_path, capsys):
    assert scaling_grid.main([*SMOKE, "--storage", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 cell(s) to run" in out and "predicted wall" in out and "CPU packing" in out
    assert not (tmp_path / "grid-cpu-smoke").exists()


def test_dry_run_of_the_cpu_preset_fits_15_minutes(tmp_path, capsys):
    assert scaling_grid.main(["--preset", "cpu", "--storage", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cells = int(out.split(" cell(s) to run")[0].rsplit("\n", 1)[-1])
    minutes = float(out.split("predicted wall ")[1].split(" min")[0])
    assert cells >= 16 and minutes <= 12, out


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert scaling_grid.main([*SMOKE, "--storage", str(tmp_path), "--set", "model.scal=2", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.scale" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        scaling_grid.main(["--preset", "gpu"])
    assert e.value.code == 2
    assert ablate.main(["--param", "bogus", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown ablation 'bogus'" in err and "deep_query" in err and "coarse_only" in err
    assert not any(tmp_path.iterdir())


def test_lr_sweep_dry_run_shows_the_range_and_starts_nothing(tmp_path, capsys):
    assert lr_sweep.main([*SMOKE, "--storage", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s1: 3 trials" in out and "around the dial's 0.00424" in out and "predicted at most" in out
    assert not any(tmp_path.iterdir())


def _grid_lr_key(tmp_path, tier: int, extra: list[str] = ()) -> str:
    """The lr_key of a smoke grid cell of `tier` (what lr_sweep.py writes for the same config)."""
    from fvlm.config import lr_key

    args = scaling_grid.build_parser().parse_args([*SMOKE, "--storage", str(tmp_path), *extra])
    cells, _ = scaling_grid.grid_cells(flags.Context.from_args(args, "grid"))
    return lr_key(next(c for c in cells if c.tier == f"s{tier}").cfg)


def test_lr_from_a_sweep_file_is_used_only_for_the_config_it_was_swept_for(tmp_path, capsys):
    """Issue 7.2: best_lr.json was keyed by tier name only, so an LR swept for one world was silently used
    for another. Now an entry is found by the cell's lr_key; an entry of another config is named and unused."""
    lr_dir = tmp_path / "lr-cpu-smoke"
    lr_dir.mkdir()
    key = _grid_lr_key(tmp_path, 1)
    other = _grid_lr_key(tmp_path, 2, ["--set", "world.distractor_style=colored"])  # s2, another world
    entry = {"lr": 0.0123, "source": "test sweep", "dial_lr": 0.004}
    (lr_dir / "best_lr.json").write_text(
        json.dumps({key: {**entry, "tier": "s1"}, other: {**entry, "lr": 0.0456, "tier": "s2"}})
    )
    assert scaling_grid.main([*SMOKE, "--storage", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0.0123 (lr_sweep)" in out and "(dial)" in out  # s1 from the sweep, s2 from the dial
    assert "0.0456" not in out and "has an LR for s2 swept under another config" in out
    # an old file keyed by tier name is not used either (it cannot say which config it was swept for)
    (lr_dir / "best_lr.json").write_text(json.dumps({"s1": entry}))
    assert scaling_grid.main([*SMOKE, "--storage", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(lr_sweep)" not in out and "lr_key missing: an older file" in out


def test_an_ablation_arm_equal_to_the_baseline_is_refused_before_anything_runs(tmp_path, capsys):
    """Issue 7.1 (upstream's "A1 = baseline" bug): --set on the ablated key overrode every arm, and the plan
    showed six cells with identical FLOPs. Each way to make an arm equal to the baseline exits 2, one line."""
    common = [*SMOKE, "--storage", str(tmp_path), "--dry-run", "--log", str(tmp_path / "LOG.md")]
    cases = [
        (["--param", "deep_query", "--set", "model.deep_query=false"], "give the variants with --values"),
        (["--param", "deep_query", "--values", "true"], "equals the baseline's value (true"),
        (["--param", "fine_iters", "--values", "2", "2.0"], "are the same experiment"),
        (["--param", "lambda_coarse", "--values", "0.5"], "equals the baseline's value (0.5"),
    ]
    for extra, expected in cases:
        assert ablate.main([*extra, *common]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (extra, err)
    checklist = tmp_path / "ablations.yaml"
    checklist.write_text(
        "bad:\n  key: model.deep_query\n  values: [false]\n  context: {model.deep_query: false}\n"
        "  hypothesis: x\n"
    )
    assert ablate.main(["--param", "bad", "--ablations", str(checklist), *common]) == 2
    assert "sets its own key model.deep_query in `context`" in capsys.readouterr().err
    assert scaling_grid.main([*SMOKE, "--storage", str(tmp_path), "--dry-run", "--tiers", "1,1"]) == 2
    assert "are the same experiment" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablations.yaml"]  # nothing written
    # the honest ablation plans two arms with different FLOPs per sample (shallow reads the last layer)
    assert ablate.main(["--param", "deep_query", *common]) == 0
    flops = {
        line.split()[0]: line.split()[4] for line in capsys.readouterr().out.splitlines() if "_seed" in line
    }
    assert flops["deep_query_baseline_seed0"] != flops["deep_query_false_seed0"]


# ----------------------------------------------------------------------------- real trials


def test_smoke_grid_end_to_end_then_skips_complete_cells(ray_cluster, tmp_path, capsys):
    args = [*SMOKE, "--storage", str(tmp_path)]
    assert scaling_grid.main(args) == 0
    exp = tmp_path / "grid-cpu-smoke"
    evals, runs = load_store(exp)
    assert len(runs) == 4 and set(runs["status"]) == {"complete"}
    finals = final_rows(exp)
    assert finals.groupby("trial_id").size().tolist() == [1, 1, 1, 1]  # one final row per cell
    assert set(KEY_COLUMNS + METRICS) <= set(evals.columns)
    assert set(evals["kind"]) == {"grid"} and set(evals["experiment"]) == {"grid-cpu-smoke"}
    assert finals["val_loss"].notna().all() and (finals["budget_flops"] > 0).all()
    assert set(runs["lr_source"].str.split(":").str[0]) == {"dial"}
    assert sorted(runs["tier"]) == ["s1", "s1", "s2", "s2"]
    assert (exp / "store" / "runs.parquet").exists() and (exp / "store" / "evals.parquet").exists()
    assert all("eval step" in (d / "train.log").read_text() for d in trial_dirs(exp))  # reused actors too
    capsys.readouterr()
    before = trial_dirs(exp)
    assert scaling_grid.main(args) == 0
    assert "all 4 cell(s) already settled" in capsys.readouterr().out
    assert trial_dirs(exp) == before
    assert scaling_grid.main([*args, "--schedule", "wsd", "--dry-run"]) == 2  # mixing needs a flag
    assert "--mix-schedules" in capsys.readouterr().err
    assert scaling_grid.main([*args, "--schedule", "wsd", "--dry-run", "--mix-schedules"]) == 0
    # issue 7.2: every run records its base config, --set and generation; another generation is noticed
    ctx = flags.Context.from_args(scaling_grid.build_parser().parse_args(args), "grid")
    assert set(runs["generation"]) == {ctx.generation} and set(evals["generation"]) == {ctx.generation}
    assert set(runs["config.meta.base_config"]) == {str(REPO / "configs" / "base.yaml")}
    assert set(runs["config.meta.sets"]) == {"{}"}
    capsys.readouterr()
    other = [*args, "--set", "world.noise=0.05", "--dry-run"]
    assert scaling_grid.main(other) == 0
    out = capsys.readouterr().out
    assert f"already holds runs of another base config or --set: {ctx.generation} (4 runs" in out
    assert "--generation" in out and "4 cell(s) to run" in out  # a new generation: its own cells
    assert scaling_grid.main([*other, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "already holds runs of another base config" in err and "--name" in err


def test_injected_oom_walks_the_ladder_and_completes(ray_cluster, tmp_path):
    args = [
        *SMOKE,
        "--storage",
        str(tmp_path),
        "--tiers",
        "1",
        "--budgets",
        "2.4e9",
        "--set",
        "train.inject_oom_steps=[2]",
        "--set",
        "train.eval_points=4",
    ]
    assert scaling_grid.main(args) == 0
    evals, runs = load_store(tmp_path / "grid-cpu-smoke")
    assert runs["status"].tolist() == ["complete"]
    final = evals.iloc[-1]
    assert (final["micro_batch"], final["grad_accum"], final["oom_retries"]) == (4, 2, 1)
    assert "step 2: OOM -> micro_batch 4 x grad_accum 2" in final["ladder"]
    early = evals[evals["step"] < 2]
    assert (early["micro_batch"] == 8).all() and (early["oom_retries"] == 0).all()


def test_diverged_is_a_final_outcome_and_the_exit_code_covers_this_run(ray_cluster, tmp_path, capsys):
    """Issue 7.3: a diverged cell was rerun by every later command and made it exit 1 (speedrun.sh stopped).
    Now diverged/oom are settled outcomes (rerun only with --retry-failed), listed in the summary, exit 0;
    a cell that fails with an error exits 1."""
    args = [*SMOKE, "--storage", str(tmp_path / "a"), "--tiers", "1", "--budgets", "2.4e9"]
    assert scaling_grid.main([*args, "--set", "train.inject_nan_steps=[1]"]) == 0
    out = capsys.readouterr().out
    assert "1 diverged" in out and "non-finite" in out
    exp = tmp_path / "a" / "grid-cpu-smoke"
    assert len(trial_dirs(exp)) == 1
    assert scaling_grid.main(args) == 0  # the same cell (the injection is not part of its identity)
    out = capsys.readouterr().out
    assert "already settled" in out and "1 diverged" in out and len(trial_dirs(exp)) == 1
    assert scaling_grid.main([*args, "--retry-failed"]) == 0
    _, runs = load_store(exp)
    assert sorted(runs["status"]) == ["complete", "diverged"] and "1 complete" in capsys.readouterr().out
    bad = [*SMOKE, "--storage", str(tmp_path / "b"), "--tiers", "1", "--budgets", "2.4e9"]
    assert scaling_grid.main([*bad, "--set", f"model.tokenizer_path={tmp_path / 'missing'}"]) == 1
    assert "failed" in capsys.readouterr().out


def test_quarter_card_cells_run_four_at_a_time(ray_cluster, tmp_path, capsys):
    from fvlm.config import load_config

    cfg = load_config(
        REPO / "configs" / "base.yaml", {"model.scale": 1, "train.batch_size": 8, "train.steps": 1}
    )
    mem, _, _ = analytic_memory_mb(cfg)
    card = 4 * (mem * 1.2 + 600) + 1  # each cell needs about a quarter of this "card"
    args = [
        "--smoke-test",
        "--preset",
        "4090",
        "--storage",
        str(tmp_path),
        "--gpu-mem-mb",
        str(card),
        "--tiers",
        "1",
        "--budgets",
        "2e10",
        "--seeds",
        "4",
    ]
    assert scaling_grid.main(args) == 0
    out = capsys.readouterr().out
    assert "4 trial(s) share a GPU" in out
    evals, runs = load_store(tmp_path / "grid-4090-smoke")
    assert len(runs) == 4 and set(runs["status"]) == {"complete"}
    assert set(evals["gpu_fraction"]) == {0.25}
    spans = evals.groupby("trial_id").agg(start=("trial_started_at", "min"), end=("timestamp", "max"))
    latest_start = spans["start"].max()
    assert (spans["end"] > latest_start).all(), spans  # all four were running at the same moment


def test_a_cell_above_the_card_is_refused_before_launch(ray_cluster, tmp_path, capsys):
    args = ["--smoke-test", "--preset", "4090", "--storage", str(tmp_path), "--gpu-mem-mb", "300"]
    assert scaling_grid.main(args) == 2
    err = capsys.readouterr().err
    assert "refused before launch" in err and "card has 300 MiB" in err and "micro_batch 1" in err
    assert not trial_dirs(tmp_path / "grid-4090-smoke")


def test_ablation_smoke_appends_a_verdict_row(ray_cluster, tmp_path, capsys):
    log = tmp_path / "LOG.md"
    args = ["--param", "deep_query", *SMOKE, "--storage", str(tmp_path), "--log", str(log)]
    assert ablate.main(args) == 0
    out = capsys.readouterr().out
    assert "model.deep_query = false:" in out and "paired seeds" in out
    text = log.read_text()
    assert "| Date | Experiment |" in text
    row = [line for line in text.splitlines() if "ablate-deep_query-cpu-smoke" in line]
    assert len(row) == 1 and any(k in row[0] for k in ("VALIDATED", "FAILED", "INCONCLUSIVE"))
    assert "model.deep_query: true -> false" in row[0]
    _, runs = load_store(tmp_path / "ablate-deep_query-cpu-smoke")
    assert sorted(runs["arm"].unique()) == ["baseline", "false"]
    assert runs.groupby("arm")["seed"].apply(sorted).tolist() == [[0, 1, 2], [0, 1, 2]]
    # issue 7.4: the same command again runs nothing and appends no duplicate row ...
    assert ablate.main(args) == 0
    assert "already there (not appended again)" in capsys.readouterr().out
    assert log.read_text() == text
    # ... and another --set in the same folder neither crashes (pairing mixed its seeds) nor pools the runs
    assert ablate.main([*args, "--set", "world.noise=0.05"]) == 0
    out = capsys.readouterr().out
    assert "already holds runs of another base config or --set" in out and "3 paired seeds" in out
    rows = [line for line in log.read_text().splitlines() if "ablate-deep_query-cpu-smoke" in line]
    assert len(rows) == 2 and "every arm world.noise=0.05" in rows[1]
    _, runs = load_store(tmp_path / "ablate-deep_query-cpu-smoke")
    assert len(runs) == 12 and runs["generation"].nunique() == 2


def test_a_query_source_ablation_with_static_and_oracle_arms_reports_the_headroom(
    ray_cluster, tmp_path, capsys
):
    """Static, learned (the baseline) and oracle arms of one ablation bound the learned query: ablate.py
    prints H with its Fieller interval (or says it is not identified) and logs it as a row."""
    log = tmp_path / "LOG.md"
    args = ["--param", "query_source", "--values", "static", "oracle", "--seeds", "2", *SMOKE]
    assert ablate.main([*args, "--storage", str(tmp_path), "--log", str(log)]) == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("headroom of the learned query: ")]
    assert (
        len(line) == 1
        and ("H = " in line[0] or "H not identified" in line[0])
        and "2 paired seeds" in line[0]
    )
    rows = [ln for ln in log.read_text().splitlines() if "share of the oracle's headroom" in ln]
    assert len(rows) == 1 and "static / llm / oracle on final_val_loss" in rows[0]


def test_wandb_offline_keeps_its_files_in_the_experiment(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [*SMOKE, "--storage", str(tmp_path), "--tiers", "1", "--budgets", "2.4e9", "--wandb"]
    assert scaling_grid.main(args) == 0
    runs = list((tmp_path / "grid-cpu-smoke" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


@pytest.mark.slow
def test_lr_sweep_smoke_writes_best_lr_for_the_grid(ray_cluster, tmp_path, capsys):
    assert lr_sweep.main([*SMOKE, "--storage", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "lr-cpu-smoke" / "best_lr.json").read_text())
    key = _grid_lr_key(tmp_path, 1)  # the sweep's cell and the grid's s1 cells share their lr_key
    assert set(table) == {key} and table[key]["tier"] == "s1" and table[key]["lr_key"] == key
    best = {"s1": table[key]}
    assert best["s1"]["lr"] > 0 and "lr-cpu-smoke/s1 trial" in best["s1"]["source"]
    _, runs = load_store(tmp_path / "lr-cpu-smoke" / "s1")
    assert len(runs) == 3 and (runs["status"] == "complete").sum() >= 1
    assert abs(runs.sort_values("trial_id")["config.train.lr"].iloc[0] - best["s1"]["dial_lr"]) >= 0  # ran
    assert float(best["s1"]["dial_lr"]) in set(runs["config.train.lr"].astype(float))  # points_to_evaluate
    capsys.readouterr()
    assert scaling_grid.main([*SMOKE, "--storage", str(tmp_path), "--dry-run"]) == 0
    assert f"{best['s1']['lr']:.3g} (lr_sweep)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- SIGKILL + --resume


def _statuses(exp: Path) -> dict[str, list[str]]:
    out = {}
    for d in trial_dirs(exp):
        rows = []
        for line in (d / "result.json").read_text().splitlines() if (d / "result.json").exists() else []:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        out[d.name] = [r.get("status") for r in rows]
    return out


@pytest.mark.slow
def test_sigkill_mid_grid_then_resume_reruns_nothing_complete(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "tune" / "scaling_grid.py"),
        *SMOKE,
        "--storage",
        str(tmp_path),
        "--tiers",
        "1",
        "--budgets",
        "4e10",
        "--seeds",
        "6",
        "--set",
        "train.eval_points=4",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    exp = tmp_path / "grid-cpu-smoke"
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # kill when 2 trials are complete and another is past a checkpoint
            states = _statuses(exp)
            done = [t for t, s in states.items() if s and s[-1] == "complete"]
            midway = [t for t, s in states.items() if len(s) >= 3 and s[-1] == "running"]
            if len(done) >= 2 and midway:
                break
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("no two complete trials and one midway within 240 s")
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its Ray cluster dies with it
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the cluster this test started (its own group)
        except ProcessLookupError:
            pass
        log.close()
    time.sleep(2)
    snapshot = {
        t: (exp / t / "result.json").read_text() for t, s in _statuses(exp).items() if s[-1:] == ["complete"]
    }
    assert 2 <= len(snapshot) < 6  # killed mid-grid: some trials complete, others running or not started
    res = subprocess.run(
        [*cmd, "--resume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    evals, runs = load_store(exp, refresh=True)
    assert len(runs) == 6 and set(runs["status"]) == {"complete"}
    for d in trial_dirs(exp):  # no duplicate rows, in Tune's own files (the store would drop them)
        steps = [json.loads(line)["step"] for line in (d / "result.json").read_text().splitlines()]
        assert len(steps) == len(set(steps)), (d.name, steps)
    assert (runs["duplicate_rows"] == 0).all()
    for trial, text in snapshot.items():  # complete before the kill: not rerun, not a row added
        assert (exp / trial / "result.json").read_text() == text, trial
    logs = "".join((d / "train.log").read_text() for d in trial_dirs(exp) if (d / "train.log").exists())
    assert "resumed from" in logs  # the midway trial continued from its checkpoint (its log goes on)
    assert final_rows(exp).groupby("trial_id").size().eq(1).all()


def test_outcome_of_a_cell_is_its_newest_trial_and_a_stale_running_one_does_not_count():
    """Issue 7.3: the exit code counted every trial in the store, so a trial a killed driver left `running`
    made every later run exit 1. The outcome per cell is its newest trial (or a settled one)."""
    from tune.progress import cell_outcomes

    runs = pd.DataFrame(
        {
            "trial_id": ["old", "new", "div", "gone"],
            "config_hash": ["a", "a", "b", "c"],
            "status": ["running", "complete", "diverged", "failed"],
            "trial_started_at": [1.0, 2.0, 1.5, 3.0],
            "error": [None, None, "non-finite loss nan at step 3", "Traceback\nValueError: boom"],
        }
    )
    got = {
        o["name"]: o
        for o in cell_outcomes(runs, {"a": "cell_a", "b": "cell_b", "c": "cell_c", "d": "cell_d"})
    }
    assert got["cell_a"]["status"] == "complete" and got["cell_a"]["trial_id"] == "new"
    assert got["cell_b"]["status"] == "diverged" and "non-finite" in got["cell_b"]["error"]
    assert got["cell_c"]["status"] == "failed" and got["cell_c"]["error"] == "ValueError: boom"
    assert got["cell_d"]["status"] == "missing"
    # a killed driver's stale trial of a cell that a later run completed is ignored even when it is newer
    runs.loc[0, "trial_started_at"] = 9.0
    assert cell_outcomes(runs, {"a": "cell_a"})[0]["status"] == "complete"
