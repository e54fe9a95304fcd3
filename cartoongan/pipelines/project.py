"""GAN inversion (the StyleGAN2 projector): photo -> w (or w+) and noise maps of a generator.

Optimises w (or w+) and the per-layer noise maps with an LPIPS and/or MSE distance, the
projector's noise regularisation, a ramped learning rate and decaying latent noise.
"""
from __future__ import annotations

import contextlib
import errno
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import load_photo, save_image, save_png, to_uint8
from ..errors import CartoonganError, DataError, Interrupted
from ..filekind import not_found, special_kind
from ..metrics.lpips import lpips_vgg
from ..models.generator import Generator
from ..outputs import atomic_write, check_keeps_inputs, check_output_dir, check_replaceable_in
from ..report import NullReporter, Reporter
from ..weights.networks import load_generator

SPACES = ("w", "w+")  # one w for every layer, or one per layer
LOSSES = ("lpips", "mse", "lpips+mse")


@dataclass
class ProjectConfig:
    steps: int = 1000
    space: str = "w"  # w | w+
    loss: str = "lpips"  # lpips | mse | lpips+mse
    initial_lr: float = 0.1
    lr_rampup: float = 0.05  # fraction of steps
    lr_rampdown: float = 0.25
    initial_noise_factor: float = 0.05  # latent noise, in units of w's std
    noise_ramp: float = 0.75
    noise_regularize: float = 1e5
    mse_weight: float = 1.0
    w_avg_samples: int = 10000
    seed: int = 0


@dataclass
class Projection:
    ws: torch.Tensor  # [1, n_latent, style_dim]
    image: torch.Tensor  # [1, 3, S, S]
    distances: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    stopped_at: int | None = None  # the steps done when Ctrl-C stopped it; None: it ran them all


def _noise_regularization(noises: list[torch.Tensor]) -> torch.Tensor:
    """Penalise spatial autocorrelation of each noise map at every octave (the StyleGAN2 projector)."""
    total = 0.0
    for n in noises:
        x = n[None, None] if n.ndim == 2 else n
        while True:
            total = total + (x * torch.roll(x, 1, dims=3)).mean() ** 2 + (x * torch.roll(x, 1, dims=2)).mean() ** 2
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


def _lr_at(t: float, cfg: ProjectConfig) -> float:
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return cfg.initial_lr * ramp * min(1.0, t / cfg.lr_rampup)


@contextlib.contextmanager
def _stop_keeps(result: Projection) -> Iterator[None]:
    """Ctrl-C ends the optimisation with what the finished steps found, as a run that set too many
    --steps wants (the distance has levelled off); before a first step there is nothing to keep."""
    try:
        yield
    except KeyboardInterrupt:
        if not result.distances:
            raise
        result.stopped_at = len(result.distances)


def raise_if_stopped(result: Projection, steps: int, outdir: str | Path) -> None:
    """Raise Interrupted (exit 130) for a projection Ctrl-C stopped, once its files are written."""
    if result.stopped_at is not None:
        raise Interrupted(f"interrupted at step {result.stopped_at} of {steps}; wrote the projection so far "
                          f"to {outdir}")


