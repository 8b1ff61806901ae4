"""The synthetic video world: determinism, captions vs rendered motion, tokens, tokenizer, val set, speed."""

import dataclasses
import math
import time

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from fvlm.config import WorldConfig
from fvlm.world import (
    BACKGROUND,
    BOS_ID,
    COLOURS,
    CUE_GRAY,
    DIR_VECTORS,
    DIRECTIONS,
    EOS_ID,
    PALETTE,
    SHAPES,
    VOCAB,
    VideoWorld,
    box_patch_mask,
    build_tokenizer,
    encode_caption,
    slots_from_ids,
    sprite_masks,
)


def small(**kw) -> WorldConfig:
    return dataclasses.replace(WorldConfig(), **{"val_size": 64, **kw})


@pytest.fixture(scope="module")
def world() -> VideoWorld:
    return VideoWorld(small())


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k != "captions") and a["captions"] == b["captions"]


def test_determinism_and_batch_independence(world):
    a = world.batch("train", range(10, 26), stream_seed=3)
    b = VideoWorld(small()).batch("train", range(10, 26), stream_seed=3)
    assert _equal(a, b)
    # a clip does not depend on the batch it is rendered in
    c = world.clip("train", 17, stream_seed=3)
    assert np.array_equal(c["frames"], a["frames"][7].numpy())
    assert np.array_equal(c["boxes"], a["boxes"][7].numpy())
    assert c["caption"] == a["captions"][7]
    mixed = world.batch("train", [17, 0, 500], stream_seed=3)
    assert torch.equal(mixed["frames"][0], a["frames"][7])
    # different index or stream seed -> different clip
    assert not torch.equal(a["frames"][0], a["frames"][1])
    other_seed = world.batch("train", range(10, 26), stream_seed=4)
    assert all(not torch.equal(x, y) for x, y in zip(a["frames"], other_seed["frames"], strict=True))


def test_train_and_val_streams_are_disjoint():
    cfg = small(val_size=128)
    world = VideoWorld(cfg)
    val = world.val_set()["frames"]
    # even a train stream seeded with the val seed is a different stream (distinct split codes)
    for seed in (0, cfg.val_seed):
        train = world.batch("train", range(cfg.val_size), stream_seed=seed)["frames"]
        assert not torch.equal(train, val)
        keys = {x.numpy().tobytes() for x in train}
        assert not keys & {x.numpy().tobytes() for x in val}
    # the val split always uses cfg.val_seed, whatever stream_seed is passed
    assert np.array_equal(world.clip("val", 5, stream_seed=99)["frames"], val[5].numpy())
    with pytest.raises(ValueError):
        world.batch("validation", [0])


def test_captions_match_slots_and_rendered_motion():
    cfg = small()
    world = VideoWorld(cfg)
    b = world.batch("train", range(256), stream_seed=1)
    m = cfg.frames // 2
    turns = 0
    for k in range(256):
        slots = b["slots"][k].tolist()
        parsed = slots_from_ids(b["input_ids"][k].tolist())
        expect = {
            "colour": COLOURS[slots[0]],
            "shape": SHAPES[slots[1]],
            "dir1": DIRECTIONS[slots[2]],
            "dir2": DIRECTIONS[slots[3]] if slots[3] >= 0 else None,
        }
        assert parsed == expect
        boxes = b["boxes"][k].numpy()
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        step = np.diff(centre, axis=0)  # [T-1, 2] (dx, dy)
        for t in range(cfg.frames - 1):
            d = slots[2] if (slots[3] < 0 or t < m) else slots[3]
            np.testing.assert_allclose(step[t], cfg.speed * DIR_VECTORS[d])
        if slots[3] >= 0:
            turns += 1
            assert abs(DIR_VECTORS[slots[2]] @ DIR_VECTORS[slots[3]]) == 0  # perpendicular
    assert 0.35 < turns / 256 < 0.65  # turn_prob = 0.5


