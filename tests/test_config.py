"""Configuration: strict keys and types, the CLI's error contract, the dial, real-tier dimensions, hashes.

Reference values: SmolLM2-135M (576 x 30, 9/3 heads, SwiGLU 1536, vocab 49152, tied: 134,515,008 params),
SmolLM2-360M / 1.7B and DINOv2-small / base dimensions from their published model configs.
"""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fvlm.config import (
    EXECUTION_FIELDS,
    Config,
    ConfigError,
    config_hash,
    describe,
    flatten,
    load_config,
    load_tiers,
    lr_key,
    to_dict,
)

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "base.yaml"


def cfg_of(**overrides) -> Config:
    return load_config(None, {"world.val_size": 64, **overrides})


# ----------------------------------------------------------------------------- strict keys, types, ranges


def test_unknown_key_names_the_close_keys():
    with pytest.raises(ConfigError) as e:
        load_config(BASE, ["model.deep_qury=false"])
    msg = str(e.value)
    assert "model.deep_qury" in msg and "model.deep_query" in msg
    assert "\n" not in msg  # one line: the CLIs print it as is


def test_unknown_key_in_the_wrong_section_is_found_by_its_leaf():
    with pytest.raises(ConfigError, match=r"did you mean .*model\.deep_query"):
        load_config(None, ["train.deep_query=false"])


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"scale": 1, "fine_iter": 2}}))
    with pytest.raises(ConfigError, match=r"model\.fine_iter.*model\.fine_iters"):
        load_config(path)


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.deep_query=maybe", "model.deep_query"),  # wrong type
        ("model.deep_query=1", "model.deep_query"),  # an int is not silently a bool
        ("model.scale=1.5", "model.scale"),
        ("train.lr=fast", "train.lr"),
        ("model.scale=99", "model.scale"),  # out of range
        ("model.fine_iters=4", "model.fine_iters"),
        ("model.mode=foveated", "model.mode"),  # not one of the choices
        ("train.warmup_ratio=1.5", "train.warmup_ratio"),
        ("model.layers_used=9", "model.layers_used"),
        ("model.query_init_std=0", "model.query_init_std"),
        ("train.micro_batch=5", "train.micro_batch"),  # does not divide the batch
        ("model.tier=7B", "model.tier"),
        ("model.aim_loss=1", "model.aim_loss"),  # without model.aim there is no aim to train
        ("model.aim_sigma=0", "model.aim_sigma"),
        ("model.fine_read=foveal world.frame_size=24", "model.fine_read"),  # 24 px is not 2 x patch 8 x k
        ("model.query_source=oracle data.source=shards data.shards=x", "model.query_source"),  # no boxes
        ("world.task=find", "world.task"),
    ],
)
def test_bad_value_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(BASE, override.split())
    assert field in str(e.value)


def test_override_values_are_parsed_as_yaml_and_coerced():
    cfg = load_config(
        BASE, ["model.deep_query=false", "train.lr=1e-3", "model.scale=1", "train.inject_oom_steps=3"]
    )
    assert cfg.model.deep_query is False
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(
        cfg.train.lr, float
    )  # YAML reads 1e-3 as a string
    assert cfg.train.inject_oom_steps == [3]
    with pytest.raises(ConfigError, match="key=value"):
        load_config(BASE, ["model.deep_query"])


def test_an_explicit_batch_needs_no_explicit_micro_batch():
    # regression: the dial used to set micro_batch=32, so train.batch_size=8 alone was refused
    cfg = cfg_of(**{"train.batch_size": 8})
    assert (cfg.train.batch_size, cfg.train.micro_batch) == (8, 8)
    assert cfg_of(**{"train.batch_size": 8, "train.micro_batch": 2}).train.micro_batch == 2


# ----------------------------------------------------------------------------- the CLI


def test_cli_bad_key_exits_2_with_one_line_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "fvlm.train", "--config", str(BASE), "model.deep_qury=false"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "model.deep_query" in lines[0]


