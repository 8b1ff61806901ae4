"""The pretrained path, offline: tiny DINOv2 / Llama / AutoencoderKL / tokenizer saved with save_pretrained load
back through the real config keys (model.dino_path, llm_path, vae_path, tokenizer_path -> fvlm.train.build)
and behave exactly like the in-memory modules they were saved from."""

import copy

import pytest
import torch

from fvlm import accounting
from fvlm.config import load_config
from fvlm.train import build
from fvlm.world import VOCAB, build_tokenizer, encode_caption

BACKBONES = ("encoder.dino.", "llm.", "vae.")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Reference modules with the scale-1 sizes, seeded independently of any FoveatedVLM, saved to disk."""
    from diffusers import AutoencoderKL
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("pretrained")
    tok = build_tokenizer()
    torch.manual_seed(2024)
    dino = Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=4,
            image_size=32,
            patch_size=8,
            layerscale_value=1.0,
            initializer_range=0.2,
        )
    )
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            initializer_range=0.3,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    )
    paths = {}
    for name, module in (("dino", dino), ("llm", llm), ("vae", vae), ("tokenizer", tok)):
        paths[name] = str(root / name)
        module.save_pretrained(paths[name])
    return {"dino": dino.eval(), "llm": llm.eval(), "vae": vae.eval(), "tokenizer": tok, "paths": paths}


def config(saved, **overrides):
    p = saved["paths"]
    return load_config(
        None,
        {
            "model.scale": 1,
            "world.val_size": 16,
            "train.steps": 1,
            "model.objective": "joint",
            "model.dino_path": p["dino"],
            "model.llm_path": p["llm"],
            "model.vae_path": p["vae"],
            "model.tokenizer_path": p["tokenizer"],
            **overrides,
        },
    )


def test_the_tokenizer_loads_back_with_the_same_vocabulary(saved):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(saved["paths"]["tokenizer"])
    assert tok.is_fast and len(tok) == len(VOCAB) == 19
    assert tok.get_vocab() == saved["tokenizer"].get_vocab()
    assert tok.pad_token_id == tok.eos_token_id == 2 and tok.bos_token_id == 1
    for caption in ("red ring moves up then left", "cyan x moves down"):
        assert tok(caption)["input_ids"] == encode_caption(caption)[1:-1]  # no specials added by itself


def test_backbones_load_from_the_config_paths_and_match_the_saved_modules(saved):
    model, world = build(config(saved))
    model.eval()
    for prefix, ref in (("encoder.dino.", saved["dino"]), ("llm.", saved["llm"]), ("vae.", saved["vae"])):
        mine = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        theirs = ref.state_dict()
        assert mine.keys() == theirs.keys(), prefix
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), prefix
    assert not any(p.requires_grad for p in model.vae.parameters())  # the VAE is frozen
    # the visual scale is measured from the loaded embeddings, not from a random init
    assert float(model.visual_scale) == pytest.approx(
        float(saved["llm"].get_input_embeddings().weight.detach().std())
    )
    # and the loaded modules compute what the saved ones compute
    frames = world.batch("train", range(2))["frames"].flatten(0, 1)
    pixels = (frames - model.encoder.pixel_mean) / model.encoder.pixel_std
    ids = world.batch("train", range(2))["input_ids"]
    with torch.no_grad():
        assert torch.equal(
            model.encoder.dino(pixels).last_hidden_state, saved["dino"](pixels).last_hidden_state
        )
        assert torch.equal(model.llm(input_ids=ids).logits, saved["llm"](input_ids=ids).logits)
        assert torch.equal(
            model._latents(frames[None]),
            saved["vae"].encode(frames * 2 - 1).latent_dist.mean[None] * saved["vae"].config.scaling_factor,
        )


def test_a_model_built_from_paths_equals_one_holding_the_in_memory_modules(saved):
    """Build the FoveatedVLM from the paths; build another from the dial (random backbones), give it the
    in-memory backbones and the first model's connector weights: every mode gives the same output."""
    from_paths, world = build(config(saved))
    cfg = config(
        saved,
        **{"model.dino_path": "", "model.llm_path": "", "model.vae_path": "", "model.tokenizer_path": ""},
    )
    in_memory, _ = build(cfg)
    in_memory.encoder.dino = copy.deepcopy(saved["dino"])
    in_memory.llm = copy.deepcopy(saved["llm"])
    in_memory.vae = copy.deepcopy(saved["vae"])  # another architecture than the default tiny VAE
    connector = {k: v for k, v in from_paths.state_dict().items() if not k.startswith(BACKBONES)}
    assert "visual_scale" in connector and "encoder.output_proj.weight" in connector
    in_memory.load_state_dict(connector, strict=False)
    batch = world.batch("train", range(3))
    from_paths.eval()
    in_memory.eval()
    for mode in ("coarse_fine", "coarse_only", "autoregressive"):
        with torch.no_grad():
            a, b = from_paths(batch, mode=mode), in_memory(batch, mode=mode)
        assert torch.equal(a.loss, b.loss), mode
        assert torch.equal(a.logits, b.logits), mode
    # sanity: the in-memory model before the copy was a different function
    fresh, _ = build(cfg)
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(batch).loss, from_paths(batch).loss)


def test_accounting_reads_the_vae_from_its_path(saved):
    cfg = config(saved)
    default = config(saved, **{"model.vae_path": ""})
    assert accounting.flops_per_sample(cfg, 19) != accounting.flops_per_sample(
        default, 19
    )  # other VAE widths


def test_loaded_backbones_define_the_sizes_used_for_accounting(saved):
    # the dial says scale 2 (width 64, 3 LLM layers); the saved weights are 32 wide with 2 layers: after
    # build() the config (and so FLOPs, memory estimate and config hash) describes what was loaded
    cfg = config(saved)
    cfg.model.llm_hidden, cfg.model.llm_layers, cfg.model.dino_hidden = 64, 3, 64
    model, world = build(cfg)
    assert (cfg.model.llm_hidden, cfg.model.llm_layers, cfg.model.dino_hidden) == (32, 2, 32)
    assert cfg.model.llm_kv_heads == 1 and cfg.model.llm_intermediate == 80
    assert accounting.flops_per_sample(cfg, len(world.tokenizer)) > 0
