"""Every knob in configs/ablations.yaml changes what it claims to change (upstream BUG-010: the deep_query
flag never reached the model, and a whole ablation run equalled the baseline).

For each entry and value: baseline and variant are built from configs/base.yaml with the SAME seed and the
entry's `context` applied to both. Three kinds of knob, each checked for what it acts on:
- model knobs: the forward output differs, also after copying every shared weight from the baseline into
  the variant (so the difference comes from the knob's code path, not from a shifted random init);
- data knobs (world.*): the clips differ and so does the loss; the two models are identical;
- training-only knobs (freeze_*, connector_lr_ratio): the forward is bitwise the same at init, and one real
  training step (fvlm.train._step) differs exactly where the knob says.
"""

from pathlib import Path

import pytest
import torch
import yaml

from fvlm.config import flatten, load_config, to_dict
from fvlm.train import _step, build, make_optimizer

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "base.yaml"
ABLATIONS = yaml.safe_load((ROOT / "configs" / "ablations.yaml").read_text())
SMALL = {"world.val_size": 16}
TRAINING_ONLY = {"model.freeze_dino", "model.freeze_llm", "train.connector_lr_ratio"}
INIT_ONLY = {"model.query_init_std": ("q_static", "q_init")}  # knob -> the parameters it initialises
CASES = [
    pytest.param(name, entry["key"], value, entry.get("context") or {}, id=f"{name}={value}")
    for name, entry in ABLATIONS.items()
    for value in entry["values"]
]


pytestmark = pytest.mark.usefixtures("one_thread")


def arms(key, value, context):
    base_cfg = load_config(BASE, {**SMALL, **context})
    var_cfg = load_config(BASE, {**SMALL, **context, key: value})
    base, base_world = build(base_cfg)
    var, var_world = build(var_cfg)
    return (base_cfg, base.eval(), base_world), (var_cfg, var.eval(), var_world)


def outputs(model, batch) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)  # query_source=random draws its queries: the same draws in both arms
    with torch.no_grad():
        out = model(batch)
    res = {"loss": out.loss}
    for name in ("loss_fine", "loss_coarse", "logits"):
        if getattr(out, name) is not None:
            res[name] = getattr(out, name)
    return res


def differ(a: dict, b: dict) -> bool:
    return any(
        k in b and (a[k].shape != b[k].shape or not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6))
        for k in a
    )


def copy_shared(src, dst, skip=()) -> int:
    """Load every src weight whose name and shape dst shares (except `skip`); return how many."""
    mine = dst.state_dict()
    shared = {
        k: v
        for k, v in src.state_dict().items()
        if k in mine and v.shape == mine[k].shape and not k.startswith(skip)
    }
    dst.load_state_dict(shared, strict=False)
    return len(shared)


def one_step(cfg, model, world):
    model.train()
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    st = {"step": 0, "micro_batch": cfg.train.micro_batch, "injected": []}
    _step(model, model, opt, cfg, world.batch("train", range(4)), st, torch.device("cpu"), None)
    return opt


def test_the_ablation_list_is_well_formed():
    keys = set(flatten(to_dict(load_config(BASE))))
    base = flatten(to_dict(load_config(BASE, SMALL)))
    for name, entry in ABLATIONS.items():
        assert {"key", "values", "hypothesis", "metric", "lower_is_better"} <= set(entry), name
        assert entry["key"] in keys, f"{name}: unknown key {entry['key']}"
        for value in entry["values"]:  # a variant equal to the baseline would be a no-op by construction
            assert value != base[entry["key"]] or entry.get("context"), f"{name}={value} is the baseline"
    assert CASES


def test_the_same_seed_gives_the_same_model_and_output():
    """The control that makes 'differs' meaningful below: two builds of the baseline are bitwise equal."""
    (_, a, world), (_, b, _) = arms("train.seed", 0, {})
    batch = world.batch("train", range(4))
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    oa, ob = outputs(a, batch), outputs(b, batch)
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


@pytest.mark.parametrize("name, key, value, context", CASES)
def test_knob_changes_what_it_claims(name, key, value, context):
    (base_cfg, base, base_world), (var_cfg, var, var_world) = arms(key, value, context)
    assert flatten(to_dict(var_cfg))[key] == value and flatten(to_dict(base_cfg))[key] != value
    batch = base_world.batch("train", range(4))

    if key.startswith("world."):
        var_batch = var_world.batch("train", range(4))
        assert var_batch["frames"].shape != batch["frames"].shape or not torch.equal(
            var_batch["frames"], batch["frames"]
        )
        assert all(
            torch.equal(x, y)
            for x, y in zip(base.state_dict().values(), var.state_dict().values(), strict=True)
        )  # the model is the same
        assert differ(outputs(base, batch), outputs(var, var_batch))
        return

    if key in TRAINING_ONLY:
        base_out, var_out = outputs(base, batch), outputs(var, batch)
        assert all(torch.equal(base_out[k], var_out[k]) for k in base_out)  # not a forward knob
        before = {n: p.detach().clone() for n, p in var.named_parameters()}
        base_opt, var_opt = one_step(base_cfg, base, base_world), one_step(var_cfg, var, var_world)
        base_p, var_p = dict(base.named_parameters()), dict(var.named_parameters())
        if key == "train.connector_lr_ratio":
            lrs = {g["name"]: g["lr"] for g in var_opt.param_groups}
            assert lrs["connector"] == pytest.approx(var_cfg.train.lr * value)
            assert lrs["dino"] == lrs["llm"] == pytest.approx(var_cfg.train.lr)
            connector = {id(p) for p in var.param_groups()["connector"]}
            for n, p in var_p.items():  # same grads, same backbone LR: only the connector moved differently
                same = torch.equal(p, base_p[n])
                assert same != (id(p) in connector), n
        else:
            frozen = "encoder.dino." if key == "model.freeze_dino" else "llm."
            group = "dino" if key == "model.freeze_dino" else "llm"
            assert group not in {g["name"] for g in var_opt.param_groups}
            assert group in {g["name"] for g in base_opt.param_groups}
            for n, p in var_p.items():
                if n.startswith(frozen):
                    assert p.grad is None and torch.equal(p, before[n]), n  # no gradient, not moved
                    if not n.endswith("mask_token"):
                        assert not torch.equal(base_p[n], before[n]), n  # the baseline did move it
            assert not torch.equal(var.q_static, before["q_static"])  # the rest still trains
        return

    # model knobs: built from the same seed, the output differs ...
    base_out = outputs(base, batch)
    assert differ(base_out, outputs(var, batch))
    # ... and still differs when the variant carries every weight the baseline has (same shape, same name)
    skip = INIT_ONLY.get(key, ())
    assert copy_shared(base, var, skip=skip) > 0
    var_out = outputs(var, batch)
    if key == "model.lambda_coarse":
        # the fine read is unchanged; the training objective is not: loss = fine + lambda * coarse
        assert torch.allclose(var_out["loss_fine"], base_out["loss_fine"], atol=1e-5)
        expected = var_out["loss_fine"] + value * base_out["loss_coarse"]
        assert torch.allclose(var_out["loss"], expected, atol=1e-5)
        assert not torch.allclose(var_out["loss"], base_out["loss"], atol=1e-4)
        return
    assert differ(base_out, var_out)
    if skip:  # an init-only knob: the draws differ, and with them copied too the outputs are the same
        ratio = float(var.q_static.detach().std() / base.q_static.detach().std())
        assert ratio == pytest.approx(value / base_cfg.model.query_init_std, rel=0.5)
        copy_shared(base, var)
        assert not differ(base_out, outputs(var, batch))
