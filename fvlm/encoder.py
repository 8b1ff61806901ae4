"""The foveated read: one DINOv2 patch pass per frame (caching each layer's K/V), then cheap query passes.

A *query* becomes one visual token per frame by reading the patch K/V:
- deep query (default): the query is an extra token that walks every DINO layer with that layer's own
  weights (LN, W_q, O, MLP, layer scales), attending only to the cached patch K/V; patches never see it.
- shallow query: one multi-head cross-attention of the projected query over the final features.
Upstream facts this follows (upstream fVLM's design, sections 2.2-2.5): no bias on
``query_input_proj`` (BUG-002), the CLS token stays in the keys, attention maps are available for
entropy and heatmaps. Unlike upstream, the patch pass computes each layer's K/V once (upstream computed
them twice: once for the cache and again inside the HF layer).

    enc = FoveatedEncoder(dino, query_dim, seed=0); z, attn = enc.attend(enc.encode(frames), queries)

Every module is initialised under its own seed derived from (run seed, module name) (:func:`seeded`), so
a knob that adds a module does not shift the init of the others: paired seeds pair the init.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def derive_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed for module ``name`` of a run seeded ``seed`` (sha256: Python's own hash() of a
    string is salted per process, PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"fvlm:{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@contextlib.contextmanager
def seeded(seed: int, name: str) -> Iterator[None]:
    """Initialise what is built inside from ``derive_seed(seed, name)``; the global CPU stream is left where
    it was (torch.random.fork_rng), so neither the order nor the number of modules built changes any init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, name))
        yield


