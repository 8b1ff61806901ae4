"""Where a run's clips come from: the synthetic world (``data.source=world``) or ingested video shards
(``data.source=shards``, made by ``python -m fvlm.video ingest``). One interface for the loop and evaluation.

    from fvlm.data import make_data, train_batches
    data = make_data(cfg)                                   # VideoWorld or fvlm.shards.ShardData
    for batch in train_batches(data, cfg, start_sample=0, device=device): ...   # effective batches, in order

Both sources provide: ``codec`` (fvlm.text: captions <-> tokens), ``vocab_size``, ``text_length`` (the padded
caption length FLOPs accounting counts), ``batch(split, indices, stream_seed)`` (deterministic per index),
``val_set()``, ``val_batches(batch_size)``, ``val_size``, ``val_scored_tokens(limit)``, ``has_boxes``
(attention on target is measurable only on the world), ``train_size`` (None = an infinite stream),
``blind_entropy()`` / ``unigram_entropy()`` baselines, ``slot_accuracy(logits, batch)`` ({} where
captions have no slots) and ``source_info()`` (how to find a held-out clip again, for the report card).
Batches are dicts of tensors: frames float32 [B, T, 3, H, W] in [0, 1], the codec's token tensors, captions,
and on the world boxes and slots.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fvlm.config import Config, ConfigError
from fvlm.text import CaptionCodec, make_codec


def make_data(cfg: Config, codec: CaptionCodec | None = None):
    """The run's data source, with the run's caption codec."""
    codec = codec if codec is not None else make_codec(cfg)
    if cfg.data.source == "shards":
        from fvlm.shards import ShardData

        return ShardData(cfg.data, cfg.world, codec)
    from fvlm.world import VideoWorld

    return VideoWorld(cfg.world, codec)


def train_batches(data, cfg: Config, start_sample: int, device: torch.device) -> Iterator[dict]:
    """The training stream from sample `start_sample` on, one effective batch (train.batch_size clips) at a
    time: sample i of the stream is clip i of (split train, stream seed train.seed), so a resumed run and
    every arm of a paired seed see the same clips in the same order. Shards load through a torch DataLoader
    (workers, pinned memory on CUDA) so decoding never waits on the GPU; the world renders in process (a
    batch of 32 clips takes ~6 ms)."""
    b = cfg.train.batch_size
    if hasattr(data, "loader"):
        yield from data.loader(
            start_sample, b, cfg.train.seed, workers=cfg.data.workers, pin_memory=device.type == "cuda"
        )
        return
    i = start_sample
    while True:
        yield data.batch("train", range(i, i + b), stream_seed=cfg.train.seed)
        i += b


def check_one_epoch(cfg: Config, samples: int, train_size: int | None) -> None:
    """A run sees each training clip at most once (upstream fVLM memorised captions at 7.5 epochs)."""
    if train_size is not None and samples > train_size:
        raise ConfigError(
            f"the run needs {samples:,} training clips but {cfg.data.shards} holds {train_size:,}: at most one "
            "epoch (upstream memorised captions at 7.5 epochs); lower the budget or ingest more videos"
        )


def split_batch(batch: dict, size: int) -> list[dict]:
    """Micro-batches of `size` clips, in order (the OOM ladder's unit; the samples never change)."""
    n = len(batch["captions"])
    return [
        {k: (v[s : s + size] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
        for s in range(0, n, size)
    ]
