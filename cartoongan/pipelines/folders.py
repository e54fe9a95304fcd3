"""toonify or project every photo of a folder: each into OUTDIR/<name>/, the networks loaded once,
a sheet of all rows; skipped photos named, finished ones kept for a rerun."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.dataset import some_image_sources
from ..data.images import save_png
from ..errors import DataError, Interrupted
from ..outputs import (atomic_write, check_keeps_inputs, check_output_dir, check_outside, check_replaceable_in,
                       first_names, leftover_files, name_that_fits)
from ..report import NullReporter, Reporter
from ..weights.registry import sha256_of
from .project import PROJECTION_FILES, ProjectConfig, projection_writes
from .toonify import ToonifyModels, load_models, toonify_one

# what a folder run writes: (each photo's row picture, each photo's record, the sheet of all rows)
FOLDER_FILES = {"toonify": ("toonify.png", "toonify.json", "toonify.png"),
                "project": ("projection.png", "project.json", "projections.png")}
PAST = {"toonify": "toonified", "project": "projected"}


def toonify_folder(folder: str | Path, source: str | Path, targets: list[str | Path], outdir: str | Path,
                   cfg: ProjectConfig, lpips_weights: str | Path | None = None, device: str = "auto",
                   reporter: Reporter | None = None, perceptual=None, align: bool = False,
                   kind: str = "toonify", video: bool = False) -> Path:
    """toonify every photo of a folder into outdir/<name>/ (each as `toonify` writes it), the networks
    loaded once, and outdir/toonify.png stacking their rows. A photo with no face (with `align`) or
    unreadable is skipped with a warning; a photo whose folder an earlier run finished with the same
    networks and settings (its toonify.json) is kept, so a stopped run continues where it was.
    kind "project" (see project_folder): no targets; projection.png, project.json, projections.png."""
    folder, outdir = Path(folder), Path(outdir)
    picture, record, sheet = FOLDER_FILES[kind]
    check_outside(outdir, folder, "--outdir", "its pictures would be read as photos the next time")
    check_output_dir(outdir, "--outdir")
    reporter = reporter or NullReporter()
    photos = [folder / name for name, _ in some_image_sources(folder, reporter)]
    subs = [outdir / name for name in photo_folder_names(folder, photos)]
    for sub in subs:  # `--outdir .` beside photos/ holding photos.jpg would write into photos/ itself
        check_outside(sub, folder, "--outdir", "its pictures would be read as photos the next time")
        check_keeps_inputs(sub, (*PROJECTION_FILES, picture, record), [source, *targets])
    ours = {sub.name for sub in subs}  # a photo renamed, deleted or now colliding leaves its earlier folder
    if gone := leftover_files(outdir, lambda name: name not in ours and (outdir / name / "projected_w.npz").is_file()):
        reporter.warn(f"{outdir} also holds {len(gone)} projection folder(s) of photos not in {folder} now "
                      f"({first_names(gone)}): an earlier run's, left as they are; `sample --projected-w {outdir}` "
                      "would render them too")
    models = load_models(source, targets, cfg, lpips_weights, device, reporter, perceptual)
    settings = {**_settings(models, cfg, align), "video": video}
    again = f"run the same command again to {kind} the rest"
    # the photo by its bytes too: one replaced under the same name (a better crop) is done again
    made_as = [{"photo": str(photo.resolve()), "photo_sha256": _digest(photo), **settings} for photo in photos]
    # what an earlier run of the same command finished, said at once: a rerun after a Ctrl-C
    # started with no word of the photos it was not doing again
    finished = [_finished_row(sub, picture, record, made) for sub, made in zip(subs, made_as)]
    kept = sum(row is not None for row in finished)
    check_replaceable_in(outdir, [sheet])  # before any photo: found at its turn, it ended the batch there
    for sub, row in zip(subs, finished):
        if row is None:
            check_replaceable_in(sub, (*projection_writes(video, align), picture, record))
    if kept:
        reporter.info(f"{kept} of {len(photos)} photo(s) already done by an earlier run with these settings: kept")
    rows = []
    for i, (photo, sub, made, row) in enumerate(zip(photos, subs, made_as, finished), 1):
        if row is not None:
            rows.append(row)
            continue
        photo_name = photo.relative_to(folder).as_posix()  # kids/ann.jpg beside ann.jpg: which one
        reporter.info(f"photo {i} of {len(photos)}: {photo_name}")
        try:
            result, row = toonify_one(photo, models, sub, cfg, reporter, align, picture, video)
        except DataError as exc:  # no face, unreadable: the other photos still go on
            reporter.warn(f"skipped {photo_name}: {exc}")
            continue
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at photo {i} of {len(photos)} ({photo_name})", again) from None
        if result.stopped_at is not None:
            raise Interrupted(f"interrupted at step {result.stopped_at} of {cfg.steps} of photo {i} of {len(photos)} "
                              f"({photo_name}), whose projection so far is in {sub}", again) from None
        with atomic_write(sub / record, "w") as fh:  # last: its presence says the folder is whole
            json.dump({**made, "projected_w": sha256_of(sub / "projected_w.npz")}, fh)
        rows.append(row)
    if not rows:
        raise DataError(f"none of the {len(photos)} photo(s) in {folder} could be {PAST[kind]} (see the warnings)")
    return save_png(np.concatenate(rows), outdir / sheet)  # rows of one width: one setting made them all


def project_folder(folder: str | Path, source: str | Path, outdir: str | Path, cfg: ProjectConfig,
                   lpips_weights: str | Path | None = None, save_video: bool = False, device: str = "auto",
                   reporter: Reporter | None = None, perceptual=None, align: bool = False) -> Path:
    """`cartoongan project FOLDER`: every photo's projection into outdir/<name>/ (as `project` writes
    it, plus projection.png: photo | projection), all rows in outdir/projections.png; skips and
    reruns as toonify_folder."""
    return toonify_folder(folder, source, [], outdir, cfg, lpips_weights, device, reporter, perceptual, align,
                          kind="project", video=save_video)


def photo_folder_names(folder: Path, photos: list[Path]) -> list[str]:
    """A subfolder name per photo under `folder`, from that photo's own path: a photo added or
    removed later renames no other photo's folder, so a rerun keeps the finished ones. The path
    without its suffix, its folders joined by "_" (a flat folder: the stems); photos that still share
    a name (face.jpg beside face.png) add their suffix, then (a/b.jpg beside a_b.jpg) a hash of the path."""
    rels = [p.relative_to(folder) for p in photos]
    # os.fsencode: a name that is not UTF-8 (Latin-1 from an old camera) is its own bytes again
    hashes = [hashlib.sha1(os.fsencode(r.as_posix())).hexdigest()[:8] for r in rels]
    names = ["_".join(r.with_suffix("").parts) for r in rels]
    # a deep tree's joined path can pass the file system's 255 bytes per name
    names = [name_that_fits(n, r.as_posix()) for n, r in zip(names, rels)]
    # a photo toonify.png.jpg would have its folder where the sheet of all rows goes
    sheets = {sheet for _, _, sheet in FOLDER_FILES.values()}
    names = _apart(names, [f"{n}_{r.suffix.lstrip('.').lower()}" for n, r in zip(names, rels)], sheets)
    return _apart(names, [f"{n}_{h}" for n, h in zip(names, hashes)], sheets)


def _apart(names: list[str], longer: list[str], taken: set[str] = frozenset()) -> list[str]:
    """names, each one that several share (or that is `taken`) replaced by its longer form."""
    shared = {n for n, count in Counter(names).items() if count > 1} | (set(names) & taken)
    return [long if name in shared else name for name, long in zip(names, longer)]


def _settings(models: ToonifyModels, cfg: ProjectConfig, align: bool) -> dict:
    """What a photo's folder was made with: the networks by their weights (a source trained on in
    place is another source), the projection's settings, the alignment."""
    return {"source": models.digests[0], "targets": models.digests[1:],
            "config": asdict(cfg), "align": align}


