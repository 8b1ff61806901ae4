"""Ingested video shards as a data source (``data.source=shards data.shards=DIR``; fvlm/data.py's interface).

The shards are written by ``python -m fvlm.video ingest`` (fvlm/video.py owns their format and manifest).
Sample i of the train stream of seed s is clip i of ``np.random.default_rng(s).permutation``
of the train clips (in clip-id order), at most one epoch; the val set is every val clip in clip-id order.
Frames are kept as uint8 on disk and in the val cache and become float32 [B, T, 3, H, W] in [0, 1] per batch.
Clips are read one row group at a time from memory-mapped parquet files (a DataLoader worker opens its own),
so a batch never decodes its neighbours.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fvlm.config import ConfigError, DataConfig, WorldConfig
from fvlm.video import MANIFEST, IngestError, read_manifest

if TYPE_CHECKING:
    from fvlm.text import CaptionCodec


def _ingest_fix(root: Path) -> str:
    return f"make one with python -m fvlm.video ingest SRC --out {root}"


class ShardData:
    """Ingested shards as a data source of fvlm/data.py's interface (see the module docstring)."""

    has_boxes = False  # no target boxes: attention on target is not measurable (NaN)

    def __init__(self, data_cfg: DataConfig, world_cfg: WorldConfig, codec: CaptionCodec) -> None:
        import pyarrow.parquet as pq

        self.codec = codec
        self.tokenizer = codec.tokenizer
        self.vocab_size = codec.vocab_size
        self.root = root = Path(data_cfg.shards)
        if not data_cfg.shards or not root.is_dir():
            raise ConfigError(
                f"data.shards: {data_cfg.shards or '(empty)'} is not a folder; {_ingest_fix(root)}"
            )
        try:
            manifest = read_manifest(root)
        except IngestError as e:
            raise ConfigError(f"data.shards: {e}") from None
        if manifest is None or not manifest["shards"]:
            raise ConfigError(
                f"data.shards: {root} is not an ingest folder (no {MANIFEST} with shards); "
                f"{_ingest_fix(root)}"
            )
        self.manifest = manifest
        s = self.settings = manifest["settings"]
        if (s["size"], s["max_frames"]) != (world_cfg.frame_size, world_cfg.frames):
            raise ConfigError(
                f"the shards were ingested at {s['size']} px x {s['max_frames']} frames; set "
                f"world.frame_size={s['size']} world.frames={s['max_frames']} (or ingest again with --size "
                f"{world_cfg.frame_size} --max-frames {world_cfg.frames} into a new --out)"
            )
        self.frame_shape = (s["max_frames"], s["size"], s["size"], 3)
        self.has_latents = s["latents"] is not None
        ids, captions, splits, where = [], [], [], []
        self._files = [root / sh["file"] for sh in manifest["shards"]]
        self._group_starts: list[np.ndarray] = []  # first row of each row group, per shard
        for k, path in enumerate(self._files):
            if not path.is_file():
                raise ConfigError(
                    f"data.shards: {path.name} is listed in {MANIFEST} but missing; rerun the ingest"
                )
            pf = pq.ParquetFile(path)
            md = pf.metadata
            self._group_starts.append(
                np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
            )
            t = pf.read(columns=["clip_id", "caption", "split"]).to_pydict()
            ids += t["clip_id"]
            captions += t["caption"]
            splits += t["split"]
            where += [(k, r) for r in range(md.num_rows)]
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        for a, b in zip(order, order[1:], strict=False):
            if ids[a] == ids[b]:
                raise ConfigError(
                    f"data.shards: clip {ids[a]} is in two shards; ingest again into a new --out"
                )
        self._ids = [ids[i] for i in order]
        self._captions = [captions[i] for i in order]
        self._where = [where[i] for i in order]
        split = np.array([splits[i] for i in order])
        self._train = np.flatnonzero(split == "train")  # global rows in clip-id order
        self._val = np.flatnonzero(split == "val")
        if len(self._val) == 0:
            raise ConfigError(
                f"data.shards: {root} has no val clips ({len(self._train)} train); ingest into a new --out "
                "with a larger --val-share or more videos"
            )
        if len(self._train) == 0:
            raise ConfigError(
                f"data.shards: {root} has no train clips; ingest more videos or a smaller --val-share"
            )
        self.train_size = len(self._train)
        self._check_vocabulary()
        self._perms: dict[int, np.ndarray] = {}
        self._text_length: int | None = None
        self._val_tokens: dict | None = None
        self._val_u8: np.ndarray | None = None  # filled on demand: an evaluation reads only its first clips
        self._val_loaded: np.ndarray | None = None
        self._val_lat: np.ndarray | None = None
        self._val_full: dict | None = None
        self._readers: dict[int, Any] = {}
        self._pid = os.getpid()

    def _check_vocabulary(self) -> None:
        """Captions in words the tokenizer does not know train on <unk>: the world's 19-word tokenizer with
        real captions (model.tokenizer_path / model.llm_path not set) is a mistake worth stopping for."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None:
            return
        sample = [self._captions[i] for i in self._val[:256]]
        bad = [c for c in sample if unk in self.codec.encode_one(c)[0]]
        if bad:
            raise ConfigError(
                f"{len(bad)} of the first {len(sample)} held-out captions have words the tokenizer does not "
                f"know (e.g. '{bad[0][:60]}'); set model.tokenizer_path (or model.llm_path) to a tokenizer "
                "for real captions"
            )

    # ------------------------------------------------------------------ reading clips
    def _reader(self, shard: int):
        import pyarrow.parquet as pq

        if os.getpid() != self._pid:  # a DataLoader worker: file handles are not shared across processes
            self._readers, self._pid = {}, os.getpid()
        if shard not in self._readers:
            self._readers[shard] = pq.ParquetFile(self._files[shard], memory_map=True)
        return self._readers[shard]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"] = {}  # spawn-started workers open their own
        return state

    def _read(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 frames [B, T, H, W, 3] (and float16 latents [B, T, C, h, w]) of global rows."""
        frames = np.empty((len(rows), *self.frame_shape), dtype=np.uint8)
        cols = ["frames", "latents", "latents_shape"] if self.has_latents else ["frames"]
        lats = []
        for b, g in enumerate(rows):
            shard, r = self._where[g]
            starts = self._group_starts[shard]
            group = int(np.searchsorted(starts, r, side="right")) - 1
            t = self._reader(shard).read_row_group(group, columns=cols)
            off = r - int(starts[group])
            frames[b] = np.frombuffer(t.column("frames")[off].as_buffer(), np.uint8).reshape(self.frame_shape)
            if self.has_latents:
                shape = t.column("latents_shape")[off].as_py()
                lats.append(np.frombuffer(t.column("latents")[off].as_buffer(), np.float16).reshape(shape))
        return frames, (np.stack(lats) if lats else None)

    def _collate(
        self,
        rows: Sequence[int],
        frames: np.ndarray,
        lat,
        length: int | None = None,
        tokens: dict | None = None,
    ) -> dict:
        import torch

        captions = [self._captions[g] for g in rows]
        batch = {
            # uint8 -> float32 [B, T, 3, H, W] in [0, 1] per batch: 4x less memory than storing floats
            # (one copy into the float layout, then an in-place divide: 2x faster than permute().contiguous())
            "frames": torch.from_numpy(frames)
            .permute(0, 1, 4, 2, 3)
            .to(torch.float32, memory_format=torch.contiguous_format)
            .div_(255),
            **(tokens if tokens is not None else self.codec.encode(captions, length)),
            "captions": captions,
            "clip_ids": [self._ids[g] for g in rows],
        }
        if lat is not None:
            batch["latents"] = torch.from_numpy(lat).float()
        return batch

    def permutation(self, stream_seed: int) -> np.ndarray:
        """The train stream's order for a seed: positions into the train clips (in clip-id order)."""
        seed = int(stream_seed)
        if seed not in self._perms:
            self._perms[seed] = np.random.default_rng(seed).permutation(self.train_size)
        return self._perms[seed]

    def _rows(self, split: str, indices: Sequence[int], stream_seed: int) -> np.ndarray:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        if idx.size == 0:
            raise ValueError("batch needs at least one index")
        if split == "train":
            if idx.min() < 0 or idx.max() >= self.train_size:
                bad = int(idx.max() if idx.max() >= self.train_size else idx.min())
                raise IndexError(
                    f"train sample {bad} is outside 0..{self.train_size - 1}: the shards hold "
                    f"{self.train_size} train clips (one epoch at most)"
                )
            return self._train[self.permutation(stream_seed)[idx]]
        if split == "val":
            if idx.min() < 0 or idx.max() >= self.val_size:
                raise IndexError(f"val index outside 0..{self.val_size - 1}")
            return self._val[idx]
        raise ValueError(f"split must be train or val, got {split!r}")

    def batch(self, split: str, indices: Sequence[int], stream_seed: int = 0) -> dict:
        """Clips `indices` of a stream: train sample i = train clip permutation(stream_seed)[i]; val index i
        = the i-th val clip in clip-id order. Token tensors padded to the batch's longest caption."""
        rows = self._rows(split, indices, stream_seed)
        frames, lat = self._read(rows)
        return self._collate(rows, frames, lat)

    def loader(
        self, start_sample: int, batch_size: int, seed: int, workers: int = 0, pin_memory: bool = False
    ) -> Iterator[dict]:
        """The train stream from `start_sample` on, `batch_size` clips a batch, through a torch DataLoader
        (reading and uint8 -> float conversion in `workers` processes): the same batches as
        batch("train", range(i, i + batch_size), seed), up to the end of the epoch."""
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _TrainStream(self, seed),
            sampler=_Ranges(start_sample, batch_size, self.train_size),
            batch_size=None,  # the sampler yields whole batches; the dataset reads each in one call
            collate_fn=_identity,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
        )
        return iter(loader)

    # ------------------------------------------------------------------ held-out set
    @property
    def val_size(self) -> int:
        return len(self._val)

    @property
    def text_length(self) -> int:
        """Tokens of the longest caption of all clips under the codec (what FLOPs accounting counts)."""
        if self._text_length is None:
            self._text_length = self.codec.length(self._captions)
        return self._text_length

    def _val_token_cache(self) -> dict:
        if self._val_tokens is None:
            self._val_tokens = self.codec.encode([self._captions[g] for g in self._val], self.text_length)
        return self._val_tokens

    def _val_frames(self, sl: slice) -> np.ndarray:
        """uint8 frames of val clips `sl`, read once and cached (only the clips an evaluation reaches)."""
        if self._val_u8 is None:
            self._val_u8 = np.empty((self.val_size, *self.frame_shape), dtype=np.uint8)
            self._val_loaded = np.zeros(self.val_size, dtype=bool)
        want = np.arange(self.val_size)[sl]
        missing = want[~self._val_loaded[want]]
        if missing.size:
            frames, lat = self._read(self._val[missing])
            self._val_u8[missing] = frames
            if lat is not None:
                if self._val_lat is None:
                    self._val_lat = np.zeros((self.val_size, *lat.shape[1:]), dtype=np.float16)
                self._val_lat[missing] = lat
            self._val_loaded[missing] = True
        return self._val_u8[sl]

    def val_batches(self, batch_size: int) -> Iterator[dict]:
        """The held-out set in clip-id order, `batch_size` clips at a time (the last may be short); token
        tensors trimmed to the longest caption of each batch; fresh tensors (the cache stays uint8)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        tokens = self._val_token_cache()
        for start in range(0, self.val_size, batch_size):
            sl = slice(start, start + batch_size)
            frames = self._val_frames(sl)
            rows = self._val[sl]
            lat = self._val_lat[sl] if self.has_latents else None
            width = int(tokens["attention_mask"][sl].sum(1).max())
            # copies of the cached tokens, so that an in-place op in a caller cannot corrupt the cache
            yield self._collate(
                rows, frames, lat, tokens={k: v[sl, :width].clone() for k, v in tokens.items()}
            )

    def val_set(self) -> dict:
        """The whole held-out set as one batch (frames float32, tokens padded to text_length), cached. This is
        the cache itself: do not modify it. Evaluation uses val_batches (uint8 cache, floats per batch)."""
        if self._val_full is None:
            rows = self._val
            frames = self._val_frames(slice(None))
            lat = self._val_lat if self.has_latents else None
            tokens = {k: v.clone() for k, v in self._val_token_cache().items()}
            self._val_full = self._collate(rows, frames, lat, tokens=tokens)
        return self._val_full

    def val_scored_tokens(self, limit: int) -> int:
        """Caption tokens the loss scores over the first `limit` held-out clips (no frames are read)."""
        return int(self._val_token_cache()["loss_mask"][:limit, 1:].sum())

    # ------------------------------------------------------------------ baselines and reporting
    def blind_entropy(self) -> float:
        """NaN: real captions have no known distribution, so there is no exact no-vision bound."""
        return math.nan

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the unigram distribution of the scored val tokens: the CE of a model that ignores
        the video and the position in the caption."""
        import torch

        tok = self._val_token_cache()
        ids = tok["input_ids"][tok["loss_mask"] == 1]
        p = torch.bincount(ids, minlength=self.vocab_size).double()
        p = p[p > 0] / p.sum()
        return float(-(p * p.log()).sum())

    def slot_accuracy(self, logits, batch: dict) -> dict[str, float]:
        return {}  # free-text captions have no slots

    def source_info(self) -> dict:
        """How a held-out clip is found again: the shard folder (val clips by clip_id) and its settings."""
        return {
            "shards": str(self.root.resolve()),
            "sources": self.manifest["sources"],
            "settings": self.settings,
            "train_size": self.train_size,
            "val_size": self.val_size,
        }


class _TrainStream:
    """Map-style dataset whose item is a whole batch (a list of stream positions), for the DataLoader."""

    def __init__(self, data: ShardData, seed: int) -> None:
        self.data, self.seed = data, seed

    def __getitem__(self, indices: list[int]) -> dict:
        return self.data.batch("train", indices, stream_seed=self.seed)


class _Ranges:
    """Consecutive stream ranges [i, i + B) from `start` on, whole batches within the epoch."""

    def __init__(self, start: int, batch_size: int, total: int) -> None:
        if batch_size < 1 or start < 0:
            raise ValueError(f"need batch_size >= 1 and start >= 0, got {batch_size}, {start}")
        self.start, self.batch_size, self.total = start, batch_size, total

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.start, self.total - self.batch_size + 1, self.batch_size):
            yield list(range(i, i + self.batch_size))

    def __len__(self) -> int:
        return max(0, (self.total - self.start) // self.batch_size)


def _identity(batch: dict) -> dict:
    return batch
