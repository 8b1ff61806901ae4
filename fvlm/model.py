"""FoveatedVLM: every frame becomes ONE visual token; the LLM decides where the next frame is read.

    model = FoveatedVLM(cfg.model, cfg.world, vocab_size, special_ids, seed=cfg.train.seed)
    out = model(batch)            # Output: loss, loss_fine, loss_coarse, attention maps, statistics

Training (``coarse_fine``, two parallel passes; upstream fVLM's design, section 2.7):
  1. DINOv2 encodes every frame once and caches each layer's K/V (fvlm/encoder.py).
  2. coarse read: the learned static query ``q_static`` reads every frame -> coarse tokens.
  3. the LLM runs over the coarse tokens; ``llm_to_query`` maps its hidden state at frame t to the
     query for frame t+1.
  4. fine read: ``[q_init, q_1 .. q_{T-1}]`` re-read the frames (``fine_iters`` times, each iteration
     taking its queries from the previous fine pass) -> fine tokens.
  5. the LLM runs over ``[fine tokens, caption]``: next-token CE on the caption (-100 ignore index),
     and/or next-frame latent prediction of a frozen diffusers AutoencoderKL (``objective``).
``coarse_only`` reads every frame with ``q_static`` and runs one LLM pass (the static arm).
``autoregressive`` is true inference: frame by frame with the LLM's KV cache.

All modes score the same caption targets (the first caption token after <bos> onwards), so their losses
compare directly (upstream's coarse_only scored one extra target; we do not copy that).
``loss_ratio = loss_fine / loss_coarse`` (< 1 means foveation helps); loss_coarse comes from the same
LLM over the coarse tokens, trained when ``lambda_coarse > 0``.

Causality: frame t's fine read uses a query made from frames < t only (``_fine_queries`` shifts by one).
After fine iteration i the reads of frames < i are exactly the autoregressive ones, so with
``fine_iters >= frames`` coarse_fine equals ``autoregressive`` (tests/test_model.py checks both).

Init: every submodule is built under its own seed derived from (``seed``, module name)
(fvlm.encoder.seeded), so arms that add or drop a module share the init of every module they both have.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fvlm.config import ModelConfig, WorldConfig
from fvlm.encoder import FoveatedEncoder, PatchCache, attention_entropy, attention_on_target, seeded

MODES = ("coarse_fine", "coarse_only", "autoregressive")


def autocast(device: torch.device, amp: torch.dtype | None):
    """The forward pass in the training dtype (``amp``, e.g. bf16 on CUDA), or as is (fp32) when None."""
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------- building blocks


def build_dino(m: ModelConfig, frame_size: int) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    if m.dino_path:
        # fp32 master weights whatever dtype the checkpoint was saved in: AdamW steps of ~1e-5 vanish in bf16
        # (its 8-bit mantissa resolves 1 part in 256), and a bf16 module fails next to fp32 inputs on CPU;
        # bf16 compute comes from autocast on CUDA only
        return Dinov2Model.from_pretrained(m.dino_path, attn_implementation="sdpa", dtype=torch.float32)
    cfg = Dinov2Config(
        hidden_size=m.dino_hidden,
        num_hidden_layers=m.dino_layers,
        num_attention_heads=m.dino_heads,
        mlp_ratio=m.dino_intermediate // m.dino_hidden,  # HF Dinov2Config takes an int ratio
        image_size=frame_size,
        patch_size=m.patch_size,
        initializer_range=m.init_std or 0.02,
        layerscale_value=1.0,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return Dinov2Model(cfg)


def image_normalisation(m: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the loaded DINO's image processor normalises pixels with (its preprocessor_config.json),
    else ImageNet's, which DINOv2 was trained with. Read as JSON: AutoImageProcessor may want torchvision."""
    from fvlm.encoder import IMAGENET_MEAN, IMAGENET_STD

    cfg_file = Path(m.dino_path) / "preprocessor_config.json" if m.dino_path else None
    if cfg_file is not None and cfg_file.is_file():
        pre = json.loads(cfg_file.read_text())
        if pre.get("image_mean") and pre.get("image_std"):
            return tuple(float(x) for x in pre["image_mean"]), tuple(float(x) for x in pre["image_std"])
    return IMAGENET_MEAN, IMAGENET_STD


