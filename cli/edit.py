"""`cartoongan factor` and `cartoongan edit`: SeFa's latent directions, and sheets that walk them."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from .app import DEVICE, NoiseMode, app, checked_flag, file_path, truncation_psi, user_errors, valid_seeds
from .console import RichReporter, out


def _valid_indexes(value: str) -> str:
    from cartoongan.models.latents import parse_ranges

    try:
        parse_ranges(value, "direction", 100_000, 4096, "a sheet each")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _valid_degree(value: float) -> float:
    from cartoongan.pipelines.sefa import check_degree

    return checked_flag(check_degree, value)


def _valid_layers(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9]+(-[0-9]+)?", value.strip()):
        raise typer.BadParameter(f"'{value}' is not a layer or a range of w+ layers like 0-5")
    return value


@app.command()
def factor(
    ckpt: Path = typer.Argument(..., metavar="CKPT", help="Checkpoint whose g_ema is factorized."),
    output: Path = typer.Option(Path("factor.pt"), "-o", "--output", **file_path("factor.pt"), help="Factor file to write (rosinality's format)."),
):
    """Closed-form factorization (SeFa): the latent directions that change a generator's styles most."""
    from cartoongan.pipelines.sefa import factor_checkpoint

    with user_errors():
        path, found = factor_checkpoint(ckpt, output)
    energy = found.values.square()
    share = float(energy[:5].sum() / energy.sum())
    out.print(f"wrote {path}: {found.eigvec.shape[1]} directions, the first 5 hold {share:.0%} of the styles' variance")


@app.command()
def edit(
    ckpts: List[Path] = typer.Argument(..., metavar="CKPT", help="One or more checkpoints; all render the same moved w."),
    factor_file: Optional[Path] = typer.Option(None, "--factor", help="A factor.pt (cartoongan factor or rosinality's closed_form_factorization.py); default: the first CKPT's own directions."),
    index: str = typer.Option("0-4", "--index", callback=_valid_indexes, help="Directions to walk, e.g. 0-4,9: a sheet each (indexNNN.png)."),
    degree: float = typer.Option(5.0, "--degree", callback=_valid_degree, help="How far to move w each way (the sheet's columns run from -degree to +degree)."),
    steps: int = typer.Option(5, "--steps", min=2, max=41, help="Columns of a sheet."),
    seeds: str = typer.Option("0-3", "--seeds", callback=valid_seeds, help="Seeds: a row each per checkpoint (at most 64)."),
    trunc: float = typer.Option(0.7, "--trunc", callback=truncation_psi, help="Truncation psi, applied before the move."),
    layers: Optional[str] = typer.Option(None, "--layers", callback=_valid_layers, help="w+ layers to move, e.g. 0-5 (coarse) (default: all)."),
    noise_mode: NoiseMode = typer.Option(NoiseMode("const"), "--noise-mode", help="Noise maps: fresh random, the stored constants, or none."),
    outdir: Path = typer.Option(Path("edits"), "--outdir", help="Output folder."),
    device: str = DEVICE,
):
    """Move the same latents along SeFa directions through each checkpoint: a sheet per direction."""
    from cartoongan.models.latents import parse_ranges, parse_seeds
    from cartoongan.pipelines.sefa import EditOptions, edit_checkpoints

    first, _, last = (layers or "").strip().partition("-")
    opts = EditOptions(parse_ranges(index, "direction", 100_000, 4096, "a sheet each"), degree, steps, trunc,
                       (int(first), int(last or first)) if layers else None, noise_mode.value)
    from cartoongan.data.render import NonFiniteRender

    with user_errors({NonFiniteRender: "pass a smaller --degree"}):
        paths = edit_checkpoints(ckpts, parse_seeds(seeds), outdir, opts, factor_file, device, RichReporter())
    out.print(f"wrote {len(paths)} sheet(s) to {outdir}: {', '.join(p.name for p in paths[:5])}"
              f"{', ...' if len(paths) > 5 else ''}")