def test_non_integer_speed_moves_by_floor_or_ceil():
    cfg = small(speed=2.5, turn_prob=0.0)
    b = VideoWorld(cfg).batch("train", range(64))
    for k in range(64):
        v = DIR_VECTORS[int(b["slots"][k, 2])]
        step = np.diff(b["boxes"][k, :, :2].numpy(), axis=0)
        along = step @ v
        assert set(along.tolist()) <= {2.0, 3.0}
        assert np.all(step @ v[::-1] == 0)  # nothing across the direction
        assert abs(along.sum() - 2.5 * (cfg.frames - 1)) <= 0.5


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"distractor_style": "colored"},
        {"sprite_size": 4, "distractors": 6, "speed": 2.0},
        {"sprite_size": 12, "speed": 4.0, "distractors": 0},
        {"frame_size": 64, "frames": 8, "speed": 6.0, "noise": 0.05, "clutter": 0.3},
        {"turn_prob": 0.0},
        {"turn_prob": 1.0, "frames": 3},
        {"noise": 0.0, "clutter": 0.0, "distractor_style": "colored", "distractors": 8},
    ],
)
def test_configs_render_valid_clips(kw):
    cfg = small(**kw)
    world = VideoWorld(cfg)
    b = world.batch("train", range(48))
    t, h, s = cfg.frames, cfg.frame_size, cfg.sprite_size
    assert b["frames"].shape == (48, t, 3, h, h) and b["frames"].dtype == torch.float32
    assert b["frames"].min() >= 0 and b["frames"].max() <= 1
    boxes = b["boxes"]
    assert boxes.shape == (48, t, 4) and boxes.dtype == torch.float32
    assert boxes[..., :2].min() >= 0 and boxes[..., 2:].max() <= h
    assert torch.all(boxes[..., 2] - boxes[..., 0] == s) and torch.all(boxes[..., 3] - boxes[..., 1] == s)
    if cfg.turn_prob == 0:
        assert torch.all(b["slots"][:, 3] == -1)
    if cfg.turn_prob == 1:
        assert torch.all(b["slots"][:, 3] >= 0)


def _target_pixels(frames: np.ndarray, boxes: np.ndarray, shape: int, size: int) -> np.ndarray:
    """[T, n, 3] pixel values under the target's mask."""
    mask = sprite_masks(size)[shape]
    out = []
    for t, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        out.append(frames[t, :, y0:y1, x0:x1].transpose(1, 2, 0)[mask])
    return np.stack(out)


@pytest.mark.parametrize("style", ["gray", "colored"])
def test_target_has_the_captioned_colour_and_shape(style):
    clean = VideoWorld(small(noise=0.0, distractor_style=style))
    noisy = VideoWorld(small(distractor_style=style))
    for i in range(40):
        c = clean.clip("train", i)
        colour, shape = COLOURS.index(c["slots"]["colour"]), SHAPES.index(c["slots"]["shape"])
        px = _target_pixels(c["frames"], c["boxes"], shape, clean.cfg.sprite_size)
        np.testing.assert_allclose(px, np.broadcast_to(PALETTE[colour], px.shape), atol=1e-6)
        n = noisy.clip("train", i)
        assert n["caption"] == c["caption"] and np.array_equal(n["boxes"], c["boxes"])  # noise is paired
        px = _target_pixels(n["frames"], n["boxes"], shape, noisy.cfg.sprite_size)
        assert np.abs(px.mean(axis=(0, 1)) - PALETTE[colour]).max() < 0.01
        resid = (n["frames"] - c["frames"])[n["frames"] > 0.05]
        resid = resid[(c["frames"][n["frames"] > 0.05] < 0.95)]  # away from the clipping bounds
        assert 0.015 < resid.std() < 0.025  # noise std 0.02


def test_gray_style_only_target_is_coloured_and_colored_style_is_static():
    gray = VideoWorld(small(noise=0.0, clutter=0.0, distractors=4))
    colored = VideoWorld(small(noise=0.0, clutter=0.0, distractors=4, distractor_style="colored"))
    extra_colour = 0
    for i in range(20):
        g = gray.clip("train", i)
        shape = SHAPES.index(g["slots"]["shape"])
        saturated = g["frames"].max(axis=1) - g["frames"].min(axis=1) > 0.3  # [T, H, W]
        target = np.zeros_like(saturated)
        mask = sprite_masks(gray.cfg.sprite_size)[shape]
        for t, (x0, y0, x1, y1) in enumerate(g["boxes"].astype(int)):
            target[t, y0:y1, x0:x1] = mask
        assert np.array_equal(saturated, target)  # the target is the only coloured object
        c = colored.clip("train", i)
        assert c["caption"] == g["caption"] and np.array_equal(c["boxes"], g["boxes"])  # paired worlds
        sat_c = c["frames"].max(axis=1) - c["frames"].min(axis=1) > 0.3
        extra_colour += int((sat_c & ~target).any())
        # outside the target's path, coloured distractors never move
        path = target.any(axis=0)
        for t in range(1, colored.cfg.frames):
            assert np.array_equal(c["frames"][t][:, ~path], c["frames"][0][:, ~path])
    assert extra_colour >= 15  # coloured distractors are actually coloured