def _finished_row(sub: Path, picture: str, record: str, made: dict) -> np.ndarray | None:
    """The row picture of a photo's folder that the same photo and settings made, else None
    (another --target, --steps, ... is done again; so is a folder whose projected_w.npz is no longer
    the one recorded: `project` and `toonify` of one folder into one --outdir share that file)."""
    try:
        recorded = json.loads((sub / record).read_text(encoding="utf-8"))
        if not isinstance(recorded, dict) or not _same_projection(recorded, sub, record):
            return None
        if "photo_sha256" not in recorded and _older(made["photo"], sub / record):
            recorded["photo_sha256"] = made["photo_sha256"]  # a record of an earlier version, of this photo
        with Image.open(sub / picture) as img:
            row = np.asarray(img.convert("RGB"))
    except (OSError, ValueError):
        return None
    return row if recorded == json.loads(json.dumps(made)) else None


def _digest(photo: Path) -> str | None:
    try:
        return sha256_of(photo)
    except OSError:  # unreadable: its turn names it
        return None


def _older(path: str | Path, than: Path) -> bool:
    return Path(path).stat().st_mtime_ns <= than.stat().st_mtime_ns


def _same_projection(recorded: dict, sub: Path, record: str) -> bool:
    """Whether sub/projected_w.npz is the one the record (read from sub/record; its digest is popped,
    leaving the settings) vouches for: by its digest, or for a record of an earlier version (no
    digest), by its age (the record is written last). Such a record, once trusted, gains the
    digest: ages alone would go on trusting an older file moved in later."""
    digest = recorded.pop("projected_w", None)
    if digest is not None:
        return digest == sha256_of(sub / "projected_w.npz")
    if not _older(sub / "projected_w.npz", sub / record):
        return False
    with atomic_write(sub / record, "w") as fh:
        json.dump({**recorded, "projected_w": sha256_of(sub / "projected_w.npz")}, fh)
    return True