def project(gen: Generator, target: torch.Tensor, cfg: ProjectConfig, perceptual=None,
            reporter: Reporter | None = None, video_every: int = 0) -> Projection:
    """Find w (or w+) and noise maps that make `gen` draw `target` ([1, 3, S, S] in [-1, 1])."""
    reporter = reporter or NullReporter()
    if cfg.space not in SPACES or cfg.loss not in LOSSES:
        raise CartoonganError(f"--space must be {' or '.join(SPACES)} and --loss one of {', '.join(LOSSES)}")
    if "lpips" in cfg.loss and perceptual is None:
        raise CartoonganError("the LPIPS loss needs a perceptual model (see lpips_vgg)")
    dev = gen.input.input.device
    gen = gen.eval().requires_grad_(False)
    target = target.to(dev)
    if perceptual is not None:  # a caller's LPIPS model may still be on the CPU
        perceptual = perceptual.to(dev)
    with torch.no_grad():
        gz = torch.Generator().manual_seed(cfg.seed)
        w_samples = gen.mapping(torch.randn(cfg.w_avg_samples, gen.style_dim, generator=gz, device="cpu").to(dev))
        w_avg, w_std = w_samples.mean(0, keepdim=True), (w_samples - w_samples.mean(0)).square().sum(1).mean().sqrt()
    n_w = gen.n_latent if cfg.space == "w+" else 1
    w_opt = w_avg.repeat(n_w, 1)[None].clone().requires_grad_(True)
    torch.manual_seed(cfg.seed)
    noises = [n.requires_grad_(True) for n in gen.make_noise(1)]
    optim = torch.optim.Adam([w_opt] + noises, lr=cfg.initial_lr, betas=(0.9, 0.999))
    small = (lambda x: F.interpolate(x, size=256, mode="area")) if target.shape[-1] > 256 else (lambda x: x)
    result = Projection(ws=None, image=None)
    with reporter.progress(cfg.steps, "projecting") as bar, _stop_keeps(result):
        for step in range(cfg.steps):
            t = step / cfg.steps
            for group in optim.param_groups:
                group["lr"] = _lr_at(t, cfg)
            w_noise = torch.randn_like(w_opt) * w_std * cfg.initial_noise_factor * max(0.0, 1 - t / cfg.noise_ramp) ** 2
            ws = (w_opt + w_noise).expand(-1, gen.n_latent, -1) if n_w == 1 else w_opt + w_noise
            image = gen.synthesis(ws, noises=noises).image
            dist = torch.zeros((), device=dev)
            if "lpips" in cfg.loss:
                dist = dist + perceptual(small(image), small(target)).sum()
            if "mse" in cfg.loss:
                dist = dist + cfg.mse_weight * F.mse_loss(image, target)
            loss = dist + cfg.noise_regularize * _noise_regularization(noises)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            with torch.no_grad():
                for n in noises:
                    n.sub_(n.mean()).div_(n.square().mean().sqrt())
            result.distances.append(dist.detach().item())
            if video_every and step % video_every == 0:
                result.frames.append(to_uint8(image)[0])
            bar.advance(1, dist=result.distances[-1])
    with torch.no_grad():
        for n in noises:  # a step cut short by Ctrl-C may have left them half-normalised
            n.sub_(n.mean()).div_(n.square().mean().sqrt())
        result.ws = w_opt.detach().expand(-1, gen.n_latent, -1).clone() if n_w == 1 else w_opt.detach().clone()
        result.noises = [n.detach() for n in noises]
        result.image = gen.synthesis(result.ws, noises=result.noises).image
    return result


# what project writes into --outdir (aligned.png with alignment, proj.gif with --video)
PROJECTION_FILES = ("target.png", "proj.png", "projected_w.npz", "proj.gif", "aligned.png")


def projection_writes(video: bool, align: bool) -> tuple[str, ...]:
    """The PROJECTION_FILES a projection writes (an earlier run's proj.gif or aligned.png it does
    not write, it removes: no write of it to refuse)."""
    return tuple(name for name in PROJECTION_FILES
                 if (name != "proj.gif" or video) and (name != "aligned.png" or align))