def test_token_tensors_and_masks(world):
    b = world.batch("train", range(64))
    ids, att, loss, labels = b["input_ids"], b["attention_mask"], b["loss_mask"], b["labels"]
    assert ids.dtype == att.dtype == loss.dtype == torch.long
    lengths = att.sum(1)
    assert ids.shape[1] == int(lengths.max())  # padded to the longest caption in the batch
    assert set(lengths.tolist()) == {6, 8}
    for k in range(64):
        n = int(lengths[k])
        assert ids[k, 0] == BOS_ID and ids[k, n - 1] == EOS_ID
        assert torch.all(ids[k, n:] == EOS_ID)  # pad = eos
        assert loss[k, 0] == 0 and loss[k, n - 1] == 1  # not <bos>, yes the final <eos>
        assert torch.all(loss[k, 1:n] == 1) and torch.all(loss[k, n:] == 0)
        assert torch.all(att[k, :n] == 1) and torch.all(att[k, n:] == 0)
        assert ids[k, :n].tolist() == encode_caption(b["captions"][k])
    assert torch.equal(labels == -100, loss == 0) and torch.equal(labels[loss == 1], ids[loss == 1])
    # the HF tokenizer gives the same ids for the caption words
    tok = world.tokenizer
    for k in range(8):
        n = int(lengths[k])
        assert tok(b["captions"][k])["input_ids"] == ids[k, 1 : n - 1].tolist()
        assert tok.decode(ids[k, :n].tolist(), skip_special_tokens=True) == b["captions"][k]


def test_tokenizer_save_load_round_trip(tmp_path):
    tok = build_tokenizer()
    assert len(tok) == len(VOCAB) < 30
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 2)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [
        "<bos> red ring moves up then left <eos>",
        "cyan x moves down",
        "purple blob moves",
        "<eos> <eos>",
    ]
    for text in texts:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert tok("purple square")["input_ids"] == [0, VOCAB.index("square")]  # unknown word -> <unk>
    assert tok("<bos> red ring moves up then left <eos>")["input_ids"] == encode_caption(
        "red ring moves up then left"
    )
    assert (loaded.pad_token, loaded.eos_token, loaded.bos_token, loaded.unk_token) == (
        "<eos>",
        "<eos>",
        "<bos>",
        "<unk>",
    )
    assert loaded.get_vocab() == tok.get_vocab()
    batch = loaded(["red ring moves up", "blue x moves left then up"], padding=True)
    assert batch["input_ids"][0][-2:] == [EOS_ID, EOS_ID]  # pads with the eos id


def test_box_patch_mask_known_boxes():
    # 32 px frame, 4 x 4 grid of 8 px patches
    def patches(box):
        return set(
            torch.nonzero(box_patch_mask(torch.tensor(box, dtype=torch.float32), 4, 32)).flatten().tolist()
        )

    assert patches([8, 8, 16, 16]) == {5}  # exactly patch (1, 1); exclusive end does not spill over
    assert patches([0, 0, 8, 8]) == {0}
    assert patches([4, 4, 12, 12]) == {0, 1, 4, 5}
    assert patches([24, 0, 32, 8]) == {3}
    assert patches([20, 26, 28, 32]) == {14, 15}
    boxes = torch.zeros(2, 3, 4)
    boxes[...] = torch.tensor([8.0, 0, 16, 8])
    m = box_patch_mask(boxes, 4, 32)
    assert m.shape == (2, 3, 16) and m.dtype == torch.bool and int(m.sum()) == 6
    assert box_patch_mask(np.array([[0, 0, 32, 32]]), 2, 32).all()  # numpy input
    # on real clips: an 8 px sprite covers 1 to 4 patches of 8 px, and at least the patch of its centre
    b = VideoWorld(small()).batch("train", range(32))
    m = box_patch_mask(b["boxes"], 4, 32)
    assert m.sum(-1).min() >= 1 and m.sum(-1).max() <= 4
    centre = ((b["boxes"][..., 1] + b["boxes"][..., 3]) / 2 // 8) * 4 + (
        b["boxes"][..., 0] + b["boxes"][..., 2]
    ) / 2 // 8
    assert torch.all(m.gather(-1, centre.clamp(max=15).long()[..., None]))


