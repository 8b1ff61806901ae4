"""The real path, offline: stand-ins shaped like SmolLM2-Instruct (bf16 Llama + ChatML BPE tokenizer), DINOv2
(224 px, patch 14, layer scale 0.1, its own preprocessor_config.json) and an SD-style AutoencoderKL, built by
fvlm.pretrained_shapes, saved with save_pretrained and loaded through the config paths (model.llm_path,
model.dino_path, model.vae_path, model.tokenizer_path) by fvlm.train.build / train / the tune harness.

Run: pytest tests/test_pretrained.py        (the smoke grid test is marked slow; CI runs it too)
"""

import json
import re
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fvlm import pretrained_shapes as ps
from fvlm.config import ConfigError, load_config
from fvlm.encoder import IMAGENET_MEAN, IMAGENET_STD
from fvlm.text import PROMPT
from fvlm.train import build, train
from fvlm.world import TOKEN_ID, encode_caption, geometry

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTION = re.compile(r"^\w+ \w+ moves \w+( then \w+)?$")
FAST = {  # a few steps of small batches at the real geometry: seconds on one core
    "world.frame_size": 224,
    "world.frames": 4,
    "world.val_size": 4,
    "train.steps": 2,
    "train.batch_size": 2,
    "train.eval_points": 1,
    "train.eval_samples": 4,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """TINY stand-ins (fvlm.pretrained_shapes) plus the folders of the bad cases."""
    root = tmp_path_factory.mktemp("pretrained")
    modules: dict = {}
    paths = ps.save_all(root, ps.TINY, modules=modules)
    paths["modules"] = modules
    tok = ps.chat_tokenizer(ps.TINY.tokenizer_vocab)
    # an LLM folder without tokenizer files (a checkpoint saved by model.save_pretrained alone)
    paths["llm_no_tokenizer"] = str(root / "llm_no_tokenizer")
    (root / "llm_no_tokenizer").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "llm" / name, root / "llm_no_tokenizer" / name)
    # the base model's tokenizer: no chat template
    paths["tokenizer_no_template"] = str(root / "tokenizer_no_template")
    ps.chat_tokenizer(ps.TINY.tokenizer_vocab, chat_template=None).save_pretrained(
        paths["tokenizer_no_template"]
    )
    # an LLM that embeds 256 ids beside a 4096-token tokenizer
    paths["llm_small_vocab"] = str(root / "llm_small_vocab")
    ps.save_llm(paths["llm_small_vocab"], replace(ps.TINY.llm, vocab=256), tok)
    return paths


def config(saved, vae: bool = False, **overrides):
    return load_config(None, {**ps.path_overrides(saved, vae=vae), **FAST, **overrides})


