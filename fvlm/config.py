"""Experiment configuration: one dataclass tree, a YAML base, dotted overrides, strict validation.

    cfg = load_config("configs/base.yaml", ["model.scale=3", "model.deep_query=false"])

Every field has a default and a one-line comment. Size fields default to ``None`` and are derived from the
single dial ``model.scale`` (CPU tiers) or a named real tier (``model.tier=135M``) by :func:`resolve`; an
explicit value always wins over the dial, so ablations can move one size knob at a time. Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` with a one-line message naming the field
(and the closest valid keys), which the CLIs turn into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad configuration: the message is one line that names the field and the fix."""


@dataclass
class CompassConfig:
    why: str = ""  # the hypothesis this experiment tests (research playbook 1.1)
    what: str = ""  # the one thing it changes
    how: str = ""  # the metric that decides, fixed before the run


@dataclass
class WorldConfig:
    frames: int = 6  # T frames per clip
    frame_size: int = 32  # H = W in pixels
    sprite_size: int = 8  # target sprite side in pixels
    distractors: int = 3  # number of distractor sprites
    distractor_style: str = "gray"  # gray (only the target is coloured) | colored (told apart by motion)
    task: str = "track"  # track (name the target's colour, shape, motion) | cue (find it by a frame-0 cue)
    noise: float = 0.02  # std of pixel noise
    speed: float = 3.0  # target speed in pixels per frame
    turn_prob: float = 0.5  # chance the target turns once, at mid-clip, to a perpendicular direction
    clutter: float = 0.1  # amplitude of the per-clip low-frequency background texture (0 = flat)
    val_size: int = 512  # fixed held-out set size
    val_seed: int = 12345  # seed of the held-out stream (disjoint from training)
    patch_size: int | None = None  # the model's patch (None = model.patch_size): pixel sizes scale by patch/8


@dataclass
class ModelConfig:
    scale: int = 2  # THE dial: derives every size, the LR and the batch (CPU tiers, configs/tiers.yaml)
    tier: str = ""  # a named real tier from configs/tiers.yaml (135M, 360M, 1.7B, ...); overrides scale
    # --- sizes (None = from the dial) ---
    dino_hidden: int | None = None  # DINOv2 width
    dino_layers: int | None = None  # DINOv2 depth (built)
    dino_heads: int | None = None  # DINOv2 attention heads
    dino_intermediate: int | None = None  # DINOv2 MLP width
    patch_size: int | None = None  # DINOv2 patch side in pixels
    llm_hidden: int | None = None  # Llama width
    llm_layers: int | None = None  # Llama depth
    llm_heads: int | None = None  # Llama attention heads
    llm_kv_heads: int | None = None  # Llama key/value heads (GQA)
    llm_intermediate: int | None = None  # Llama SwiGLU width
    query_dim: int | None = None  # width of the query vectors (default: DINO width)
    init_std: float | None = None  # init std of random DINO/LLM weights (None = dial: 1/sqrt(width), fan-in)
    # --- foveation knobs (every one is an ablation; each must change the forward output) ---
    deep_query: bool = True  # query walks every DINO layer (true) or one cross-attention on final features
    layers_used: int | None = None  # DINO layers the patches and the query use (first k; None = all)
    query_bias: bool = False  # bias on query_input_proj (upstream BUG-002: a bias swamps the query)
    query_init_std: float = 1.0  # init std of q_static / q_init (upstream BUG-001: 0.02 kills foveation)
    fine_iters: int = 1  # fine passes; each takes its queries from the previous pass's LLM states
    mode: str = "coarse_fine"  # training mode: coarse_fine (foveated) | coarse_only (static query arm)
    lambda_coarse: float = 0.5  # weight of the coarse loss (trains the static read; makes loss_ratio live)
    fine_read: str = "same"  # same grid | hires (2x grid, same pixels) | foveal (coarse sees a 2x downsample)
    pos_code: bool = True  # add a 2D sin-cos code of where the query looked to its token (motion needs it)
    query_source: str = "llm"  # fine queries from: the LLM (llm) | the true target (oracle) | random | static
    aim: bool = False  # the fine read also gets an aim (x, y): a Gaussian prior on its attention
    aim_sigma: float = 0.25  # aim prior width in half-frames (fixed: a learned one grows to the frame)
    aim_loss: float = 0.0  # weight of an MSE pulling the LLM-made aim to the true target centre (needs boxes)
    visual_scale: float | None = None  # multiplier on visual tokens (None = LLM embedding std at init)
    # --- objectives ---
    objective: str = "caption"  # caption (text CE) | reconstruct (next-frame VAE latents, MSE) | joint
    recon_weight: float = 0.5  # weight of the reconstruction loss in joint
    head_hidden: int = 32  # prediction-head capacity (conv channels of the FiLM head)
    # --- training-time structure ---
    freeze_dino: bool = False  # no gradients into the DINOv2 backbone
    freeze_llm: bool = False  # no gradients into the Llama backbone
    gradient_checkpointing: bool = False  # recompute activations (the OOM ladder's last rung turns it on)
    # --- pretrained weights (real path): local folder or hub id; empty = random init from the dial ---
    llm_path: str = ""  # LlamaForCausalLM (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)
    dino_path: str = ""  # Dinov2Model (e.g. facebook/dinov2-small)
    vae_path: str = ""  # diffusers AutoencoderKL (e.g. stabilityai/sd-vae-ft-mse); tiny seeded VAE if empty
    tokenizer_path: str = ""  # tokenizer folder; default: the world's offline WordLevel tokenizer


