"""Random-weight stand-ins shaped like the checkpoints fvlm loads: SmolLM2-Instruct (Llama + ChatML BPE tokenizer),
DINOv2 (with an image processor config) and an SD-style AutoencoderKL, built locally and saved with
save_pretrained, for tests and benches. Nothing is downloaded; no weight is pretrained.

    from fvlm.pretrained_shapes import TINY, REAL_135M, save_all, path_overrides
    paths = save_all("/tmp/ckpt", TINY)                   # {"llm", "dino", "vae", "tokenizer"} folders
    cfg = load_config(None, path_overrides(paths))        # model.llm_path / dino_path / vae_path / tokenizer_path
    python -m fvlm.pretrained_shapes /tmp/ckpt --shapes real   # the same from a shell (bench/gpu_check.sh)

What is copied from the real checkpoints (their config.json / tokenizer_config.json / preprocessor_config.json
on the Hugging Face hub: HuggingFaceTB/SmolLM2-135M-Instruct, facebook/dinov2-small,
stabilityai/sd-vae-ft-mse), because the loading code depends on it:
- LLM: LlamaForCausalLM, tied embeddings, grouped-query attention, saved in bfloat16 (SmolLM2's checkpoint dtype);
  the tokenizer is a byte-level BPE with <|endoftext|>, <|im_start|>, <|im_end|> as ids 0, 1, 2, bos
  <|im_start|>, eos = pad = <|im_end|>, and SmolLM2-Instruct's ChatML chat template (with its default system
  turn). Its vocabulary is a few thousand merges trained here on English text (Python's own docstrings) plus
  the world's caption words; the real one has 49152, so an LLM at the real width embeds more ids than the
  tokenizer has, which is allowed (a tokenizer larger than the embedding is not: fvlm/text.py).
- DINO: Dinov2Model with patch 14 and layer scale (``layerscale``; trained DINOv2 layer scales are per channel
  and far from 1, so the stand-in draws them around ``layerscale``), plus a preprocessor_config.json whose
  image_mean / image_std fvlm reads (here deliberately not ImageNet's, so a test can tell them apart).
- VAE: AutoencoderKL with four blocks (8x downsampling) and SD's latent scaling factor 0.18215.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

# SmolLM2-135M-Instruct's chat template, verbatim from its tokenizer_config.json on the hub: ChatML with a
# default system turn when the conversation has none (so the answer starts after a long, fixed prefix).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
# not ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225): a test must be able to see which one was used
PROCESSOR_MEAN = (0.5, 0.4, 0.3)
PROCESSOR_STD = (0.2, 0.25, 0.3)
# the English part of the tokenizer corpus: docstrings of these standard-library modules (always installed)
CORPUS_MODULES = (
    "argparse", "collections", "json", "textwrap", "string", "itertools", "functools", "pathlib",
    "dataclasses", "logging", "unittest", "subprocess", "threading", "csv", "decimal", "statistics", "random",
    "datetime", "difflib", "inspect", "ast", "tarfile", "zipfile", "shutil", "os", "re", "heapq", "enum",
    "contextlib", "codecs", "pickle", "socket", "asyncio", "configparser", "hashlib", "uuid", "struct",
    "math", "tempfile",
)  # fmt: skip


@dataclass(frozen=True)
class LLMShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None = None  # None: the tokenizer's length
    rope_theta: float = 100000.0  # SmolLM2-135M
    max_positions: int = 8192
    init_std: float = 0.041666666666666664  # SmolLM2-135M's initializer_range (1 / sqrt(576))


@dataclass(frozen=True)
class DinoShape:
    hidden: int
    layers: int
    heads: int
    mlp_ratio: int = 4
    patch: int = 14
    image_size: int = 224  # facebook/dinov2-small says 518 and interpolates its position embeddings
    layerscale: float = 0.1


@dataclass(frozen=True)
class VAEShape:
    block_out_channels: tuple[int, ...] = (8, 8, 16, 16)  # SD: (128, 256, 512, 512)
    layers_per_block: int = 1  # SD: 2
    latent_channels: int = 4
    norm_num_groups: int = 4  # SD: 32
    scaling_factor: float = 0.18215


@dataclass(frozen=True)
class Shapes:
    llm: LLMShape
    dino: DinoShape
    vae: VAEShape = field(default_factory=VAEShape)
    tokenizer_vocab: int = 4096  # BPE vocabulary trained here, specials included


# seconds on a CPU: tiny widths, with the real checkpoints' patch, image size, GQA, dtypes and conventions
TINY = Shapes(
    llm=LLMShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, init_std=0.02),
    dino=DinoShape(hidden=32, layers=2, heads=2),
)
# SmolLM2-135M (576 wide, 30 layers, 9 heads, 3 KV heads, 1536 MLP, 49152 ids) + DINOv2-small (384, 12 x 6)
REAL_135M = Shapes(
    llm=LLMShape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152),
    dino=DinoShape(hidden=384, layers=12, heads=6),
)
SHAPES = {"tiny": TINY, "real": REAL_135M}


# ----------------------------------------------------------------------------- tokenizer


def english_corpus() -> list[str]:
    """Docstrings of CORPUS_MODULES (about 360 kB of English), the world's caption words and fvlm's prompt."""
    from fvlm.text import PROMPT
    from fvlm.world import COLOURS, DIRECTIONS, SHAPES

    texts = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
        texts += [o.__doc__ for o in objects if isinstance(getattr(o, "__doc__", None), str)]
    words = " ".join((*COLOURS, *SHAPES, *DIRECTIONS, "moves", "then"))
    return texts + [words] * 50 + [PROMPT] * 20  # repeated: each becomes whole-word tokens


def chat_tokenizer(vocab_size: int = 4096, chat_template: str | None = SMOLLM2_CHAT_TEMPLATE):
    """A byte-level BPE trained on english_corpus(), wrapped like SmolLM2-Instruct's tokenizer (see the module
    docstring); ``chat_template=None`` leaves the template out (the base model's tokenizer has none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(english_corpus(), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=8192,
    )
    hf.chat_template = chat_template
    return hf


