"""Real videos for fVLM: ingest a folder of videos (or frame folders) with captions into parquet shards.

    python -m fvlm.video ingest SRC --out DIR [--fps 2] [--size 64] [--max-frames 8] [--captions CSV]
        [--val-share 0.1] [--shard-size 256] [--latents VAE_PATH] [--min-frames M] [--folder-fps R]
    python -m fvlm.train --config configs/base.yaml data.source=shards data.shards=DIR world.frame_size=64 \\
        world.frames=8

**Sources.** SRC holds video files (mp4, webm, mkv, mov, avi, ...: anything PyAV/FFmpeg decodes) and/or frame
folders (one sub-folder per clip holding PNG/JPEG/BMP/WebP images, taken in natural name order: frame2 before
frame10). Only SRC's top level is scanned; other files (the captions CSV, notes) are ignored and counted. A
clip's id is its name in SRC (``clip03.mp4``, or the folder name), so ids are unique and stable.

**Captions** come from a CSV (default ``SRC/captions.csv``): a file column (``file``, or WebVid's ``videoid``,
``contentUrl`` (its last path part), ``page_dir``; the first one present) and a caption column (``caption``,
or WebVid's ``name``). A row matches a clip by file name with or without extension (``a``, ``a.mp4`` and
``videos/a.mp4`` all match ``a.mp4``); the first row wins. A clip without a (non-empty) caption is skipped.

**Sampling.** Frames are taken at a fixed rate ``--fps`` by timestamp: sample k is the frame on screen at time
k / fps after the first frame (the latest frame whose timestamp is <= k / fps), so variable-frame-rate videos
and any source rate give evenly spaced samples. A frame folder's image i is at time i / ``--folder-fps``
(default: ``--fps``, i.e. the images are consecutive samples). The first T = ``--max-frames`` samples form the
clip. A clip that ends before T samples is skipped as "too short" (counted, listed): padding it would show a
frozen scene that the caption does not describe, and every clip of a run must have the same T. With
``--min-frames M`` (2 <= M < T) clips with at least M samples are kept, padded by repeating their last frame,
and ``n_frames`` records how many are real. Each frame is resized (short side to S = ``--size``, area filter)
and center-cropped to S x S.

**Shards.** ``DIR/shard-NNNNN.parquet`` (pyarrow; one row group per clip, so a reader fetches any clip without
decoding its neighbours; frames and latents uncompressed, the rest zstd), one row per clip: clip_id, source
(path in SRC), caption, split, n_frames, height, width, fps (the sampling rate), source_fps, duration_s (the
source's duration, NaN if unknown), frames_shape and frames (uint8 bytes, C order [T, S, S, 3] RGB),
latents_shape and latents (float16 bytes, [T, C, h, w], null without ``--latents``). With ``--latents
VAE_PATH`` a diffusers AutoencoderKL is loaded from the path (on CUDA when there is one) and every frame's
latents are stored exactly as fvlm.model computes them (``frames * 2 - 1`` -> ``latent_dist.mean`` x
``scaling_factor``), so the reconstruct objective can read them instead of running the VAE.
``DIR/manifest.json``: format, settings (fps, size, max_frames, min_frames, folder_fps, val_share, latents),
the sources, the shard list with the clip ids and split counts of each, the skipped clips with kind and
reason, totals.

**Splits.** A clip is held out when sha256(clip id) read as a number in [0, 1) is below ``--val-share``: a
stable function of the id alone, so train and val come from the same sources, adding videos never moves a
clip between splits, and the val set is the same in every run.

**Resume.** Shards are written atomically (temp file + rename, then the manifest, also atomically). A rerun
skips clips already in a finished shard, so an interrupted ingest continues where it stopped (at most one
unfinished shard of work is redone) and new videos in SRC are added as new shards. Skipped clips are tried
again on a rerun (a fixed file or an added caption gets in). A rerun with other content settings (fps, size,
max/min frames, folder fps, val share, latents) is refused: the shards would mix two datasets. Unreadable,
corrupt or empty files and clips without a caption are listed on the console and in the manifest, skipped
and counted; they never stop the ingest. Bad input (no SRC, no captions CSV, bad flags, no usable clip at
all) is one line ``video: error: ... (fix)`` on stderr, exit 2, with nothing written.

Training on the shards: fvlm/shards.py (``data.source=shards``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fvlm.cli import OneLineParser

FORMAT = "fvlm-video-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VIDEO_EXTS = frozenset(".mp4 .m4v .mov .webm .mkv .avi .mpg .mpeg .ts .mts .ogv .flv .wmv .3gp .gif".split())
IMAGE_EXTS = frozenset(".png .jpg .jpeg .bmp .webp".split())
# content settings: a rerun must match them, or the shards would mix two datasets
CONTENT_SETTINGS = ("fps", "size", "max_frames", "min_frames", "folder_fps", "val_share", "latents")
FLAG_OF = {
    "fps": "--fps",
    "size": "--size",
    "max_frames": "--max-frames",
    "min_frames": "--min-frames",
    "folder_fps": "--folder-fps",
    "val_share": "--val-share",
    "latents": "--latents",
}
FILE_COLUMNS = ("file", "videoid", "contentUrl", "page_dir")  # the first present names the clip
CAPTION_COLUMNS = ("caption", "name")
EPS = 1e-3  # seconds: timestamps are rationals read as floats; a frame at 0.24999 s is the 0.25 s frame


class IngestError(Exception):
    """Bad input: one line naming the fix (the CLI prints 'video: error: ...' and exits 2)."""


class Skip(Exception):
    """A clip that cannot be used: ``kind`` (empty, unreadable, too_short, no_caption) and a reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass(frozen=True)