def save_projection(result: Projection, target: torch.Tensor, outdir: str | Path,
                    aligned: Image.Image | None = None, reporter: Reporter | None = None) -> dict[str, Path]:
    """target.png, proj.png, projected_w.npz (w: [1, n_latent, style_dim]), aligned.png when the
    photo was aligned (`aligned`: the face load_target returned) and proj.gif when frames exist.
    An earlier run's proj.gif (this one made no frames) or aligned.png (this one did not align) is
    removed, with an info line: it showed another photo or projection."""
    outdir = Path(outdir)
    stale = [outdir / name for name, made in (("proj.gif", bool(result.frames)), ("aligned.png", aligned is not None))
             if not made and (outdir / name).is_file()]
    for path in stale:
        path.unlink()
    if stale:
        (reporter or NullReporter()).info(f"removed {' and '.join(p.name for p in stale)} of an earlier run in "
                                          f"{outdir}: this run made none, and it showed another projection")
    paths = {"target": save_png(to_uint8(target)[0], outdir / "target.png"),
             "proj": save_png(to_uint8(result.image)[0], outdir / "proj.png")}
    if aligned is not None:
        paths["aligned"] = save_aligned(aligned, outdir)
    with atomic_write(outdir / "projected_w.npz") as fh:
        np.savez(fh, w=result.ws.cpu().numpy())
    paths["w"] = outdir / "projected_w.npz"
    if result.frames:
        tgt = to_uint8(target)[0]
        frames = [Image.fromarray(np.concatenate([tgt, f], axis=1)) for f in result.frames]
        paths["video"] = save_image(frames[0], outdir / "proj.gif", save_all=True, append_images=frames[1:],
                                    duration=60, loop=0)
    return paths


# |w| of a projected latent, at most: a mapping network's outputs lie within a few tens (even at
# --trunc 10, the ceiling of truncation); a w scaled by 1e30 rendered as a flat white picture
W_MAX = 1e3


def load_projected_w(path: str | Path, n_latent: int | None = None, style_dim: int | None = None,
                     model: str = "the generator") -> torch.Tensor:
    """projected_w.npz -> w+ [N, n_latent, style_dim] (NVlabs' projector writes N = 1; one w+ saved
    as [n_latent, D] is taken too, and w of W space, one for every layer: [D], [N, D] with N other
    than n_latent (rosinality's projector's latents, saved as an array), or [N, 1, D]).

    n_latent, style_dim: what the generator that will render it needs (checked when given)."""
    if kind := special_kind(path):
        raise DataError(f"{path} is {kind}, not a projected_w.npz file")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:  # ours to close, damaged or not
            w = np.asarray(data["w"])
    except (KeyError, ValueError, OSError, EOFError, TypeError, zipfile.BadZipFile) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ELOOP):
            raise DataError(not_found("projected w", path)) from None
        # TypeError: a plain .npy, which np.load returns as an array, not an archive
        raise DataError(f"{path} is not a projected_w.npz with a 'w' array") from None
    if w.dtype.kind != "f" or w.ndim not in (1, 2, 3) or w.size == 0:  # integers are no latent any projector writes
        raise DataError(f"{path}: 'w' is a {w.dtype} array of shape {w.shape}, expected floats of shape "
                        "(N, n_latent, style_dim), one w+ as (n_latent, style_dim), or w as (N, style_dim)")
    ws = _as_w_plus(torch.from_numpy(w).float(), n_latent)
    if not torch.isfinite(ws).all():
        raise DataError(f"{path}: 'w' holds NaN or inf values")
    if (largest := ws.abs().max().item()) > W_MAX:  # finite, yet rendered as a flat white picture
        raise DataError(f"{path}: 'w' holds values up to {largest:.3g}, far outside any mapping network's w "
                        f"(|w| < {W_MAX:g}): it is no projection; project the photo again")
    if n_latent is not None and tuple(ws.shape[1:]) != (n_latent, style_dim):
        raise DataError(f"{path} holds w of shape {tuple(w.shape)}, but {model} needs (N, {n_latent}, {style_dim}) "
                        f"(or w of {style_dim} values): it was projected with another model; project the photo with "
                        "this one")
    return ws