# ----------------------------------------------------------------------------- models


@contextlib.contextmanager
def _seed(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def save_llm(
    path: str | Path,
    shape: LLMShape,
    tokenizer=None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    device: str = "cpu",
):
    """A random LlamaForCausalLM of `shape` saved to `path` in `dtype` (with `tokenizer` beside it, if given);
    returns the module as saved (in `dtype`, on the CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    vocab = shape.vocab or (len(tokenizer) if tokenizer is not None else 4096)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        rope_theta=shape.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=shape.init_std,
        **ids,
    )
    with _seed(seed), torch.device(device):  # on the GPU a 135M init takes a fraction of a second
        model = LlamaForCausalLM(cfg)
    model = model.to(device="cpu", dtype=dtype).eval()
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def save_dino(
    path: str | Path,
    shape: DinoShape,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    mean: tuple[float, ...] = PROCESSOR_MEAN,
    std: tuple[float, ...] = PROCESSOR_STD,
):
    """A random Dinov2Model of `shape` (per-channel layer scales around shape.layerscale) saved to `path` in
    `dtype`, with a BitImageProcessor-style preprocessor_config.json (facebook/dinov2-small's keys, our mean
    and std); returns the module as saved."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        mlp_ratio=shape.mlp_ratio,
        image_size=shape.image_size,
        patch_size=shape.patch,
        layerscale_value=shape.layerscale,
    )
    with _seed(seed):
        model = Dinov2Model(cfg)
        with torch.no_grad():
            for layer in model.encoder.layer:
                for scale in (layer.layer_scale1, layer.layer_scale2):
                    scale.lambda1.mul_(torch.randn_like(scale.lambda1).mul(0.5).exp())
    model = model.to(dtype).eval()
    model.save_pretrained(path)
    processor = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(mean),
        "image_processor_type": "BitImageProcessor",
        "image_std": list(std),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 256},
    }
    (Path(path) / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return model


def save_vae(path: str | Path, shape: VAEShape, *, dtype: torch.dtype = torch.float16, seed: int = 0):
    """A random diffusers AutoencoderKL of `shape` (SD's block layout) saved to `path` in `dtype` (SD-VAE
    checkpoints ship fp32 and fp16); returns the module as saved."""
    from diffusers import AutoencoderKL

    n = len(shape.block_out_channels)
    with _seed(seed):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=shape.block_out_channels,
            layers_per_block=shape.layers_per_block,
            latent_channels=shape.latent_channels,
            norm_num_groups=shape.norm_num_groups,
            scaling_factor=shape.scaling_factor,
        )
    vae = vae.to(dtype).eval()
    vae.save_pretrained(path)
    return vae


def save_all(
    root: str | Path,
    shapes: Shapes = TINY,
    *,
    dtype: torch.dtype = torch.bfloat16,
    vae: bool = True,
    seed: int = 0,
    device: str = "cpu",
    modules: dict | None = None,
) -> dict[str, str]:
    """Tokenizer, LLM (the tokenizer saved in its folder too, as on the hub), DINO and VAE under `root`;
    returns their folders by name. `modules`, if given, receives what was saved by the same names (the
    modules as saved, in their saved dtype, and the tokenizer), for comparisons."""
    root = Path(root)
    tok = chat_tokenizer(shapes.tokenizer_vocab)
    paths = {name: str(root / name) for name in ("tokenizer", "llm", "dino", "vae")}
    tok.save_pretrained(paths["tokenizer"])
    saved = {
        "tokenizer": tok,
        "llm": save_llm(paths["llm"], shapes.llm, tok, dtype=dtype, seed=seed, device=device),
        "dino": save_dino(paths["dino"], shapes.dino, dtype=dtype, seed=seed + 1),
    }
    if vae:
        saved["vae"] = save_vae(paths["vae"], shapes.vae, seed=seed + 2)
    else:
        del paths["vae"]
    if modules is not None:
        modules.update(saved)
    return paths


def path_overrides(paths: dict[str, str], *, vae: bool = False) -> dict[str, str]:
    """Config overrides that load `paths` (the tokenizer comes from the LLM's folder, as for a hub model)."""
    over = {"model.llm_path": paths["llm"], "model.dino_path": paths["dino"]}
    if vae:
        over["model.vae_path"] = paths["vae"]
    return over


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fvlm.pretrained_shapes", description=__doc__.splitlines()[0])
    ap.add_argument("root", help="folder to write tokenizer/, llm/, dino/, vae/ into")
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--no-vae", action="store_true")
    args = ap.parse_args(argv)
    shapes = SHAPES[args.shapes]
    print(json.dumps(save_all(args.root, shapes, vae=not args.no_vae), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
