"""Real videos -> shards -> training, on real files written here with PyAV (libx264/mpeg4 mp4, a VP8 webm, an
H.264 mkv), a folder of PNG frames, a corrupt file, an empty file, a too-short clip and a clip without a
caption. Each source frame has its own background level (40 + 10 x frame index) and a coloured square moving
as its caption says, so a decoded frame tells which source frame it came from and where the square went.

Run: pytest tests/test_video.py        (every test takes seconds; the training run is the longest)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fvlm.config import ConfigError, DataConfig, WorldConfig, load_config
from fvlm.data import make_data
from fvlm.shards import ShardData
from fvlm.text import CaptionCodec
from fvlm.video import (
    Settings,
    caption_for,
    decode_folder,
    decode_video,
    main,
    read_captions,
    split_of,
    split_value,
)
from fvlm.world import build_tokenizer

REPO = Path(__file__).resolve().parent.parent
W, H, SOURCE_FPS, SOURCE_FRAMES, SIDE = 96, 72, 8, 16, 16  # source clips: 2 s at 8 fps, a 16 px square
FPS, T, SIZE, VAL_SHARE = 4, 4, 64, 0.2  # ingest: 4 fps (every 2nd source frame), 4 frames, 64 px
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
# start corner (x, y) of the square and its step per source frame, in source pixels
MOTION = {
    "right": ((16, 28), (3, 0)),
    "left": ((64, 28), (-3, 0)),
    "down": ((40, 4), (0, 3)),
    "up": ((40, 52), (0, -3)),
}
# the good clips: 14 libx264 mp4, one mpeg4 mp4, one VP8 webm, one H.264 mkv, one PNG folder. With val share
# 0.2 the sha256 split holds out k.mkv, clip05.mp4, clip06.mp4 and m4.mp4 (test_the_split_... checks it)
GOOD = [f"clip{i:02d}.mp4" for i in range(14)] + ["m4.mp4", "vp.webm", "k.mkv", "frames_a"]
VAL = {"clip05.mp4", "clip06.mp4", "k.mkv", "m4.mp4"}
HAS_VP8 = "libvpx" in av.codecs_available


def caption(i: int) -> tuple[str, str]:
    colour, direction = list(COLOURS)[i % 3], list(MOTION)[i % 4]
    return colour, direction


def source_frames(colour: str, direction: str, n: int = SOURCE_FRAMES) -> list[np.ndarray]:
    (x0, y0), (dx, dy) = MOTION[direction]
    out = []
    for i in range(n):
        f = np.full((H, W, 3), 40 + 10 * i, np.uint8)  # the background names the frame
        x, y = x0 + dx * i, y0 + dy * i
        f[y : y + SIDE, x : x + SIDE] = COLOURS[colour]
        out.append(f)
    return out


def write_video(
    path: Path, frames: list[np.ndarray], codec: str = "libx264", options: dict | None = None
) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=SOURCE_FPS, options=options or {})
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if codec == "mpeg4":
            s.bit_rate = 2_000_000
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def make_source(root: Path) -> dict[str, str]:
    """SRC with every kind of clip; returns {clip id: caption} of the good ones."""
    from PIL import Image

    root.mkdir(parents=True)
    captions, rows = {}, []
    for i, name in enumerate(GOOD):
        colour, direction = caption(i)
        text = f"{colour} square moves {direction}"
        frames = source_frames(colour, direction)
        if name == "frames_a":
            (root / name).mkdir()
            for k, f in enumerate(frames[:8]):
                Image.fromarray(f).save(root / name / f"frame{k}.png")  # frame2 < frame10: natural order
        elif name == "vp.webm":
            if not HAS_VP8:
                continue
            write_video(root / name, frames, "libvpx", {"crf": "4", "b:v": "2M"})
        elif name == "m4.mp4":
            write_video(root / name, frames, "mpeg4")
        else:
            write_video(root / name, frames, "libx264", {"crf": "12"})
        captions[name] = text
        # names with and without extension, and a path: all match by file name
        key = {0: name, 1: Path(name).stem, 2: f"videos/{name}"}[i % 3]
        rows.append((key, text))
    write_video(root / "short.mp4", source_frames("red", "right", 3), "libx264", {"crf": "12"})  # 0.375 s
    write_video(root / "nocap.mp4", source_frames("red", "right"), "libx264", {"crf": "12"})
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(6000))
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.txt").write_text("not a clip")
    rows += [("short.mp4", "red square moves right"), ("corrupt", "red square moves up"), ("empty.mp4", "x")]
    rows += [("nocap.mp4", "  ")]  # an empty caption is no caption
    (root / "captions.csv").write_text("file,caption\n" + "".join(f'{k},"{c}"\n' for k, c in rows))
    return captions


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """SRC, its ingest folder (shard size 5: several shards) and the console output of the ingest."""
    root = tmp_path_factory.mktemp("video")
    src, out = root / "src", root / "shards"
    captions = make_source(src)
    argv = ["ingest", str(src), "--out", str(out), "--fps", str(FPS), "--max-frames", str(T)]
    argv += ["--val-share", str(VAL_SHARE), "--shard-size", "5"]
    return src, out, captions, argv


@pytest.fixture(scope="module")
def first_run(ingested):
    """The shared ingest, run once: (exit code, (stdout, stderr))."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_main(ingested[3])
    return rc, (out.getvalue(), err.getvalue())