def test_cli_dry_run_prints_the_derived_values_and_exits_0(capsys):
    from fvlm.train import main

    assert main(["--config", str(BASE), "--dry-run", "model.scale=1", "world.val_size=8"]) == 0
    out = capsys.readouterr().out
    cfg = load_config(BASE, ["model.scale=1", "world.val_size=8"])
    assert describe(cfg) in out  # widths, depths, heads, LR, batch
    assert f"config_hash {config_hash(cfg)}" in out
    assert "FLOPs/sample" in out and "params" in out and "evals at [0," in out


# ----------------------------------------------------------------------------- the dial


def test_larger_scale_means_larger_model_and_lr_follows_one_over_sqrt_width():
    from fvlm.accounting import count_params
    from fvlm.train import build

    rule = load_tiers()["cpu"]
    base_width = rule["width_per_scale"] * rule["base_scale"]
    prev = None
    for scale in (1, 2, 4, 8):
        cfg = cfg_of(**{"model.scale": scale})
        m, t = cfg.model, cfg.train
        params = count_params(build(cfg)[0])["total"]
        width = m.llm_hidden
        assert m.dino_hidden == width == rule["width_per_scale"] * scale
        assert m.dino_hidden % m.dino_heads == 0 and m.dino_hidden // m.dino_heads == rule["head_dim"]
        # muP-style transfer from the base tier: lr * sqrt(width) is constant, lr = base_lr at base_scale
        assert t.lr * math.sqrt(width) == pytest.approx(rule["base_lr"] * math.sqrt(base_width))
        if prev is not None:
            assert m.llm_hidden > prev["width"] and m.llm_layers > prev["layers"] and params > prev["params"]
            assert m.dino_layers >= prev["dino_layers"] and t.lr < prev["lr"]
        prev = {
            "width": width,
            "layers": m.llm_layers,
            "params": params,
            "dino_layers": m.dino_layers,
            "lr": t.lr,
        }
    assert cfg_of(**{"model.scale": rule["base_scale"]}).train.lr == pytest.approx(rule["base_lr"])


def test_an_explicit_size_wins_over_the_dial():
    cfg = cfg_of(**{"model.scale": 2, "model.llm_hidden": 128, "train.lr": 1e-4})
    assert cfg.model.llm_hidden == 128 and cfg.model.dino_hidden == 64 and cfg.train.lr == pytest.approx(1e-4)


REAL_DIMS = {  # published SmolLM2 / DINOv2 configs
    "135M": dict(
        llm_hidden=576,
        llm_layers=30,
        llm_heads=9,
        llm_kv_heads=3,
        llm_intermediate=1536,
        dino_hidden=384,
        dino_layers=12,
        dino_heads=6,
        dino_intermediate=1536,
        patch_size=14,
    ),
    "360M": dict(
        llm_hidden=960,
        llm_layers=32,
        llm_heads=15,
        llm_kv_heads=5,
        llm_intermediate=2560,
        dino_hidden=384,
        dino_layers=12,
        dino_heads=6,
    ),
    "1.7B": dict(
        llm_hidden=2048,
        llm_layers=24,
        llm_heads=32,
        llm_kv_heads=32,
        llm_intermediate=8192,
        dino_hidden=384,
        dino_layers=12,
        dino_heads=6,
    ),
    "135M-dinob": dict(
        llm_hidden=576, llm_layers=30, dino_hidden=768, dino_layers=12, dino_heads=12, dino_intermediate=3072
    ),
}


@pytest.mark.parametrize("tier", sorted(REAL_DIMS))
def test_real_tiers_have_the_real_dimensions(tier):
    cfg = cfg_of(**{"model.tier": tier})
    for key, value in REAL_DIMS[tier].items():
        assert getattr(cfg.model, key) == value, key
    assert cfg.world.frame_size == 224 and cfg.model.llm_path and cfg.model.dino_path