class Candidate:
    clip_id: str  # the name in SRC (file name with extension, or the frame folder's name)
    path: Path
    kind: str  # video | frames


@dataclass(frozen=True)
class Settings:
    fps: float
    size: int
    max_frames: int
    min_frames: int
    folder_fps: float
    val_share: float
    latents: str | None  # the VAE path (resolved), None without --latents

    def content(self) -> dict:
        return {k: getattr(self, k) for k in CONTENT_SETTINGS}


# ----------------------------------------------------------------------------- splits and captions


def split_value(clip_id: str) -> float:
    """sha256 of the clip id as a number in [0, 1): a stable, uniform function of the id alone."""
    return int.from_bytes(hashlib.sha256(clip_id.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of(clip_id: str, val_share: float) -> str:
    return "val" if split_value(clip_id) < val_share else "train"


def _key(value: str) -> str:
    """A CSV value -> the file name it names (URLs and paths reduce to their last part)."""
    value = value.strip()
    if "://" in value:
        value = urlparse(value).path
    return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def read_captions(path: Path) -> dict[str, str]:
    """Captions CSV -> {file name and file stem: caption} (first row wins). IngestError on a bad table."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            file_col = next((c for c in FILE_COLUMNS if c in cols), None)
            cap_col = next((c for c in CAPTION_COLUMNS if c in cols), None)
            if file_col is None or cap_col is None:
                raise IngestError(
                    f"{path} has columns {', '.join(cols) or '(none)'}; it needs a file column "
                    f"({' or '.join(FILE_COLUMNS)}) and a caption column ({' or '.join(CAPTION_COLUMNS)})"
                )
            table: dict[str, str] = {}
            for row in reader:
                name, caption = _key(row.get(file_col) or ""), (row.get(cap_col) or "").strip()
                if not name or not caption:
                    continue
                for k in (name, Path(name).stem if "." in name else name):
                    table.setdefault(k, caption)
            return table
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IngestError(
            f"cannot read the captions CSV {path} ({e}); pass a UTF-8 CSV with --captions"
        ) from None


def caption_for(captions: dict[str, str], clip_id: str) -> str | None:
    """The clip's caption: by its full name, else by its name without extension."""
    return captions.get(clip_id) or captions.get(Path(clip_id).stem)


# ----------------------------------------------------------------------------- finding and decoding clips


def _natural(name: str) -> list:
    """Natural sort key: frame2.png before frame10.png (zero-padded names sort as plain names)."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda p: _natural(p.name))


def find_clips(src: Path, out: Path | None = None) -> tuple[list[Candidate], list[str]]:
    """Video files and frame folders at SRC's top level, in clip-id order; and the names of ignored files."""
    clips, ignored = [], []
    out_resolved = out.resolve() if out is not None else None
    for p in sorted(src.iterdir(), key=lambda p: p.name):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if out_resolved is not None and p.resolve() == out_resolved:
                continue  # --out inside SRC: the shards are not a clip
            clips.append(Candidate(p.name, p, "frames"))
        elif p.suffix.lower() in VIDEO_EXTS:
            clips.append(Candidate(p.name, p, "video"))
        else:
            ignored.append(p.name)
    return clips, ignored


def _scaled(w: int, h: int, size: int) -> tuple[int, int]:
    """Width and height with the short side at `size` (the long side rounded, at least `size`)."""
    if w <= h:
        return size, max(size, round(h * size / w))
    return max(size, round(w * size / h)), size


def _crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]


def _pad(frames: list[np.ndarray], s: Settings, duration: float, what: str) -> tuple[np.ndarray, int]:
    """T frames [T, S, S, 3] and the count of real ones; Skip when fewer than min_frames were sampled."""
    n = len(frames)
    if n < s.min_frames:
        raise Skip(
            "too_short",
            f"too short: {n} of {s.max_frames} frames at {s.fps:g} fps ({what} {duration:.2f} s; "
            f"--min-frames {s.min_frames})",
        )
    frames = frames + [frames[-1]] * (s.max_frames - n)
    return np.ascontiguousarray(np.stack(frames)), n


def decode_video(path: Path, s: Settings) -> tuple[np.ndarray, int, float, float]:
    """(frames uint8 [T, S, S, 3], real frames, source fps, source duration s) of a video file, sampled by
    timestamp (see the module docstring). Raises Skip for unusable files."""
    import av

    if path.stat().st_size == 0:
        raise Skip("empty", "empty file")
    targets = [k / s.fps for k in range(s.max_frames)]
    try:
        container = av.open(str(path))
    except Exception as e:  # FFmpeg's errors (InvalidDataError, ...) and OSError: the file is unusable
        raise Skip("unreadable", f"unreadable: {_one_line(e)}") from None
    with container:
        if not container.streams.video:
            raise Skip("unreadable", "unreadable: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decoding is the ingest's cost
        rate = stream.average_rate or stream.guessed_rate
        source_fps = float(rate) if rate else math.nan
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6  # av.time_base: microseconds
        else:
            duration = math.nan
        picked: list[np.ndarray] = []
        converted: dict[
            int, np.ndarray
        ] = {}  # a source frame shown at several sample times is converted once

        def convert(frame, index: int) -> np.ndarray:
            if index not in converted:
                w, h = _scaled(frame.width, frame.height, s.size)
                rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
                converted.clear()
                converted[index] = _crop(rgb, s.size)
            return converted[index]

        prev, prev_i, prev_t, t0, last_dur, i = None, -1, 0.0, None, 0.0, -1
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / (source_fps if source_fps > 0 else s.fps)
                t0 = t if t0 is None else t0
                t -= t0
                if prev is not None and t <= prev_t:
                    continue  # a repeated or out-of-order timestamp: the frame on screen is the earlier one
                while len(picked) < s.max_frames and prev is not None and t > targets[len(picked)] + EPS:
                    picked.append(convert(prev, prev_i))
                if len(picked) == s.max_frames:
                    break
                prev, prev_i, prev_t = frame, i, t
                dur = frame.duration * frame.time_base if frame.duration and frame.time_base else None
                last_dur = float(dur) if dur else (1 / source_fps if source_fps > 0 else 0.0)
        except Exception as e:  # a corrupt stream: what decoded before the error is not trusted either
            raise Skip(
                "unreadable", f"unreadable: decoding failed at frame {i + 1} ({_one_line(e)})"
            ) from None
        if prev is None:
            raise Skip("unreadable", "unreadable: no frame decodes")
        if len(picked) < s.max_frames:  # the stream ended: the last frame stays on screen for its duration
            end = prev_t + last_dur
            duration = end if not math.isfinite(duration) else duration
            while len(picked) < s.max_frames and targets[len(picked)] < end - EPS:
                picked.append(convert(prev, prev_i))
    frames, n = _pad(picked, s, duration, "source")
    return frames, n, source_fps, duration


def decode_folder(path: Path, s: Settings) -> tuple[np.ndarray, int, float, float]:
    """Like decode_video for a frame folder: image i is at time i / folder_fps (natural name order)."""
    from PIL import Image

    images = _images(path)
    if not images:
        raise Skip("empty", "folder without image files (png, jpg, jpeg, bmp, webp)")
    duration = len(images) / s.folder_fps
    picked: list[np.ndarray] = []
    for k in range(s.max_frames):
        j = math.floor(k / s.fps * s.folder_fps + EPS)  # the image on screen at time k / fps
        if j >= len(images):
            break
        try:
            with Image.open(images[j]) as im:
                im = im.convert("RGB")
                w, h = _scaled(im.width, im.height, s.size)
                rgb = np.asarray(im.resize((w, h), Image.Resampling.BOX if w < im.width else Image.BILINEAR))
        except Exception as e:  # PIL's UnidentifiedImageError, truncated files, OSError
            raise Skip("unreadable", f"unreadable: image {images[j].name} ({_one_line(e)})") from None
        picked.append(_crop(rgb, s.size))
    frames, n = _pad(picked, s, duration, "folder")
    return frames, n, s.folder_fps, duration


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


# ----------------------------------------------------------------------------- shards and manifest


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("source", pa.string()),
            ("caption", pa.string()),
            ("split", pa.string()),
            ("n_frames", pa.int32()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("fps", pa.float64()),
            ("source_fps", pa.float64()),
            ("duration_s", pa.float64()),
            ("frames_shape", pa.list_(pa.int32())),
            ("frames", pa.large_binary()),  # large: a shard of big frames may pass 2 GiB in one array
            ("latents_shape", pa.list_(pa.int32())),
            ("latents", pa.large_binary()),
        ]
    )


def _write_atomic(path: Path, write) -> None:
    """write(tmp_path), fsync, rename: a reader (or a rerun after kill -9) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    table = pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)
    # one row group per clip: random access reads exactly one clip; no statistics (min/max of frame bytes).
    # Pixels and latents are stored uncompressed: on decoded video frames zstd saved 8% of the bytes and made
    # random reads 3x slower (4.3k vs 14k clips/s at 64 px); the small columns are zstd.
    compression = {name: "zstd" for name in schema.names} | {"frames": "none", "latents": "none"}
    _write_atomic(
        path,
        lambda tmp: pq.write_table(
            table, tmp, row_group_size=1, compression=compression, write_statistics=False
        ),
    )


def _dump(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def write_manifest(out: Path, manifest: dict) -> bool:
    """Write the manifest atomically when it changed; True when it did (a no-op rerun rewrites nothing)."""
    path = out / MANIFEST
    text = _dump(manifest)
    if path.is_file() and path.read_text() == text:
        return False
    _write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return True


def read_manifest(out: Path) -> dict | None:
    """The manifest of an ingest folder; None where there is none; IngestError where it is not one."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IngestError(f"{path} is unreadable ({_one_line(e)}); ingest into a new --out") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IngestError(f"{path} is not an fvlm video manifest; ingest into a new --out")
    if m.get("version") != FORMAT_VERSION:
        raise IngestError(
            f"{path} has format version {m.get('version')}, this code writes {FORMAT_VERSION}; ingest into a "
            "new --out"
        )
    return m


def _counts(manifest: dict) -> dict:
    c: dict[str, Any] = {"train": 0, "val": 0, "train_duration_s": 0.0, "val_duration_s": 0.0}
    for sh in manifest["shards"]:
        for split in ("train", "val"):
            c[split] += sh[split]
            c[f"{split}_duration_s"] = round(c[f"{split}_duration_s"] + sh[f"{split}_duration_s"], 3)
    c["skipped"] = dict(sorted(Counter(v["kind"] for v in manifest["skipped"]).items()))
    return c


# ----------------------------------------------------------------------------- ingest


def _settings_line(d: dict, keys: Iterable[str]) -> str:
    return " ".join(
        f"{FLAG_OF[k]} {'(none)' if d[k] is None else format(d[k], 'g') if isinstance(d[k], float) else d[k]}"
        for k in keys
    )


def _load_vae(path: str):
    import torch
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32)
    except Exception as e:  # OSError / ValueError / EnvironmentError from diffusers: not a VAE folder
        raise IngestError(
            f"--latents: cannot load a diffusers AutoencoderKL from {path} ({_one_line(e)}); pass a folder "
            "saved with save_pretrained (e.g. a copy of stabilityai/sd-vae-ft-mse)"
        ) from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return vae.requires_grad_(False).eval().to(device)


