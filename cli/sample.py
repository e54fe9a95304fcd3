"""`cartoongan sample`: render seeds or projected latents through generators."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import DEVICE, NoiseMode, app, finite_nonnegative, user_errors, valid_seeds
from .console import RichReporter, out

@app.command()
def sample(
    ckpts: List[Path] = typer.Argument(..., metavar="CKPT", help="One or more checkpoints; several render the same w side by side."),
    seeds: str = typer.Option("0-7", "--seeds", callback=valid_seeds, help="Seeds, e.g. 0-3,7 (z = RandomState(seed).randn(1, 512))."),
    trunc: float = typer.Option(1.0, "--trunc", callback=finite_nonnegative, help="Truncation psi (1 = none)."),
    noise_mode: NoiseMode = typer.Option(NoiseMode("const"), "--noise-mode", help="Noise maps: fresh random, the stored constants, or none."),
    outdir: Path = typer.Option(Path("out"), "--outdir", help="Output folder."),
    interpolate: int = typer.Option(0, "--interpolate", min=0, max=1000, help="Also write interpolation.gif: K frames from each seed to the next, looping back to the first."),
    projected_w: Optional[Path] = typer.Option(None, "--projected-w", help="Render w+ from a projected_w.npz instead of seeds."),
    device: str = DEVICE,
):
    """Render seeds (or projected latents) through one or more generators."""
    from cartoongan.models.latents import parse_seeds
    from cartoongan.pipelines.sample import sample_checkpoints

    seed_list = parse_seeds(seeds)
    with user_errors():
        res = sample_checkpoints(ckpts, seed_list, outdir, trunc, noise_mode.value, interpolate, device,
                                 projected_w=projected_w, reporter=RichReporter())
    for path in [res.grid, res.compare, res.gif]:
        if path:
            out.print(f"wrote {path}")