def saved_tensors(folder: str, file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(f"{folder}/{file}")


def test_the_stand_ins_are_saved_like_the_real_checkpoints(saved):
    from transformers import AutoTokenizer

    for name, file, dtype in (
        ("llm", "model.safetensors", "BF16"),
        ("dino", "model.safetensors", "BF16"),
        ("vae", "diffusion_pytorch_model.safetensors", "F16"),
    ):
        with safe_open(f"{saved[name]}/{file}", "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {dtype}, name
    for name in ("llm", "dino"):
        assert json.loads(open(f"{saved[name]}/config.json").read())["dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(saved["llm"])
    assert tok.is_fast and len(tok) == ps.TINY.tokenizer_vocab == 4096
    assert [tok.convert_ids_to_tokens(i) for i in (0, 1, 2)] == list(ps.SPECIAL_TOKENS)
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.chat_template == ps.SMOLLM2_CHAT_TEMPLATE
    assert len(tok("red ring moves up then left")["input_ids"]) == 6  # the caption words are whole tokens
    llm = json.loads(open(f"{saved['llm']}/config.json").read())
    assert llm["vocab_size"] == len(tok) and llm["tie_word_embeddings"] and llm["num_key_value_heads"] == 2
    assert (llm["bos_token_id"], llm["eos_token_id"], llm["pad_token_id"]) == (1, 2, 2)
    dino = json.loads(open(f"{saved['dino']}/config.json").read())
    assert (dino["image_size"], dino["patch_size"], dino["layerscale_value"]) == (224, 14, 0.1)
    scales = saved_tensors(saved["dino"])["encoder.layer.0.layer_scale1.lambda1"].float()  # the file's names
    assert scales.std() > 0 and (scales - 1).abs().min() > 0.5  # per channel, far from 1
    pre = json.loads(open(f"{saved['dino']}/preprocessor_config.json").read())
    assert tuple(pre["image_mean"]) == ps.PROCESSOR_MEAN != IMAGENET_MEAN


def test_backbones_load_in_float32_equal_to_the_saved_weights(saved):
    """Regression (loading without dtype=float32): the bf16 checkpoint came back as bf16 master weights."""
    cfg = config(saved, vae=True, **{"model.objective": "joint"})
    assert (cfg.model.llm_hidden, cfg.model.llm_layers, cfg.model.dino_hidden, cfg.model.patch_size) == (
        64,
        2,
        32,
        14,
    )  # the folders' sizes, not the dial's (scale 2 is 64 wide with 3 layers, patch 8)
    model, _ = build(cfg)
    state = model.state_dict()
    for prefix, name, dtype in (
        ("llm.", "llm", torch.bfloat16),
        ("encoder.dino.", "dino", torch.bfloat16),
        ("vae.", "vae", torch.float16),
    ):
        ref = saved["modules"][name].state_dict()  # the module as saved, in its saved dtype
        mine = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        assert mine.keys() == ref.keys() and len(ref) > 10, name
        assert {v.dtype for v in ref.values()} == {dtype}, name
        assert {v.dtype for v in mine.values()} == {torch.float32}, name
        assert all(torch.equal(mine[k], ref[k].float()) for k in ref), name  # upcast, not re-initialised
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert float(model.visual_scale) == pytest.approx(float(state["llm.model.embed_tokens.weight"].std()))


def test_the_dino_reads_pixels_normalised_by_its_processor_config(saved):
    """Regression (ImageNet's mean/std whatever the checkpoint says): the patch pass normalises with the DINO
    folder's preprocessor_config.json and computes what the HF model computes, layer scales included."""
    from transformers import Dinov2Model

    model, data = build(config(saved))
    assert model.encoder.pixel_mean.flatten().tolist() == pytest.approx(ps.PROCESSOR_MEAN)
    assert model.encoder.pixel_std.flatten().tolist() == pytest.approx(ps.PROCESSOR_STD)
    frames = data.batch("train", range(2))["frames"].flatten(0, 1)
    ref = Dinov2Model.from_pretrained(saved["dino"], dtype=torch.float32).eval()

    def hidden(mean, std) -> torch.Tensor:  # the input of the last layer: what the deep query's cache holds
        pixels = (frames - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        return ref(pixels, output_hidden_states=True).hidden_states[-2]

    with torch.no_grad():
        mine = model.encoder.encode(frames).features
        assert torch.allclose(mine, hidden(ps.PROCESSOR_MEAN, ps.PROCESSOR_STD), atol=1e-5)
        assert not torch.allclose(mine, hidden(IMAGENET_MEAN, IMAGENET_STD), atol=1e-2)


def test_captions_go_through_the_chat_template_and_only_the_answer_is_scored(saved):
    """Regression (scoring the prompt, or the world's word ids): the input is the ChatML conversation in the
    LLM's own ids, the loss mask covers the answer and its <|im_end|>, and the loss is the CE over exactly those."""
    model, data = build(config(saved))
    tok = data.codec.tokenizer
    batch = data.batch("train", range(4))
    world_ids = set(TOKEN_ID.values())
    for i, caption in enumerate(batch["captions"]):
        ids = batch["input_ids"][i][batch["attention_mask"][i] == 1].tolist()
        mask = batch["loss_mask"][i][batch["attention_mask"][i] == 1].tolist()
        turn = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": caption}]
        text = tok.apply_chat_template(turn, tokenize=False)
        # the template's text up to the answer's end of turn (the newline after it is not scored text)
        assert tok.decode(ids) == text.removesuffix("\n")
        assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        scored = [t for t, m in zip(ids, mask, strict=True) if m]
        assert tok.decode(scored) == caption + "<|im_end|>"  # the answer and its end of turn, nothing else
        assert mask == [0] * (len(ids) - len(scored)) + [1] * len(scored)
        assert scored == tok(caption, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert scored[:-1] != encode_caption(caption)[1:-1] and not set(scored[:-1]) <= world_ids
    labels = batch["labels"]
    assert ((labels != -100) == (batch["loss_mask"] == 1)).all()
    # the model's caption loss is the CE of the scored tokens only (position j predicts token j + 1)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    ids, mask = batch["input_ids"], batch["loss_mask"]
    pred, target = out.logits[:, :-1], ids[:, 1:]
    keep = mask[:, 1:] == 1
    manual = torch.nn.functional.cross_entropy(pred[keep], target[keep])
    assert torch.allclose(out.loss_fine, manual, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_tokenizer", r"no tokenizer at .*llm_no_tokenizer"),
        ("no_template", r"has no chat template"),
        ("too_large", r"has 4096 tokens but the LLM at .*llm_small_vocab embeds 256"),
    ],
)
def test_a_tokenizer_that_does_not_fit_the_llm_is_a_one_line_config_error(
    saved, tmp_path, capsys, case, message
):
    from fvlm.train import main

    over = {
        "no_tokenizer": {"model.llm_path": saved["llm_no_tokenizer"]},
        "no_template": {"model.tokenizer_path": saved["tokenizer_no_template"]},
        "too_large": {"model.llm_path": saved["llm_small_vocab"]},
    }[case]
    with pytest.raises(ConfigError, match=message) as e:
        build(config(saved, **over))
    assert "\n" not in str(e.value)
    args = [f"{k}={v}" for k, v in {**ps.path_overrides(saved), **FAST, **over}.items()]
    assert main([*args, f"run.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]) and err[0].startswith("error: ")


@pytest.mark.parametrize("objective", ["caption", "joint"])
def test_train_runs_to_its_final_row_from_the_config_paths(saved, tmp_path, objective):
    """fvlm.train.train on the loaded backbones at 224 px / patch 14: the world's sprite scales to one patch,
    and the final row has a sample caption decoded to words by the LLM's tokenizer."""
    cfg = config(
        saved, vae=objective == "joint", **{"model.objective": objective, "run.out_dir": str(tmp_path)}
    )
    sprite, _, _ = geometry(cfg.world)
    assert cfg.world.patch_size == 14 and sprite >= 14  # 8 px at the reference patch 8 -> 14 px at patch 14
    rows = []
    summary = train(cfg, lambda row, _path: rows.append(row), log=None)
    assert summary["status"] == "complete" and rows[-1]["status"] == "complete"
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(rows[-1]["val_loss"]))
    clips = json.loads(rows[-1]["samples_json"])["clips"]
    assert clips and all(CAPTION.match(c["truth"]) for c in clips)
    assert all(isinstance(c["pred"], str) and "Ġ" not in c["pred"] and "<|" not in c["pred"] for c in clips)
    if objective == "joint":
        assert summary["val_loss_fine"] > 0 and rows[-1]["train_objective"] != rows[-1]["train_loss"]


@pytest.mark.slow
def test_the_smoke_grid_completes_with_the_pretrained_paths(ray_cluster, saved, tmp_path):
    from analysis.store import load_store
    from fvlm import accounting
    from tune import scaling_grid

    sets = {**ps.path_overrides(saved), "world.frame_size": 224, "world.frames": 4}
    probe = load_config(None, {**sets, "train.batch_size": 8, "train.steps": 1})
    vocab, text_len, _ = accounting.data_shape(probe)
    budget = 2 * 8 * accounting.flops_per_sample(probe, vocab, text_len=text_len) * 1.01  # 2 steps of 8
    args = ["--smoke-test", "--preset", "cpu", "--tiers", "1", "--budgets", f"{budget:.4g}"]
    args += ["--storage", str(tmp_path)] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    assert scaling_grid.main(args) == 0
    evals, runs = load_store(tmp_path / "grid-cpu-smoke")
    assert runs["status"].tolist() == ["complete"]
    final = evals.iloc[-1]
    assert final["status"] == "complete" and final["step"] == 2 and final["val_loss"] > 0
    assert all(CAPTION.match(c["truth"]) for c in json.loads(final["samples_json"])["clips"])