def vae_latents(vae, frames: np.ndarray) -> np.ndarray:
    """Latents of frames uint8 [T, S, S, 3] exactly as fvlm.model.FoveatedVLM._latents computes them:
    float32 frames/255 in [0, 1] -> x * 2 - 1 -> latent_dist.mean x scaling_factor; float16 [T, C, h, w]."""
    import torch

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
    p = next(vae.parameters())
    with torch.no_grad():
        lat = vae.encode((x * 2 - 1).to(p.device, p.dtype)).latent_dist.mean * vae.config.scaling_factor
    return lat.float().cpu().numpy().astype(np.float16)


def ingest(
    src: str | Path,
    out: str | Path,
    *,
    fps: float = 2.0,
    size: int = 64,
    max_frames: int = 8,
    captions: str | Path | None = None,
    val_share: float = 0.1,
    shard_size: int = 256,
    latents: str | None = None,
    min_frames: int | None = None,
    folder_fps: float | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Ingest SRC into shards under OUT (see the module docstring); returns a summary dict. Raises
    IngestError (one line, the fix) on bad input, before anything is written."""
    src, out = Path(src), Path(out)
    min_frames = max_frames if min_frames is None else min_frames
    folder_fps = fps if folder_fps is None else folder_fps
    _check_flags(fps, size, max_frames, min_frames, folder_fps, val_share, shard_size)
    if not src.is_dir():
        raise IngestError(f"SRC {src} is not a folder; pass a folder of video files or frame folders")
    cap_path = Path(captions) if captions else src / "captions.csv"
    if not cap_path.is_file():
        raise IngestError(
            f"no captions CSV at {cap_path}; pass --captions CSV (columns file,caption; WebVid's "
            "videoid,name work)"
        )
    if latents is not None and not Path(latents).is_dir():
        raise IngestError(f"--latents {latents} is not a folder; pass a diffusers AutoencoderKL folder")
    settings = Settings(
        float(fps),
        int(size),
        int(max_frames),
        int(min_frames),
        float(folder_fps),
        float(val_share),
        str(Path(latents).resolve()) if latents is not None else None,
    )
    old = read_manifest(out) if out.is_dir() else None
    if out.exists() and not out.is_dir():
        raise IngestError(f"--out {out} is a file; pass a folder (new or made by an earlier ingest)")
    if old is None and out.is_dir() and any(out.iterdir()):
        raise IngestError(f"--out {out} holds files but no {MANIFEST}; pass a new or empty folder")
    if old is not None:
        differ = [k for k in CONTENT_SETTINGS if old["settings"].get(k) != settings.content()[k]]
        if differ:
            raise IngestError(
                f"{out} was ingested with {_settings_line(old['settings'], differ)} (this run: "
                f"{_settings_line(settings.content(), differ)}); rerun with the same flags or ingest into a "
                "new --out"
            )
    table = read_captions(cap_path)
    candidates, ignored = find_clips(src, out)
    ignored = [n for n in ignored if (src / n).resolve() != cap_path.resolve()]  # the CSV is no stray file
    if not candidates:
        raise IngestError(
            f"SRC {src} holds no video files or frame folders (extensions: {', '.join(sorted(VIDEO_EXTS))})"
        )
    vae = _load_vae(settings.latents) if settings.latents else None

    # the state: finished shards (kept), skipped clips (kept for clips not tried again in this run)
    manifest = old or {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "settings": settings.content(),
        "sources": [],
        "shards": [],
        "skipped": [],
    }
    source = {"src": str(src.resolve()), "captions": str(cap_path.resolve())}
    if source not in manifest["sources"]:
        manifest["sources"] = [*manifest["sources"], source]
    if out.is_dir():
        _clean(out, manifest, log)
    done = {c for sh in manifest["shards"] for c in sh["clips"]}
    ids = {c.clip_id for c in candidates}
    skipped = {
        v["clip_id"]: v for v in manifest["skipped"] if v["clip_id"] in ids and v["clip_id"] not in done
    }
    todo = [c for c in candidates if c.clip_id not in done]
    stats = Counter(done=len(candidates) - len(todo))
    buffer: list[dict] = []
    t_start = time.time()

    def flush() -> None:
        if not buffer:
            return
        out.mkdir(parents=True, exist_ok=True)
        name = f"shard-{len(manifest['shards']):05d}.parquet"
        write_shard(out / name, buffer)
        entry: dict[str, Any] = {"file": name, "clips": [r["clip_id"] for r in buffer]}
        for split in ("train", "val"):
            rows = [r for r in buffer if r["split"] == split]
            entry[split] = len(rows)
            entry[f"{split}_duration_s"] = round(
                sum(r["duration_s"] for r in rows if math.isfinite(r["duration_s"])), 3
            )
        manifest["shards"] = [*manifest["shards"], entry]
        save()
        buffer.clear()

    def save() -> None:
        manifest["skipped"] = sorted(skipped.values(), key=lambda v: v["clip_id"])
        manifest["counts"] = _counts(manifest)
        write_manifest(out, manifest)

    from tqdm import tqdm

    bar = tqdm(
        total=len(candidates),
        initial=stats["done"],
        desc="ingest",
        unit="clip",
        file=sys.stdout,  # stderr is kept for the one-line errors
        disable=not progress,
        mininterval=0.5,
    )
    with bar:
        for c in todo:
            skipped.pop(c.clip_id, None)  # tried again: a fixed file or an added caption gets in
            try:
                caption = caption_for(table, c.clip_id)
                if caption is None:
                    raise Skip("no_caption", f"no caption in {cap_path.name}")
                decode = decode_video if c.kind == "video" else decode_folder
                frames, n_real, source_fps, duration = decode(c.path, settings)
            except Skip as e:
                skipped[c.clip_id] = {
                    "clip_id": c.clip_id,
                    "source": c.path.name,
                    "kind": e.kind,
                    "reason": e.reason,
                }
                stats["skipped"] += 1
                stats[e.kind] += 1
                bar.write(f"skipped {c.clip_id}: {e.reason}")
            else:
                row = {
                    "clip_id": c.clip_id,
                    "source": c.path.name,
                    "caption": caption,
                    "split": split_of(c.clip_id, settings.val_share),
                    "n_frames": n_real,
                    "height": settings.size,
                    "width": settings.size,
                    "fps": settings.fps,
                    "source_fps": source_fps,
                    "duration_s": duration,
                    "frames_shape": list(frames.shape),
                    "frames": frames.tobytes(),
                    "latents_shape": None,
                    "latents": None,
                }
                if vae is not None:
                    lat = vae_latents(vae, frames)
                    row["latents_shape"], row["latents"] = list(lat.shape), lat.tobytes()
                buffer.append(row)
                stats["ok"] += 1
                stats[f"ok_{row['split']}"] += 1
                if len(buffer) >= shard_size:
                    flush()
            bar.update(1)
            bar.set_postfix(ok=stats["ok"], skipped=stats["skipped"], done=stats["done"], refresh=False)
        flush()
    if not manifest["shards"]:  # nothing usable, and nothing was there before: nothing is written
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(Counter(v["kind"] for v in skipped.values()).items()))
        raise IngestError(
            f"no usable clip in {src} ({len(skipped)} skipped: {kinds}; listed above); add captions for the "
            "clips or check that the files are videos PyAV can decode"
        )
    save()  # the skipped list (a clip that failed again, a source that is gone)
    counts = manifest["counts"]
    wall = time.time() - t_start
    if ignored:
        log(
            f"ignored {len(ignored)} files that are neither videos nor frame folders (e.g. "
            f"{', '.join(ignored[:3])})"
        )
    kinds = ", ".join(
        f"{k.replace('_', ' ')} {stats[k]}"
        for k in ("empty", "unreadable", "too_short", "no_caption")
        if stats[k]
    )
    log(
        f"this run: {stats['ok']} new clips (train {stats['ok_train']}, val {stats['ok_val']}), "
        f"{stats['done']} already in shards, {stats['skipped']} skipped{f' ({kinds})' if kinds else ''} in "
        f"{wall:.1f} s ({stats['ok'] / wall if wall > 0 else 0:.1f} clips/s)"
    )
    log(
        f"{out}: train {counts['train']} clips ({counts['train_duration_s'] / 60:.1f} min of source), val "
        f"{counts['val']} clips ({counts['val_duration_s'] / 60:.1f} min), {len(manifest['shards'])} shards, "
        f"{len(manifest['skipped'])} skipped clips listed in {MANIFEST}"
    )
    return {"new": stats["ok"], "done": stats["done"], "skipped": stats["skipped"], "wall_s": wall, **counts}


def _check_flags(fps, size, max_frames, min_frames, folder_fps, val_share, shard_size) -> None:
    checks = (
        (fps > 0 and math.isfinite(fps), f"--fps must be > 0, got {fps}"),
        (folder_fps > 0 and math.isfinite(folder_fps), f"--folder-fps must be > 0, got {folder_fps}"),
        (8 <= size <= 4096, f"--size must be in 8..4096 pixels, got {size}"),
        (max_frames >= 2, f"--max-frames must be >= 2 (a clip needs motion), got {max_frames}"),
        (
            2 <= min_frames <= max_frames,
            f"--min-frames must be in 2..--max-frames ({max_frames}), got {min_frames}",
        ),
        (0 < val_share < 1, f"--val-share must be in (0, 1), got {val_share}"),
        (shard_size >= 1, f"--shard-size must be >= 1, got {shard_size}"),
    )
    for ok, msg in checks:
        if not ok:
            raise IngestError(msg)


def _clean(out: Path, manifest: dict, log) -> None:
    """Remove what an interrupted run left (temp files, a shard renamed but not yet recorded) and forget
    recorded shards that are gone (their clips are ingested again)."""
    listed = {sh["file"] for sh in manifest["shards"]}
    for p in out.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            p.unlink()
        elif p.name.startswith("shard-") and p.suffix == ".parquet" and p.name not in listed:
            log(f"removed {p.name}: an interrupted run wrote it but did not record it (its clips are redone)")
            p.unlink()
    missing = [sh["file"] for sh in manifest["shards"] if not (out / sh["file"]).is_file()]
    if missing:
        log(
            f"{len(missing)} recorded shards are missing ({', '.join(missing[:3])}): their clips are "
            "ingested again"
        )
        manifest["shards"] = [sh for sh in manifest["shards"] if sh["file"] not in missing]


# ----------------------------------------------------------------------------- training on shards


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m fvlm.video",
        error_name="video",
        description=__doc__.split("\n\n")[0],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    ing = sub.add_parser(
        "ingest", error_name="video", help="videos or frame folders -> parquet shards (resumable)"
    )
    ing.add_argument("src", metavar="SRC", help="folder of video files and/or frame folders")
    ing.add_argument("--out", required=True, help="the shard folder (new, or an earlier ingest's to resume)")
    ing.add_argument("--fps", type=float, default=2.0, help="sampling rate in frames per second (default 2)")
    ing.add_argument(
        "--size", type=int, default=64, help="frame side S in pixels: short side to S, center crop"
    )
    ing.add_argument("--max-frames", type=int, default=8, help="frames T per clip (default 8)")
    ing.add_argument(
        "--min-frames", type=int, default=None, help="keep clips with >= M frames, padded (default T)"
    )
    ing.add_argument(
        "--folder-fps", type=float, default=None, help="frame folders' source rate (default --fps)"
    )
    ing.add_argument("--captions", default=None, help="captions CSV (default SRC/captions.csv)")
    ing.add_argument(
        "--val-share", type=float, default=0.1, help="held-out share by clip-id hash (default 0.1)"
    )
    ing.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256)")
    ing.add_argument("--latents", default=None, metavar="VAE_PATH", help="store AutoencoderKL latents too")
    ing.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        ingest(
            args.src,
            args.out,
            fps=args.fps,
            size=args.size,
            max_frames=args.max_frames,
            captions=args.captions,
            val_share=args.val_share,
            shard_size=args.shard_size,
            latents=args.latents,
            min_frames=args.min_frames,
            folder_fps=args.folder_fps,
            progress=not args.no_progress,
        )
    except IngestError as e:
        print(f"video: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
