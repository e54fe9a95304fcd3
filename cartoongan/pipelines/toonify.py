"""Toonify: project a photo through the source generator, render its w through fine-tuned ones."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.dataset import image_sources
from ..data.images import EXTENSIONS, make_grid, save_png, to_uint8
from ..errors import CartoonganError, DataError, Interrupted
from ..models.generator import Generator
from ..outputs import atomic_write, check_keeps_inputs, check_output_dir, check_outside
from ..report import NullReporter, Reporter
from ..weights.networks import lineage, read_generator, weights_digest
from .project import (PROJECTION_FILES, Projection, ProjectConfig, _perceptual_for, load_target, project,
                      raise_if_stopped, save_projection)
from .sample import unique_names
from .swap import check_compatible


@dataclass
class _Models:
    """What every photo of a toonify is drawn with, loaded once."""

    source: Generator
    targets: list[Generator]
    perceptual: torch.nn.Module | None


def _load_models(source: str | Path, targets: list[str | Path], cfg: ProjectConfig, lpips_weights, device: str,
                 reporter: Reporter, perceptual=None) -> _Models:
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
            reporter.warn(f"{source} was fine-tuned from {path}: --source looks like the cartoon model and {path} "
                          "the photo one (the photo is projected with --source); going on as given")
        elif relation == "unrelated":
            reporter.warn(f"{path} was fine-tuned from another model ({target_record.get('source')}), not from "
                          f"{source}: a latent projected with --source need not carry over; going on as given")
    return _Models(source_g, [g for g, _ in loaded], perceptual or _perceptual_for(cfg, lpips_weights, dev))


def _toonify_one(photo: str | Path, models: _Models, outdir: Path, cfg: ProjectConfig, reporter: Reporter,
                 align: bool) -> tuple[Projection, np.ndarray]:
    """Project one photo, write its projection files and toonify.png; -> (the projection, that row
    of tiles [S, S * (2 + targets), 3]: photo | projection | each target)."""
    dev = models.source.input.input.device
    photo_t, _ = load_target(photo, models.source.size, align, outdir, reporter)
    result = project(models.source, photo_t, cfg, models.perceptual, reporter)
    save_projection(result, photo_t, outdir)
    tiles = [to_uint8(photo_t)[0], to_uint8(result.image)[0]]
    for g in models.targets:
        with torch.no_grad():
            tiles.append(to_uint8(g.synthesis(result.ws.to(dev), noises=[n.to(dev) for n in result.noises]).image)[0])
    row = make_grid(np.stack(tiles), cols=len(tiles))
    save_png(row, outdir / "toonify.png")
    return result, row


def toonify(photo: str | Path, source: str | Path, targets: list[str | Path], outdir: str | Path,
            cfg: ProjectConfig, lpips_weights: str | Path | None = None, device: str = "auto",
            reporter: Reporter | None = None, perceptual=None, align: bool = False) -> Path:
    """`cartoongan toonify`: project with the source, render that w+ through each target;
    writes the projection files and toonify.png (photo | projection | each target). With `align` the
    photo's face is FFHQ-aligned first (and written to aligned.png)."""
    check_output_dir(outdir, "--outdir")
    check_keeps_inputs(outdir, (*PROJECTION_FILES, "toonify.png"), [photo, source, *targets])
    reporter = reporter or NullReporter()
    models = _load_models(source, targets, cfg, lpips_weights, device, reporter, perceptual)
    result, _ = _toonify_one(photo, models, Path(outdir), cfg, reporter, align)
    raise_if_stopped(result, cfg.steps, outdir)
    return Path(outdir) / "toonify.png"


def toonify_folder(folder: str | Path, source: str | Path, targets: list[str | Path], outdir: str | Path,
                   cfg: ProjectConfig, lpips_weights: str | Path | None = None, device: str = "auto",
                   reporter: Reporter | None = None, perceptual=None, align: bool = False) -> Path:
    """toonify every photo of a folder into outdir/<name>/ (each as `toonify` writes it), the networks
    loaded once, and outdir/toonify.png stacking their rows. A photo with no face (with `align`) or
    unreadable is skipped with a warning; a photo whose folder an earlier run finished with the same
    networks and settings (its toonify.json) is kept, so a stopped run continues where it was."""
    folder, outdir = Path(folder), Path(outdir)
    check_outside(outdir, folder, "--outdir", "its pictures would be read as photos the next time")
    check_output_dir(outdir, "--outdir")
    photos = [folder / name for name, _ in image_sources(folder)]
    if not photos:
        raise DataError(f"no photos in {folder} (looked for {', '.join(sorted(EXTENSIONS))})")
    subs = [outdir / name for name in unique_names(photos)]
    for sub in subs:  # `--outdir .` beside photos/ holding photos.jpg would write into photos/ itself
        check_outside(sub, folder, "--outdir", "its pictures would be read as photos the next time")
        check_keeps_inputs(sub, (*PROJECTION_FILES, "toonify.png", DONE), [source, *targets])
    reporter = reporter or NullReporter()
    models = _load_models(source, targets, cfg, lpips_weights, device, reporter, perceptual)
    settings = _settings(models, cfg, align)
    rows, skipped = [], []
    for i, (photo, sub) in enumerate(zip(photos, subs), 1):
        row = _finished_row(sub, {"photo": str(photo.resolve()), **settings})
        if row is not None:  # an earlier run of the same command did this one
            rows.append(row)
            continue
        reporter.info(f"photo {i} of {len(photos)}: {photo.name}")
        try:
            result, row = _toonify_one(photo, models, sub, cfg, reporter, align)
        except DataError as exc:  # no face, unreadable: the other photos still go on
            skipped.append(photo.name)
            reporter.warn(f"skipped {photo.name}: {exc}")
            continue
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at photo {i} of {len(photos)} ({photo.name})",
                              "run the same command again to toonify the rest") from None
        if result.stopped_at is not None:
            raise Interrupted(f"interrupted at step {result.stopped_at} of {cfg.steps} of photo {i} of {len(photos)} "
                              f"({photo.name}), whose projection so far is in {sub}",
                              "run the same command again to toonify the rest") from None
        with atomic_write(sub / DONE, "w") as fh:  # last: its presence says the folder is whole
            json.dump({"photo": str(photo.resolve()), **settings}, fh)
        rows.append(row)
    if not rows:
        raise DataError(f"none of the {len(photos)} photo(s) in {folder} could be toonified (see the warnings)")
    return save_png(np.concatenate(rows), outdir / "toonify.png")  # rows of one width: one setting made them all


DONE = "toonify.json"  # what made a photo's folder, written once the folder is whole


def _settings(models: _Models, cfg: ProjectConfig, align: bool) -> dict:
    """What a photo's folder was made with: the networks by their weights (a source trained on in
    place is another source), the projection's settings, the alignment."""
    return {"source": weights_digest(models.source), "targets": [weights_digest(g) for g in models.targets],
            "config": asdict(cfg), "align": align}


def _finished_row(sub: Path, made: dict) -> np.ndarray | None:
    """The toonify.png row of a photo's folder that the same photo and settings made, else None
    (another --target, --steps, ... is done again)."""
    try:
        recorded = json.loads((sub / DONE).read_text(encoding="utf-8"))
        with Image.open(sub / "toonify.png") as img:
            row = np.asarray(img.convert("RGB"))
    except (OSError, ValueError):
        return None
    return row if recorded == json.loads(json.dumps(made)) else None