@dataclass
class PatchCache:
    """Per-layer keys/values of every frame's patch tokens (CLS first), heads split: [n, heads, P, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    features: (
        torch.Tensor
    )  # final layer-normed features [n, P, D] (shallow query); deep: input of the last layer
    grid: int  # patches per side (P = grid * grid + 1)

    def select(self, idx: torch.Tensor) -> PatchCache:
        return PatchCache(
            [k[idx] for k in self.keys], [v[idx] for v in self.values], self.features[idx], self.grid
        )


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """2D sin-cos position code [grid*grid, dim] (row-major patches), half the channels per axis."""
    quarter = max(1, dim // 4)
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * math.pi
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def enc(c: torch.Tensor) -> torch.Tensor:
        a = c.reshape(-1, 1) * freqs * grid
        return torch.cat([a.sin(), a.cos()], dim=1)

    code = torch.cat([enc(ys), enc(xs)], dim=1)
    return F.pad(code, (0, dim - code.shape[1])) if code.shape[1] < dim else code[:, :dim]


class FoveatedEncoder(nn.Module):
    """DINOv2 backbone + the query read-out (deep or shallow)."""

    def __init__(
        self,
        dino: nn.Module,
        query_dim: int,
        *,
        seed: int,
        deep_query: bool = True,
        query_bias: bool = False,
        layers_used: int | None = None,
        pos_code: bool = True,
        gradient_checkpointing: bool = False,
        pixel_mean: tuple[float, ...] = IMAGENET_MEAN,
        pixel_std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.dino = dino
        cfg = dino.config
        self.hidden = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.head_dim = self.hidden // self.heads
        self.patch_size = cfg.patch_size
        self.deep_query = deep_query
        self.layers_used = layers_used or cfg.num_hidden_layers
        self.gradient_checkpointing = gradient_checkpointing
        # nn.Linear draws its weight before its bias, so query_bias=true keeps the weight of the baseline
        with seeded(seed, "query_input_proj"):
            self.query_input_proj = nn.Linear(query_dim, self.hidden, bias=query_bias)
        with seeded(seed, "output_proj"):
            self.output_proj = nn.Linear(self.hidden, self.hidden, bias=True)
        self.pos_proj = None
        if pos_code:
            with seeded(seed, "pos_proj"):
                self.pos_proj = nn.Linear(self.hidden, self.hidden, bias=False)
        # the normalisation the backbone expects (a loaded DINO's image processor; ImageNet's by default)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.dino.encoder.layer[: self.layers_used])

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [n, P, D] -> [n, H, P, dh]
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:  # [n, H, P, dh] -> [n, P, D]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.hidden)

    def _patch_layer(
        self, layer: nn.Module, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One DINOv2 layer (same maths as the HF layer in eval mode), returning its K/V as well."""
        att = layer.attention
        x = layer.norm1(h)
        q, k, v = self._split(att.q_proj(x)), self._split(att.k_proj(x)), self._split(att.v_proj(x))
        o = F.scaled_dot_product_attention(q, k, v)
        h = h + layer.layer_scale1(att.o_proj(self._merge(o)))
        h = h + layer.layer_scale2(layer.mlp(layer.norm2(h)))
        return h, k, v

    def encode(self, frames: torch.Tensor) -> PatchCache:
        """frames [n, 3, H, W] in [0, 1] -> the per-layer K/V cache of every patch token."""
        pixels = (frames - self.pixel_mean) / self.pixel_std
        h = self.dino.embeddings(pixels.to(self.dino.embeddings.patch_embeddings.projection.weight.dtype))
        keys, values = [], []
        layers = self.layers
        # The deep query reads only K/V, so the last layer's patch attention and MLP would be dead work
        # (their output is never read); the shallow query reads the final features and needs them.
        full = layers if not self.deep_query else layers[:-1]
        for layer in full:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h, k, v = checkpoint(self._patch_layer, layer, h, use_reentrant=False)
            else:
                h, k, v = self._patch_layer(layer, h)
            keys.append(k)
            values.append(v)
        features = self.dino.layernorm(h) if not self.deep_query else h
        if self.deep_query:
            last = layers[-1]
            x = last.norm1(h)
            keys.append(self._split(last.attention.k_proj(x)))
            values.append(self._split(last.attention.v_proj(x)))
        grid = frames.shape[-1] // self.patch_size
        return PatchCache(keys, values, features, grid)

    def _read(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None):
        """One query token per row: q [n, H, 1, dh] over k/v [n, H, P, dh] -> out [n, H, 1, dh], attn [n, H, P]."""
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if bias is not None:
            scores = scores + bias[:, None, None, :]
        attn = scores.softmax(dim=-1)
        return attn @ v, attn.squeeze(2)

    def attend(
        self, cache: PatchCache, queries: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [n, query_dim] (one per cached frame) -> tokens [n, D] and attention [n, layers, heads, P].

        ``bias`` [n, P] is added to every layer's attention scores (the oracle control masks with it).
        """
        x = self.query_input_proj(queries).unsqueeze(1)  # [n, 1, D]
        maps = []
        if self.deep_query:
            for layer, k, v in zip(self.layers, cache.keys, cache.values, strict=True):
                att = layer.attention
                qh = self._split(att.q_proj(layer.norm1(x)))
                out, a = self._read(qh, k, v, bias)
                x = x + layer.layer_scale1(att.o_proj(self._merge(out)))
                x = x + layer.layer_scale2(layer.mlp(layer.norm2(x)))
                maps.append(a)
        else:
            last = self.layers[-1]
            feats = last.norm1(cache.features)
            k, v = self._split(last.attention.k_proj(feats)), self._split(last.attention.v_proj(feats))
            out, a = self._read(self._split(x), k, v, bias)
            x = self._merge(out)
            maps.append(a)
        attn = torch.stack(maps, dim=1)  # [n, L, H, P]
        z = self.output_proj(self.dino.layernorm(x)).squeeze(1)
        if self.pos_proj is not None:
            # where the query looked, as a 2D position code: one token per frame keeps the target's position
            code = sincos_2d(cache.grid, self.hidden).to(z)
            looked = attn[:, -1].mean(dim=1)[:, 1:] @ code  # last layer, head-mean, patches only
            z = z + self.pos_proj(looked)
        return z, attn


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) over everything but the key axis: attn [..., P] -> scalar (upstream 3.4)."""
    p = attn.float()
    return -(p * p.clamp_min(1e-10).log()).sum(-1).mean()


def attention_on_target(attn: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Share of the last layer's head-mean attention on the target patches: attn [n, L, H, P], mask [n, P-1]."""
    last = attn[:, -1].float().mean(dim=1)[:, 1:]  # drop CLS
    return (last * target_mask.to(last)).sum(-1).mean()
