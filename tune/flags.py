"""The flags every tune CLI shares, and the invocation they describe (``Context``).

    from tune import flags
    parser = flags.make_parser(__doc__, kind="grid"); args = parser.parse_args()
    ctx = flags.Context.from_args(args, kind="grid")   # preset, grid.yaml section, storage, name, generation
    return flags.main_guard(body)                       # UsageError / ConfigError -> one line, exit 2

Storage is ``--storage`` (default ./runs, made absolute); the experiment name is fixed (``grid-cpu``,
``ablate-deep_query-cpu``, ``lr-cpu/s2``; ``-smoke`` with --smoke-test) so that ``--resume`` finds it
(``Tuner.restore``; ray issue 36062). An invocation's *generation* is the config hash of its base config with
its ``--set`` overrides: every trial records it, so an experiment folder that holds runs of two base configs
is noticed (a warning, or a refusal with ``--strict``) and analysis can select one generation.
No torch or Ray import here: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fvlm.cli import OneLineParser
from fvlm.config import ConfigError, config_hash, load_config, parse_override

REPO = Path(__file__).resolve().parent.parent
GRID_YAML = REPO / "configs" / "grid.yaml"
BASE_YAML = REPO / "configs" / "base.yaml"
PRESETS = ("cpu", "4090")


class UsageError(ValueError):
    """Bad input: one line naming the fix; the CLI exits 2 before anything is written."""


def make_parser(doc: str, kind: str) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=f"tune/{ {'grid': 'scaling_grid', 'lr': 'lr_sweep'}.get(kind, kind) }.py",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset", choices=PRESETS, default=None, help="cpu or 4090 (default: 4090 if CUDA is visible)"
    )
    p.add_argument("--name", default=None, help="experiment name (default: fixed per command and preset)")
    p.add_argument("--storage", default="runs", help="experiment storage folder (default ./runs)")
    p.add_argument(
        "--address", default=None, help="existing Ray cluster (default: $RAY_ADDRESS, else a local one)"
    )
    p.add_argument("--resume", action="store_true", help="continue the experiment through Tuner.restore")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (cells, FLOPs, packing, time) and exit"
    )
    p.add_argument(
        "--smoke-test", action="store_true", help="tiny cells (grid.yaml 'smoke'), seconds per trial"
    )
    p.add_argument("--wandb", action="store_true", help="log to W&B (offline unless logged in)")
    p.add_argument("--seeds", type=_positive_int, default=None, help="seeds per cell (0..N-1)")
    p.add_argument("--config", default=str(BASE_YAML), help="base fvlm config (default configs/base.yaml)")
    p.add_argument("--grid-file", default=str(GRID_YAML), help="presets file (default configs/grid.yaml)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fvlm override applied to every cell, e.g. --set world.distractor_style=colored",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun cells that ended diverged or oom (by default those outcomes are final, like complete)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse to add runs to an experiment that holds runs of another base config or --set",
    )
    p.add_argument(
        "--gpu-mem-mb", type=float, default=None, help="GPU memory per card for packing (default: measured)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads per trial on CPU (default: 1 per core)"
    )
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


@dataclass
class Context:
    """One invocation: its flags, the preset's part of grid.yaml, where its experiment lives."""

    args: argparse.Namespace
    kind: str
    preset: str
    section: dict  # the preset's part of grid.yaml, smoke settings merged in with --smoke-test
    storage: Path
    name: str
    sets: dict = field(default_factory=dict)
    generation: str = ""  # config hash of the base config + --set (see the module docstring)

    @property
    def exp_dir(self) -> Path:
        return self.storage / self.name

    @property
    def base_config(self) -> str:
        return str(Path(self.args.config).resolve())

    @classmethod
    def from_args(cls, args: argparse.Namespace, kind: str, stem: str | None = None) -> Context:
        """The experiment is named `<stem>-<preset>[-smoke]` (stem defaults to the kind) unless --name."""
        preset = args.preset or detect_preset(args.address)
        grid = load_grid(args.grid_file)
        if preset not in grid["presets"]:
            raise UsageError(
                f"preset {preset!r} not in {args.grid_file}; valid: {', '.join(grid['presets'])}"
            )
        section = dict(grid["presets"][preset])
        if args.smoke_test:
            section = deep_merge(section, grid.get("smoke", {}))
        sets = parse_sets(args.sets)
        default = f"{stem or kind}-{preset}" + ("-smoke" if args.smoke_test else "")
        storage = Path(args.storage).expanduser().resolve()
        try:
            generation = config_hash(load_config(args.config, sets))
        except ConfigError as e:
            raise UsageError(f"{e}") from None
        return cls(args, kind, preset, section, storage, args.name or default, sets, generation)

    def generation_meta(self) -> dict:
        """What every trial of this invocation records about where its config came from."""
        return {
            "base_config": self.base_config,
            "generation": self.generation,
            "sets": json.dumps(self.sets, sort_keys=True, default=str),
        }


def detect_preset(address: str | None) -> str:
    import torch

    if torch.cuda.is_available():
        return "4090"
    if address or os.environ.get("RAY_ADDRESS"):
        import ray

        from tune.runner import init_ray

        init_ray(address, 0, 0)
        return "4090" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    return "cpu"


def load_grid(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"grid file not found: {p} (default configs/grid.yaml)")
    try:
        grid = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(grid, dict) or not isinstance(grid.get("presets"), dict):
        raise UsageError(f"{p}: expected a 'presets' mapping (see configs/grid.yaml)")
    return grid


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_sets(items: list[str]) -> dict:
    try:
        return dict(parse_override(i) for i in items)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def tier_override(tier) -> dict:
    """grid.yaml tier entry -> override: an int is model.scale, a string a named real tier."""
    return {"model.scale": int(tier)} if isinstance(tier, int) else {"model.tier": str(tier)}


def tier_name(tier) -> str:
    return f"s{tier}" if isinstance(tier, int) else str(tier)


def main_guard(fn) -> int:
    """Run a CLI body: UsageError / ConfigError -> one line on stderr, exit 2."""
    try:
        return fn()
    except (UsageError, ConfigError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2


def fmt_value(v) -> str:
    """A config value as the YAML literal a user would type (true, 0.5, coarse_only)."""
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) >= 1e6:
        return f"{v:.3g}"
    return json.dumps(v) if isinstance(v, (bool, type(None))) else str(v)