def test_val_set_is_fixed_and_complete():
    cfg = small(val_size=70)
    world = VideoWorld(cfg)
    val = world.val_set()
    assert val["frames"].shape[0] == len(val["captions"]) == cfg.val_size
    assert val is world.val_set()  # cached
    assert _equal(val, VideoWorld(cfg).val_set())  # the same set for every world of the same config
    batches = list(world.val_batches(32))
    assert [x["frames"].shape[0] for x in batches] == [32, 32, 6]
    assert torch.equal(torch.cat([x["frames"] for x in batches]), val["frames"])
    assert sum((x["captions"] for x in batches), []) == val["captions"]
    for x in batches:
        assert x["input_ids"].shape[1] == int(x["attention_mask"].sum(1).max())
    # the same clips as clip("val", i); batches are copies, so in-place edits do not leak into the cache
    assert np.array_equal(world.clip("val", 33)["frames"], val["frames"][33].numpy())
    batches[0]["frames"].zero_()
    assert val["frames"][0].max() > 0
    other = VideoWorld(dataclasses.replace(cfg, val_seed=cfg.val_seed + 1)).val_set()
    assert not torch.equal(other["frames"], val["frames"])


def test_entropy_baselines():
    world = VideoWorld(small(val_size=256))
    h = world.unigram_entropy()
    blind = world.blind_entropy()
    assert 0 < blind < h < math.log(len(VOCAB))
    # colour, shape, dir1, turn-or-not (1 bit), dir2 on half the clips (1 bit), over 6 scored tokens on average
    assert blind == pytest.approx((math.log(6) + 2 * math.log(4) + 1.5 * math.log(2)) / 6)  # turn_prob 0.5
    # a world without turns has a different (lower) unigram entropy: the estimate reads the data
    no_turn = VideoWorld(small(val_size=256, turn_prob=0.0))
    assert no_turn.unigram_entropy() < h
    assert no_turn.blind_entropy() == pytest.approx((math.log(6) + 2 * math.log(4)) / 5)


def test_slot_accuracy_and_parsing(world):
    """Slot accuracy compares each word's tokens at their own positions (via the codec, so any tokenizer
    works). A model that copies its input one position late decodes to the true caption, so comparing
    decoded words would credit it fully (found with a SmolLM2-shaped random LLM: every slot 1.0)."""
    from fvlm.evaluate import predicted_captions

    b = world.batch("train", range(32))
    ids = b["input_ids"]
    perfect = torch.nn.functional.one_hot(torch.roll(ids, -1, dims=1), len(VOCAB)).float()
    assert predicted_captions(world, perfect, b) == b["captions"]
    acc = world.slot_accuracy(perfect, b)
    assert all(v == 1.0 for v in acc.values())
    wrong = perfect.clone()
    wrong[:, 0] = torch.nn.functional.one_hot(torch.full((32,), VOCAB.index("moves")), len(VOCAB)).float()
    acc = world.slot_accuracy(wrong, b)
    assert acc["colour"] == 0.0 and acc["shape"] == 1.0 and acc["caption"] == 0.0
    copier = torch.nn.functional.one_hot(ids, len(VOCAB)).float()  # predicts the token it was just fed
    acc = world.slot_accuracy(copier, b)
    assert acc["colour"] == 0.0 and acc["caption"] == 0.0 and acc["dir1"] < 0.5
    assert slots_from_ids([BOS_ID] + [VOCAB.index(w) for w in "red ring moves".split()]) is None
    assert slots_from_ids(encode_caption("red ring moves up")) == {
        "colour": "red",
        "shape": "ring",
        "dir1": "up",
        "dir2": None,
    }


