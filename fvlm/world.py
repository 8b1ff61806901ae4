"""The synthetic video world: the default training data, generated on the fly, and its tokenizer.

    world = VideoWorld(cfg.world); batch = world.batch("train", range(32), stream_seed=cfg.train.seed)

Each clip is ``T`` RGB frames of ``H x W`` pixels (``cfg.frames``, ``cfg.frame_size``) showing

* a **background**: mid gray (0.5) plus, per clip, a fixed low-frequency luminance texture of amplitude
  ``cfg.clutter`` (a few 1-2 cycle sinusoids, zero mean, the same in every frame and channel). There is
  deliberately **no per-clip tint**: a tint moves the frame mean per video and swamps a small sprite
  (a finding of the foveation prototype that preceded this repo);
* one **target** sprite (``cfg.sprite_size`` pixels square), one of 6 saturated colours x 4 shapes
  (square, ring, plus, x: they differ inside the sprite, not only by outline), which moves ``cfg.speed``
  px/frame in one of 4 directions. With probability ``cfg.turn_prob`` it turns once to a perpendicular
  direction: the displacement from frame ``t`` to ``t+1`` is ``dir1`` for ``t < T//2`` and ``dir2`` for
  ``t >= T//2``. The start is drawn so the whole path stays inside the frame (no bounce, so the caption
  is never ambiguous). Positions are whole pixels (``round(k * speed)``), so a non-integer speed moves by
  ``floor``/``ceil`` of it per frame;
* ``cfg.distractors`` **distractor** sprites, drawn under the target. ``distractor_style="gray"``: gray
  (luminance 0.15-0.35 or 0.65-0.85) with random shapes, slowly drifting (at most ``GRAY_DRIFT`` px/frame
  per axis), so the target is the only coloured object (easy). ``"colored"``: palette colours and shapes,
  static, so only the target's motion tells it apart (hard);
* Gaussian pixel noise of std ``cfg.noise``, i.i.d. per pixel, channel and frame (drawn as 16-bit uniforms
  mapped through the normal quantile function: 3x cheaper than ``standard_normal``), then clipping to [0, 1].

**Task ``cue``** (``cfg.task="cue"``, the thesis testbed: the object that matters is picked out by temporal
context, not by saliency in any one frame). Every sprite, target and ``cfg.distractors`` look-alikes, has the
clip's shape and the same gray (``CUE_GRAY``), and each moves ``cfg.speed`` px/frame in its own direction
(the target as in ``track``, turns included). Frame 0 only: the target is filled white (the cue). Frames
``>= T//2``: every sprite carries a centred dot of ``max(1, sprite // 4)`` px in its own colour (the
target's is the caption's colour; the distractors' are the other colours, all distinct), so the colour
can only be read where the cue was and after the sprites have moved: a static query cannot know where to
look, and a 2-px dot averages away under a 2x downsample (``model.fine_read=foveal``). ``distractor_style``
is ignored. The caption grammar, its distribution and the no-vision bound are those of ``track``.

Caption grammar (what a viewer must look at)::

    <bos> {colour} {shape} moves {dir1} [then {dir2}] <eos>

``clip()/batch()`` return the caption without the specials ("red ring moves up then left"); token ids carry
``<bos>``/``<eos>``. Vocabulary: 19 words (``VOCAB``), tokenizer = ``tokenizers`` WordLevel wrapped as a
``PreTrainedTokenizerFast`` (saves/loads like any HF tokenizer); ``pad == eos`` as in SmolLM2, so losses
must use ``loss_mask``/``labels`` (-100), never pad ids.

Determinism: clip ``i`` of ``(split, stream_seed)`` comes from ``np.random.default_rng([split_code,
stream_seed, i])``, whatever batch it is rendered in. The train stream is ``batch("train", range(s, s + B),
stream_seed=train_seed)``, so exact resume and paired seeds are free; ``val`` always uses ``cfg.val_seed``
and its own split code, so train and val never share a clip. Random draws come in a fixed order (target
first, noise last) and are made whatever the knobs, so e.g. the two distractor styles, or two noise levels,
give the same target, path and distractor layout for the same index (paired worlds). ``WORLD_VERSION``
changes whenever a seed would give a different clip.

Knobs (``fvlm.config.WorldConfig``) and what they do to difficulty: ``sprite_size`` smaller = harder to
resolve with one token per frame; ``distractors`` more = more to ignore; ``distractor_style`` gray (colour
finds the target) vs colored (motion only); ``noise`` and ``clutter`` = low-level nuisance; ``speed`` and
``frames`` = how much motion there is to read (``(frames - 1) * speed + sprite_size <= frame_size``);
``turn_prob`` = share of two-part captions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fvlm.config import WorldConfig

WORLD_VERSION = 1

SPECIALS = ("<unk>", "<bos>", "<eos>")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SHAPES = ("square", "ring", "plus", "x")
DIRECTIONS = ("up", "down", "left", "right")
VOCAB = SPECIALS + COLOURS + SHAPES + ("moves", "then") + DIRECTIONS
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = EOS_ID

SLOT_NAMES = ("colour", "shape", "dir1", "dir2")
SLOT_VALUES = {"colour": COLOURS, "shape": SHAPES, "dir1": DIRECTIONS, "dir2": DIRECTIONS}
# position of each slot's token in input_ids (<bos> is position 0); dir2 only when the caption has "then"
SLOT_POSITIONS = {"colour": 1, "shape": 2, "dir1": 4, "dir2": 6}
TURN_POSITION = 5  # "then" (turn) or "<eos>" (no turn)
MAX_TOKENS = 8  # <bos> colour shape moves dir1 then dir2 <eos>
_TOKEN_KEYS = ("input_ids", "attention_mask", "loss_mask", "labels")

PALETTE = np.array(
    [
        [0.90, 0.15, 0.15],  # red
        [0.15, 0.80, 0.15],  # green
        [0.15, 0.30, 0.95],  # blue
        [0.90, 0.85, 0.15],  # yellow
        [0.85, 0.15, 0.85],  # magenta
        [0.15, 0.85, 0.85],  # cyan
    ],
    dtype=np.float32,
)
# (dx, dy) per direction in image coordinates (y grows downwards)
DIR_VECTORS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], dtype=np.float64)
PERPENDICULAR = np.array([[2, 3], [2, 3], [0, 1], [0, 1]], dtype=np.int64)  # dir1 -> the two dir2 options
GRAY_DRIFT = 0.5  # max drift of a gray distractor, px/frame per axis (at the reference patch)
# The world's pixel sizes (sprite_size, speed, GRAY_DRIFT) are given for this patch side; a model with
# another patch (224 px frames, patch 14 for DINOv2) gets them scaled by patch_size / REFERENCE_PATCH, so
# the task is the same in patch units: an 8 px sprite at patch 14 would be smaller than one patch.
REFERENCE_PATCH = 8
CUE_GRAY = 0.3  # task=cue: every sprite's luminance (background 0.5); the frame-0 cue is white
BACKGROUND = 0.5
CLUTTER_WAVES = 3
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
# layout of each clip's uniform draws
_U_COLOUR, _U_SHAPE, _U_DIR1, _U_DIR2, _U_TURN, _U_START = 0, 1, 2, 3, 4, 5
_U_WAVES = 7
_U_DISTRACTORS = _U_WAVES + 4 * CLUTTER_WAVES


def sprite_masks(size: int) -> np.ndarray:
    """Boolean masks [4, size, size] of SHAPES: filled square, ring, plus, x (strokes ~size/4 thick)."""
    if size < 4:
        raise ValueError(f"sprite_size must be >= 4 to tell the shapes apart, got {size}")
    t = max(1, round(size / 4))
    i, j = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    square = np.ones((size, size), dtype=bool)
    ring = (i < t) | (i >= size - t) | (j < t) | (j >= size - t)
    plus = (np.abs(i - c) <= t / 2) | (np.abs(j - c) <= t / 2)
    cross = (np.abs(i - j) <= t / 2) | (np.abs(i + j - (size - 1)) <= t / 2)
    return np.stack([square, ring, plus, cross])


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The world's offline tokenizer: WordLevel over VOCAB, whitespace split, <unk>/<bos>/<eos> = 0/1/2.

    pad_token = eos_token = "<eos>" (like SmolLM2). It adds no specials by itself; the world puts <bos> and
    <eos> around each caption (see :func:`encode_caption`).
    """
    tok = Tokenizer(models.WordLevel(vocab=dict(TOKEN_ID), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<eos>",
        model_max_length=64,
    )


def caption_from_slots(colour: str, shape: str, dir1: str, dir2: str | None = None) -> str:
    """The caption text (no specials) for slot values."""
    text = f"{colour} {shape} moves {dir1}"
    return f"{text} then {dir2}" if dir2 is not None else text


def encode_caption(caption: str) -> list[int]:
    """[<bos>] + word ids + [<eos>] (same ids as the tokenizer; unknown words map to <unk>)."""
    return [BOS_ID] + [TOKEN_ID.get(w, UNK_ID) for w in caption.split()] + [EOS_ID]


def slots_from_ids(ids: Sequence[int]) -> dict[str, str | None] | None:
    """Parse a token sequence (with or without <bos>, stops at <eos>) into slot values; None if malformed."""
    words = [VOCAB[i] if 0 <= i < len(VOCAB) else "<unk>" for i in (int(x) for x in ids)]
    if words and words[0] == "<bos>":
        words = words[1:]
    if "<eos>" in words:
        words = words[: words.index("<eos>")]
    ok = len(words) in (4, 6) and words[0] in COLOURS and words[1] in SHAPES and words[2] == "moves"
    ok = ok and words[3] in DIRECTIONS
    if ok and len(words) == 6:
        ok = words[4] == "then" and words[5] in DIRECTIONS
    if not ok:
        return None
    return {
        "colour": words[0],
        "shape": words[1],
        "dir1": words[3],
        "dir2": words[5] if len(words) == 6 else None,
    }


def box_patch_mask(boxes, grid: int, frame_size: int) -> torch.Tensor:
    """Boxes [..., 4] (x0, y0, x1, y1 pixels, exclusive end) -> bool [..., grid*grid], True on patches that
    overlap the box. Patches are row-major (index = row * grid + col), side ``frame_size / grid``."""
    b = torch.as_tensor(boxes, dtype=torch.float32)
    side = frame_size / grid
    lo = torch.arange(grid, dtype=torch.float32) * side
    hi = lo + side
    x0, y0, x1, y1 = (b[..., k, None] for k in range(4))
    cols = (x0 < hi) & (x1 > lo)  # [..., grid]
    rows = (y0 < hi) & (y1 > lo)
    return (rows[..., :, None] & cols[..., None, :]).flatten(-2)


def geometry(cfg: WorldConfig) -> tuple[int, float, float]:
    """(sprite px, speed px/frame, gray drift px/frame) at the model's patch size (see REFERENCE_PATCH)."""
    scale = (cfg.patch_size or REFERENCE_PATCH) / REFERENCE_PATCH
    return max(1, round(cfg.sprite_size * scale)), cfg.speed * scale, GRAY_DRIFT * scale


def check_world(cfg: WorldConfig) -> None:
    def bad(msg: str) -> None:
        raise ValueError(f"world: {msg}")

    if cfg.frames < 2:
        bad(f"frames must be >= 2, got {cfg.frames}")
    if cfg.turn_prob > 0 and cfg.frames < 3:
        bad(f"turn_prob > 0 needs frames >= 3 (a turn at T//2 must be visible), got frames={cfg.frames}")
    if not 0.0 <= cfg.turn_prob <= 1.0:
        bad(f"turn_prob must be in [0, 1], got {cfg.turn_prob}")
    if cfg.sprite_size < 4 or cfg.sprite_size > cfg.frame_size:
        bad(f"sprite_size must be in [4, frame_size={cfg.frame_size}], got {cfg.sprite_size}")
    if cfg.distractors < 0:
        bad(f"distractors must be >= 0, got {cfg.distractors}")
    if cfg.task not in ("track", "cue"):
        bad(f"task must be 'track' or 'cue', got {cfg.task!r}")
    if cfg.task == "cue" and not 1 <= cfg.distractors <= len(COLOURS) - 1:
        bad(
            f"task=cue needs 1..{len(COLOURS) - 1} distractors (each look-alike gets its own dot colour), "
            f"got {cfg.distractors}"
        )
    if cfg.distractor_style not in ("gray", "colored"):
        bad(f"distractor_style must be 'gray' or 'colored', got {cfg.distractor_style!r}")
    if cfg.noise < 0 or cfg.clutter < 0:
        bad(f"noise and clutter must be >= 0, got {cfg.noise}, {cfg.clutter}")
    if cfg.speed <= 0:
        bad(f"speed must be > 0, got {cfg.speed}")
    if cfg.val_size < 1:
        bad(f"val_size must be >= 1, got {cfg.val_size}")
    m = cfg.frames // 2
    steps = cfg.frames - 1 if cfg.turn_prob < 1 else max(m, cfg.frames - 1 - m)
    sprite, speed, _ = geometry(cfg)
    travel = round(steps * speed)
    if travel + sprite > cfg.frame_size:
        bad(
            f"the target's path does not fit: {steps} steps x speed {speed:g} + sprite {sprite} px (at patch "
            f"{cfg.patch_size or REFERENCE_PATCH}) > frame_size {cfg.frame_size}; lower speed/frames/sprite_size "
            "or raise frame_size"
        )


class VideoWorld:
    """Procedural clips + captions; see the module docstring. Deterministic per (split, stream_seed, index)."""

    slot_names = SLOT_NAMES
    slot_values = SLOT_VALUES
    slot_positions = SLOT_POSITIONS
    vocab = VOCAB
    token_id = TOKEN_ID

    has_boxes = True  # clips carry the target's box per frame (attention on target is measurable)
    train_size = None  # an infinite procedural stream

    def __init__(self, cfg: WorldConfig | None = None, codec=None):
        from fvlm.text import CaptionCodec

        self.cfg = cfg = cfg if cfg is not None else WorldConfig()
        check_world(cfg)
        # captions -> tokens: the world's word tokenizer by default, a loaded LLM's tokenizer on the real path
        self.codec = codec if codec is not None else CaptionCodec(build_tokenizer(), chat=False)
        self.tokenizer = self.codec.tokenizer
        self.vocab_size = self.codec.vocab_size
        self.sprite, self.speed, self.drift = geometry(cfg)
        self.masks = sprite_masks(self.sprite)
        self._val: dict | None = None
        self._text_length: int | None = None
        # 16-bit uniform draw -> Gaussian quantile x noise std (truncated at ~4.3 std)
        q = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536
        self._noise_lut = (torch.special.ndtri(q) * cfg.noise).float().numpy()

    # ------------------------------------------------------------------ sampling
    def _seed(self, split: str, stream_seed: int) -> tuple[int, int]:
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        return SPLIT_CODES[split], (self.cfg.val_seed if split == "val" else int(stream_seed))

    def _draw(self, split: str, indices: Sequence[int], stream_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-clip random draws, stacked over the batch: uniforms [B, U] in a fixed layout (target, clutter,
        then 7 per distractor; ``_U_*`` below) and noise draws [B, T, 3, H, W] uint16 (None if no noise).
        Everything is drawn whatever the knobs, so knobs that keep the layout keep the rest of the clip."""
        cfg = self.cfg
        code, seed = self._seed(split, stream_seed)
        n_u = _U_DISTRACTORS + 7 * cfg.distractors
        n_noise = cfg.frames * 3 * cfg.frame_size**2 if cfg.noise > 0 else 0
        u = np.empty((len(indices), n_u))
        raw = np.empty((len(indices), n_noise), dtype=np.uint16)
        for k, idx in enumerate(int(i) for i in indices):
            if idx < 0:
                raise ValueError(f"clip index must be >= 0, got {idx}")
            rng = np.random.default_rng([code, seed, idx])
            u[k] = rng.random(n_u)
            if n_noise:
                raw[k] = rng.integers(0, 65536, n_noise, dtype=np.uint16)
        noise = raw.reshape(len(indices), cfg.frames, 3, cfg.frame_size, cfg.frame_size) if n_noise else None
        return u, noise

    @staticmethod
    def _place(offsets: np.ndarray, u: np.ndarray, limit: int) -> np.ndarray:
        """Integer start positions so that start + offsets stays in [0, limit] on each axis.

        offsets [..., T, 2] ints, u [..., 2] uniform -> positions [..., T, 2]."""
        lo = -offsets.min(axis=-2)
        hi = limit - offsets.max(axis=-2)
        start = lo + np.floor(u * (np.maximum(hi - lo, 0) + 1)).astype(np.int64)
        return np.clip(start[..., None, :] + offsets, 0, limit)  # the clip only acts on paths that cannot fit

    def _render(self, split: str, indices: Sequence[int], stream_seed: int) -> dict:
        cfg = self.cfg
        u, raw = self._draw(split, indices, stream_seed)
        b, d, t, h, s = len(indices), cfg.distractors, cfg.frames, cfg.frame_size, self.sprite
        pick = lambda col, n: np.minimum(np.floor(u[:, col] * n), n - 1).astype(np.int64)  # noqa: E731
        colour, shape, dir1 = pick(_U_COLOUR, 6), pick(_U_SHAPE, 4), pick(_U_DIR1, 4)
        turn = u[:, _U_TURN] < cfg.turn_prob
        dir2 = np.where(turn, PERPENDICULAR[dir1, pick(_U_DIR2, 2)], -1)

        # target path: displacement dir1 for t < T//2 and dir2 after (turning clips), dir1 throughout otherwise
        m = t // 2
        steps = np.arange(t, dtype=np.float64)
        v1 = DIR_VECTORS[dir1][:, None, :]  # [B, 1, 2]
        v2 = DIR_VECTORS[np.maximum(dir2, 0)][:, None, :]
        before = np.minimum(steps, m)[None, :, None]
        after = np.maximum(steps - m, 0)[None, :, None]
        path = np.where(turn[:, None, None], before * v1 + after * v2, steps[None, :, None] * v1)
        t_pos = self._place(np.rint(path * self.speed).astype(np.int64), u[:, _U_START : _U_START + 2], h - s)

        # distractors (7 uniforms each: shape, colour, luminance, x, y, vx, vy); gray drift, coloured are static
        du = u[:, _U_DISTRACTORS:].reshape(b, d, 7)
        d_shape = np.minimum(np.floor(du[..., 0] * 4), 3).astype(np.int64)
        cue = cfg.task == "cue"
        if cue:  # look-alikes: the clip's shape, one gray, each moving at the target's speed its own way
            d_shape = np.broadcast_to(shape[:, None], (b, d))
            vel = DIR_VECTORS[np.minimum(np.floor(du[..., 5] * 4), 3).astype(np.int64)] * self.speed
            d_rgb = np.full((b, d, 3), CUE_GRAY, dtype=np.float32)
        elif cfg.distractor_style == "gray":
            vel = (du[..., 5:7] * 2 - 1) * self.drift  # [B, D, 2]
            lum = 0.15 + 0.4 * du[..., 2]
            lum = np.where(lum > 0.35, lum + 0.3, lum)
            d_rgb = np.repeat(lum[..., None], 3, axis=-1).astype(np.float32)
        else:
            vel = np.zeros((b, d, 2))
            d_rgb = PALETTE[np.minimum(np.floor(du[..., 1] * 6), 5).astype(np.int64)]
        d_off = np.rint(steps[None, None, :, None] * vel[:, :, None, :]).astype(np.int64)  # [B, D, T, 2]
        d_pos = self._place(d_off, du[..., 3:5], h - s)  # [B, D, T, 2]

        # background: mid gray + a fixed low-frequency luminance texture (no tint), the same in every frame
        bg = np.full((b, h, h), BACKGROUND, dtype=np.float32)
        if cfg.clutter > 0:
            w = u[:, _U_WAVES:_U_DISTRACTORS].reshape(b, CLUTTER_WAVES, 4)  # fx, fy, phase, weight
            fx = np.floor(w[..., 0] * 5) - 2  # cycles per frame in -2..2
            fy = np.floor(w[..., 1] * 5) - 2
            fy = np.where((fx == 0) & (fy == 0), 1, fy)
            g = np.arange(h) / h
            # cos(ax + by + phase) = cos(by + phase) cos(ax) - sin(by + phase) sin(ax): a [B,H,2K] @ [B,2K,W]
            ax = 2 * np.pi * fx[..., None] * g  # [B, K, W]
            ay = 2 * np.pi * (fy[..., None] * g + w[..., 2, None])  # [B, K, H]
            amp = 0.5 + 0.5 * w[..., 3, None]
            left = np.concatenate([np.cos(ay) * amp, -np.sin(ay) * amp], axis=1)
            tex = left.transpose(0, 2, 1) @ np.concatenate([np.cos(ax), np.sin(ax)], axis=1)  # [B, H, W]
            tex -= tex.mean(axis=(1, 2), keepdims=True)
            tex /= np.maximum(np.abs(tex).max(axis=(1, 2), keepdims=True), 1e-6)
            bg += (cfg.clutter * tex).astype(np.float32)

        # frames = noise + background, then each sprite (distractors first, the target last, on top) overwrites
        # its pixels with colour + the same pixels' noise. One allocation: the returned array.
        if raw is not None:  # Gaussian noise: 16-bit uniform draws through the normal quantile function
            frames = np.take(self._noise_lut, raw)  # [B, T, 3, H, W]
            frames += bg[:, None, None]
        else:
            frames = np.empty((b, t, 3, h, h), dtype=np.float32)
            frames[:] = bg[:, None, None]
        flat = frames.reshape(-1)
        flat_raw = raw.reshape(-1) if raw is not None else None
        plane = h * h
        frame_base = (np.arange(b * t).reshape(b, t) * 3 * plane)[:, :, None, None]

        def stamp(pos: np.ndarray, mask: np.ndarray, rgb: np.ndarray, first: int = 0, last: int = t) -> None:
            """Overwrite the pixels of mask [B, m, m] at top-left pos [B, T, 2] in frames first..last-1 with
            rgb [B, 3] + the same pixels' noise."""
            ar = np.arange(mask.shape[-1])
            window = (ar[:, None] * h + ar[None, :])[None, None]  # [1, 1, m, m] offsets of the pixels
            at_t = pos[:, first:last]
            idx = frame_base[:, first:last] + (at_t[..., 1] * h + at_t[..., 0])[:, :, None, None] + window
            on = np.broadcast_to(mask[:, None], idx.shape)
            sel = idx[on]
            rep = np.repeat(rgb, on.reshape(b, -1).sum(1), axis=0)  # [n_sel, 3]
            for c in range(3):
                at = sel + c * plane
                flat[at] = rep[:, c] if flat_raw is None else rep[:, c] + self._noise_lut[flat_raw[at]]

        for n in range(d):
            stamp(d_pos[:, n], self.masks[d_shape[:, n]], d_rgb[:, n])
        if not cue:
            stamp(t_pos, self.masks[shape], PALETTE[colour])
        else:
            stamp(t_pos, self.masks[shape], np.full((b, 3), CUE_GRAY, dtype=np.float32))
            stamp(t_pos, np.ones((b, s, s), dtype=bool), np.ones((b, 3), dtype=np.float32), last=1)  # the cue
            # dots from T//2 on: the target's in the caption's colour, each look-alike's in another colour,
            # all distinct (drawn without replacement from the other colours by the distractors' uniforms)
            rows = np.arange(b)
            free = np.arange(len(COLOURS))[None, :] != colour[:, None]  # [B, 6]
            d_colour = np.empty((b, d), dtype=np.int64)
            for n in range(d):
                k = np.minimum(np.floor(du[:, n, 1] * free.sum(1)), free.sum(1) - 1)  # the k-th free colour
                d_colour[:, n] = np.argmax(free & (np.cumsum(free, axis=1) == k[:, None] + 1), axis=1)
                free[rows, d_colour[:, n]] = False
            q = max(1, s // 4)
            dot, inset = np.ones((b, q, q), dtype=bool), (s - q) // 2
            for n in range(d):
                stamp(d_pos[:, n] + inset, dot, PALETTE[d_colour[:, n]], first=t // 2)
            stamp(t_pos + inset, dot, PALETTE[colour], first=t // 2)
        np.clip(frames, 0.0, 1.0, out=frames)

        boxes = np.concatenate([t_pos, t_pos + s], axis=-1).astype(np.float32)  # [B, T, 4]
        slots = np.stack([colour, shape, dir1, dir2], axis=1).astype(np.int64)
        captions = [
            caption_from_slots(COLOURS[c], SHAPES[k], DIRECTIONS[a], DIRECTIONS[z] if z >= 0 else None)
            for c, k, a, z in slots
        ]
        return {"frames": frames, "boxes": boxes, "slots": slots, "captions": captions}

    # ------------------------------------------------------------------ public API
    def clip(self, split: str, index: int, stream_seed: int = 0) -> dict:
        """One clip: frames float32 [T,3,H,W] in [0,1], caption str (no specials), boxes float32 [T,4] (target
        x0,y0,x1,y1, exclusive end), slots {colour, shape, dir1, dir2 (None if no turn)}. numpy arrays."""
        r = self._render(split, [index], stream_seed)
        c, k, a, z = (int(v) for v in r["slots"][0])
        slots = {
            "colour": COLOURS[c],
            "shape": SHAPES[k],
            "dir1": DIRECTIONS[a],
            "dir2": DIRECTIONS[z] if z >= 0 else None,
        }
        return {"frames": r["frames"][0], "caption": r["captions"][0], "boxes": r["boxes"][0], "slots": slots}

    def batch(self, split: str, indices: Sequence[int], stream_seed: int = 0) -> dict:
        """Clips ``indices`` of a stream as torch tensors (see the module docstring for determinism).

        frames float32 [B,T,3,H,W]; input_ids long [B,S] (<bos> caption <eos>, right-padded with pad = eos to
        the longest in the batch); attention_mask long [B,S]; loss_mask long [B,S] (1 on every real token after
        <bos>, the final <eos> included: the positions a causal LM is scored on); labels long [B,S] (input_ids
        where loss_mask else -100; HF convention, unshifted); boxes float32 [B,T,4]; slots long [B,4]
        (colour, shape, dir1, dir2 indices into SLOT_VALUES; dir2 = -1 when there is no turn); captions."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("batch needs at least one index")
        r = self._render(split, indices, stream_seed)
        return self._collate(r)

    def _collate(self, r: dict, length: int | None = None) -> dict:
        return {
            "frames": torch.from_numpy(r["frames"]),
            **self.codec.encode(list(r["captions"]), length),
            "boxes": torch.from_numpy(r["boxes"]),
            "slots": torch.from_numpy(r["slots"]),
            "captions": list(r["captions"]),
        }

    def captions_with_probabilities(self) -> list[tuple[str, float]]:
        """Every caption the world can produce, with its probability (slots uniform, turn with turn_prob)."""
        p = self.cfg.turn_prob
        out = []
        for c in COLOURS:
            for k in SHAPES:
                for a in range(len(DIRECTIONS)):
                    base = 1 / (len(COLOURS) * len(SHAPES) * len(DIRECTIONS))
                    if p < 1:
                        out.append((caption_from_slots(c, k, DIRECTIONS[a]), base * (1 - p)))
                    if p > 0:
                        for z in PERPENDICULAR[a]:
                            out.append((caption_from_slots(c, k, DIRECTIONS[a], DIRECTIONS[z]), base * p / 2))
        return out

    @property
    def text_length(self) -> int:
        """Tokens of the longest caption under the codec: the padded length FLOPs accounting counts."""
        if self._text_length is None:
            self._text_length = self.codec.length([c for c, _ in self.captions_with_probabilities()])
        return self._text_length

    @property
    def val_size(self) -> int:
        return self.cfg.val_size

    def val_scored_tokens(self, limit: int) -> int:
        """Caption tokens the loss scores over the first `limit` held-out clips (for token means)."""
        return int(self.val_set()["loss_mask"][:limit, 1:].sum())

    def source_info(self) -> dict:
        """How a held-out clip is found again: the world config (clip i of the val stream is re-rendered)."""
        from dataclasses import asdict

        return {"world": asdict(self.cfg)}

    def val_set(self) -> dict:
        """The whole held-out set (val_size clips of stream cfg.val_seed), rendered once and cached; token
        tensors padded to text_length. This is the cache itself: do not modify it (val_batches gives copies)."""
        if self._val is None:
            chunk, parts = 256, []
            for start in range(0, self.cfg.val_size, chunk):
                idx = range(start, min(start + chunk, self.cfg.val_size))
                parts.append(self._collate(self._render("val", idx, 0), length=self.text_length))
            val = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "captions"}
            val["captions"] = [c for p in parts for c in p["captions"]]
            self._val = val
        return self._val

    def val_batches(self, batch_size: int) -> Iterator[dict]:
        """Iterate the fixed held-out set in order, ``batch_size`` clips at a time (last batch may be short);
        token tensors are trimmed to the longest caption in each batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        val = self.val_set()
        for start in range(0, self.cfg.val_size, batch_size):
            sl = slice(start, start + batch_size)
            width = int(val["attention_mask"][sl].sum(1).max())
            # copies, so that an in-place op in a caller cannot corrupt the cached set
            out = {
                k: (v[sl, :width] if k in _TOKEN_KEYS else v[sl]).clone()
                for k, v in val.items()
                if k != "captions"
            }
            out["captions"] = val["captions"][sl]
            yield out

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the unigram distribution of loss-counted tokens over the val set: the CE of a
        model that ignores both the video and the position in the caption."""
        val = self.val_set()
        tokens = val["input_ids"][val["loss_mask"] == 1]
        p = torch.bincount(tokens, minlength=self.vocab_size).double()
        p = p[p > 0] / p.sum()
        return float(-(p * p.log()).sum())

    def blind_entropy(self) -> float:
        """Expected per-token CE (nats) of the best caption model that does not see the video (it knows the
        grammar and the slot distributions): the 'chance' level of the mean token loss. Exact for the world's
        distribution and the codec: the caption's entropy (colour, shape, dir1, turn, dir2) over the expected
        number of scored tokens (deterministic tokens cost such a model nothing)."""
        p = self.cfg.turn_prob
        h_turn = 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))
        total = math.log(len(COLOURS)) + math.log(len(SHAPES)) + math.log(len(DIRECTIONS)) + h_turn
        total += p * math.log(2)  # dir2: one of the two perpendicular directions
        scored = sum(q * sum(self.codec.encode_one(c)[1]) for c, q in self.captions_with_probabilities())
        return total / scored  # word codec: colour shape moves dir1 <eos> (+ then dir2) = 5 + 2p tokens

    def slot_accuracy(self, logits: torch.Tensor, batch: dict) -> dict[str, float]:
        """Teacher-forced slot accuracy from LM logits [B, S, V] aligned with batch["input_ids"] (logits at j
        predict token j+1), for any tokenizer: a slot is right when every token of its word, at its own
        position, is predicted right (the codec maps tokens to words, BPE included). Comparing decoded words
        instead would credit a model that copies its input one position late. Returns colour, shape, dir1,
        turn ("then", or the end token of a caption without a turn), dir2 (over turning clips; nan when there
        are none) and caption (every scored token right)."""
        pred = logits[:, :-1].argmax(-1).cpu()
        true = batch["input_ids"][:, 1:].cpu()
        scored = batch["loss_mask"][:, 1:].cpu() == 1
        hits: dict[str, list[bool]] = {k: [] for k in ("colour", "shape", "dir1", "turn", "dir2", "caption")}
        for k, caption in enumerate(batch["captions"]):
            pos = scored[k].nonzero().flatten()
            ok = (pred[k, pos] == true[k, pos]).tolist()
            words = self.codec.word_ids(true[k, pos].tolist())

            def word_right(w: int, ok=ok, words=words) -> bool:
                mine = [h for h, i in zip(ok, words, strict=True) if i == w]
                return bool(mine) and all(mine)

            for slot, w in (("colour", 0), ("shape", 1), ("dir1", 3)):
                hits[slot].append(word_right(w))
            turning = len(caption.split()) > 4
            end = [h for h, i in zip(ok, words, strict=True) if i is None]
            hits["turn"].append(word_right(4) if turning else bool(end) and end[0])
            if turning:
                hits["dir2"].append(word_right(5))
            hits["caption"].append(all(ok))
        return {k: float(np.mean(v)) if v else math.nan for k, v in hits.items()}
