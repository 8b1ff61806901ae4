"""The model's own accounting: parameters, FLOPs per training sample, memory, peak FLOPs and MFU.

    from fvlm import accounting
    accounting.flops_per_sample(cfg, vocab)      # training FLOPs per clip: what budgets and MFU use

FLOPs count 2 per multiply-accumulate (true FLOPs, unlike upstream's MAC count) for every matmul and
attention product the forward pass runs, by the same structure as fvlm/model.py: one DINO patch pass
(plus a 2x finer one for ``fine_read=hires``; with ``fine_read=foveal`` the coarse pass runs on 2x
downsampled frames and a second pass on the native ones), ``1 + fine_iters`` query reads, the LLM passes
(and the aim head with ``model.aim``), ``lm_head`` on the caption positions, and the reconstruction head. Norms, softmax and elementwise ops are ignored (a few
percent).

Training = forward + backward, and the backward is counted only where gradients flow. For a product
``Y = A B`` the backward computes ``dA = dY B^T`` only if A needs a gradient and ``dB = A^T dY`` only if B
does, each costing what the forward cost (the "2x forward" backward of Kaplan et al. 2020, section 2.1, is
the case where both do). So a frozen backbone still pays the input-gradient pass wherever something
trainable sits upstream of it (frozen LLM: the visual tokens; the query walking frozen DINO layers: the
query), but no weight-gradient pass; the DINO patch pass of a frozen DINO needs no backward at all (pixels
need no gradient), the patch-embedding conv never needs an input gradient, and passes whose output cannot
reach the loss (``query_source=random`` discards the LLM's queries) get none. Plus one forward of the frozen
VAE. tests/test_accounting.py checks this against ``torch.utils.flop_counter.FlopCounterMode`` on the real
training step (which counts exactly the products autograd runs), frozen backbones included.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from fvlm.config import Config, ConfigError

PARAMS_CONVENTION = (
    "all-trainable-and-frozen-excl-vae"  # every parameter of DINO, LLM (tied emb once), connector, head
)

# Dense peak FLOP/s for the training dtype (bf16 with fp32 accumulate on GPUs, no sparsity), from the vendor
# data sheets (nvidia.com: RTX 4090/5090/3090 Ada/Blackwell/Ampere whitepapers, A100, H100, H200, L4, L40,
# L40S, A10, T4 product briefs). Keys match whole words of the device name, longest key first
# (match_peak_flops), so "L4" is not found inside "NVIDIA L40S".
PEAK_FLOPS = {
    "RTX 4090": 165.2e12,
    "RTX 5090": 209.5e12,
    "RTX 3090": 71.0e12,
    "A100": 312.0e12,
    "H100": 989.4e12,  # SXM (the "80GB HBM3" cards)
    "H100 PCIe": 756.0e12,
    "H200": 989.4e12,
    "L4": 121.0e12,
    "L40": 181.0e12,
    "L40S": 362.0e12,
    "A10": 125.0e12,
    "T4": 65.0e12,
}
CPU_FLOPS_PER_CORE = 32 * 2.5e9  # ASSUMPTION: AVX2 fp32 FMA (2 units x 8 lanes x 2) at 2.5 GHz


def caption_length(cfg: Config, text_len: int | None = None) -> int:
    """Padded caption length in tokens: `text_len` when the caller knows it (the data's codec: a chat
    template adds its prompt), else the world's word captions: <bos> colour shape moves dir [then dir] <eos>
    (8 or 6)."""
    if text_len:
        return int(text_len)
    return 8 if cfg.world.turn_prob > 0 else 6


def _op(fwd: float, live: bool, *needs_grad: bool) -> float:
    """One product's FLOPs: its forward, plus, when its output gets a gradient (``live``), one pass of the
    forward's size per operand that needs a gradient."""
    return fwd * (1 + (sum(needs_grad) if live else 0))


