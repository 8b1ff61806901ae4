"""Packing arithmetic, memory estimates and the small pure helpers of tune/ (no Ray cluster; seconds).

Run: pytest tests/test_tune_resources.py
"""

import math

import pytest
import torch

from fvlm import accounting
from fvlm.config import load_config
from fvlm.train import build
from tune import ablate, flags, resources
from tune import plan as planning
from tune.resources import CellTooLarge, analytic_memory_mb, plan_resources, trials_per_gpu

SMOKE = {"train.batch_size": 8, "train.steps": 4, "world.val_size": 64}


def cfg(**over):
    return load_config(flags.BASE_YAML, {**SMOKE, **{k.replace("__", "."): v for k, v in over.items()}})


def test_trials_per_gpu_is_a_power_of_two_that_fits():
    assert trials_per_gpu(6000, 24000) == 4
    assert trials_per_gpu(7000, 24000) == 2  # 3 would fit, but fractions must divide 1
    assert trials_per_gpu(100, 24000) == 8  # capped
    assert trials_per_gpu(25000, 24000) == 0


def test_param_count_without_weights_matches_the_real_model():
    for scale in (1, 3):
        c = cfg(model__scale=scale)
        _, params, _ = analytic_memory_mb(c)
        model, _ = build(c)
        assert params == accounting.count_params(model)["total"]


def test_quarter_card_cells_pack_four_per_gpu_and_cap_their_memory():
    c = cfg(model__scale=1)
    mem, _, _ = analytic_memory_mb(c)
    card = 4 * (mem * 1.2 + 600)
    plan = plan_resources([c] * 6, cores=2, gpus=1, card_mb=card, headroom=1.2)
    assert plan.mode == "gpu" and plan.concurrency == 4
    assert all(r.gpu_fraction == 0.25 and r.cpus == 0.5 and r.threads == 1 for r in plan.cells)
    assert all(0 < r.mem_cap < 0.25 for r in plan.cells)
    assert "4 per" in plan.describe()


def test_a_cell_that_only_fits_at_a_smaller_micro_batch_gets_one():
    c = cfg(model__scale=4, train__batch_size=32)
    full, _, _ = analytic_memory_mb(c, 32)
    half, _, _ = analytic_memory_mb(c, 16)
    card = (full + half) / 2 * 1.2 + 600  # between the two needs
    plan = plan_resources([c], cores=2, gpus=1, card_mb=card)
    assert plan.cells[0].micro_batch == 16 and plan.concurrency == 1
    assert any("micro_batch 32 -> 16" in n for n in plan.notes)


def test_a_cell_above_the_card_is_refused_with_the_numbers():
    c = cfg(model__scale=2)
    with pytest.raises(CellTooLarge, match=r"tier s2 needs \d+ MiB at micro_batch 1 .* card has 500 MiB"):
        plan_resources([c], cores=2, gpus=1, card_mb=500)


# ----------------------------------------------------------------------------- the CUDA probe, its measurement
# injected: CUDA cannot run here, so the fakes stand in for what only a GPU measures (an OOM, free memory)


def oom_above(limit: int, calls: list[int]):
    """A probe that runs out of memory above micro-batch `limit` (raising like probe_memory_mb, or inf like
    cluster_probe's Ray task) and otherwise needs 1000 MiB per clip."""

    def measure(cfg, micro_batch: int) -> float:
        calls.append(micro_batch)
        if micro_batch > limit:
            if micro_batch % 8 == 0:
                raise torch.OutOfMemoryError("CUDA out of memory (fake probe)")
            return math.inf
        return 1000.0 * micro_batch

    return measure


def test_a_probe_that_runs_out_of_memory_is_measured_again_at_half_the_micro_batch():
    """Regression (an OOM in the probe refused the cell): it re-probes at 4, then 2, which fits."""
    calls: list[int] = []
    c = cfg(model__scale=1)
    plan = plan_resources(
        [c], cores=16, gpus=1, card_mb=80000, free_mb=80000, probe=True, measure=oom_above(2, calls)
    )
    assert calls == [8, 4, 2]
    cell = plan.cells[0]
    assert (cell.micro_batch, cell.mem_mb, cell.mem_source) == (2, 2000.0, "probe")
    assert any("ran out of memory at micro_batch 8, 4 -> 2 (grad_accum x4" in n for n in plan.notes)


def test_a_probe_that_runs_out_of_memory_at_micro_batch_1_refuses_the_cell_with_the_numbers():
    calls: list[int] = []
    with pytest.raises(CellTooLarge) as e:
        plan_resources(
            [cfg(model__scale=1)],
            cores=16,
            gpus=1,
            card_mb=24000,
            free_mb=8000,
            probe=True,
            measure=oom_above(0, calls),
        )
    assert calls == [8, 4, 2, 1]
    assert "tier s1 ran out of memory in the probe at every micro_batch down to 1 (tried 8, 4, 2, 1)" in str(
        e.value
    )
    assert "the card has 8000 MiB free" in str(e.value) and "\n" not in str(e.value)