def build_llm(m: ModelConfig, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if m.llm_path:  # fp32 master weights, as for DINO above
        return LlamaForCausalLM.from_pretrained(m.llm_path, attn_implementation="sdpa", dtype=torch.float32)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.llm_hidden,
        intermediate_size=m.llm_intermediate,
        num_hidden_layers=m.llm_layers,
        num_attention_heads=m.llm_heads,
        num_key_value_heads=m.llm_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=m.init_std or 0.02,
        attn_implementation="sdpa",
        **special_ids,
    )
    return LlamaForCausalLM(cfg)


def build_vae(m: ModelConfig) -> nn.Module:
    """Frozen AutoencoderKL: a real SD-VAE from a path, or a tiny one seeded from a fixed config."""
    from diffusers import AutoencoderKL

    if m.vae_path:
        vae = AutoencoderKL.from_pretrained(m.vae_path, torch_dtype=torch.float32)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # the default VAE is a fixed random feature map, the same in every run
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(16, 32),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=8,
            )
    vae.requires_grad_(False)
    return vae.eval()


class PredictionHead(nn.Module):
    """Next-frame latent predictor conditioned on an LLM state by FiLM (upstream 3.2, scaled down)."""

    def __init__(self, llm_hidden: int, latent_channels: int, hidden: int) -> None:
        super().__init__()
        self.film = nn.Sequential(nn.Linear(llm_hidden, hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden))
        self.enc = nn.Sequential(
            nn.Conv2d(latent_channels, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
        )
        self.dec = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, latent_channels, 3, padding=1),
        )

    def forward(self, h: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(h).chunk(2, dim=-1)  # [n, hidden] each
        feat = self.enc(z_prev) * (1 + gamma[..., None, None]) + beta[..., None, None]
        return self.dec(feat)


@dataclass
class Output:
    loss: torch.Tensor  # the training objective of this mode
    loss_fine: torch.Tensor | None = None
    loss_coarse: torch.Tensor | None = None
    caption_fine: torch.Tensor | None = None
    caption_coarse: torch.Tensor | None = None
    recon_fine: torch.Tensor | None = None
    recon_coarse: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # caption logits of the scored pass [B, S, V] (j predicts j+1)
    tokens_fine: torch.Tensor | None = None  # the fine read's visual tokens [B, T, d_llm] (last iteration)
    attn_coarse: torch.Tensor | None = None  # [B, T, L, H, P]
    attn_fine: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)  # entropies and attention-on-target shares


# ----------------------------------------------------------------------------- the model