def _dino_pass(cfg: Config, grid: int, live: bool) -> float:
    """Patch pass; with the deep query the last layer computes only its K/V (fvlm/encoder.py).

    ``live``: the K/V cache reaches the loss. Every patch activation needs a gradient exactly when DINO is
    trained (pixels need none), so a frozen DINO's patch pass has no backward."""
    m = cfg.model
    d, inter, patch = m.dino_hidden, m.dino_intermediate, m.patch_size
    layers = m.layers_used or m.dino_layers
    w = not m.freeze_dino
    p = grid * grid + 1
    flops = _op(2 * grid * grid * 3 * patch * patch * d, live, False, w)  # patch-embedding conv: no dX
    linear = 2 * p * d * 3 * d + 2 * p * d * d + 2 * 2 * p * d * inter  # QKV, O, MLP
    per_layer = _op(linear, live, w, w) + _op(2 * 2 * p * p * d, live, w, w)  # + scores, attn @ V
    if m.deep_query:
        return flops + (layers - 1) * per_layer + _op(2 * p * d * 2 * d, live, w, w)
    return flops + layers * per_layer


def _query_read(cfg: Config, grid: int, live: bool) -> float:
    """One query read per frame. The query path always needs input gradients (its queries come from
    trained parameters); DINO's weights and the cached patch K/V need gradients only if DINO is trained."""
    m = cfg.model
    d, inter, qd = m.dino_hidden, m.dino_intermediate, m.query_dim
    w = not m.freeze_dino
    p = grid * grid + 1
    flops = _op(2 * qd * d, live, True, True)  # query_input_proj
    flops += _op(2 * d * d, live, True, True)  # output_proj
    if m.pos_code:  # attention map @ a constant code, then pos_proj
        flops += _op(2 * (p - 1) * d, live, True, False) + _op(2 * d * d, live, True, True)
    if m.deep_query:
        layers = m.layers_used or m.dino_layers
        token = _op(2 * d * d + 2 * d * d + 2 * 2 * d * inter, live, True, w)  # q_proj, o_proj, MLP
        flops += layers * (token + _op(2 * 2 * p * d, live, True, w))  # + the read of the cached K/V
    else:  # K/V of the final features (trained only with DINO) + one attention
        flops += _op(2 * p * d * 2 * d, live, w, w) + _op(2 * 2 * p * d, live, True, w)
    return flops


def _llm_pass(cfg: Config, n: int, vocab: int, scored: int, live: bool) -> float:
    """One LLM pass over n positions. Its input always needs a gradient (the visual tokens are trained);
    its weights only if the LLM is trained. Attention products are activation x activation."""
    m = cfg.model
    d, inter = m.llm_hidden, m.llm_intermediate
    w = not m.freeze_llm
    kv = d * m.llm_kv_heads // m.llm_heads
    linear = 2 * n * d * (2 * d + 2 * kv) + 3 * 2 * n * d * inter
    per_layer = _op(linear, live, True, w) + _op(2 * 2 * n * n * d, live, True, True)
    return m.llm_layers * per_layer + _op(2 * scored * d * vocab, live, True, w)  # lm_head (tied embedding)


def _head(cfg: Config, live: bool) -> float:
    """The reconstruction head on one frame pair. Its first conv reads the frozen VAE's latents (no dX)."""
    m = cfg.model
    down, c = _vae_shape(m.vae_path)
    lat = cfg.world.frame_size // down
    hh = m.head_hidden
    film = _op(2 * (m.llm_hidden * hh + hh * 2 * hh), live, True, True)
    first = _op(2 * lat * lat * 9 * c * hh, live, False, True)
    rest = _op(2 * lat * lat * 9 * (hh * hh + hh * hh + hh * c), live, True, True)
    return film + first + rest


@functools.lru_cache(maxsize=8)
def _vae_shape(vae_path: str) -> tuple[int, int]:
    """(downsampling factor, latent channels) of the VAE: the tiny default (2 blocks: x2, 4 channels) or a
    saved one's config.json (an SD-VAE has 4 blocks: x8): 2 ** (blocks - 1), as diffusers' encoder halves
    the resolution in every block but the last."""
    cfg_file = Path(vae_path) / "config.json" if vae_path else None
    if cfg_file is None or not cfg_file.is_file():
        return 2, 4
    d = json.loads(cfg_file.read_text())
    return 2 ** (len(d.get("block_out_channels", (1, 1))) - 1), int(d.get("latent_channels", 4))