def test_shapes_are_distinct_inside_the_sprite():
    for size in range(4, 17):
        masks = sprite_masks(size)
        flat = {m.tobytes() for m in masks}
        assert len(flat) == 4, size
        centre = masks[:, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1].reshape(4, -1)
        assert len({c.tobytes() for c in centre[[0, 1]]}) == 2  # square vs ring differ in the middle


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        VideoWorld(small(frames=12, speed=3.0))
    with pytest.raises(ValueError, match="distractor_style"):
        VideoWorld(small(distractor_style="rainbow"))
    with pytest.raises(ValueError, match="frames >= 3"):
        VideoWorld(small(frames=2, speed=1.0))
    with pytest.raises(ValueError):
        VideoWorld(small()).batch("train", [-1])


def test_batch_of_32_render_time(world):
    world.batch("train", range(32))
    times = []
    for i in range(20):
        t0 = time.perf_counter()
        world.batch("train", range(32 * i, 32 * i + 32))
        times.append(time.perf_counter() - t0)
    print(f"\nworld.batch(32 clips, T=6, 32x32): median {1e3 * float(np.median(times)):.2f} ms")


def test_geometry_is_in_patch_units():
    """Issue 8.3: at 224 px / patch 14 (DINOv2) an 8 px sprite was smaller than one patch. The world's pixel
    sizes are given for 8 px patches and scale with the model's patch, so the task is the same in patches."""
    from fvlm.config import load_config
    from fvlm.world import box_patch_mask

    ref = load_config(None, {"world.val_size": 8})
    assert ref.world.patch_size == ref.model.patch_size == 8  # filled from the model by resolve()
    real = load_config(
        None, {"world.val_size": 8, "world.frame_size": 224, "model.patch_size": 14, "model.scale": 1}
    )
    assert real.world.patch_size == 14
    a, b = VideoWorld(ref.world), VideoWorld(real.world)
    assert (a.sprite, a.speed) == (ref.world.sprite_size, ref.world.speed)
    assert (b.sprite, b.speed) == (14, ref.world.speed * 14 / 8)
    clip_a, clip_b = a.clip("val", 3), b.clip("val", 3)
    width = clip_b["boxes"][:, 2] - clip_b["boxes"][:, 0]
    assert (width == 14).all() and clip_a["caption"] == clip_b["caption"]  # same draws, scaled geometry
    step_a = np.abs(np.diff(clip_a["boxes"][:, :2], axis=0)).sum(1) / 8
    step_b = np.abs(np.diff(clip_b["boxes"][:, :2], axis=0)).sum(1) / 14
    assert np.allclose(step_a, step_b, atol=0.15)  # the same motion in patches per frame (up to rounding)
    patches = box_patch_mask(torch.from_numpy(clip_b["boxes"]), 224 // 14, 224).sum(-1)
    assert (patches >= 1).all() and (patches <= 4).all()  # one patch, or the patches it straddles


# ----------------------------------------------------------------------------- task=cue (the thesis testbed)


def _sprite_at(frames: np.ndarray, pos: np.ndarray, size: int) -> np.ndarray:
    """[T, 3, size, size] pixels of a sprite whose top-left corner is pos [T, 2] (x, y)."""
    return np.stack(
        [f[:, y : y + size, x : x + size] for f, (x, y) in zip(frames, pos.astype(int), strict=True)]
    )


def test_cue_world_the_target_is_told_apart_only_by_the_frame_0_cue():
    """Without noise and clutter: frame 0 shows the target filled white; in every later frame, outside the
    dots, the target's pixels equal a look-alike's (same shape, same gray), so no single later frame says
    which sprite is the target; colour is only in the dots, only from frame T//2 on, one distinct colour
    per sprite, and the target's dot has the caption's colour."""
    cfg = small(task="cue", noise=0.0, clutter=0.0, distractors=3, turn_prob=0.0)
    w = VideoWorld(cfg)
    t, s = cfg.frames, w.sprite
    q = max(1, s // 4)
    inset = (s - q) // 2
    whole = 0
    for i in range(8):
        c = w.clip("train", i)
        f, box = c["frames"], c["boxes"]
        target = _sprite_at(f, box[:, :2], s)
        assert np.all(target[0] == 1.0)  # the cue: filled white, frame 0 only
        assert not np.any(target[1:] == 1.0)
        chroma = f.max(1) - f.min(1)  # [T, H, W]: 0 for gray pixels
        assert np.all(chroma[: t // 2] < 1e-6)  # no colour before T//2
        dot = target[t // 2 :, :, inset : inset + q, inset : inset + q]
        want = PALETTE[COLOURS.index(c["slots"]["colour"])]
        assert np.allclose(dot, want[None, :, None, None], atol=1e-6)
        body = target[1 : t // 2]  # after the cue, before the dots: the target's box holds only grays
        assert (np.isclose(body, CUE_GRAY) | np.isclose(body, BACKGROUND)).all()
        assert np.isclose(body, CUE_GRAY).any()
        # distinct dot colours: where no dot hides another (all (D+1) q^2 dot pixels visible), the last frame
        # shows D+1 different colours
        last = f[-1].reshape(3, -1).T[chroma[-1].reshape(-1) > 0.3]
        if len(last) == (cfg.distractors + 1) * q * q:
            whole += 1
            assert len({tuple(np.round(p, 3)) for p in last}) == cfg.distractors + 1
    assert whole >= 4  # most clips show every dot


def test_cue_world_look_alikes_share_the_target_s_shape_and_move_at_its_speed():
    """Every sprite in a cue clip has the clip's shape, and the look-alike moves like the target (speed px per
    frame along one axis), so neither shape nor motion singles the target out."""
    cfg = small(task="cue", noise=0.0, clutter=0.0, distractors=1, turn_prob=0.0)
    w = VideoWorld(cfg)
    speed = round(w.speed)
    r = w._render("train", range(48), 0)
    gray = np.isclose(r["frames"], CUE_GRAY).all(2)  # [B, T, H, W]: sprite-body pixels
    moved = 0
    for k in range(48):
        shape = SHAPES.index(r["captions"][k].split()[1])
        spots = []
        for t in (1, 2):
            x0, y0, x1, y1 = r["boxes"][k, t].astype(int)
            mine = gray[k, t, y0:y1, x0:x1]
            assert mine[w.masks[shape]].all()  # the target's body: its shape, in the look-alike's gray
            other = gray[k, t].copy()
            other[y0:y1, x0:x1] = False
            ys, xs = np.nonzero(other)
            full = len(xs) == w.masks[shape].sum()  # the look-alike is not under the target
            spots.append((xs.min(), ys.min()) if full else None)
        if spots[0] is not None and spots[1] is not None:
            moved += 1
            dx, dy = spots[1][0] - spots[0][0], spots[1][1] - spots[0][1]
            assert sorted((abs(dx), abs(dy))) == [0, speed], (k, dx, dy)
    assert moved >= 12


def test_cue_world_is_deterministic_paired_and_keeps_the_track_world():
    """Clip i of a stream is the same in any batch; the cue and track worlds share the target (caption,
    path) for an index; the track world's clips are unchanged by the new task."""
    cue, track = VideoWorld(small(task="cue")), VideoWorld(small())
    a = cue.batch("train", range(4, 12), stream_seed=5)
    b = cue.batch("train", range(0, 16), stream_seed=5)
    assert torch.equal(a["frames"], b["frames"][4:12]) and a["captions"] == b["captions"][4:12]
    t = track.batch("train", range(4, 12), stream_seed=5)
    assert a["captions"] == t["captions"] and torch.equal(a["boxes"], t["boxes"])
    assert not torch.equal(a["frames"], t["frames"])
    assert cue.blind_entropy() == pytest.approx(track.blind_entropy())  # the same caption distribution


def test_cue_world_refuses_what_it_cannot_render():
    with pytest.raises(ValueError, match="task=cue needs 1..5 distractors"):
        VideoWorld(small(task="cue", distractors=0))
    with pytest.raises(ValueError, match="task=cue needs 1..5 distractors"):
        VideoWorld(small(task="cue", distractors=6))
    with pytest.raises(ValueError, match="task must be"):
        VideoWorld(small(task="find"))
