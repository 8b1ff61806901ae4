"""Checkpoints of the training loop: atomic ``state.pt`` folders, loading, and the RNG state for resume.

    ckpts = Checkpoints(root, keep=3); path = ckpts.save(state, step, val_loss)
    state = load_state(path_or_dir); restore_rng_state(state["rng"])

A checkpoint holds everything exact resume needs (fvlm/train.py writes it at every evaluation): the model
(without torch.compile's prefix, :func:`unwrap_state_dict`), the optimizer, the loop state (data position,
OOM ladder, best val loss), and the random state of every generator the run draws from (:func:`rng_state`:
the CPU generator, plus every CUDA device's when the run uses CUDA, since the random query control and any
CUDA-side sampling draw from those).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch


class Checkpoints:
    """``<dir>/step_XXXXXXX/state.pt``: the last ``keep`` plus the best by val_loss; atomic writes."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root, self.keep = Path(root), keep
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, state: dict, step: int, val_loss: float) -> Path:
        final = self.root / f"step_{step:07d}"
        tmp = self.root / f".tmp_step_{step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        meta = self.root / "index.json"
        index = json.loads(meta.read_text())["val_loss"] if meta.exists() else {}
        index[final.name] = val_loss if math.isfinite(val_loss) else None
        best = min((k for k, v in index.items() if v is not None), key=lambda k: index[k], default=None)
        recent = sorted(index)[-self.keep :]
        for name in list(index):
            if name not in recent and name != best:
                shutil.rmtree(self.root / name, ignore_errors=True)
                index.pop(name)
        tmp_meta = meta.with_suffix(".tmp")
        tmp_meta.write_text(json.dumps({"best": best, "latest": final.name, "val_loss": index}, indent=1))
        os.replace(tmp_meta, meta)
        return final

    @staticmethod
    def latest(root: Path) -> Path | None:
        dirs = sorted(p for p in Path(root).glob("step_*") if (p / "state.pt").exists())
        return dirs[-1] if dirs else None


def load_state(path: str | Path) -> dict:
    """A checkpoint's state: ``path`` is a state.pt, a step folder, or a checkpoint root (its latest)."""
    path = Path(path)
    if path.is_dir():
        found = path / "state.pt" if (path / "state.pt").exists() else Checkpoints.latest(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint under {path}")
        path = found if found.name == "state.pt" else found / "state.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def unwrap_state_dict(state: dict) -> dict:
    """Strip torch.compile's ``_orig_mod.`` prefix so compiled and eager models share checkpoints."""
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def rng_state(device: torch.device | str) -> dict:
    """The random state to resume from: the CPU generator's, and on CUDA every device's generator too."""
    state = {"torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        # FIX (tests/test_train.py::test_rng_state_saves_and_restores_the_cuda_generators): only the CPU
        # state was saved, so a resumed CUDA run drew other random numbers than the uninterrupted one
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved. A CUDA state needs CUDA: resuming a CUDA run elsewhere is an
    error, not a silent change of the random stream."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "the checkpoint holds CUDA random state but no CUDA device is visible: resume it on CUDA "
                "(train.device=cuda) for an exact resume"
            )
        torch.cuda.set_rng_state_all(state["cuda"])