@functools.lru_cache(maxsize=8)
def _vae_forward_flops(frame_size: int, vae_path: str) -> float:
    """Measured once: the VAE is a fixed external network, its convs are easier counted than modelled. On
    the math SDPA backend, because FlopCounterMode does not count the fused CPU kernel of its attention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from fvlm.config import ModelConfig
    from fvlm.model import build_vae

    vae = build_vae(ModelConfig(vae_path=vae_path))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encode(torch.zeros(1, 3, frame_size, frame_size))
    return float(counter.get_total_flops())


def _by_component(cfg: Config, vocab: int, train: bool, text_len: int | None = None) -> dict[str, float]:
    """FLOPs per sample by component: the forward (``train=False``) or forward + backward."""
    m, w = cfg.model, cfg.world
    t, s = w.frames, caption_length(cfg, text_len)
    grid = w.frame_size // m.patch_size
    caption = m.objective in ("caption", "joint")
    scored = s if caption else 0  # lm_head runs on every caption position
    coarse_only = m.mode == "coarse_only"
    coarse_grid = grid // 2 if m.fine_read == "foveal" else grid  # foveal: the coarse read sees a downsample
    fine_grid = grid * 2 if m.fine_read == "hires" else grid
    shared = m.fine_read == "same"  # the fine read reuses the coarse read's patches
    need_coarse = coarse_only or m.lambda_coarse > 0  # the coarse pass also scores the caption
    # which passes reach the loss: query_source=random replaces the LLM's queries by fresh draws, so the
    # passes that only make queries (and the fine reads they were made from) get no gradient
    queries = m.query_source in ("llm", "oracle")  # random and static discard the LLM-made queries
    coarse_live = train and (need_coarse or queries)
    mid_live = train and queries  # fine iterations before the last
    last_live = train
    dino = _dino_pass(cfg, coarse_grid, coarse_live or (last_live and shared and not coarse_only))
    reads = _query_read(cfg, coarse_grid, coarse_live)
    proj = 2 * m.dino_hidden * m.llm_hidden
    projections = _op(proj, coarse_live, True, True)
    llm = _llm_pass(cfg, t + s if need_coarse else t, vocab, scored if need_coarse else 0, coarse_live)
    heads = 1 if need_coarse else 0
    to_query = 0.0
    if not coarse_only:
        if not shared:
            dino += _dino_pass(cfg, fine_grid, last_live)
        for it in range(m.fine_iters):
            live = last_live if it == m.fine_iters - 1 else mid_live
            reads += _query_read(cfg, fine_grid, live)
            projections += _op(proj, live, True, True)
        llm += (m.fine_iters - 1) * _llm_pass(cfg, t, vocab, 0, mid_live)
        llm += _llm_pass(cfg, t + s, vocab, scored, last_live)
        to_query = m.fine_iters * _op(2 * m.llm_hidden * m.query_dim, mid_live, True, True)  # llm_to_query
        heads += 1
    out = {"dino": t * dino, "query": t * (reads + to_query), "projections": t * projections, "llm": llm}
    if m.aim and m.query_source == "llm" and not coarse_only:  # llm_to_aim on frames 0..T-2, per pass
        out["query"] += m.fine_iters * (t - 1) * _op(2 * m.llm_hidden * 2, mid_live, True, True)
    if m.objective in ("reconstruct", "joint"):
        out["head"] = heads * (t - 1) * _head(cfg, train)
    return out


def forward_flops(cfg: Config, vocab: int, text_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per sample, by component."""
    return _by_component(cfg, vocab, train=False, text_len=text_len)


def training_flops(cfg: Config, vocab: int, text_len: int | None = None) -> dict[str, float]:
    """Forward + backward FLOPs per sample, by component (backward only where gradients flow)."""
    return _by_component(cfg, vocab, train=True, text_len=text_len)


