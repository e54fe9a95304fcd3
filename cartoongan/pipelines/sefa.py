"""Closed-form factorization (SeFa; Shen & Zhou, CVPR 2021): semantic directions in W read off a
generator's weights, and sheets that move the same latents along them through several generators.

Every layer turns w into its style with an affine map A_l (the "modulation" weights, [C_l, style_dim]).
The directions that change the styles most are the right singular vectors of the stacked A_l,
largest singular value first. The layers stacked are those rosinality's closed_form_factorization.py
stacks (the style convolutions and the first toRGB), and the file is its format ({"ckpt", "eigvec"},
eigvec [style_dim, style_dim], one direction per column), so factor files and the indexes users
share carry over in both directions. Fine-tuning with FreezeSG keeps the mapping and the low
layers' styles, which is why a source model's directions edit its cartoon model alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.images import make_grid, save_png
from ..data.render import render_ws, seeds_to_ws
from ..errors import CheckpointError, ConfigError, Interrupted
from ..models.generator import Generator
from ..outputs import check_keeps_inputs, check_output_dir, check_replaceable_in, warn_of_leftovers
from ..report import NullReporter, Reporter
from ..weights.factor import Factor, load_factor, save_factor
from ..weights.networks import load_generator
from ..weights.replacing import FACTOR, check_weights_output
from .sample import unique_names

EDIT_FILES = r"index\d{3,}\.png"  # what `edit` writes under --outdir
# Directions are unit vectors and SeFa's edits run to a few units (rosinality's default 5): past
# this the moved w is far outside the mapping's range, and from about 1e20 the render is flat grey.
DEGREE_MAX = 100.0
MAX_SEEDS = 64  # rows of one sheet (times the generators): every row is held in memory for the PNG


def modulation_weights(gen: Generator) -> torch.Tensor:
    """The stacked affine maps from w to the styles: [sum of the layers' input channels, style_dim].
    The style convolutions and the first toRGB layer (the later toRGB layers are left out)."""
    parts = [v for k, v in gen.state_dict().items()
             if k.endswith("modulation.weight") and not k.startswith("to_rgbs.")]
    return torch.cat(parts).detach().to("cpu", torch.float64)


def closed_form_factor(gen: Generator, source: str = "") -> Factor:
    """SeFa's directions of gen: float64 SVD on the CPU, so a GPU and a CPU give the same file.
    Each direction's sign is fixed (its largest entry positive): an SVD's signs are arbitrary."""
    _, values, vh = torch.linalg.svd(modulation_weights(gen), full_matrices=False)
    if not float(values.max()) > 0:  # an SVD of zeros is the identity: directions of nothing
        raise CheckpointError(f"{source or 'the generator'}: its styles do not depend on w (every modulation weight "
                              "is zero): an untrained or damaged generator has no directions to factorize")
    eigvec = vh.T
    signs = torch.sign(eigvec.gather(0, eigvec.abs().argmax(0, keepdim=True)))
    return Factor((eigvec * signs).float(), values.float(), source)


def check_degree(degree: float, name: str = "--degree") -> float:
    """degree itself, or ConfigError naming `name` when it is not a number in (0, DEGREE_MAX]."""
    if not 0 < degree <= DEGREE_MAX:  # NaN fails it too
        raise ConfigError(f"{name} must be a number > 0 and at most {DEGREE_MAX:g} (5 is usual), got {degree}")
    return degree


def degrees(degree: float, steps: int) -> list[float]:
    """The columns of a sheet: `steps` evenly spaced from -degree to +degree."""
    return [float(x) for x in np.linspace(-degree, degree, steps)]


def edited_ws(ws: torch.Tensor, direction: torch.Tensor, amounts: list[float], layers: range) -> torch.Tensor:
    """w+ [N, n_latent, D] moved along direction [D] by each amount, in `layers` only
    -> [N * len(amounts), n_latent, D], the amounts of one latent adjacent."""
    mask = torch.zeros(ws.shape[1], 1, dtype=ws.dtype, device=ws.device)
    mask[list(layers)] = 1
    steps = torch.tensor(amounts, dtype=ws.dtype, device=ws.device)
    moved = ws[:, None] + steps[None, :, None, None] * mask * direction.to(ws)
    return moved.reshape(-1, *ws.shape[1:])


@dataclass
class EditOptions:
    indexes: list[int]
    degree: float = 5.0
    steps: int = 5
    truncation: float = 0.7
    layers: tuple[int, int] | None = None  # first and last w+ layer moved (None: all)
    noise_mode: str = "const"


def check_options(opts: EditOptions, factor: Factor, n_latent: int, seeds: list[int], where: str) -> range:
    """The w+ layers to move; ConfigError for an index, degree, step count or layer range that cannot be."""
    seeds = list(dict.fromkeys(seeds))  # each is one row of a sheet, however often it was given
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"--seeds gives {len(seeds)} seeds; a sheet holds at most {MAX_SEEDS}: pass fewer")
    count = factor.eigvec.shape[1]
    bad = [i for i in opts.indexes if i >= count]
    if bad:
        raise ConfigError(f"--index {bad[0]}: {where} holds {count} directions (0-{count - 1})")
    check_degree(opts.degree)
    if opts.steps < 2:
        raise ConfigError(f"--steps {opts.steps}: a sheet walks from -degree to +degree in 2 or more steps")
    first, last = opts.layers or (0, n_latent - 1)
    if first > last:
        raise ConfigError(f"--layers {first}-{last} runs backwards: write the lower layer first ({last}-{first})")
    if not 0 <= first <= last < n_latent:
        given = first if first == last else f"{first}-{last}"  # as typed: `--layers 11` was "11-11"
        raise ConfigError(f"--layers {given}: the generator has w+ layers 0-{n_latent - 1}")
    return range(first, last + 1)


def edit_sheets(gens: list[Generator], names: list[str], seeds: list[int], factor: Factor, opts: EditOptions,
                outdir: Path, reporter: Reporter | None = None) -> list[Path]:
    """One sheet per direction, outdir/indexNNN.png: a row per (seed, generator), the generators of a
    seed adjacent, and a column per amount from -degree to +degree. The seeds' w come from the first
    generator's mapping and truncation; every generator renders the same moved w+."""
    reporter = reporter or NullReporter()
    seeds = list(dict.fromkeys(seeds))  # a seed given twice is one row, as an index given twice is one sheet
    layers = check_options(opts, factor, gens[0].n_latent, seeds, "the factor")
    ws = seeds_to_ws(gens[0], seeds, opts.truncation)
    amounts = degrees(opts.degree, opts.steps)
    indexes = list(dict.fromkeys(opts.indexes))  # `--index 0,0` is one sheet, not the same one twice
    ours = {f"index{index:03d}.png" for index in indexes}
    check_replaceable_in(outdir, ours)
    # `--index 0-3` of one model, then `--index 0-1` of another: sheets 2 and 3 read as this run's
    warn_of_leftovers(outdir, lambda name: re.fullmatch(EDIT_FILES, name) is not None and name not in ours, reporter,
                      "sheet(s)")
    paths = []
    try:
        with reporter.progress(len(indexes) * len(gens) * len(ws) * len(amounts), "editing") as bar:
            for index in indexes:
                moved = edited_ws(ws, factor.eigvec[:, index], amounts, layers)
                per_gen = [render_ws(g, moved, opts.noise_mode, 8, bar).reshape(len(ws), len(amounts), -1)
                           for g in gens]
                tiles = np.stack(per_gen, 1).reshape(-1, gens[0].size, gens[0].size, 3)  # latent, generator, amount
                paths.append(save_png(make_grid(tiles, cols=len(amounts)), outdir / f"index{index:03d}.png"))
    except KeyboardInterrupt:
        if not paths:
            raise
        raise Interrupted(f"interrupted after {len(paths)} of {len(indexes)} sheets, each written to {outdir} as it "
                          "was made") from None
    if len(names) > 1:
        reporter.info(f"rows: each seed through {', '.join(names)}; columns: {', '.join(f'{a:g}' for a in amounts)}")
    return paths


def factor_checkpoint(ckpt: str | Path, output: str | Path) -> tuple[Path, Factor]:
    """`cartoongan factor`: SeFa's directions of a checkpoint's g_ema, written to output."""
    output = check_weights_output(output, FACTOR, "-o", [ckpt])
    factor = closed_form_factor(load_generator(ckpt, "cpu"), str(ckpt))
    return save_factor(factor, output), factor


def edit_checkpoints(paths: list[Path], seeds: list[int], outdir: Path, opts: EditOptions,
                     factor_path: Path | None = None, device: str = "auto",
                     reporter: Reporter | None = None) -> list[Path]:
    """`cartoongan edit`: load the generators (one architecture), the factor (default: the first
    generator's own directions) and write edit_sheets to outdir."""
    reporter = reporter or NullReporter()
    outdir = check_output_dir(outdir, "--outdir")
    check_keeps_inputs(outdir, EDIT_FILES, [*paths, factor_path])
    gens = [load_generator(p, device) for p in paths]
    for p, g in zip(paths[1:], gens[1:]):
        if (g.size, g.n_latent, g.style_dim) != (gens[0].size, gens[0].n_latent, gens[0].style_dim):
            raise CheckpointError(f"{p} is a {g.size} px generator with w of {g.style_dim}, {paths[0]} a "
                                  f"{gens[0].size} px one with w of {gens[0].style_dim}: edit checkpoints of one "
                                  "architecture")
    if factor_path is None:
        factor = closed_form_factor(gens[0], str(paths[0]))
    else:
        factor = load_factor(factor_path, gens[0].style_dim)
    check_options(opts, factor, gens[0].n_latent, seeds, "the factor")  # before the line below
    if factor_path is None:
        reporter.info(f"directions: SeFa of {paths[0]} (save them with `cartoongan factor`)")
    return edit_sheets(gens, unique_names(paths), seeds, factor, opts, outdir, reporter)