class FoveatedVLM(nn.Module):
    def __init__(
        self,
        m: ModelConfig,
        world: WorldConfig,
        vocab_size: int,
        special_ids: dict[str, int],
        *,
        seed: int,
    ) -> None:
        super().__init__()
        # FIX (tests/test_train.py::test_oom_give_up_is_a_clean_status): a private copy, so that the OOM
        # ladder turning gradient checkpointing on does not rewrite the caller's config (and its hash)
        self.cfg = replace(m)
        self.frame_size = world.frame_size
        # FIX (tests/test_model.py::test_paired_seeds_share_the_init_of_every_shared_module): each module
        # from its own (seed, name) stream. From one global stream, a knob that adds a module before others
        # (query_bias, pos_code) shifted the init of everything built after it, so the arms of a paired-seed
        # ablation started from different LLMs and q_static.
        with seeded(seed, "dino"):
            dino = build_dino(m, world.frame_size)
        self.encoder = FoveatedEncoder(
            dino,
            m.query_dim,
            seed=seed,
            deep_query=m.deep_query,
            query_bias=m.query_bias,
            layers_used=m.layers_used,
            pos_code=m.pos_code,
            gradient_checkpointing=m.gradient_checkpointing,
            **dict(zip(("pixel_mean", "pixel_std"), image_normalisation(m), strict=True)),
        )
        with seeded(seed, "llm"):
            self.llm = build_llm(m, vocab_size, special_ids)
        d_vis, d_llm = self.encoder.hidden, self.llm.config.hidden_size
        with seeded(seed, "dino_to_llm"):
            self.dino_to_llm = nn.Linear(d_vis, d_llm)
        with seeded(seed, "llm_to_query"):
            self.llm_to_query = nn.Linear(d_llm, m.query_dim)
        with seeded(seed, "q_static"):
            self.q_static = nn.Parameter(torch.randn(1, m.query_dim) * m.query_init_std)
        with seeded(seed, "q_init"):
            self.q_init = nn.Parameter(torch.randn(1, m.query_dim) * m.query_init_std)
        self.llm_to_aim: nn.Linear | None = None
        self.aim_init: nn.Parameter | None = None
        if m.aim:  # (x, y) = tanh(linear(h)): zero-initialised, every aim starts at the frame's centre
            self.llm_to_aim = nn.Linear(d_llm, 2)
            nn.init.zeros_(self.llm_to_aim.weight)
            nn.init.zeros_(self.llm_to_aim.bias)
            self.aim_init = nn.Parameter(torch.zeros(1, 1, 2))
        # visual tokens enter the LLM at the scale of its own input embeddings (0.14 for trained SmolLM2,
        # the init std for a random model), measured rather than hard-coded (upstream 9, caveat 1)
        if m.visual_scale is not None:
            scale = m.visual_scale
        else:
            scale = float(self.llm.get_input_embeddings().weight.detach().float().std())
        # FIX (tests/test_model.py::test_compiled_state_dict_loads_into_an_eager_model): a persistent buffer,
        # not a Python float, so the scale travels with the weights. As a float, a checkpoint loaded into a
        # model built with another seed ran with that model's own init-time std: a different function.
        self.register_buffer("visual_scale", torch.tensor(float(scale)))
        self.vae: nn.Module | None = None
        self.head: PredictionHead | None = None
        if m.objective in ("reconstruct", "joint"):
            self.vae = build_vae(m)
            with seeded(seed, "head"):
                self.head = PredictionHead(d_llm, self.vae.config.latent_channels, m.head_hidden)
        if m.freeze_dino:
            self.encoder.dino.requires_grad_(False)
        if m.freeze_llm:
            self.llm.requires_grad_(False)
        if m.gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def backbone_dims(self) -> dict[str, int]:
        """The sizes of the backbones as built (from loaded weights they may differ from the dial's)."""
        d, llm = self.encoder.dino.config, self.llm.config
        return {
            "dino_hidden": d.hidden_size,
            "dino_layers": d.num_hidden_layers,
            "dino_heads": d.num_attention_heads,
            "dino_intermediate": int(d.hidden_size * d.mlp_ratio),
            "patch_size": d.patch_size,
            "llm_hidden": llm.hidden_size,
            "llm_layers": llm.num_hidden_layers,
            "llm_heads": llm.num_attention_heads,
            "llm_kv_heads": llm.num_key_value_heads,
            "llm_intermediate": llm.intermediate_size,
        }

    # --- parameter groups (upstream's gotcha fixed: output_proj belongs to the connector) ---
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {"connector": [], "dino": [], "llm": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("encoder.dino."):
                groups["dino"].append(p)
            elif name.startswith("llm."):
                groups["llm"].append(p)
            elif not name.startswith("vae."):
                groups["connector"].append(p)
        return groups

    def enable_gradient_checkpointing(self) -> None:
        """Last rung of the OOM ladder: recompute activations in the backward pass."""
        self.cfg.gradient_checkpointing = True
        self.encoder.gradient_checkpointing = True
        self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # --- pieces ---
    def _project(self, z: torch.Tensor) -> torch.Tensor:
        return self.dino_to_llm(z) * self.visual_scale

    def _hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state

    def _caption_loss(
        self,
        h_text: torch.Tensor,
        input_ids: torch.Tensor,
        loss_mask: torch.Tensor,
        tokens: torch.Tensor | None = None,
    ):
        """Next-token CE over the caption: position j predicts token j+1; masked targets are -100.

        ``tokens`` (optional, ``batch["caption_tokens"]``): divide the token sum by this instead of by the
        batch's own token count. fvlm/train.py sets it when one effective batch is split into micro-batches,
        so that their sample-share-weighted sum is the token mean of the whole effective batch.
        Returns the loss and the logits of every caption position [B, S, V] (the last predicts nothing)."""
        logits = self.llm.lm_head(h_text).float()
        labels = input_ids[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
        pred = logits[:, :-1]
        reduction = "mean" if tokens is None else "sum"
        loss = F.cross_entropy(
            pred.reshape(-1, pred.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction=reduction
        )
        return (loss if tokens is None else loss / tokens), logits

    def _latents(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        with torch.no_grad():
            x = frames.flatten(0, 1) * 2 - 1
            lat = self.vae.encode(x.to(next(self.vae.parameters()).dtype)).latent_dist.mean
            lat = lat * self.vae.config.scaling_factor
        return lat.view(b, t, *lat.shape[1:]).float()

    def _recon_loss(self, h_vis: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The state after frame t predicts frame t+1's latents, given frame t's latents."""
        b, t = latents.shape[:2]
        pred = self.head(h_vis[:, :-1].reshape(b * (t - 1), -1).float(), latents[:, :-1].flatten(0, 1))
        return F.mse_loss(pred, latents[:, 1:].flatten(0, 1))

    def _oracle_bias(self, boxes: torch.Tensor, grid: int) -> torch.Tensor:
        from fvlm.world import box_patch_mask

        mask = box_patch_mask(boxes, grid, self.frame_size).flatten(0, 1)  # [B*T, grid*grid]
        allowed = torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1)  # CLS excluded
        return torch.where(allowed, 0.0, -1e4)

    def _coarse_cache(self, frames: torch.Tensor) -> PatchCache:
        """The coarse read's patches: the frames, or with fine_read=foveal a 2x average-pooled copy (the
        periphery: a quarter of the patches, and detail below two pixels is gone)."""
        x = frames.flatten(0, 1)
        return self.encoder.encode(F.avg_pool2d(x, 2) if self.cfg.fine_read == "foveal" else x)

    def _fine_cache(self, frames: torch.Tensor, coarse: PatchCache | None) -> PatchCache:
        """The fine read's patches: the coarse ones (same), the native frames (foveal), or a 2x finer grid of
        the same pixels (hires: the same DINO on 2x upsampled frames)."""
        mode = self.cfg.fine_read
        if mode == "same":
            return coarse if coarse is not None else self.encoder.encode(frames.flatten(0, 1))
        if mode == "foveal":
            return self.encoder.encode(frames.flatten(0, 1))
        up = F.interpolate(frames.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)
        return self.encoder.encode(up)

    def _read(self, cache: PatchCache, queries: torch.Tensor, bias: torch.Tensor | None):
        b, t = queries.shape[:2]
        z, attn = self.encoder.attend(cache, queries.flatten(0, 1), bias)
        return self._project(z).view(b, t, -1), attn.view(b, t, *attn.shape[1:])

    def _fine_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """Shift by one frame: frame 0 is read with q_init, frame t with the query made after frame t-1.
        query_source=static reads every frame with q_static (the coarse read's query, at the fine read's
        resolution); random with fresh draws."""
        b, t = queries.shape[:2]
        if self.cfg.query_source == "static":
            return self.q_static.expand(b * t, -1).view(b, t, -1)
        if self.cfg.query_source == "random":
            queries = torch.randn_like(queries) * self.cfg.query_init_std
        return torch.cat([self.q_init.expand(b, 1, -1), queries[:, :-1]], dim=1)

    # --- the aim: where the fine read looks, as a position prior on its attention ---
    def _box_centres(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes [B, T, 4] (pixels) -> centres [B, T, 2] in [-1, 1] (x, y)."""
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        return (centre / self.frame_size * 2 - 1).float()

    def _aims(self, h: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor | None:
        """(x, y) in [-1, 1] that the fine read of each frame aims at, [B, T, 2] (None without model.aim).
        Like the queries, frame 0 is read at aim_init and frame t at the aim made after frame t-1; the oracle
        aims at the true centre of the frame being read, random at uniform draws, static at aim_init."""
        if self.llm_to_aim is None:
            return None
        b, t = h.shape[:2]
        src = self.cfg.query_source
        if src == "oracle":
            return self._box_centres(boxes)
        if src == "random":
            return torch.rand(b, t, 2, device=h.device) * 2 - 1
        first = torch.tanh(self.aim_init).expand(b, 1, 2)
        if src == "static":
            return first.expand(b, t, 2)
        return torch.cat([first, torch.tanh(self.llm_to_aim(h[:, :-1]))], dim=1)

    def _aim_bias(self, aims: torch.Tensor, grid: int) -> torch.Tensor:
        """aims [..., 2] -> log of a Gaussian prior over the patch centres, [n, 1 + grid^2] (0 for CLS), added
        to the fine read's attention scores in every layer."""
        c = (torch.arange(grid, device=aims.device, dtype=torch.float32) + 0.5) / grid * 2 - 1
        yy, xx = torch.meshgrid(c, c, indexing="ij")  # row-major patches, as box_patch_mask
        a = aims.reshape(-1, 2).float()
        d2 = (xx.flatten()[None] - a[:, :1]) ** 2 + (yy.flatten()[None] - a[:, 1:]) ** 2
        bias = -d2 / (2 * self.cfg.aim_sigma**2)
        return torch.cat([torch.zeros_like(bias[:, :1]), bias], dim=1)

    def _fine_bias(self, aims: torch.Tensor | None, boxes: torch.Tensor | None, grid: int):
        if aims is not None:
            return self._aim_bias(aims, grid)
        return self._oracle_bias(boxes, grid) if self.cfg.query_source == "oracle" else None

    def _stats(self, out: Output, boxes: torch.Tensor | None, grids: dict[str, int]) -> None:
        from fvlm.world import box_patch_mask

        for name in ("coarse", "fine"):
            attn = getattr(out, f"attn_{name}")
            if attn is None:
                continue
            out.stats[f"attn_entropy_{name}"] = float(attention_entropy(attn.detach()))
            out.stats[f"attn_entropy_uniform_{name}"] = math.log(
                attn.shape[-1]
            )  # baseline: uniform attention
            if boxes is not None:
                mask = box_patch_mask(boxes, grids[name], self.frame_size).flatten(0, 1)
                out.stats[f"attn_on_target_{name}"] = float(
                    attention_on_target(attn.detach().flatten(0, 1), mask)
                )
                out.stats[f"attn_on_target_chance_{name}"] = float(
                    mask.float().sum(-1).mean() / (mask.shape[-1] + 1)
                )

    # --- forward ---
    def forward(self, batch: dict, mode: str | None = None, compute_coarse: bool = False) -> Output:
        """One mode per call, for the whole batch (upstream BUG-003 mixed modes inside a batch)."""
        mode = mode or self.cfg.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "autoregressive":
            return self.forward_autoregressive(batch)
        frames, ids, mask = batch["frames"], batch["input_ids"], batch["loss_mask"]
        boxes = batch.get("boxes")
        b, t = frames.shape[:2]
        text = self.llm.get_input_embeddings()(ids)
        wants_recon = self.cfg.objective in ("reconstruct", "joint")
        wants_caption = self.cfg.objective in ("caption", "joint")
        latents = self._latents(frames) if wants_recon else None

        cache = self._coarse_cache(frames)
        v_coarse, attn_coarse = self._read(cache, self.q_static.expand(b * t, -1).view(b, t, -1), None)
        need_coarse_loss = mode == "coarse_only" or self.cfg.lambda_coarse > 0 or compute_coarse
        out = Output(loss=torch.zeros(()), attn_coarse=attn_coarse)

        def score(h: torch.Tensor, name: str) -> torch.Tensor:
            parts = []
            if wants_caption:
                cap, logits = self._caption_loss(h[:, t:], ids, mask, batch.get("caption_tokens"))
                setattr(out, f"caption_{name}", cap)
                out.logits = logits
                parts.append(cap)
            if wants_recon:
                rec = self._recon_loss(h[:, :t], latents)
                setattr(out, f"recon_{name}", rec)
                parts.append(self.cfg.recon_weight * rec if wants_caption else rec)
            return sum(parts)

        # Causal attention: the coarse tokens' hidden states do not depend on the text after them, so one
        # pass over [coarse, text] yields both the queries and the coarse loss (upstream ran 2 passes).
        if need_coarse_loss:
            h_coarse = self._hidden(torch.cat([v_coarse, text], dim=1))
            out.loss_coarse = score(h_coarse, "coarse")
            h_coarse_vis = h_coarse[:, :t]
        else:
            h_coarse_vis = self._hidden(v_coarse)
        if mode == "coarse_only":
            out.loss = out.loss_coarse
            self._stats(out, boxes, {"coarse": cache.grid})
            return out

        fine_cache = self._fine_cache(frames, cache)
        h = h_coarse_vis
        for it in range(self.cfg.fine_iters):
            aims = self._aims(h, boxes)
            bias = self._fine_bias(aims, boxes, fine_cache.grid)
            v_fine, out.attn_fine = self._read(fine_cache, self._fine_queries(self.llm_to_query(h)), bias)
            if it < self.cfg.fine_iters - 1:
                h = self._hidden(v_fine)
        out.tokens_fine = v_fine
        h_fine = self._hidden(torch.cat([v_fine, text], dim=1))
        out.loss_fine = score(h_fine, "fine")  # scored last, so out.logits are the fine read's
        out.loss = out.loss_fine
        if self.cfg.lambda_coarse > 0:
            out.loss = out.loss + self.cfg.lambda_coarse * out.loss_coarse
        if aims is not None and boxes is not None:
            # the aims of frames >= 1 (frame 0's cannot know where to look) against the true centres
            err = (aims[:, 1:] - self._box_centres(boxes)[:, 1:]).float()
            out.stats["aim_error"] = float(err.detach().norm(dim=-1).mean())  # half-frames
            if self.cfg.aim_loss > 0:
                out.loss = out.loss + self.cfg.aim_loss * err.pow(2).sum(-1).mean()
        self._stats(out, boxes, {"coarse": cache.grid, "fine": fine_cache.grid})
        return out

    @torch.no_grad()
    def forward_autoregressive(self, batch: dict, use_cache: bool = True) -> Output:
        """True inference: frame t is read with the query made from frames < t; one LLM step per frame.

        ``use_cache=False`` recomputes the whole prefix at every step (the reference the KV cache must equal).
        """
        from transformers import DynamicCache

        frames, ids, mask = batch["frames"], batch["input_ids"], batch["loss_mask"]
        b, t = frames.shape[:2]
        cache = self._fine_cache(frames, None)
        frame_idx = torch.arange(b * t, device=frames.device).view(b, t)
        boxes = batch.get("boxes")
        src = self.cfg.query_source
        oracle = (
            self._oracle_bias(boxes, cache.grid).view(b, t, -1)
            if src == "oracle" and self.llm_to_aim is None
            else None
        )
        q = self.q_init.expand(b, -1) if src != "static" else self.q_static.expand(b, -1)
        aim = torch.tanh(self.aim_init).reshape(1, 2).expand(b, 2) if self.llm_to_aim is not None else None
        kv = DynamicCache() if use_cache else None
        tokens, maps, hs = [], [], []
        for step in range(t):
            sub = cache.select(frame_idx[:, step])
            bias = None if oracle is None else oracle[:, step]
            if self.llm_to_aim is not None:
                if src == "oracle":
                    aim = self._box_centres(boxes)[:, step]
                elif src == "random":
                    aim = torch.rand(b, 2, device=frames.device) * 2 - 1
                bias = self._aim_bias(aim, cache.grid)
            z, attn = self.encoder.attend(sub, q, bias)
            tokens.append(self._project(z).unsqueeze(1))
            maps.append(attn)
            if use_cache:
                res = self.llm.model(inputs_embeds=tokens[-1], cache=kv, use_cache=True)
                h_last = res.last_hidden_state[:, -1]
            else:
                h_last = self._hidden(torch.cat(tokens, dim=1))[:, -1]
            hs.append(h_last)
            if src == "static":
                continue  # q_static and aim_init for every frame
            q = self.llm_to_query(h_last)
            if src == "random":
                q = torch.randn_like(q) * self.cfg.query_init_std
            if self.llm_to_aim is not None and src == "llm":
                aim = torch.tanh(self.llm_to_aim(h_last))
        text = self.llm.get_input_embeddings()(ids)
        if use_cache:
            h_text = self.llm.model(inputs_embeds=text, cache=kv, use_cache=True).last_hidden_state
        else:
            h_text = self._hidden(torch.cat([*tokens, text], dim=1))[:, t:]
        out = Output(
            loss=torch.zeros(()), attn_fine=torch.stack(maps, dim=1), tokens_fine=torch.cat(tokens, 1)
        )
        parts = []
        if self.cfg.objective in ("caption", "joint"):
            out.caption_fine, out.logits = self._caption_loss(h_text, ids, mask, batch.get("caption_tokens"))
            parts.append(out.caption_fine)
        if self.cfg.objective in ("reconstruct", "joint"):
            out.recon_fine = self._recon_loss(torch.stack(hs, dim=1), self._latents(frames))
            parts.append(
                self.cfg.recon_weight * out.recon_fine if out.caption_fine is not None else out.recon_fine
            )
        out.loss = out.loss_fine = sum(parts)
        self._stats(out, batch.get("boxes"), {"fine": cache.grid})
        return out