def flops_per_sample(cfg: Config, vocab: int, text_len: int | None = None) -> float:
    """Training FLOPs per sample: forward + backward of the network + the frozen VAE's forward.
    `text_len`: the padded caption length (default: the world's word captions, caption_length)."""
    flops = sum(training_flops(cfg, vocab, text_len).values())
    if cfg.model.objective in ("reconstruct", "joint"):
        flops += cfg.world.frames * _vae_forward_flops(cfg.world.frame_size, cfg.model.vae_path)
    return flops


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters by component (tied embeddings counted once; the frozen VAE is not part of the model)."""
    seen: set[int] = set()
    out = {"dino": 0, "llm": 0, "connector": 0, "trainable": 0}
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen or name.startswith("vae."):
            continue
        seen.add(id(p))
        key = (
            "dino" if name.startswith("encoder.dino.") else "llm" if name.startswith("llm.") else "connector"
        )
        out[key] += p.numel()
        out["trainable"] += p.numel() if p.requires_grad else 0
    out["total"] = out["dino"] + out["llm"] + out["connector"]
    return out


def _pretrained_vocab(llm_path: str) -> int | None:
    """vocab_size of a pretrained LLM from its config.json (a local folder or the HF cache; never a download)."""
    import json
    from pathlib import Path

    cfg_file = Path(llm_path) / "config.json"
    if not cfg_file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(llm_path, "config.json")
        except Exception:  # noqa: BLE001 - any hub trouble just means "unknown"
            found = None
        if not isinstance(found, str):
            return None
        cfg_file = Path(found)
    return int(json.loads(cfg_file.read_text()).get("vocab_size", 0)) or None


def model_key(cfg: Config) -> str:
    """Hash of what decides the model's size (the training length and seed do not)."""
    from fvlm.config import config_hash

    probe = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, budget_flops=0.0, steps=1, samples=0, seed=0)
    )
    return config_hash(probe)


_PARAMS_CACHE: dict[str, tuple[int, int, str]] = {}


def params_from_config(cfg: Config) -> tuple[int, int, str]:
    """(parameters by PARAMS_CONVENTION, the run's vocabulary, note) of the model `cfg` builds, without
    loading weights or allocating them (a meta-device model with the same dimensions); cached per model."""
    key = model_key(cfg)
    if key not in _PARAMS_CACHE:
        _PARAMS_CACHE[key] = _count_params(cfg)
    return _PARAMS_CACHE[key]


_DATA_CACHE: dict[str, tuple[int, int, str]] = {}


def _data_key(cfg: Config) -> str:
    return json.dumps(
        [cfg.model.llm_path, cfg.model.tokenizer_path, cfg.data.source, cfg.data.shards, str(cfg.world)]
    )


def data_shape(cfg: Config) -> tuple[int, int, str]:
    """(vocabulary, padded caption length, note) of the run's data and caption codec, what FLOPs and memory
    depend on; cached. A pretrained LLM's tokenizer that is not on this machine (a hub id, offline) falls back
    to the world's word tokenizer, said in the note (the real run loads it where it runs)."""
    from fvlm.data import make_data

    key = _data_key(cfg)
    if key not in _DATA_CACHE:
        note = ""
        try:
            data = make_data(cfg)
        except ConfigError as e:
            if not (cfg.model.llm_path or cfg.model.tokenizer_path) or cfg.data.source != "world":
                raise
            from fvlm.text import CaptionCodec
            from fvlm.world import VideoWorld, build_tokenizer

            data = VideoWorld(cfg.world, CaptionCodec(build_tokenizer(), chat=False))
            note = f" (tokenizer not found here: {str(e)[:80]}...; counted with the world's word tokenizer)"
        # the LLM's own vocabulary decides lm_head's FLOPs (SmolLM2 embeds 49152 ids; tokenizers may be smaller)
        vocab = (_pretrained_vocab(cfg.model.llm_path) if cfg.model.llm_path else None) or data.vocab_size
        _DATA_CACHE[key] = (vocab, data.text_length, note, data.train_size)
    return _DATA_CACHE[key][:3]


def train_clips(cfg: Config) -> int | None:
    """Training clips the run's data holds (None: the world's infinite stream); cached with data_shape."""
    data_shape(cfg)
    return _DATA_CACHE[_data_key(cfg)][3]