def _as_w_plus(w: torch.Tensor, n_latent: int | None) -> torch.Tensor:
    """[N, n_latent, D] from any shape load_projected_w takes: a 2-D array is one w+ where it has
    n_latent rows (or the generator is not known), else N w's; a w is the same at every layer."""
    if w.ndim == 1:
        w = w[None, None]
    elif w.ndim == 2:
        w = w[None] if n_latent is None or len(w) == n_latent else w[:, None]
    if n_latent is not None and w.shape[1] == 1:
        w = w.expand(-1, n_latent, -1).contiguous()
    return w


def _perceptual_for(cfg: ProjectConfig, lpips_weights, device):
    return lpips_vgg(lpips_weights).to(device) if "lpips" in cfg.loss else None


def load_target(photo: str | Path, size: int, align: bool,
                reporter: Reporter | None = None) -> tuple[torch.Tensor, Image.Image | None]:
    """The photo as a generator's target [1, 3, size, size] in [-1, 1]: with `align` its FFHQ-aligned face
    (the frame FFHQ-trained generators draw), else a centre crop. Returns (target, the aligned face
    at FFHQ's 1024 px or None): for aligned.png, reused with --no-align by a model of any size
    (target.png holds the generator-size one), written with the command's other outputs (see
    save_aligned): written first, it stood beside an earlier photo's projection after a refusal or
    a Ctrl-C. `reporter` warns of a crop too small for the generator."""
    if not align:
        return load_photo(photo, size, reporter), None
    from ..data.align import FFHQ_SIZE, align_face, best_face, read_photo

    img, landmarks = best_face(read_photo(photo), str(photo))  # NoFaceFound before anything is written
    full = align_face(img, landmarks, FFHQ_SIZE, detected=True)
    face = np.asarray(full if size == FFHQ_SIZE else align_face(img, landmarks, size, detected=True), dtype=np.uint8)
    return torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1, full


def save_aligned(aligned: Image.Image, outdir: str | Path) -> Path:
    """outdir/aligned.png: the aligned face load_target returned."""
    return save_image(aligned, Path(outdir) / "aligned.png")


def warn_if_beside_the_photo(photo: str | Path, outdir: str | Path, reporter: Reporter) -> None:
    """Warn when --outdir is the photo's own folder: target.png, proj.png and aligned.png land among
    the photos, where a later `project FOLDER`, `toonify FOLDER` or `data prepare` of it takes them for
    photos. Only a warning (the folder form refuses): `--outdir .` beside one selfie is common and harmless."""
    # the folder the photo's name is in (a link's own, not its target's)
    if Path(photo).absolute().parent.resolve() == Path(outdir).resolve():
        reporter.warn(f"--outdir {outdir} is the photo's own folder: the pictures written there will be read as "
                      "photos by a later run over that folder; pass another --outdir to keep it photos only")


def project_photo(photo: str | Path, source: str | Path, outdir: str | Path, cfg: ProjectConfig,
                  lpips_weights: str | Path | None = None, save_video: bool = False, device: str = "auto",
                  reporter: Reporter | None = None, perceptual=None, align: bool = False) -> dict[str, Path]:
    """`cartoongan project`: invert a photo (FFHQ-aligned first with `align`) with the source generator
    and write the results."""
    check_output_dir(outdir, "--outdir")
    check_keeps_inputs(outdir, PROJECTION_FILES, [photo, source])
    check_replaceable_in(outdir, projection_writes(save_video, align))  # found after the projection otherwise
    reporter = reporter or NullReporter()
    warn_if_beside_the_photo(photo, outdir, reporter)
    gen = load_generator(source, device)
    dev = gen.input.input.device
    perceptual = perceptual or _perceptual_for(cfg, lpips_weights, dev)  # a bad --lpips-weights: before the photo
    target, aligned = load_target(photo, gen.size, align, reporter)
    result = project(gen, target, cfg, perceptual, reporter, video_every=max(1, cfg.steps // 60) if save_video else 0)
    paths = save_projection(result, target, outdir, aligned, reporter)
    raise_if_stopped(result, cfg.steps, outdir)
    return paths
