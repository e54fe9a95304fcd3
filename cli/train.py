"""`cartoongan pretrain | finetune | swap`: training runs and layer swapping."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cartoongan.config import STRUCT_TAPS
from cartoongan.errors import ConfigError
from cartoongan.pipelines.swap import DEFAULT_RES, MAPPINGS

from .app import Augment, CompileMode, Precision, app, choices, file_path, user_errors
from .console import RichReporter, fail, out

# the flags pretrain and finetune share, each the [train] key it overrides (its argument's name,
# but for compile_, which would shadow the builtin)
TRAIN_FLAGS = ("iters", "batch", "lr", "augment", "augment_p", "precision", "device", "seed", "compile", "compile_mode",
               "eval_every", "eval_n")
FINETUNE_FLAGS = ("freeze_g", "freeze_sg", "freeze_d", "freeze_mapping", "freeze_noise", "struct_loss", "struct_weight",
                  "struct_tap", "fresh_d")


def _section(args: dict, keys: tuple[str, ...]) -> dict:
    """A recipe section's overrides from a command's arguments (None: not given; choices by value)."""
    values = {key: args[key + "_" if key == "compile" else key] for key in keys}
    if values.get("compile_mode") is not None:  # a mode, even 'default', means: compile
        if values["compile"] is False:
            raise typer.BadParameter("--compile-mode compiles: drop --no-compile or the mode")
        values["compile"] = True
    elif values.get("compile") is False:  # and a recipe's (or resumed run's) mode must not compile anyway
        values["compile_mode"] = "default"
    return {key: getattr(v, "value", v) for key, v in values.items()}


def _load_config(recipe: Optional[Path], resume: Optional[Path], overrides: dict, out_dir: Optional[Path] = None):
    from cartoongan.config import apply_overrides, load_recipe
    from cartoongan.train.runs import resumed_config

    if resume is not None and (recipe is not None or out_dir is not None):
        raise ConfigError("--resume continues a run in its own folder with its own config.toml: "
                          "drop --out and --recipe (flags such as --iters still apply)")
    if resume is not None:
        return resumed_config(resume, overrides)
    return apply_overrides(load_recipe(recipe), overrides)


def _refuse_idle_flags(cfg, **given) -> None:
    """A flag given for a feature that is off (in the recipe, or in the resumed run) would do nothing:
    refuse it, naming the flag that turns the feature on."""
    struct_off, struct_on = cfg.finetune.struct_loss == 0, "--struct-loss N (the resolutions it compares, e.g. 3)"
    idle = (("struct_weight", "weighs the structure loss", struct_off, struct_on),
            ("struct_tap", "picks the taps of the structure loss", struct_off, struct_on),
            ("eval_n", "sizes the KID evaluation", cfg.train.eval_every == 0, "--eval-every K (steps between evaluations)"))
    for key, does, off, fix in idle:
        if given.get(key) is not None and off:
            raise ConfigError(f"--{key.replace('_', '-')} {does}, which is off: add {fix}")


def _report_result(result) -> None:
    if result.latest is None:  # a data-parallel rank other than 0: rank 0 writes and reports the run
        if result.interrupted:
            fail(result.stopped, 130)
        return
    if result.interrupted:
        fail(f"{result.stopped}; continue with --resume {result.run_dir}", 130)
    out.print(f"done: step {result.step}, checkpoint {result.latest}, samples in {result.run_dir / 'samples'}")


RECIPE = typer.Option(None, "--recipe", help="TOML recipe (a path, or a name from recipes/, e.g. tiny).")
ITERS = typer.Option(None, "--iters", min=1, help="Total training steps (overrides the recipe).")
BATCH = typer.Option(None, "--batch", min=1, help="Total batch over all processes (each GPU gets batch / world size).")
LR = typer.Option(None, "--lr", help="Learning rate (> 0).")  # validate() refuses 0, negatives and NaN alike
AUG = typer.Option(None, "--augment", help="ada: adaptive augmentation, p tuned as D overfits; none: no tuning.")
AUG_P = typer.Option(None, "--augment-p", help="Augmentation probability 0..1: where ADA starts (--augment ada), "
                     "or fixed (--augment none).")
PREC = typer.Option(None, "--precision", help="fp32: IEEE fp32; tf32: TF32 math on CUDA (faster, ~1e-3); bf16: autocast on CUDA (regularisers fp32).")
SEED = typer.Option(None, "--seed", help="Random seed of a new run (a resumed one continues its own random stream).")
COMPILE = typer.Option(None, "--compile/--no-compile", help="torch.compile the networks (CUDA).")
COMPILE_MODE = typer.Option(None, "--compile-mode", help="torch.compile mode (implies --compile); reduce-overhead "
                            "replays CUDA graphs.")
TDEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N")
EVAL_EVERY = typer.Option(None, "--eval-every", min=0, help="KID vs the training set every K steps "
                          "(log.jsonl; best.pt keeps the lowest); 0 = off.")
EVAL_N = typer.Option(None, "--eval-n", min=2, help="Generated images per KID evaluation.")


@app.command()
def pretrain(
    data: Optional[Path] = typer.Option(None, "--data", help="Folder (recursive) or .zip of training images."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    recipe: Optional[Path] = RECIPE, iters: Optional[int] = ITERS, batch: Optional[int] = BATCH,
    lr: Optional[float] = LR, augment: Optional[Augment] = AUG, augment_p: Optional[float] = AUG_P,
    precision: Optional[Precision] = PREC, seed: Optional[int] = SEED, compile_: Optional[bool] = COMPILE,
    compile_mode: Optional[CompileMode] = COMPILE_MODE, device: Optional[str] = TDEVICE,
    eval_every: Optional[int] = EVAL_EVERY, eval_n: Optional[int] = EVAL_N,
):
    """Train a StyleGAN2 source generator from a folder of images (resumable; torchrun for several GPUs)."""
    from cartoongan.train.runs import pretrain as run_pretrain

    overrides = {"train": _section(locals(), TRAIN_FLAGS)}
    with user_errors():
        cfg = _load_config(recipe, resume, overrides, out_dir)
        _refuse_idle_flags(cfg, eval_n=eval_n)
        run_dir = resume or out_dir
        if run_dir is None or (data is None and resume is None):
            raise typer.BadParameter("give --data and --out, or --resume RUN_DIR")
        result = run_pretrain(cfg, data, run_dir, RichReporter(), resume=resume is not None)
    _report_result(result)


Tap = choices("Tap", STRUCT_TAPS)


@app.command()
def finetune(
    source: Optional[Path] = typer.Option(None, "--source", help="Pretrained checkpoint (rosinality format) to start from."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder or .zip of target-domain images."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    recipe: Optional[Path] = RECIPE, iters: Optional[int] = ITERS, batch: Optional[int] = BATCH,
    lr: Optional[float] = LR, augment: Optional[Augment] = AUG, augment_p: Optional[float] = AUG_P,
    precision: Optional[Precision] = PREC, seed: Optional[int] = SEED, compile_: Optional[bool] = COMPILE,
    compile_mode: Optional[CompileMode] = COMPILE_MODE, device: Optional[str] = TDEVICE,
    eval_every: Optional[int] = EVAL_EVERY, eval_n: Optional[int] = EVAL_N,
    freeze_g: Optional[int] = typer.Option(None, "--freeze-g", min=0, help="FreezeG: freeze the N lowest-resolution G blocks."),
    freeze_sg: Optional[int] = typer.Option(None, "--freeze-sg", min=0, help="FreezeSG: as --freeze-g N, and their w slots from the source mapping."),
    freeze_d: Optional[int] = typer.Option(None, "--freeze-d", min=0, help="FreezeD: freeze the N highest-resolution D blocks."),
    freeze_mapping: Optional[bool] = typer.Option(None, "--freeze-mapping/--train-mapping", help="Freeze the mapping network (the reference code's FreezeG does)."),
    freeze_noise: Optional[bool] = typer.Option(None, "--freeze-noise/--train-noise", help="Keep the source's per-pixel noise strengths (flat-colour domains)."),
    struct_loss: Optional[int] = typer.Option(None, "--struct-loss", min=0, help="Structure loss over the first N resolutions from 8 px."),
    struct_weight: Optional[float] = typer.Option(None, "--struct-weight", help="Structure-loss weight (lambda, default 1)."),
    struct_tap: Optional[Tap] = typer.Option(None, "--struct-tap", help="Compare skip RGB outputs, or conv features (the reference code)."),
    fresh_d: Optional[bool] = typer.Option(None, "--fresh-d", help="Start D from random weights when the source has none."),
):
    """Fine-tune a pretrained generator on cartoon faces (FreezeG/SG/D, structure loss)."""
    from cartoongan.train.runs import finetune as run_finetune

    args = locals()
    overrides = {"train": _section(args, TRAIN_FLAGS), "finetune": _section(args, FINETUNE_FLAGS)}
    with user_errors():
        cfg = _load_config(recipe, resume, overrides, out_dir)
        _refuse_idle_flags(cfg, struct_weight=struct_weight, struct_tap=struct_tap, eval_n=eval_n)
        run_dir = resume or out_dir
        if run_dir is None or (resume is None and (source is None or data is None)):
            raise typer.BadParameter("give --source, --data and --out, or --resume RUN_DIR")
        result = run_finetune(cfg, source, data, run_dir, RichReporter(), resume=resume is not None)
    _report_result(result)


Mapping = choices("Mapping", MAPPINGS)


@app.command()
def swap(
    source: Path = typer.Argument(..., metavar="SOURCE", help="Generator whose low-resolution blocks (structure) are kept."),
    target: Path = typer.Argument(..., metavar="TARGET", help="Generator whose high-resolution blocks (style) are kept."),
    res: Optional[int] = typer.Option(None, "--res", help=f"Blocks at this resolution and below come from SOURCE "
                                      f"(default {DEFAULT_RES}, or half the models' size where that is less)."),
    mapping: Mapping = typer.Option(Mapping("source"), "--mapping", help="Whose mapping network the result uses."),
    blend_width: Optional[float] = typer.Option(None, "--blend-width", help="Smooth logistic blend (octaves) instead of a hard switch."),
    output: Path = typer.Option(Path("swapped.pt"), "-o", "--output", **file_path("swapped.pt"), help="Checkpoint to write."),
):
    """Layer swapping: a new generator with SOURCE's low-resolution and TARGET's high-resolution blocks."""
    from cartoongan.pipelines.swap import swap_checkpoints

    with user_errors():
        path = swap_checkpoints(source, target, output, res, mapping.value, blend_width, RichReporter())
    out.print(f"wrote {path}")
