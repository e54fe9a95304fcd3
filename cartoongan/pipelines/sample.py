"""Rendering: seeds to latents, latents to 8-bit images, grids, comparisons and GIFs."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import RENDER_FILE, PngWriter, make_grid, save_image, save_png
from ..data.render import render_ws, seeds_to_ws
from ..errors import CheckpointError, ConfigError, DataError, Interrupted
from ..models.generator import Generator
from ..outputs import (check_keeps_inputs, check_output_dir, check_replaceable_in, check_subfolders, first_names,
                       leftover_files, name_that_fits, warn_of_leftovers)
from ..report import NullReporter, Reporter
from ..weights.networks import load_generator


@dataclass
class SampleResult:
    """What `sample` wrote: one folder of seed images per generator, and the summary pictures."""
    folders: list[Path] = field(default_factory=list)
    grid: Path | None = None
    compare: Path | None = None
    gif: Path | None = None


GRID_MAX = 64  # grid.png / compare.png show this many latents at most: every one is still its own file
RENDER_BATCH = 8


def sample(gens: list[Generator], names: list[str], seeds: list[int], outdir: Path, truncation: float = 1.0,
           noise_mode: str = "const", interpolate: int = 0, fps: int = 12,
           reporter: Reporter | None = None) -> SampleResult:
    """Render the same w (mapped by the first generator) through every generator.

    One generator: outdir/seedNNNN.png and outdir/grid.png. Several: outdir/<name>/seedNNNN.png
    per generator and outdir/compare.png (rows: generators, columns: seeds). The pictures show the
    first GRID_MAX seeds. With interpolate=K, outdir/interpolation.gif walks through the seeds' w
    with K frames per step (all generators side by side).
    """
    reporter = reporter or NullReporter()
    once = list(dict.fromkeys(seeds))  # `--seeds 0-9,5-14`: one file per seed, so one render per seed
    if len(once) < len(seeds):
        reporter.info(f"{len(seeds) - len(once)} repeated seed(s) rendered once: {len(once)} image(s)"
                      + (" (the GIF walks through the seeds as given)" if interpolate > 0 else ""))
    ws = seeds_to_ws(gens[0], once, truncation)
    result = _write_renders(gens, names, ws, Path(outdir), [f"seed{s:04d}.png" for s in once],
                            min(len(once), 8), noise_mode, reporter, gif=interpolate > 0)
    if interpolate > 0:  # a walk may come back to a seed (0,5,0): its keys are the seeds in order
        keys = ws if len(once) == len(seeds) else seeds_to_ws(gens[0], seeds, truncation)
        try:
            result.gif = interpolation_gif(gens, keys, Path(outdir) / "interpolation.gif", interpolate, noise_mode,
                                           fps, reporter)
        except KeyboardInterrupt:  # "interrupted" alone, with every image and the picture already written
            picture = result.grid or result.compare
            earlier = " (the one there is an earlier run's)" if (Path(outdir) / "interpolation.gif").exists() else ""
            raise Interrupted(f"interrupted while making interpolation.gif, which was not written{earlier}; the "
                              f"{len(once) * len(gens)} image(s) and {picture.name} are in {outdir}",
                              "run again for the GIF") from None
    return result


def _write_renders(gens: list[Generator], names: list[str], ws: torch.Tensor, outdir: Path, filenames: list[str],
                   single_cols: int, noise_mode: str, reporter: Reporter, gif: bool = False) -> SampleResult:
    """Render ws through each generator and save one file per latent, a batch at a time (memory
    stays one batch plus the picture's tiles, whatever the count). One generator: files in outdir
    and grid.png (single_cols wide). Several: outdir/<name>/ each and compare.png (rows: generators).
    gif: interpolation.gif follows (an earlier one is otherwise warned of)."""
    for gen, name in zip(gens, names):  # all checked before anything is written
        if ws.shape[1:] != (gen.n_latent, gen.style_dim):
            raise CheckpointError(f"w+ has shape {tuple(ws.shape[1:])}, generator {name} needs "
                                  f"({gen.n_latent}, {gen.style_dim})")
    folders = sample_folders(outdir, names)
    picture = "grid.png" if len(gens) == 1 else "compare.png"
    check_replaceable_in(outdir, [picture, *(["interpolation.gif"] if gif else [])])
    for folder in folders:
        check_replaceable_in(folder, filenames)
    _warn_of_leftovers(folders, filenames, reporter)
    _warn_of_other_layouts(outdir, folders, reporter, gif)
    result = SampleResult()
    shown = min(len(ws), GRID_MAX)
    rows = []
    writer = PngWriter()
    try:
        with reporter.progress(len(ws) * len(gens), "rendering") as bar, writer:
            for gen, name in zip(gens, names):
                folder = outdir if len(gens) == 1 else outdir / name
                tiles = []
                for i in range(0, len(ws), RENDER_BATCH):
                    imgs = render_ws(gen, ws[i: i + RENDER_BATCH], noise_mode, RENDER_BATCH)
                    for _ in writer.write(imgs, [folder / f for f in filenames[i: i + RENDER_BATCH]]):
                        bar.advance()
                    tiles.extend(imgs[: max(shown - i, 0)])
                rows.append(np.stack(tiles))
                result.folders.append(folder)
    except KeyboardInterrupt:
        if not writer.written:
            raise
        raise writer.stopped(len(ws) * len(gens), outdir, picture) from None
    if len(ws) > shown:
        reporter.info(f"{picture} shows the first {shown} of the {len(ws)} images")
    if len(gens) == 1:
        result.grid = save_png(make_grid(rows[0], cols=min(single_cols, shown)), outdir / picture)
    else:
        result.compare = save_png(make_grid(np.concatenate(rows), cols=shown), outdir / picture)
    return result


def _warn_of_leftovers(folders: list[Path], filenames: list[str], reporter: Reporter) -> None:
    """Warn of seedNNNN.png / projNNNN.png files an earlier run left in a folder this one writes to
    and does not replace (`--seeds 0-5`, then another model's `--seeds 0-1`): a folder read as one
    set by an outside FID tool would score two models."""
    ours = set(filenames)
    for folder in folders:
        warn_of_leftovers(folder, lambda name: RENDER_FILE.fullmatch(name) is not None and name not in ours, reporter,
                          "image(s)", "for a set to score, use a fresh --outdir")


def _warn_of_other_layouts(outdir: Path, folders: list[Path], reporter: Reporter, gif: bool) -> None:
    """Warn of what an earlier sample of one checkpoint left where this one writes several (its
    seedNNNN.png and grid.png), or the reverse (compare.png and a folder per checkpoint), or of
    other checkpoints (their folders), or its interpolation.gif where this one writes none: read as
    this run's otherwise, by `metrics` or by eye."""
    several = folders != [outdir]
    ours = {folder.name for folder in folders} if several else set()

    def stale(name: str) -> bool:
        if name == "interpolation.gif":
            return not gif
        if (outdir / name).is_dir():
            return name not in ours and bool(leftover_files(outdir / name, RENDER_FILE.fullmatch))
        if several:
            return name == "grid.png" or RENDER_FILE.fullmatch(name) is not None
        return name == "compare.png"

    warn_of_leftovers(outdir, stale, reporter, "file(s) or folder(s) of an earlier sample",
                      "for a set to score, use a fresh --outdir")


def interpolation_gif(gens: list[Generator], ws: torch.Tensor, path: Path, steps: int,
                      noise_mode: str = "const", fps: int = 12, reporter: Reporter | None = None) -> Path:
    """Linear walk in w+ through ws (closing the loop), one column per generator, as a looping GIF."""
    reporter = reporter or NullReporter()
    keys = torch.cat([ws, ws[:1]])
    t = torch.arange(steps, dtype=torch.float32, device=ws.device) / steps
    frames_ws = torch.cat([torch.lerp(keys[i][None], keys[i + 1][None], t[:, None, None])
                           for i in range(len(keys) - 1)])
    with reporter.progress(len(frames_ws) * len(gens), "interpolating") as bar:
        per_gen = [render_ws(g, frames_ws, noise_mode, RENDER_BATCH, bar) for g in gens]
    frames = [Image.fromarray(make_grid(np.stack([imgs[f] for imgs in per_gen]), cols=len(gens)))
              for f in range(len(frames_ws))]
    return save_image(frames[0], path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


# what sample writes beside the per-checkpoint folders: a checkpoint compare.png.pt would have its
# folder there (found after all the rendering, as "cannot write compare.png: Is a directory")
SUMMARY_NAMES = {"grid.png", "compare.png", "interpolation.gif"}


def unique_names(paths: list[Path]) -> list[str]:
    """A folder name per input path: the stems, or where two share one (or one is a summary
    file's name), prefixed by position and parent (cut, with a hash of the path, where that passes
    what a file system takes for a name)."""
    stems = [p.stem for p in paths]
    # "...pt" has the stem "..": its folder would be --outdir's parent, and ".pt"'s --outdir itself;
    # "seed0001.png.pt"'s folder would be refused by the next run as a folder in a render's way
    odd = (SUMMARY_NAMES | {"", ".", ".."}) & set(stems) or any(RENDER_FILE.fullmatch(s) for s in stems)
    if len(set(stems)) == len(stems) and not odd:
        return stems
    # resolved: a file in "." has a parent
    return [name_that_fits(f"{i}_{p.resolve().parent.name}_{p.stem}", str(p.resolve())) for i, p in enumerate(paths)]


def sample_folders(outdir: Path, names: list[str]) -> list[Path]:
    """Where the renders go: outdir for one generator, outdir/<name> for each of several."""
    return [outdir] if len(names) == 1 else [outdir / name for name in names]


MAX_GIF_FRAMES = 5000
# what sample writes under --outdir (one generator, or a folder per generator), as a pattern
SAMPLE_FILES = r"([^/]+/)?(seed|proj)\d{4,}\.png|grid\.png|compare\.png|interpolation\.gif"


def sample_checkpoints(paths: list[Path], seeds: list[int], outdir: Path, truncation: float = 1.0,
                       noise_mode: str = "const", interpolate: int = 0, device: str = "auto",
                       ws: torch.Tensor | None = None, projected_w: str | Path | None = None,
                       reporter: Reporter | None = None) -> SampleResult:
    """Load each checkpoint's g_ema and render the same latents through all of them (see `sample`).

    ws: optional w+ [N, n_latent, style_dim] used instead of the seeds' w; projected_w: the same
    from a projected_w.npz, checked against the first generator. `outdir` is checked first.
    """
    check_output_dir(outdir, "--outdir")
    if interpolate and len(seeds) * interpolate > MAX_GIF_FRAMES:  # all frames are held for the GIF
        raise ConfigError(f"--interpolate {interpolate} over {len(seeds)} seeds makes {len(seeds) * interpolate} frames; "
                          f"one GIF holds at most {MAX_GIF_FRAMES}: pass fewer seeds or frames")
    check_keeps_inputs(outdir, SAMPLE_FILES, [*paths, projected_w])
    names = unique_names(paths)
    if len(paths) > 1:  # before any checkpoint loads: a folder in the way was found after the first's renders
        check_subfolders(outdir, names, "--outdir")
        for folder in sample_folders(outdir, names):
            if folder.is_dir():  # (one to be made is outdir's to write, checked above)
                check_output_dir(folder, "--outdir")
    gens = [load_generator(p, device) for p in paths]
    dev = gens[0].input.input.device
    first = gens[0]
    for p, g in zip(paths[1:], gens[1:]):
        if (g.size, g.style_dim) != (first.size, first.style_dim):
            raise CheckpointError(f"{p} is {g.size}px with w of {g.style_dim}; {paths[0]} is "
                                  f"{first.size}px with {first.style_dim}: compare checkpoints of one architecture")
    if projected_w is not None:
        ws = _projected(Path(projected_w), gens[0], f"the generator of {paths[0]}", reporter or NullReporter())
    if ws is None:
        return sample(gens, names, seeds, outdir, truncation, noise_mode, interpolate, reporter=reporter)
    return sample_ws(gens, names, ws.to(dev), outdir, noise_mode, reporter)


def _projected(path: Path, gen: Generator, model: str, reporter: Reporter) -> torch.Tensor:
    """The w+ [N, n_latent, style_dim] of a projected_w.npz, or of every <name>/projected_w.npz in a
    folder that `project` or `toonify` of a folder of photos wrote, in name order (named in an info
    line: the outputs are projNNNN.png in that order)."""
    from .project import load_projected_w

    if not path.is_dir():
        return load_projected_w(path, gen.n_latent, gen.style_dim, model)
    files = sorted(path.glob("*/projected_w.npz"))
    # glob passes over a folder it cannot enter: its faces were left out, and the rest renumbered
    if shut := [p.name for p in _subfolders(path) if not os.access(p, os.R_OK | os.X_OK)]:
        raise DataError(f"--projected-w {path}: cannot read {first_names(shut)} (permission denied): make "
                        f"{'them' if len(shut) > 1 else 'it'} readable (chmod u+rx), or move "
                        f"{'them' if len(shut) > 1 else 'it'} out of {path}")
    if not files:
        raise DataError(f"--projected-w {path} holds no <name>/projected_w.npz (what `project` or `toonify` of a "
                        "folder of photos writes): pass such a folder, or one projected_w.npz")
    ws = [load_projected_w(f, gen.n_latent, gen.style_dim, model) for f in files]
    starts = np.cumsum([0] + [len(w) for w in ws])
    shown = ", ".join(_proj_span(start, len(w)) + f": {f.parent.name}" for start, w, f in zip(starts, ws[:5], files))
    reporter.info(f"{starts[-1]} projection(s) from {len(files)} folder(s) of {path}: "
                  f"{shown}{', ...' if len(files) > 5 else ''}")
    return torch.cat(ws)


def _subfolders(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]  # as glob's "*"
    except OSError as exc:
        raise DataError(f"--projected-w {path} cannot be read: {exc.strerror or exc}") from None


def _proj_span(start: int, count: int) -> str:
    """The projNNNN.png names of a file's `count` latents from `start`: proj0002 or proj0002-proj0004."""
    return f"proj{start:04d}" + (f"-proj{start + count - 1:04d}" if count > 1 else "")


def sample_ws(gens: list[Generator], names: list[str], ws: torch.Tensor, outdir: Path,
              noise_mode: str = "const", reporter: Reporter | None = None) -> SampleResult:
    """Render given w+ [N, n_latent, style_dim] through each generator: projNNNN.png files and a grid."""
    return _write_renders(gens, names, ws, Path(outdir), [f"proj{i:04d}.png" for i in range(len(ws))], len(ws),
                          noise_mode, reporter or NullReporter())