def test_the_cluster_probe_turns_an_oom_into_inf(monkeypatch):
    def oom(cfg, micro_batch):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    monkeypatch.setattr(resources, "probe_memory_mb", oom)
    assert resources._probe_or_inf(cfg(), 8) == math.inf


def test_the_plan_fills_the_free_memory_of_a_visible_gpu(monkeypatch):
    """Regression (packing against the card's total): 4 trials of 1800 MiB fit 8000 MiB, but another process
    holds half of it, so 2 per card, each capped at its share of the free memory."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4000 * 2**20, 8000 * 2**20))
    assert resources.free_gpu_mb() == 4000
    c = cfg(model__scale=1)
    plan = plan_resources([c] * 4, cores=16, gpus=1, card_mb=8000, probe=True, measure=lambda cfg, mb: 1000.0)
    assert plan.concurrency == 2 and {r.gpu_fraction for r in plan.cells} == {0.5}
    assert plan.cells[0].mem_cap == pytest.approx((4000 / 2 - 600) / 8000)
    assert any("4000 MiB free of the card's 8000 MiB" in n for n in plan.notes)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8000 * 2**20, 8000 * 2**20))
    assert (
        plan_resources([c] * 4, cores=16, gpus=1, card_mb=8000, measure=lambda cfg, mb: 1000.0).concurrency
        == 4
    )


def test_the_probe_reports_the_reserved_peak_over_three_optimizer_steps(monkeypatch):
    """Regression (max_memory_allocated after one step): the probe steps AdamW PROBE_STEPS = 3 times, so its
    moments coexist with a step's activations, and returns the allocator's reservation. The CUDA statistics
    are faked (no GPU here); the steps are real, on the CPU."""
    stats = {"reset": 0}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: stats.update(reset=1))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 3000 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1000 * 2**20)
    steps: list[int] = []
    step = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        steps.append(len(self.state))  # parameters holding AdamW moments before this step
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    c = cfg(model__scale=1, train__batch_size=8)
    assert resources.probe_memory_mb(c, 2, device="cpu") == 3000.0
    assert stats["reset"] == 1 and len(steps) == resources.PROBE_STEPS == 3
    assert steps[0] == 0 and steps[1] > 0  # from the second step on the moments are there during the step


def test_cpu_plan_one_thread_per_core():
    plan = plan_resources([cfg()] * 5, cores=2, gpus=0)
    assert (plan.mode, plan.concurrency, plan.cells[0].threads, plan.cells[0].cpus) == ("cpu", 2, 1, 1.0)
    single = plan_resources([cfg()], cores=2, gpus=0)
    assert (single.concurrency, single.cells[0].threads) == (1, 2)


def test_makespan_is_longest_first():
    assert planning.makespan([4, 3, 3, 2], 2) == 6
    assert planning.makespan([], 2) == 0


def test_set_yaml_value_keeps_comments_and_adds_missing_keys():
    text = "# top\nmodel:\n  scale: 2\n  deep_query: true  # why\n\ntrain:\n  seed: 0\n"
    out = ablate.set_yaml_value(text, "model.deep_query", "false")
    assert "  deep_query: false  # why" in out and out.startswith("# top")
    out = ablate.set_yaml_value(text, "model.query_bias", "true")
    assert out.index("query_bias: true") < out.index("train:")
    out = ablate.set_yaml_value(text, "world.frames", "8")
    assert out.rstrip().endswith("world:\n  frames: 8")


def test_fmt_value_is_the_yaml_a_user_types():
    assert [flags.fmt_value(v) for v in (False, None, 0.5, "coarse_only", 2)] == [
        "false",
        "null",
        "0.5",
        "coarse_only",
        "2",
    ]


def test_expect_per_arm_from_a_string_or_a_mapping():
    assert ablate.expect_for({"expect": "worse"}, "false") == "worse"
    assert ablate.expect_for({"expect": {32: "worse", 128: "better"}}, "128") == "better"
    assert ablate.expect_for({}, "x") == "better"


def test_promote_writes_a_significant_winner_and_only_then(tmp_path, capsys):
    from analysis.verdicts import paired_verdict

    base = tmp_path / "base.yaml"
    base.write_text(flags.BASE_YAML.read_text())
    ctx = flags.Context.from_args(
        ablate.build_parser().parse_args(["--preset", "cpu", "--config", str(base)]), "ablate"
    )
    worse = paired_verdict([1.0, 1.1, 1.2], [1.5, 1.61, 1.69], param="model.deep_query", arm="false")
    ablate.promote(ctx, "model.deep_query", [worse])
    assert "deep_query: true" in base.read_text()
    better = paired_verdict(
        [1.0, 1.1, 1.2], [0.5, 0.61, 0.69], param="model.deep_query", arm="false", expect="worse"
    )  # the hypothesis FAILED, but the variant wins: promote it
    ablate.promote(ctx, "model.deep_query", [worse, better])
    assert "deep_query: false" in base.read_text() and load_config(base).model.deep_query is False
    assert "model.deep_query = false" in capsys.readouterr().out
