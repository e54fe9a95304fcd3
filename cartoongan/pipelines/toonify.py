"""Toonify: project a photo through the source generator, render its w through fine-tuned ones."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.images import make_grid, save_png, to_uint8
from ..errors import CartoonganError
from ..outputs import check_keeps_inputs, check_output_dir
from ..report import NullReporter, Reporter
from ..weights.networks import lineage, read_generator
from .project import (PROJECTION_FILES, ProjectConfig, _perceptual_for, load_target, project, raise_if_stopped,
                      save_projection)
from .swap import check_compatible


def toonify(photo: str | Path, source: str | Path, targets: list[str | Path], outdir: str | Path,
            cfg: ProjectConfig, lpips_weights: str | Path | None = None, device: str = "auto",
            reporter: Reporter | None = None, perceptual=None, align: bool = False) -> Path:
    """`cartoongan toonify`: project with the source, render that w+ through each target;
    writes the projection files and toonify.png (photo | projection | each target). With `align` the
    photo's face is FFHQ-aligned first (and written to aligned.png)."""
    check_output_dir(outdir, "--outdir")
    check_keeps_inputs(outdir, (*PROJECTION_FILES, "toonify.png"), [photo, source, *targets])
    reporter = reporter or NullReporter()
    source_g, recorded = read_generator(source, device)
    dev = source_g.input.input.device
    loaded = [read_generator(t, dev) for t in targets]
    target_gs = [g for g, _ in loaded]
    for path, (g, target_record) in zip(targets, loaded):
        try:
            check_compatible(source_g, g)
        except CartoonganError as exc:
            raise CartoonganError(f"{path} cannot render the source's latents: {exc}") from None
        relation = lineage(source_g, recorded, g, target_record)
        if relation == "swapped":
            reporter.warn(f"{source} was fine-tuned from {path}: --source looks like the cartoon model and {path} "
                          "the photo one (the photo is projected with --source); going on as given")
        elif relation == "unrelated":
            reporter.warn(f"{path} was fine-tuned from another model ({target_record.get('source')}), not from "
                          f"{source}: a latent projected with --source need not carry over; going on as given")
    photo_t, _ = load_target(photo, source_g.size, align, outdir, reporter)
    perceptual = perceptual or _perceptual_for(cfg, lpips_weights, dev)
    result = project(source_g, photo_t, cfg, perceptual, reporter)
    save_projection(result, photo_t, outdir)
    tiles = [to_uint8(photo_t)[0], to_uint8(result.image)[0]]
    for g in target_gs:
        with torch.no_grad():
            tiles.append(to_uint8(g.synthesis(result.ws.to(dev), noises=[n.to(dev) for n in result.noises]).image)[0])
    path = save_png(make_grid(np.stack(tiles), cols=len(tiles)), Path(outdir) / "toonify.png")
    raise_if_stopped(result, cfg.steps, outdir)
    return path