@dataclass
class TrainConfig:
    seed: int = 0  # init + data order; arms with the same seed see the same data (paired seeds)
    samples: int = 0  # training samples; 0 = from budget_flops, else from steps
    steps: int = 0  # optimizer steps, used when samples and budget_flops are 0
    budget_flops: float = 0.0  # training compute budget; samples = budget / flops_per_sample
    data_size: int = 0  # finite dataset size (0 = infinite procedural stream); runs never exceed one epoch
    batch_size: int | None = None  # effective batch in samples (None = from the dial)
    micro_batch: int | None = None  # samples per forward pass (None = batch_size); OOM ladder halves it
    lr: float | None = None  # backbone (DINO, LLM) peak LR (None = dial: 1/sqrt(width) transfer)
    connector_lr_ratio: float | None = None  # connector LR / backbone LR (None = from the tier)
    schedule: str = "constant"  # constant | wsd | cosine (constant/WSD keep intermediate evals valid)
    warmup_ratio: float = 0.05  # linear warmup share of the steps, from LR 0
    decay_ratio: float = 0.2  # WSD: share of the steps spent decaying at the end
    min_lr_ratio: float = 0.1  # end LR of cosine / WSD as a share of the peak
    weight_decay: float = 0.01  # AdamW weight decay
    max_grad_norm: float = 1.0  # clipping; the logged grad_norm is the pre-clip norm
    eval_points: int = 8  # evaluations per run (plus step 0); spaced by eval_spacing
    eval_spacing: str = "log"  # log (dense early, for L(D) curves) | linear
    eval_samples: int = 256  # held-out clips per evaluation (at most world.val_size)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    compile: bool = False  # torch.compile the model (state dicts are saved without the _orig_mod prefix)
    keep_last: int = 2  # checkpoints kept besides the best
    inject_oom_steps: list[int] = field(default_factory=list)  # fault injection: a CUDA OOM at these steps
    inject_oom_eval_steps: list[int] = field(default_factory=list)  # fault injection: OOM in these evals
    inject_nan_steps: list[int] = field(default_factory=list)  # fault injection: a NaN loss at these steps


@dataclass
class DataConfig:
    source: str = "world"  # world (the synthetic video world) | shards (videos: python -m fvlm.video ingest)
    shards: str = ""  # folder of ingested shards, for data.source=shards (an absolute path for Ray trials)
    workers: int = 0  # DataLoader worker processes reading shards (0 = in the training process)


@dataclass
class RunConfig:
    name: str = "fvlm"  # run name (console, checkpoints)
    out_dir: str = "runs/train"  # checkpoints and summary go to <out_dir>/<name>/
    log_every: int = 1  # console line every k optimizer steps