def run_main(argv: list[str]) -> int:
    """The CLI in process: its exit code, also where argparse exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def word_codec() -> CaptionCodec:
    return CaptionCodec(build_tokenizer(), chat=False)


def shard_data(out: Path, **world) -> ShardData:
    wc = WorldConfig(frame_size=world.get("frame_size", SIZE), frames=world.get("frames", T))
    return ShardData(DataConfig(source="shards", shards=str(out)), wc, word_codec())


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("video: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- ingest


def test_ingest_writes_shards_a_manifest_and_the_skipped_list(ingested, first_run):
    src, out, captions, _ = ingested
    rc, (stdout, stderr) = first_run
    assert rc == 0, stderr
    m = manifest(out)
    assert m["settings"] == {
        "fps": 4.0,
        "size": 64,
        "max_frames": 4,
        "min_frames": 4,
        "folder_fps": 4.0,
        "val_share": VAL_SHARE,
        "latents": None,
    }
    n_val = len(VAL)
    n_train = len(captions) - n_val
    assert m["counts"]["train"] == n_train and m["counts"]["val"] == n_val
    assert m["counts"]["train_duration_s"] == pytest.approx(
        2.0 * n_train, abs=0.05
    )  # 2 s each (folder: 8 at 4 fps)
    assert sorted(c for sh in m["shards"] for c in sh["clips"]) == sorted(captions)
    assert [len(sh["clips"]) for sh in m["shards"]] == [5, 5, 5, len(captions) - 15]
    skipped = {v["clip_id"]: v["kind"] for v in m["skipped"]}
    assert skipped == {
        "corrupt.mp4": "unreadable",
        "empty.mp4": "empty",
        "nocap.mp4": "no_caption",
        "short.mp4": "too_short",
    }
    assert m["counts"]["skipped"] == {"empty": 1, "no_caption": 1, "too_short": 1, "unreadable": 1}
    reasons = {v["clip_id"]: v["reason"] for v in m["skipped"]}
    assert reasons["short.mp4"].startswith("too short: 2 of 4 frames at 4 fps")
    for name in skipped:  # each skip is on the console too, with the split sizes and durations
        assert f"skipped {name}: " in stdout
    assert f"train {n_train} clips" in stdout and f"val {n_val} clips" in stdout and "min of source" in stdout
    ignored = [line for line in stdout.splitlines() if line.startswith("ignored")]
    assert len(ignored) == 1 and "notes.txt" in ignored[0] and "captions.csv" not in ignored[0]
    assert stderr == ""
    # the rows: one per clip, every documented column, the frames as uint8 [T, S, S, 3]
    rows = [r for sh in m["shards"] for r in pq.read_table(out / sh["file"]).to_pylist()]
    assert len(rows) == len(captions)
    for r in rows:
        assert r["caption"] == captions[r["clip_id"]]
        assert r["split"] == ("val" if r["clip_id"] in VAL else "train")
        assert (r["n_frames"], r["height"], r["width"], r["fps"]) == (T, SIZE, SIZE, 4.0)
        assert r["frames_shape"] == [T, SIZE, SIZE, 3] and len(r["frames"]) == T * SIZE * SIZE * 3
        assert r["latents"] is None and r["source"] == r["clip_id"]
    for sh in m["shards"]:  # one row group per clip: a reader fetches one clip without its neighbours
        assert pq.ParquetFile(out / sh["file"]).metadata.num_row_groups == len(sh["clips"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def square_centroid(frame: np.ndarray, colour: str) -> tuple[float, float] | None:
    dist = np.abs(frame.astype(int) - np.array(COLOURS[colour])).sum(-1)
    ys, xs = np.nonzero(dist < 90)
    return (float(xs.mean()), float(ys.mean())) if len(xs) > 20 else None


def test_decoded_frames_are_the_source_frames_at_the_sampling_times(ingested, first_run):
    _, out, captions, _ = ingested
    m = manifest(out)
    rows = [r for sh in m["shards"] for r in pq.read_table(out / sh["file"]).to_pylist()]
    assert {r["clip_id"] for r in rows} >= {"m4.mp4", "k.mkv", "frames_a"} | (
        {"vp.webm"} if HAS_VP8 else set()
    )
    for r in rows:
        frames = np.frombuffer(r["frames"], np.uint8).reshape(r["frames_shape"])
        # sample k is at k / 4 s: source frame 2k of an 8 fps video; image k of a folder (folder fps = fps)
        step = 1 if r["clip_id"] == "frames_a" else SOURCE_FPS // FPS
        corner = frames[:, :6, :6].reshape(T, -1, 3).mean(1)  # the square never reaches the top-left corner
        for k in range(T):
            expected = 40 + 10 * step * k
            assert np.abs(corner[k] - expected).max() < 5, (r["clip_id"], k, corner[k], expected)
        colour, _, _, direction = captions[r["clip_id"]].split()
        c = [square_centroid(f, colour) for f in frames]
        assert all(p is not None for p in c), (r["clip_id"], c)
        dx, dy = c[-1][0] - c[0][0], c[-1][1] - c[0][1]
        # 3 source px per source frame, scaled by 64/72: the square moved ~ (T - 1) * step * 2.67 px
        moved = {"right": dx, "left": -dx, "down": dy, "up": -dy}[direction]
        assert moved == pytest.approx((T - 1) * step * 3 * SIZE / H, abs=2.0), (r["clip_id"], c)
        assert abs(dy if direction in ("left", "right") else dx) < 1.0


def test_a_rerun_skips_every_ingested_clip_and_rewrites_nothing(ingested, first_run, capsys):
    _, out, captions, argv = ingested
    before = mtimes(out)
    assert main([*argv, "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert mtimes(out) == before  # no shard and not the manifest: nothing changed
    assert f"0 new clips (train 0, val 0), {len(captions)} already in shards, 4 skipped" in stdout


def test_a_rerun_with_other_settings_is_refused_with_one_line(ingested, first_run, capsys):
    _, out, _, argv = ingested
    before = mtimes(out)
    assert main([*argv, "--size", "32"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--size 64" in line and "--size 32" in line and "new --out" in line
    assert main([*argv, "--val-share", "0.5"]) == 2
    assert "--val-share 0.2" in one_line_error(capsys.readouterr().err)
    assert mtimes(out) == before


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, ingested, first_run, capsys):
    src = ingested[0]
    out = tmp_path / "out"
    cases = {
        "not a folder": ["ingest", str(tmp_path / "missing"), "--out", str(out)],
        "no captions CSV": ["ingest", str(src), "--out", str(out), "--captions", str(tmp_path / "none.csv")],
        "--fps must be > 0": ["ingest", str(src), "--out", str(out), "--fps", "0"],
        "--val-share must be in (0, 1)": ["ingest", str(src), "--out", str(out), "--val-share", "1.5"],
        "--min-frames must be in 2..": ["ingest", str(src), "--out", str(out), "--min-frames", "9"],
        "unrecognized arguments": ["ingest", str(src), "--out", str(out), "--bogus"],
        "required: --out": ["ingest", str(src)],
    }
    for needle, argv in cases.items():
        assert run_main(argv) == 2, needle
        line = one_line_error(capsys.readouterr().err)
        assert needle in line, (needle, line)
        assert not out.exists()
    # a captions CSV without a caption column, and a source where no clip is usable
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(src / "corrupt.mp4", bad)
    shutil.copy(src / "empty.mp4", bad)
    (bad / "captions.csv").write_text("file,text\ncorrupt.mp4,red\n")
    assert main(["ingest", str(bad), "--out", str(out), "--no-progress"]) == 2
    assert "needs a file column" in one_line_error(capsys.readouterr().err)
    (bad / "captions.csv").write_text(
        "file,caption\ncorrupt.mp4,red square moves up\nempty,red square moves up\n"
    )
    assert main(["ingest", str(bad), "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert "no usable clip" in line and "2 skipped" in line
    assert "skipped corrupt.mp4: unreadable" in captured.out
    assert not out.exists()
    # the real CLI: python -m fvlm.video, exit code 2, one line
    proc = subprocess.run(
        [sys.executable, "-m", "fvlm.video", "ingest", str(tmp_path / "missing"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2 and "is not a folder" in one_line_error(proc.stderr)


def test_a_rerun_adds_new_videos_and_cleans_what_a_killed_run_left(tmp_path, ingested, first_run, capsys):
    src, out0, captions, argv = ingested
    out = tmp_path / "shards"
    shutil.copytree(out0, out)
    before = mtimes(out)
    # what kill -9 can leave: a temp file, and a shard renamed into place but not yet in the manifest
    (out / ".shard-00004.parquet.tmp").write_bytes(b"partial")
    shutil.copy(out / "shard-00000.parquet", out / "shard-00004.parquet")
    new_src = tmp_path / "src"
    shutil.copytree(src, new_src)
    write_video(new_src / "new.mp4", source_frames("green", "up"), "libx264", {"crf": "12"})
    with open(new_src / "captions.csv", "a") as f:
        f.write("new,green square moves up\n")
    args = [*argv, "--no-progress"]
    args[1], args[3] = str(new_src), str(out)
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "removed shard-00004.parquet" in stdout
    assert f"1 new clips (train 1, val 0), {len(captions)} already in shards" in stdout
    after = mtimes(out)
    assert {k: after[k] for k in before if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }  # the finished shards are untouched
    m = manifest(out)
    assert m["shards"][-1]["file"] == "shard-00004.parquet" and m["shards"][-1]["clips"] == ["new.mp4"]
    assert [r["clip_id"] for r in pq.read_table(out / "shard-00004.parquet").to_pylist()] == ["new.mp4"]
    assert not (out / ".shard-00004.parquet.tmp").exists()
    assert len(m["sources"]) == 2  # the second SRC is recorded too


def test_the_split_is_a_stable_function_of_the_clip_id(ingested, first_run):
    for clip_id in ("clip00.mp4", "k.mkv", "frames_a", "ünïcode name.webm"):
        digest = hashlib.sha256(clip_id.encode("utf-8")).digest()
        assert split_value(clip_id) == int.from_bytes(digest[:8], "big") / 2**64
    assert {c for c in GOOD if split_of(c, VAL_SHARE) == "val"} == VAL
    # in another process (no per-process hash seed), and roughly uniform: the val share is what was asked
    code = "from fvlm.video import split_of; print(sorted(c for c in %r if split_of(c, %r) == 'val'))"
    proc = subprocess.run(
        [sys.executable, "-c", code % (GOOD, VAL_SHARE)], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert proc.stdout.strip() == str(sorted(VAL))
    share = np.mean([split_of(f"video{i}.mp4", 0.1) == "val" for i in range(20000)])
    assert share == pytest.approx(0.1, abs=0.01)
    # a larger share only adds clips to val: no clip moves from val to train
    small = {f"v{i}" for i in range(2000) if split_of(f"v{i}", 0.1) == "val"}
    assert small <= {f"v{i}" for i in range(2000) if split_of(f"v{i}", 0.3) == "val"}


def test_captions_match_by_file_name_and_webvid_columns_work(tmp_path):
    csv = tmp_path / "webvid.csv"
    csv.write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        "1066674467,https://ak.picdn.net/videos/1066674467/preview/stock.mp4,PT15S,006001_006050,"
        '"Aerial view of a lake"\n'
        "21179416,https://x/21179416.mp4,PT10S,006001_006050,Sunset\n"
    )
    table = read_captions(csv)
    assert caption_for(table, "1066674467.mp4") == "Aerial view of a lake"
    assert caption_for(table, "21179416") == "Sunset"
    assert caption_for(table, "stock.mp4") is None  # videoid is the file column where it exists
    only_url = tmp_path / "url.csv"
    only_url.write_text("contentUrl,name\nhttps://host/dir/clip_7.webm?sig=1,A dog\n")
    assert caption_for(read_captions(only_url), "clip_7.webm") == "A dog"
    assert caption_for(read_captions(only_url), "clip_7.mp4") == "A dog"  # without extension


def test_min_frames_keeps_a_short_clip_padded_with_its_last_frame(ingested, first_run):
    src = ingested[0]
    s = Settings(fps=4.0, size=32, max_frames=4, min_frames=2, folder_fps=4.0, val_share=0.1, latents=None)
    frames, n_real, source_fps, duration = decode_video(src / "short.mp4", s)
    assert (n_real, source_fps, frames.shape) == (2, 8.0, (4, 32, 32, 3))
    assert duration == pytest.approx(3 / SOURCE_FPS, abs=0.01)
    assert (
        (frames[2] == frames[1]).all() and (frames[3] == frames[1]).all() and (frames[1] != frames[0]).any()
    )
    # a folder read at its own rate: --folder-fps 8 takes every 2nd image, like an 8 fps video
    s8 = Settings(fps=4.0, size=32, max_frames=4, min_frames=4, folder_fps=8.0, val_share=0.1, latents=None)
    frames, n_real, _, duration = decode_folder(src / "frames_a", s8)
    assert n_real == 4 and duration == 1.0
    assert [round(float(f[:3, :3].mean())) for f in frames] == [40, 60, 80, 100]


# ----------------------------------------------------------------------------- ShardData


def test_shard_data_implements_the_data_interface(ingested, first_run):
    _, out, captions, _ = ingested
    data = shard_data(out)
    n_val = len(VAL)
    assert (data.train_size, data.val_size, data.has_boxes) == (len(captions) - n_val, n_val, False)
    assert math.isnan(data.blind_entropy()) and data.slot_accuracy(["a"], ["b"]) == {}
    assert data.tokenizer is data.codec.tokenizer and data.vocab_size == len(data.tokenizer)
    assert data.text_length == 6  # <bos> colour square moves dir <eos>
    assert 0 < data.unigram_entropy() < math.log(data.vocab_size)
    info = data.source_info()
    assert info["shards"] == str(out.resolve()) and "world" not in info  # the report card tells them apart
    assert data.val_scored_tokens(3) == 3 * 5
    b = data.batch("train", [0, 1, 2], stream_seed=7)
    assert b["frames"].dtype == torch.float32 and b["frames"].shape == (3, T, 3, SIZE, SIZE)
    assert 0.0 <= float(b["frames"].min()) and float(b["frames"].max()) <= 1.0
    assert "boxes" not in b and "slots" not in b
    assert b["captions"] == [captions[c] for c in b["clip_ids"]]
    for k, v in data.codec.encode(b["captions"]).items():
        assert torch.equal(b[k], v)
    # the frames are the stored uint8 bytes / 255, channels first
    rows = {
        r["clip_id"]: r for sh in manifest(out)["shards"] for r in pq.read_table(out / sh["file"]).to_pylist()
    }
    raw = np.frombuffer(rows[b["clip_ids"][1]]["frames"], np.uint8).reshape(T, SIZE, SIZE, 3)
    assert torch.equal(b["frames"][1], torch.from_numpy(raw.copy()).permute(0, 3, 1, 2).float() / 255)
    with pytest.raises(IndexError, match="one epoch"):
        data.batch("train", [data.train_size], stream_seed=7)


def test_the_train_stream_is_a_seeded_permutation_of_the_train_clips(ingested, first_run):
    _, out, captions, _ = ingested
    data = shard_data(out)
    train_ids = sorted(c for c in captions if c not in VAL)
    for seed in (0, 1, 123):
        perm = np.random.default_rng(seed).permutation(len(train_ids))
        got = data.batch("train", range(data.train_size), stream_seed=seed)["clip_ids"]
        assert got == [train_ids[i] for i in perm]  # every train clip once: one epoch
    a = data.batch("train", range(data.train_size), stream_seed=0)["clip_ids"]
    assert a != data.batch("train", range(data.train_size), stream_seed=1)["clip_ids"]
    # another instance (a resumed run, a paired arm) sees the same clips at the same positions
    other = shard_data(out)
    assert other.batch("train", [5, 6], stream_seed=0)["clip_ids"] == a[5:7]
    assert torch.equal(other.batch("train", [5], 0)["frames"][0], data.batch("train", [5, 6], 0)["frames"][0])


def test_the_val_set_is_every_val_clip_in_clip_id_order_and_cached(ingested, first_run):
    _, out, captions, _ = ingested
    data = shard_data(out)
    batches = list(data.val_batches(3))
    assert [len(b["captions"]) for b in batches] == [3, len(VAL) - 3]
    assert [c for b in batches for c in b["clip_ids"]] == sorted(VAL)
    val = data.val_set()
    assert val is data.val_set() and val["clip_ids"] == sorted(VAL)
    assert val["input_ids"].shape[1] == data.text_length
    assert torch.equal(torch.cat([b["frames"] for b in batches]), val["frames"])
    assert torch.equal(data.batch("val", [1])["frames"][0], val["frames"][1])
    batches[0]["frames"].zero_()  # batches are copies: the cache stays intact
    batches[0]["input_ids"].zero_()
    again = next(data.val_batches(3))
    assert torch.equal(again["frames"], val["frames"][:3]) and torch.equal(
        again["input_ids"], val["input_ids"][:3, :6]
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_the_loader_yields_the_batches_of_the_stream_from_its_start(ingested, first_run, workers):
    _, out, _, _ = ingested
    data = shard_data(out)
    b, seed = 4, 3
    got = list(data.loader(2, b, seed, workers=workers, pin_memory=False))
    starts = list(range(2, data.train_size - b + 1, b))  # whole batches within the epoch
    assert len(got) == len(starts) >= 2
    for batch, i in zip(got, starts, strict=True):
        want = data.batch("train", range(i, i + b), stream_seed=seed)
        assert batch.keys() == want.keys() and batch["clip_ids"] == want["clip_ids"]
        for k, v in want.items():
            assert torch.equal(batch[k], v) if torch.is_tensor(v) else batch[k] == v, k
    # a resumed loader continues exactly: its first batch is the uninterrupted loader's second
    resumed = next(data.loader(2 + b, b, seed, workers=workers, pin_memory=False))
    assert resumed["clip_ids"] == got[1]["clip_ids"]


def test_construction_errors_are_one_line_config_errors_naming_the_fix(tmp_path, ingested, first_run):
    _, out, _, _ = ingested
    with pytest.raises(ConfigError, match=r"is not a folder; make one with python -m fvlm.video ingest"):
        shard_data(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is not an ingest folder"):
        shard_data(tmp_path)
    msg = "the shards were ingested at 64 px x 4 frames; set world.frame_size=64 world.frames=4"
    with pytest.raises(ConfigError, match=msg):
        shard_data(out, frame_size=32)
    with pytest.raises(ConfigError, match=msg):
        shard_data(out, frames=8)
    # through the config, as fvlm.train builds it
    cfg = load_config(
        None, {"data.source": "shards", "data.shards": str(out), "world.frames": 8, "model.scale": 1}
    )
    with pytest.raises(ConfigError, match=msg):
        make_data(cfg)
    # captions in words the tokenizer does not know: set a tokenizer for real captions
    src = tmp_path / "words"
    src.mkdir()
    for name in ("k.mkv", "m4.mp4", "clip00.mp4"):  # k.mkv and m4.mp4 are held out at 0.2
        shutil.copy(ingested[0] / name, src)
    (src / "captions.csv").write_text(
        "file,caption\nk.mkv,a dog runs\nm4.mp4,a cat sits\nclip00.mp4,red x moves up\n"
    )
    words = tmp_path / "words_out"
    assert (
        main(
            [
                "ingest",
                str(src),
                "--out",
                str(words),
                "--fps",
                "4",
                "--max-frames",
                "4",
                "--val-share",
                "0.2",
                "--no-progress",
            ]
        )
        == 0
    )
    with pytest.raises(ConfigError, match="set model.tokenizer_path"):
        shard_data(words)
    # no val clips: ingest again with a larger --val-share
    (src / "captions.csv").write_text("file,caption\nclip00.mp4,red x moves up\n")
    none = tmp_path / "none_out"
    assert (
        main(["ingest", str(src), "--out", str(none), "--fps", "4", "--max-frames", "4", "--no-progress"])
        == 0
    )
    with pytest.raises(ConfigError, match="no val clips.*larger --val-share"):
        shard_data(none)


def test_latents_are_stored_as_the_model_computes_them(tmp_path, ingested, first_run):
    from fvlm.config import ModelConfig
    from fvlm.model import build_vae

    vae_dir = tmp_path / "vae"
    build_vae(ModelConfig()).save_pretrained(vae_dir)  # the model's tiny seeded VAE, saved like a real one
    src = tmp_path / "src"
    src.mkdir()
    for name in ("k.mkv", "clip00.mp4", "frames_a"):
        shutil.copytree(ingested[0] / name, src / name) if name == "frames_a" else shutil.copy(
            ingested[0] / name, src
        )
    (src / "captions.csv").write_text(
        "file,caption\nk.mkv,red square moves up\nclip00.mp4,red square moves right\n"
        "frames_a,blue square moves down\n"
    )
    out = tmp_path / "out"
    argv = ["ingest", str(src), "--out", str(out), "--fps", "4", "--max-frames", "4", "--val-share", "0.2"]
    assert main([*argv, "--latents", str(vae_dir), "--no-progress"]) == 0
    assert manifest(out)["settings"]["latents"] == str(vae_dir.resolve())
    data = shard_data(out)
    batch = data.batch("train", [0, 1])
    vae = build_vae(ModelConfig(vae_path=str(vae_dir)))
    with torch.no_grad():  # fvlm.model.FoveatedVLM._latents on the batch's frames
        x = batch["frames"].flatten(0, 1) * 2 - 1
        want = (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).view(2, T, 4, 32, 32)
    assert batch["latents"].shape == want.shape
    assert torch.allclose(batch["latents"], want, rtol=2e-3, atol=2e-3)  # float16 storage
    assert next(data.val_batches(1))["latents"].shape == (1, T, 4, 32, 32)
    assert main(argv + ["--no-progress"]) == 2  # a rerun without --latents would mix two kinds of shards


# ----------------------------------------------------------------------------- training


def test_training_on_shards_runs_to_a_complete_final_row(tmp_path, ingested, first_run, one_thread):
    from fvlm.train import train

    _, out, captions, _ = ingested
    cfg = load_config(
        None,
        {
            "data.source": "shards",
            "data.shards": str(out),
            "world.frame_size": SIZE,
            "world.frames": T,
            "model.scale": 1,
            "train.steps": 3,
            "train.batch_size": 4,
            "train.eval_points": 1,
            "train.eval_samples": len(VAL),
            "train.threads": 1,
            "run.out_dir": str(tmp_path),
        },
    )
    rows = []
    summary = train(cfg, lambda r, _p: rows.append(r), checkpoint_dir=tmp_path / "ck", log=None)
    assert summary["status"] == "complete" and rows[-1]["status"] == "complete" and rows[-1]["step"] == 3
    final = rows[-1]
    assert math.isfinite(final["val_loss"]) and math.isfinite(final["train_loss"])
    assert math.isnan(final["attn_on_target_fine"]) and math.isnan(final["attn_on_target_coarse"])
    assert math.isnan(final["val_loss_blind"])  # no known no-vision bound for real captions
    samples = json.loads(final["samples_json"])
    assert samples["shards"] == str(out.resolve())
    clips = samples["clips"]
    assert [c["clip_id"] for c in clips] == sorted(VAL)
    assert all(c["truth"] == captions[c["clip_id"]] and isinstance(c["pred"], str) for c in clips)
    assert all(w in data_words() for c in clips for w in c["pred"].split())  # decoded words, not ids


def data_words() -> set[str]:
    from fvlm.world import VOCAB

    return set(VOCAB)


@pytest.mark.slow
def test_the_smoke_grid_trains_on_shards_given_by_a_relative_path(
    ray_cluster, tmp_path, ingested, first_run, monkeypatch
):
    """The Tune harness on shards: a relative data.shards reaches the trials (which run in their own working
    directories) as an absolute path; the final row has the shard captions; the report says why attention on
    target is empty."""
    from analysis import fit_laws
    from analysis.store import load_store
    from fvlm import accounting
    from tune import scaling_grid

    _, out, captions, _ = ingested
    monkeypatch.chdir(out.parent)
    sets = {"data.source": "shards", "data.shards": out.name, "world.frame_size": SIZE, "world.frames": T}
    sets["train.batch_size"] = 4
    probe = load_config(None, {**sets, "model.scale": 1, "train.steps": 1})
    vocab, text_len, _ = accounting.data_shape(probe)
    flops = accounting.flops_per_sample(probe, vocab, text_len=text_len)
    common = ["--smoke-test", "--preset", "cpu", "--tiers", "1", "--storage", str(tmp_path)]
    common += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    # more clips than one epoch (6 steps of 4 > 14 train clips): refused before anything runs
    assert scaling_grid.main([*common, "--budgets", f"{6 * 4 * flops * 1.01:.4g}"]) == 2
    assert not (tmp_path / "grid-cpu-smoke").exists()
    assert scaling_grid.main([*common, "--budgets", f"{2 * 4 * flops * 1.01:.4g}"]) == 0  # 2 steps of 4
    evals, runs = load_store(tmp_path / "grid-cpu-smoke")
    assert runs["status"].tolist() == ["complete"]
    final = evals.iloc[-1]
    assert final["config.data.shards"] == str(out.resolve())
    assert final["status"] == "complete" and final["step"] == 2 and math.isnan(final["attn_on_target_fine"])
    clips = json.loads(final["samples_json"])["clips"]
    assert clips and all(c["truth"] == captions[c["clip_id"]] for c in clips)
    report_dir = tmp_path / "report"
    fit_laws.main(["--store", str(tmp_path / "grid-cpu-smoke"), "--out", str(report_dir), "--bootstrap", "0"])
    text = (report_dir / "REPORT.md").read_text()
    assert "## Data" in text and "no target boxes" in text and str(out.resolve()) in text
