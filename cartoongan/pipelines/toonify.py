"""Toonify: project a photo through the source generator, render its w through fine-tuned ones."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.images import make_grid, save_png, to_uint8
from ..errors import CartoonganError
from ..models.generator import Generator
from ..outputs import check_keeps_inputs, check_output_dir, check_replaceable_in
from ..report import NullReporter, Reporter
from ..weights.networks import lineage, read_generator, weights_digest
from .project import (PROJECTION_FILES, Projection, ProjectConfig, _perceptual_for, load_target, project,
                      projection_writes, raise_if_stopped, save_projection, warn_if_beside_the_photo)
from .swap import check_compatible


@dataclass
class ToonifyModels:
    """What every photo of a toonify is drawn with, loaded once."""

    source: Generator
    targets: list[Generator]
    perceptual: torch.nn.Module | None
    digests: list[str]  # weights_digest of the source, then of each target (hashing costs ~0.2 s a 256 px net)


def load_models(source: str | Path, targets: list[str | Path], cfg: ProjectConfig, lpips_weights, device: str,
                 reporter: Reporter, perceptual=None) -> ToonifyModels:
    """The source and targets (checked to render the same latents, and their recorded lineage
    against each other), and the LPIPS model the projection measures with."""
    source_g, recorded = read_generator(source, device)
    dev = source_g.input.input.device
    loaded = [read_generator(t, dev) for t in targets]
    for path, (g, target_record) in zip(targets, loaded):
        try:
            check_compatible(source_g, g)
        except CartoonganError as exc:
            raise CartoonganError(f"{path} cannot render the source's latents: {exc}") from None
        relation = lineage(source_g, recorded, g, target_record)
        if relation == "swapped":
            reporter.warn(f"{source} descends from {path} (fine-tuned from it, or from a model fine-tuned from it): "
                          f"--source looks like the cartoon model and {path} "
                          "the photo one (the photo is projected with --source); going on as given")
        elif relation == "unrelated":
            reporter.warn(f"{path} was fine-tuned from another model ({target_record.get('source')}), not from "
                          f"{source}: a latent projected with --source need not carry over; going on as given")
    digests = [weights_digest(g) for g in (source_g, *(g for g, _ in loaded))]
    _warn_of_repeats(targets, digests, reporter)
    return ToonifyModels(source_g, [g for g, _ in loaded], perceptual or _perceptual_for(cfg, lpips_weights, dev),
                         digests)


def _warn_of_repeats(paths: list[str | Path], digests: list[str], reporter: Reporter) -> None:
    """Warn of a --target holding the source's weights, or an earlier target's (digests: the source's,
    then the targets'; by weights, so a copy counts): a column that shows nothing new, most likely a
    mistyped path."""
    for i, path in enumerate(paths, 1):
        if digests[i] == digests[0]:
            reporter.warn(f"--target {path} holds the source's own weights: its column repeats the projection")
        elif digests[i] in digests[1:i]:
            reporter.warn(f"--target {path} holds the same weights as an earlier --target: the row shows it twice")


def toonify_one(photo: str | Path, models: ToonifyModels, outdir: Path, cfg: ProjectConfig, reporter: Reporter,
                 align: bool, picture: str = "toonify.png", video: bool = False) -> tuple[Projection, np.ndarray]:
    """Project one photo, write its projection files (proj.gif too with `video`) and the row of
    tiles [S, S * (2 + targets), 3] (photo | projection | each target) as `picture`; -> (the
    projection, that row)."""
    dev = models.source.input.input.device
    photo_t, aligned = load_target(photo, models.source.size, align, reporter)
    result = project(models.source, photo_t, cfg, models.perceptual, reporter,
                     video_every=max(1, cfg.steps // 60) if video else 0)
    save_projection(result, photo_t, outdir, aligned, reporter)
    tiles = [to_uint8(photo_t)[0], to_uint8(result.image)[0]]
    for g in models.targets:
        with torch.no_grad():
            tiles.append(to_uint8(g.synthesis(result.ws.to(dev), noises=[n.to(dev) for n in result.noises]).image)[0])
    row = make_grid(np.stack(tiles), cols=len(tiles))
    save_png(row, outdir / picture)
    return result, row


def toonify(photo: str | Path, source: str | Path, targets: list[str | Path], outdir: str | Path,
            cfg: ProjectConfig, lpips_weights: str | Path | None = None, device: str = "auto",
            reporter: Reporter | None = None, perceptual=None, align: bool = False) -> Path:
    """`cartoongan toonify`: project with the source, render that w+ through each target;
    writes the projection files and toonify.png (photo | projection | each target). With `align` the
    photo's face is FFHQ-aligned first (and written to aligned.png)."""
    check_output_dir(outdir, "--outdir")
    check_keeps_inputs(outdir, (*PROJECTION_FILES, "toonify.png"), [photo, source, *targets])
    check_replaceable_in(outdir, (*projection_writes(False, align), "toonify.png"))  # found after the projection otherwise
    reporter = reporter or NullReporter()
    warn_if_beside_the_photo(photo, outdir, reporter)
    models = load_models(source, targets, cfg, lpips_weights, device, reporter, perceptual)
    result, _ = toonify_one(photo, models, Path(outdir), cfg, reporter, align)
    raise_if_stopped(result, cfg.steps, outdir)
    return Path(outdir) / "toonify.png"
