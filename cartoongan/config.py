"""Run configuration as dataclasses; recipes are TOML files with [model], [train], [finetune] tables."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tomllib

from .errors import ConfigError
from .filekind import not_found, special_kind

# the allowed values of the string settings; the CLI builds its choices from these
AUGMENTS = ("ada", "none")
PRECISIONS = ("fp32", "tf32", "bf16")  # see device.set_math_mode
STRUCT_TAPS = ("rgb", "features")
# torch.compile modes; two of them also replay CUDA graphs (fewer launches on a GPU)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class ModelConfig:
    size: int = 256  # image resolution
    style_dim: int = 512  # z and w dimension
    n_mlp: int = 8  # mapping network depth
    channel_multiplier: int = 2  # rosinality's width multiplier (2 = config F)
    channel_base: int = 16384  # width = min(channel_max, multiplier * base / resolution)
    channel_max: int = 512  # widest feature map

    def generator_kwargs(self) -> dict:
        return dataclasses.asdict(self)

    def discriminator_kwargs(self) -> dict:
        d = dataclasses.asdict(self)
        del d["style_dim"], d["n_mlp"]
        return d


@dataclass
class TrainConfig:
    iters: int = 800_000  # total G steps (the run stops at this step)
    batch: int = 16  # total batch across all processes
    lr: float = 0.002  # Adam learning rate (before the lazy-regularisation correction)
    r1_gamma: float = 10.0  # R1 weight
    d_reg_every: int = 16  # lazy R1 interval
    g_reg_every: int = 4  # lazy path-length interval (0 disables)
    path_weight: float = 2.0  # path-length weight
    path_batch_shrink: int = 2  # path-length batch = batch / shrink
    mixing: float = 0.9  # style-mixing probability
    ema_kimg: float = 10.0  # EMA half-life in thousands of images
    augment: str = "ada"  # ada | none
    augment_p: float = 0.0  # fixed augmentation probability (0 with ada: tuned from 0)
    ada_target: float = 0.6  # target E[sign(D(real))]
    ada_interval: int = 4  # steps between p updates
    ada_kimg: float = 500.0  # images (thousands) for p to move by 1
    xflip: bool = True  # random horizontal flips of the dataset
    seed: int = 0
    sample_every: int = 1000  # steps between sample grids
    ckpt_every: int = 5000  # steps between numbered checkpoints (latest.pt is written with each)
    log_every: int = 100  # steps between log.jsonl lines
    n_sample: int = 16  # faces in each sample grid (seeds 0..n-1)
    eval_every: int = 0  # steps between KID evaluations against the training set (0 = off); keeps best.pt
    eval_n: int = 100  # generated images per KID evaluation (seeds 0..n-1)
    precision: str = "fp32"  # fp32 (IEEE) | tf32 (TF32 math on CUDA) | bf16 (autocast on CUDA; regularisers fp32)
    compile: bool = False  # torch.compile G synthesis and D (no gain measured on the CPU; meant for CUDA)
    compile_mode: str = "default"  # its mode, one of COMPILE_MODES (GRAPH_MODES: CUDA graphs); another implies compile
    cudnn_benchmark: bool = True  # let cuDNN time its algorithms per conv shape (CUDA; NVlabs trains so)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @property
    def compiled(self) -> bool:
        """Whether the run torch.compiles (compile, or a mode other than the default)."""
        return self.compile or self.compile_mode != "default"


@dataclass
class FinetuneConfig:
    freeze_g: int = 0  # lowest-resolution synthesis blocks kept frozen (FreezeG)
    freeze_sg: int = 0  # as freeze_g, and their w slots come from the source mapping (FreezeSG)
    freeze_d: int = 0  # highest-resolution discriminator blocks kept frozen (FreezeD)
    freeze_mapping: bool = False  # also freeze the mapping network (the reference code's FreezeG does)
    freeze_noise: bool = False  # keep every per-pixel noise strength at the source's value
    struct_loss: int = 0  # structure loss over the first N resolutions from 8 px (0 = off)
    struct_weight: float = 1.0  # its weight (lambda)
    struct_tap: str = "rgb"  # rgb (skip images) | features (conv features, as the reference code)
    fresh_d: bool = False  # start D from random weights when the source has none


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "finetune": FinetuneConfig}


def _set(section: object, name: str, key: str, value) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ConfigError(f"unknown setting [{name}].{key}; known: {', '.join(fields)}")
    current = getattr(section, key)  # every field's default has the field's type
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"[{name}].{key} must be true or false, got {value!r}")
    elif isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"[{name}].{key} must be a number, got {value!r}")
        if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"[{name}].{key} must be a whole number, got {value!r}")
        try:
            value = type(current)(value)
        except OverflowError:  # TOML integers have no size limit: 1 and 400 zeros is no float
            raise ConfigError(f"[{name}].{key} is out of range: a number of {len(str(abs(value)))} digits") from None
    elif isinstance(current, str):
        # a number or a table here would reach the trainer's string methods (device.startswith) as
        # an AttributeError traceback
        if not isinstance(value, str):
            raise ConfigError(f'[{name}].{key} must be a string (in quotes, e.g. {key} = "{current}"), got {value!r}')
    elif not isinstance(value, type(current)):  # a field of a type added later: at least its type
        raise ConfigError(f"[{name}].{key} must be a {type(current).__name__}, got {value!r}")
    setattr(section, key, value)


def apply_overrides(cfg: RunConfig, data: dict) -> RunConfig:
    """Merge {'train': {'batch': 8}, ...} into cfg, rejecting unknown keys and wrong types."""
    for name, values in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown recipe table [{name}]; use {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"recipe entry '{name}' must be a table")
        for key, value in values.items():
            if value is not None:
                _set(getattr(cfg, name), name, key, value)
    return cfg


def changed_settings(before, after: RunConfig, ignore: tuple[str, ...] = ("train.iters",)) -> list[str]:
    """'[section] key old -> new' for each setting `after` holds differently from the config dict
    `before` (a run's recorded config.to_dict(), read from its file: anything but a dict of dicts
    compares as nothing); keys `before` lacks are skipped (older runs)."""
    if not isinstance(before, dict):
        return []
    changes = []
    for name, values in after.to_dict().items():
        old_section = before.get(name)
        if not isinstance(old_section, dict):
            continue
        for key, value in values.items():
            if f"{name}.{key}" not in ignore and key in old_section and old_section[key] != value:
                changes.append(f"[{name}] {key} {old_section[key]!r} -> {value!r}")
    return changes


def recipe_names() -> list[str]:
    """Names of the recipes that ship with the package (recipes/*.toml)."""
    return sorted(p.name.removesuffix(".toml") for p in resources.files("cartoongan.recipes").iterdir()
                  if p.name.endswith(".toml"))


def recipe_path(name: str) -> Path | None:
    """The shipped recipe called `name`, or None."""
    if name not in recipe_names():
        return None
    return Path(str(resources.files("cartoongan.recipes") / f"{name}.toml"))


def load_recipe(path: str | Path | None) -> RunConfig:
    """A RunConfig from a TOML recipe (None: the defaults, the standard 256 px setup)."""
    cfg = RunConfig()
    if path is None:
        return cfg
    path = Path(path)
    if kind := special_kind(path):
        raise ConfigError(f"--recipe {path} is {kind}, not a TOML file: name a recipe file or one of: "
                          f"{', '.join(recipe_names())}")
    if not path.is_file():
        # a bare name is a built-in recipe's; a path that names a folder (my/tiny.toml) is a file
        # the user means, and training the built-in of the same name instead said nothing
        builtin = recipe_path(path.name.removesuffix(".toml")) if path.parent == Path(".") else None
        if builtin is None and path.is_dir():  # (a folder named demo64 beside `--recipe demo64` is no recipe)
            raise ConfigError(f"--recipe {path} is a folder, not a TOML file: name a recipe file in it, or one of: "
                              f"{', '.join(recipe_names())}")
        if builtin is None:
            raise ConfigError(not_found("recipe", path, f" (pass a TOML file, or one of: {', '.join(recipe_names())})"))
        path = builtin
    try:
        # TOML is UTF-8 whatever the locale; utf-8-sig: an editor's byte-order mark (Notepad) is no statement
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    data.pop("description", None)
    return apply_overrides(cfg, data)


# Ceilings of the step count and the batch: far past any real run (the paper setups train under a
# million steps of batch 8 to 64), low enough that a typo (1e300) is one line at once, not an
# overflow or an allocation of no machine's size.
ITERS_MAX = 10**9
BATCH_MAX = 100_000

# Ceiling of the R1 and path-length weights (NaN and inf fail it too): 1000 times the R1 default
# of 10 and 5000 times the path-length default of 2, far past any published setting. A typo such as
# 1e308 overflows to inf in the first regularisation step, and the run then "diverges" for no
# reason its divergence message could name.
REG_WEIGHT_MAX = 1e4

# keys a pretrain/finetune flag of the same name (dashed) sets: a message names both
FLAGGED_KEYS = {"iters", "batch", "lr", "augment", "augment_p", "precision", "compile_mode", "eval_every", "eval_n", "seed",
                "struct_loss", "struct_weight", "struct_tap"}


def _named(section: str, key: str) -> str:
    """How a message names a setting: its flag and recipe key, or the recipe key alone."""
    return f"--{key.replace('_', '-')} ([{section}] {key})" if key in FLAGGED_KEYS else f"[{section}] {key}"


def validate(cfg: RunConfig, world_size: int = 1) -> RunConfig:
    """Reject impossible values with a message naming the flag, or the recipe key without one."""
    bad = bad_setting(cfg)
    if bad is not None:
        section, key, what = bad
        raise ConfigError(f"{_named(section, key)} {what}")
    if cfg.train.batch % world_size:
        raise ConfigError(f"--batch {cfg.train.batch} must be divisible by the {world_size} processes")
    return cfg


def bad_setting(cfg: RunConfig) -> tuple[str, str, str] | None:
    """The first impossible value in cfg as (section, key, 'must be ..., got VALUE'), or None: the
    caller says where the value came from (a flag, a recipe, a run's own config.toml)."""
    from .models.architecture import log2_size

    t, m, f = cfg.train, cfg.model, cfg.finetune
    try:
        log2_size(m.size)
    except ValueError:
        return "model", "size", f"must be a power of two >= 8, got {_shown(m.size)}"

    # upper bounds far past any StyleGAN2 (1024 px, w of 512, 8 mapping layers, base 32768): a typo
    # is refused here, not by an overflow or the OOM killer when the networks are built
    checks = [(1 <= getattr(m, key) <= top, "model", key, f"in [1, {top}]")
              for key, top in (("style_dim", 4096), ("n_mlp", 64), ("channel_multiplier", 64),
                               ("channel_base", 2**20), ("channel_max", 4096))]
    checks += [(m.size <= 4096, "model", "size", "<= 4096"),
               (t.iters <= ITERS_MAX, "train", "iters", "<= 10**9 (steps)"),
               (t.batch <= BATCH_MAX, "train", "batch", f"<= {BATCH_MAX}"),
               (0 <= t.seed <= 2**32 - 1, "train", "seed", "in [0, 2**32 - 1]"),
               (t.eval_n <= 100_000, "train", "eval_n", "<= 100000"),
               (1 <= t.n_sample <= 1024, "train", "n_sample", "in [1, 1024] (samples per grid)")]
    checks += [(getattr(t, key) >= 1, "train", key, ">= 1")
               for key in ("iters", "batch", "d_reg_every", "path_batch_shrink", "ada_interval", "sample_every",
                           "ckpt_every", "log_every")]
    # intervals past any run's length (a typo of 1e300 passed, and R1's loss scaling overflowed at step 0)
    checks += [(getattr(t, key) <= ITERS_MAX, "train", key, "<= 10**9 (steps)")
               for key in ("d_reg_every", "g_reg_every", "ada_interval", "sample_every", "ckpt_every", "log_every",
                           "eval_every")]
    checks += [(t.path_batch_shrink <= BATCH_MAX, "train", "path_batch_shrink", f"<= {BATCH_MAX}")]
    checks += [
        (t.lr > 0 and math.isfinite(t.lr), "train", "lr", "a finite number > 0"),
        (t.g_reg_every >= 0, "train", "g_reg_every", ">= 0 (0 turns path length off)"),
        (0 <= t.r1_gamma <= REG_WEIGHT_MAX, "train", "r1_gamma", f"in [0, {REG_WEIGHT_MAX:g}]"),
        (0 <= t.path_weight <= REG_WEIGHT_MAX, "train", "path_weight", f"in [0, {REG_WEIGHT_MAX:g}]"),
        (0 <= t.mixing <= 1, "train", "mixing", "in [0, 1]"),
        (0 <= t.augment_p <= 1, "train", "augment_p", "in [0, 1]"),
        (-1 <= t.ada_target <= 1, "train", "ada_target", "in [-1, 1], where E[sign(D(real))] lies"),
        (t.ada_kimg > 0 and math.isfinite(t.ada_kimg), "train", "ada_kimg", "a finite number > 0"),
        (t.ema_kimg > 0 and math.isfinite(t.ema_kimg), "train", "ema_kimg", "a finite number > 0"),
        (t.augment in AUGMENTS, "train", "augment", " or ".join(AUGMENTS)),
        (t.precision in PRECISIONS, "train", "precision", ", ".join(PRECISIONS)),
        (t.compile_mode in COMPILE_MODES, "train", "compile_mode", ", ".join(COMPILE_MODES)),
        (t.eval_every >= 0, "train", "eval_every", ">= 0 (0 is off)"),
        (t.eval_n >= 2, "train", "eval_n", ">= 2 (KID compares sets)"),
        (f.struct_tap in STRUCT_TAPS, "finetune", "struct_tap", " or ".join(STRUCT_TAPS)),
        # as the R1 and path-length weights: 1e308 overflowed, and the divergence message named --lr and R1
        (0 <= f.struct_weight <= REG_WEIGHT_MAX, "finetune", "struct_weight", f"in [0, {REG_WEIGHT_MAX:g}]"),
        # weight 0 would keep the loss's cost (the source renders every G step) without its effect
        (f.struct_weight > 0 or f.struct_loss == 0, "finetune", "struct_weight",
         "> 0 while the structure loss is on (set --struct-loss 0 to turn it off)"),
    ]
    for ok, section, key, what in checks:
        if not ok:
            value = getattr({"model": m, "train": t, "finetune": f}[section], key)
            return section, key, f"must be {what}, got {_shown(value)}"
    return None


def _shown(value) -> str:
    """A value for a message: a whole number of 400 digits (TOML has no size limit) by its length."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"a number of {len(str(abs(value)))} digits"
    return repr(value)


def to_toml(cfg: RunConfig) -> str:
    """The resolved configuration as TOML (written to RUN_DIR/config.toml)."""
    lines = []
    for name, values in cfg.to_dict().items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def from_dict(data: dict) -> RunConfig:
    return apply_overrides(RunConfig(), data)