def test_135m_llm_has_134_515_008_parameters():
    """A random-init 135M-tier Llama (vocab 49152, tied embeddings) built by our own build_llm, on the meta
    device (no memory), against SmolLM2-135M's published parameter count."""
    from fvlm.model import build_llm

    cfg = cfg_of(**{"model.tier": "135M"})
    m = dataclasses.replace(cfg.model, llm_path="")  # the tier names a hub path; build from the dims instead
    with torch.device("meta"):
        llm = build_llm(m, 49152, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
    assert llm.config.tie_word_embeddings
    assert sum(p.numel() for p in llm.parameters()) == 134_515_008  # parameters() counts the tied matrix once


# ----------------------------------------------------------------------------- hashes


def test_config_hash_is_stable_and_sensitive(tmp_path):
    a = load_config(BASE, ["model.scale=1"])
    assert config_hash(a) == config_hash(load_config(BASE, ["model.scale=1"]))
    # a round trip through YAML gives the same experiment
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(to_dict(a)))
    assert config_hash(load_config(path)) == config_hash(a)
    # run naming, the compass text and fault injection are not part of the experiment's identity
    same = load_config(
        BASE, ["model.scale=1", "run.name=other", "compass.why=x", "train.inject_oom_steps=[2]"]
    )
    assert config_hash(same) == config_hash(a)
    # every experiment field is
    for override in (
        "model.deep_query=false",
        "train.seed=1",
        "world.noise=0.05",
        "train.lr=1e-3",
        "model.scale=2",
        "train.eval_samples=128",
    ):
        assert config_hash(load_config(BASE, ["model.scale=1", override])) != config_hash(a), override


def test_execution_only_fields_do_not_change_the_cell():
    """Issue 7.2: a cell packed at another micro-batch or run with other threads is the same cell (it was a
    new hash, so a grid rerun trained completed cells again), while the science and the code version are."""
    a = load_config(BASE, ["model.scale=1"])
    execution = [
        "train.micro_batch=8",
        "train.threads=2",
        "train.device=cpu",
        "train.keep_last=5",
        "train.compile=true",
        "train.inject_oom_eval_steps=[3]",
        "model.gradient_checkpointing=true",
    ]
    for override in execution:
        assert config_hash(load_config(BASE, ["model.scale=1", override])) == config_hash(a), override
    assert config_hash(load_config(BASE, ["model.scale=1", *execution])) == config_hash(a)
    assert {o.split("=")[0] for o in execution} <= set(EXECUTION_FIELDS)


def test_config_hash_carries_the_code_version(monkeypatch):
    """Issue 7.2: results made under an older meaning of the rows (contract or world version) must not be
    reused as current, so the versions are part of the hash."""
    import fvlm.contract
    import fvlm.world

    cfg = load_config(BASE, ["model.scale=1"])
    h = config_hash(cfg)
    monkeypatch.setattr(fvlm.contract, "CONTRACT_VERSION", fvlm.contract.CONTRACT_VERSION + 1)
    assert config_hash(cfg) != h
    monkeypatch.undo()
    monkeypatch.setattr(fvlm.world, "WORLD_VERSION", fvlm.world.WORLD_VERSION + 1)
    assert config_hash(cfg) != h


def test_lr_key_ignores_length_and_seed_but_not_the_model():
    """Issue 7.2: best_lr.json was keyed by tier name only, so an LR swept for one world or base config was
    reused for another. The key is the science hash without LR, seed, length and eval settings."""
    a = load_config(BASE, ["model.scale=1", "train.budget_flops=1e11", "train.steps=0"])
    for override in ("train.seed=3", "train.budget_flops=4e11", "train.lr=0.01", "train.eval_points=3"):
        assert lr_key(
            load_config(BASE, ["model.scale=1", "train.budget_flops=1e11", "train.steps=0", override])
        ) == lr_key(a)
    for override in (
        "world.distractor_style=colored",
        "model.scale=2",
        "train.batch_size=16",
        "model.deep_query=false",
    ):
        assert lr_key(
            load_config(BASE, ["model.scale=1", "train.budget_flops=1e11", "train.steps=0", override])
        ) != lr_key(a), override


def test_every_field_has_a_default_and_a_comment():
    """STYLE rule 3: every field has a default and a one-line comment (in fvlm/config.py)."""
    src = (ROOT / "fvlm" / "config.py").read_text().splitlines()
    for key in flatten(to_dict(Config())):
        leaf = key.rsplit(".", 1)[1]
        lines = [ln for ln in src if ln.strip().startswith(f"{leaf}:") and "=" in ln]
        assert lines, f"{key}: no default"
        assert any("#" in ln for ln in lines), f"{key}: no comment"