@dataclass
class Config:
    compass: CompassConfig = field(default_factory=CompassConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "world.distractor_style": ("gray", "colored"),
    "world.task": ("track", "cue"),
    "data.source": ("world", "shards"),
    "model.mode": ("coarse_fine", "coarse_only"),
    "model.fine_read": ("same", "hires", "foveal"),
    "model.query_source": ("llm", "oracle", "random", "static"),
    "model.objective": ("caption", "reconstruct", "joint"),
    "train.schedule": ("constant", "wsd", "cosine"),
    "train.eval_spacing": ("log", "linear"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.dtype": ("auto", "float32", "bfloat16"),
}


# ----------------------------------------------------------------------------- dict <-> dataclass


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys() -> list[str]:
    return list(flatten(to_dict(Config())).keys())


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check (and gently coerce) a value against a field's annotation; raise ConfigError naming the field."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(typ)
        return [_coerce(key, v, item) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):  # YAML reads 1e12 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(), n=3, cutoff=0.5)
    if not close:  # a wrong section with a right leaf: search by the leaf
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see configs/base.yaml for the valid keys"
    return ConfigError(f"unknown config key '{key}'{hint}")


def set_dotted(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    obj: Any = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise _unknown_key_error(key)
        obj = getattr(obj, p)
    leaf = parts[-1]
    if not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown_key_error(key)
    cur = getattr(obj, leaf)
    if dataclasses.is_dataclass(cur):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of fields, got {value!r}")
        for k, v in value.items():
            set_dotted(cfg, f"{key}.{k}", v)
        return
    setattr(obj, leaf, _coerce(key, value, _field_types(type(obj))[leaf]))


def from_dict(d: dict, base: Config | None = None) -> Config:
    cfg = base if base is not None else Config()
    for key, value in flatten(d).items() if d else []:
        set_dotted(cfg, key, value)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not key=value (e.g. model.deep_query=false)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """YAML base (or the defaults) + dotted overrides -> a validated, resolved Config."""
    cfg = Config()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (try configs/base.yaml)")
        with open(p) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        from_dict(data, cfg)
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            set_dotted(cfg, k, v)
    else:
        for item in overrides or []:
            set_dotted(cfg, *parse_override(item))
    return resolve(cfg)


# ----------------------------------------------------------------------------- the dial


def load_tiers(path: str | Path | None = None) -> dict:
    with open(path or CONFIG_DIR / "tiers.yaml") as f:
        return yaml.safe_load(f)


def cpu_tier(scale: int, rule: dict) -> dict:
    """Sizes, LR and batch of CPU tier `scale` (the rule's constants live in configs/tiers.yaml)."""
    width = rule["width_per_scale"] * scale
    head_dim = rule["head_dim"]
    heads = max(2, width // head_dim)
    base_width = rule["width_per_scale"] * rule["base_scale"]
    return {
        "dino_hidden": width,
        "dino_layers": rule["dino_layers_base"] + (scale - 1) // 2,
        "dino_heads": heads,
        "dino_intermediate": rule["mlp_ratio"] * width,
        "patch_size": rule["patch_size"],
        "llm_hidden": width,
        "llm_layers": rule["llm_layers_base"] + scale,
        "llm_heads": heads,
        "llm_kv_heads": max(1, heads // 2),
        "llm_intermediate": int(rule["llm_ffn_ratio"] * width) // 8 * 8,
        # muP-style transfer: LR ~ 1/sqrt(width), anchored at the base tier (upstream used the same rule)
        # HF's default init std (0.02) is tuned for widths ~768; a 64-wide model needs the fan-in scale,
        # or attention logits start ~0.1 and vision is learned only after a long plateau (LOG.md)
        "init_std": 1 / math.sqrt(width),
        "lr": rule["base_lr"] * math.sqrt(base_width / width),
        "connector_lr_ratio": rule["connector_lr_ratio"],
        "batch_size": rule["batch_size"],
        # no "micro_batch" here: it defaults to batch_size in resolve(), so `train.batch_size=8` alone works
        # (fix found by tests/test_config.py: a dial micro_batch of 32 rejected any smaller explicit batch)
    }


def tier_values(m: ModelConfig, tiers: dict | None = None) -> tuple[str, dict]:
    tiers = tiers or load_tiers()
    if m.tier:
        real = tiers["real"]
        if m.tier not in real:
            raise ConfigError(
                f"model.tier: unknown tier '{m.tier}'; valid: {', '.join(real)} (or set model.scale)"
            )
        return m.tier, dict(real[m.tier])
    if not 1 <= m.scale <= tiers["cpu"]["max_scale"]:
        raise ConfigError(f"model.scale: {m.scale} is out of range 1..{tiers['cpu']['max_scale']}")
    return f"s{m.scale}", cpu_tier(m.scale, tiers["cpu"])


def pretrained_sizes(m: ModelConfig) -> dict[str, int]:
    """The backbone sizes a local checkpoint folder (model.llm_path / model.dino_path) defines, read from its
    config.json without loading weights: loaded weights decide the sizes, so the config (its hash, FLOPs and
    memory) is the same before and after the model is built. Hub ids that are not local folders give {}."""
    out: dict[str, int] = {}
    dino = Path(m.dino_path) / "config.json" if m.dino_path else None
    if dino is not None and dino.is_file():
        d = json.loads(dino.read_text())
        out.update(
            dino_hidden=d["hidden_size"],
            dino_layers=d["num_hidden_layers"],
            dino_heads=d["num_attention_heads"],
            dino_intermediate=int(d["hidden_size"] * d.get("mlp_ratio", 4)),
            patch_size=d["patch_size"],
        )
    llm = Path(m.llm_path) / "config.json" if m.llm_path else None
    if llm is not None and llm.is_file():
        d = json.loads(llm.read_text())
        out.update(
            llm_hidden=d["hidden_size"],
            llm_layers=d["num_hidden_layers"],
            llm_heads=d["num_attention_heads"],
            llm_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
            llm_intermediate=d["intermediate_size"],
        )
    return out


# the config's file and folder paths; local ones become absolute in resolve() (hub ids stay as given)
PATH_FIELDS = (
    ("model", "llm_path"),
    ("model", "dino_path"),
    ("model", "vae_path"),
    ("model", "tokenizer_path"),
    ("data", "shards"),
)


def path_overrides(cfg: Config) -> dict[str, str]:
    """The resolved config's set paths as dotted overrides (absolute where local), for a trial to load."""
    return {
        f"{section}.{name}": getattr(getattr(cfg, section), name)
        for section, name in PATH_FIELDS
        if getattr(getattr(cfg, section), name)
    }


def resolve(cfg: Config) -> Config:
    """Fill every None size from the dial, then validate ranges. Idempotent."""
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model),
        train=dataclasses.replace(cfg.train),
        world=dataclasses.replace(cfg.world),
        data=dataclasses.replace(cfg.data),
    )
    _, values = tier_values(cfg.model)
    for section in (cfg.model, cfg.train):  # the world's frame size is set below (world.patch_size is not
        for f in dataclasses.fields(section):  # the dial's: it follows model.patch_size)
            if f.name in values and getattr(section, f.name) is None:
                setattr(section, f.name, values[f.name])
    # a real tier also fixes the world geometry and the weights to load, unless overridden
    for key in ("frame_size",):
        if key in values and cfg.world.frame_size == WorldConfig().frame_size:
            cfg.world.frame_size = values[key]
    for key in ("llm_path", "dino_path", "vae_path"):
        if values.get(key) and not getattr(cfg.model, key):
            setattr(cfg.model, key, values[key])
    for section, name in PATH_FIELDS:  # absolute: a Ray trial runs in its own working directory
        value = getattr(getattr(cfg, section), name)
        if value and Path(value).expanduser().exists():
            setattr(getattr(cfg, section), name, str(Path(value).expanduser().resolve()))
    for key, value in pretrained_sizes(cfg.model).items():
        setattr(cfg.model, key, value)
    if cfg.model.query_dim is None:
        cfg.model.query_dim = cfg.model.dino_hidden
    if cfg.world.patch_size is None:  # the world's geometry is given in patch units (fvlm/world.py)
        cfg.world.patch_size = cfg.model.patch_size
    if cfg.train.micro_batch is None:
        cfg.train.micro_batch = cfg.train.batch_size
    validate(cfg)
    return cfg


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    flat = flatten(to_dict(cfg))
    for key, allowed in CHOICES.items():
        _check(flat[key] in allowed, f"{key}: '{flat[key]}' is not one of {', '.join(allowed)}")
    m, t, w = cfg.model, cfg.train, cfg.world
    for key in (
        "dino_hidden",
        "dino_layers",
        "dino_heads",
        "llm_hidden",
        "llm_layers",
        "llm_heads",
        "query_dim",
    ):
        _check(getattr(m, key) >= 1, f"model.{key}: must be >= 1")
    _check(m.dino_hidden % m.dino_heads == 0, "model.dino_hidden: must be divisible by model.dino_heads")
    _check(
        m.dino_intermediate % m.dino_hidden == 0,
        "model.dino_intermediate: must be a multiple of model.dino_hidden",
    )
    _check(m.llm_hidden % m.llm_heads == 0, "model.llm_hidden: must be divisible by model.llm_heads")
    _check(m.llm_heads % m.llm_kv_heads == 0, "model.llm_kv_heads: must divide model.llm_heads")
    _check(1 <= m.fine_iters <= 3, "model.fine_iters: must be 1, 2 or 3")
    _check(
        m.layers_used is None or 1 <= m.layers_used <= m.dino_layers,
        f"model.layers_used: must be in 1..{m.dino_layers} (model.dino_layers)",
    )
    _check(m.query_init_std > 0, "model.query_init_std: must be > 0")
    _check(m.lambda_coarse >= 0, "model.lambda_coarse: must be >= 0")
    _check(m.head_hidden >= 1, "model.head_hidden: must be >= 1")
    _check(m.aim_sigma > 0, "model.aim_sigma: must be > 0")
    _check(m.aim_loss >= 0, "model.aim_loss: must be >= 0")
    _check(
        m.aim_loss == 0 or (m.aim and m.query_source == "llm"),
        "model.aim_loss > 0 trains the LLM-made aim: set model.aim=true and model.query_source=llm",
    )
    _check(
        cfg.data.source == "world" or (m.query_source != "oracle" and m.aim_loss == 0),
        "model.query_source=oracle and model.aim_loss need target boxes, which only data.source=world has",
    )
    _check(
        not (m.mode == "coarse_only" and m.fine_read != "same"),
        f"model.fine_read={m.fine_read} needs model.mode=coarse_fine (coarse_only has no fine pass)",
    )
    _check(
        m.fine_read != "foveal" or w.frame_size % (2 * m.patch_size) == 0,
        f"model.fine_read=foveal: the coarse read sees frames downsampled 2x, so world.frame_size "
        f"({w.frame_size}) must be a multiple of 2 x model.patch_size ({2 * m.patch_size})",
    )
    _check(
        w.frame_size % m.patch_size == 0,
        f"world.frame_size: {w.frame_size} is not a multiple of model.patch_size {m.patch_size}",
    )
    _check(w.frames >= 2, "world.frames: must be >= 2")
    _check(0 < w.sprite_size < w.frame_size, "world.sprite_size: must be in 1..frame_size-1")
    _check(w.val_size >= 1, "world.val_size: must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size: must be >= 1")
    _check(
        1 <= t.micro_batch <= t.batch_size and t.batch_size % t.micro_batch == 0,
        "train.micro_batch: must divide train.batch_size",
    )
    _check(t.lr > 0, "train.lr: must be > 0")
    _check(t.connector_lr_ratio > 0, "train.connector_lr_ratio: must be > 0")
    _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio: must be in [0, 1)")
    _check(0 <= t.decay_ratio <= 1 - t.warmup_ratio, "train.decay_ratio: must be in [0, 1 - warmup_ratio]")
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio: must be in [0, 1]")
    _check(
        t.samples >= 0 and t.steps >= 0 and t.budget_flops >= 0,
        "train.samples/steps/budget_flops: must be >= 0",
    )
    _check(t.eval_points >= 1, "train.eval_points: must be >= 1")
    _check(1 <= t.eval_samples, "train.eval_samples: must be >= 1")
    _check(t.keep_last >= 1, "train.keep_last: must be >= 1")
    _check(cfg.data.workers >= 0, "data.workers: must be >= 0")
    _check(
        cfg.data.source != "shards" or bool(cfg.data.shards),
        "data.source=shards needs data.shards=DIR (a folder made by python -m fvlm.video ingest)",
    )
    from fvlm.world import check_world  # the world knows its own geometry (e.g. whether a path fits)

    try:
        check_world(w)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if t.data_size:
        _check(
            t.samples <= t.data_size,
            f"train.samples: {t.samples} exceeds train.data_size {t.data_size} (more than one epoch; upstream's "
            "7.5 epochs memorised captions) - lower train.samples or raise train.data_size",
        )


# Fields that say how a run executes, not what it computes: configs that differ only here train the same
# model on the same samples in the same order (the OOM ladder and the packer change micro_batch and gradient
# checkpointing on purpose, keeping the effective batch), so they are the same cell and share a hash.
EXECUTION_FIELDS = (
    "train.micro_batch",
    "train.threads",
    "train.device",
    "train.keep_last",
    "train.compile",
    "train.inject_oom_steps",
    "train.inject_oom_eval_steps",
    "train.inject_nan_steps",  # a fault of one execution, like a killed worker: the same cell, run again
    "model.gradient_checkpointing",
    "data.workers",
)
# What an LR optimum does not depend on (ASSUMPTION, the LR sweep's: the optimum moves little with the
# training length over the grid's range, and not with the seed or how often we evaluate).
LR_FREE_FIELDS = (
    "train.lr",
    "train.seed",
    "train.samples",
    "train.steps",
    "train.budget_flops",
    "train.eval_points",
    "train.eval_spacing",
    "train.eval_samples",
    "world.val_size",
    "world.val_seed",
)


def config_hash(cfg: Config, drop: tuple[str, ...] = ()) -> str:
    """Identity of an experiment cell: what decides the science (model, world, data, schedule, seed), plus
    the row contract's and the world's versions, so a result made by older code never passes for a current
    one. Run naming, the compass text and EXECUTION_FIELDS are left out, as are the dotted keys in `drop`."""
    from fvlm.contract import CONTRACT_VERSION
    from fvlm.world import WORLD_VERSION  # lazy: fvlm.world imports torch

    skip = set(EXECUTION_FIELDS) | set(drop)
    flat = {
        k: v
        for k, v in flatten(to_dict(cfg)).items()
        if not k.startswith(("run.", "compass.")) and k not in skip
    }
    flat["_versions"] = {"contract": CONTRACT_VERSION, "world": WORLD_VERSION}
    blob = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def lr_key(cfg: Config) -> str:
    """The key of an LR sweep result: the config hash without LR_FREE_FIELDS. The grid reuses a swept LR
    only for cells whose lr_key matches (same tier, world, schedule, batch, ...), never by tier name alone."""
    return config_hash(cfg, drop=LR_FREE_FIELDS)


def describe(cfg: Config) -> str:
    """The derived values, printed at start-up."""
    m, t = cfg.model, cfg.train
    tier, _ = tier_values(m)
    return (
        f"tier {tier} | dino {m.dino_hidden}x{m.dino_layers} ({m.dino_heads} heads, patch {m.patch_size}) | "
        f"llm {m.llm_hidden}x{m.llm_layers} ({m.llm_heads}/{m.llm_kv_heads} heads) | query_dim {m.query_dim} | "
        f"lr {t.lr:.3g} (connector x{t.connector_lr_ratio:g}) | batch {t.batch_size} (micro {t.micro_batch}) | "
        f"{m.mode} {m.objective} deep={m.deep_query} fine_iters={m.fine_iters} fine_read={m.fine_read}"
    )