def _count_params(cfg: Config) -> tuple[int, int, str]:
    from fvlm.model import FoveatedVLM

    vocab, _, note = data_shape(cfg)
    llm_vocab = vocab
    if cfg.model.llm_path:
        llm_vocab = _pretrained_vocab(cfg.model.llm_path) or vocab
        if llm_vocab == vocab and not note:
            note = f" (vocab of {cfg.model.llm_path} unknown offline; assumed {vocab})"
    m = dataclasses.replace(cfg.model, llm_path="", dino_path="", vae_path="", visual_scale=1.0)
    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}  # no effect on the count
    try:  # meta device: no memory, no init time
        with torch.device("meta"):
            model = FoveatedVLM(m, cfg.world, llm_vocab, special, seed=0)  # the count is seed-free
    except (RuntimeError, NotImplementedError):
        # fvlm/model.py measures the embedding std at init, which a meta tensor cannot do: build it for real
        with torch.random.fork_rng(devices=[]):
            model = FoveatedVLM(m, cfg.world, llm_vocab, special, seed=0)  # the count is seed-free
    params = count_params(model)["total"]
    del model
    return params, vocab, note


def memory_estimate_mb(
    cfg: Config,
    params: int,
    micro_batch: int,
    vocab: int,
    bytes_per_act: int = 4,
    text_len: int | None = None,
) -> float:
    """Peak training memory estimate: fp32 weights + grads + AdamW moments (16 B/param) + activations.

    Activations use the per-layer rule of thumb of Korthikanti et al. 2022 (about 34*n*d + 5*heads*n^2 values
    per layer and sample), with the same pass structure as forward_flops. An estimate for packing; the CUDA
    probe in tune/resources.py measures the real peak.
    """
    m, w = cfg.model, cfg.world
    t, s = w.frames, caption_length(cfg, text_len)
    grid = w.frame_size // m.patch_size
    layers = m.layers_used or m.dino_layers
    # DINO passes: one per distinct patch grid (coarse, and the fine one unless fine_read=same)
    grids = {"same": [grid], "hires": [grid, 2 * grid], "foveal": [grid // 2, grid]}[m.fine_read]
    dino = 0
    for g in grids:
        p = g * g + 1
        dino += t * layers * (34 * p * m.dino_hidden + 5 * m.dino_heads * p * p)
    n = t + s
    passes = 1 if m.mode == "coarse_only" else 1 + m.fine_iters
    llm = passes * m.llm_layers * (34 * n * m.llm_hidden + 5 * m.llm_heads * n * n) + 3 * s * vocab
    if m.gradient_checkpointing:
        llm = passes * (m.llm_layers * n * m.llm_hidden + 34 * n * m.llm_hidden + 3 * s * vocab)
    act = micro_batch * (dino + llm) * bytes_per_act
    return (16 * params + act) / 2**20


def match_peak_flops(name: str) -> tuple[float, str] | None:
    """(peak FLOP/s, table key) for a CUDA device name, or None. Keys match as whole words (a space in a
    key also matches a hyphen or no space), longest key first: "NVIDIA L40S" is an L40S, not an L4."""
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        word = r"[\s-]*".join(re.escape(part) for part in key.split())
        if re.search(rf"(?<![a-z0-9]){word}(?![a-z0-9])", name, flags=re.IGNORECASE):
            return PEAK_FLOPS[key], key
    return None


def peak_flops(device: torch.device | str) -> tuple[float, str]:
    """Peak FLOP/s of the device and where the number comes from."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = match_peak_flops(name)
        if found is None:
            return float("nan"), f"unknown GPU '{name}' (add it to PEAK_FLOPS)"
        return found
    threads = torch.get_num_threads() or os.cpu_count() or 1
    return (
        threads * CPU_FLOPS_PER_CORE,
        f"cpu x{threads} (assumed {CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s per core)",
    )


def mfu(flops_per_sample_: float, samples_per_s: float, peak: float) -> float:
    return flops_per_sample_ * samples_per_s / peak if peak and peak == peak else float("nan")
