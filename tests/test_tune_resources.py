"""Packing arithmetic, memory estimates and the small pure helpers of tune/ (no Ray cluster; seconds).

Run: pytest tests/test_tune_resources.py
"""

import pytest

from fvlm import accounting
from fvlm.config import load_config
from fvlm.train import build
from tune import ablate, flags
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
