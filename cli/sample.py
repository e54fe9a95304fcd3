"""`cartoongan sample`: render seeds or projected latents through generators."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import DEVICE, NoiseMode, app, truncation_psi, user_errors, valid_seeds
from .console import RichReporter, fail, out

@app.command()
def sample(
    ckpts: List[Path] = typer.Argument(..., metavar="CKPT", help="One or more checkpoints; several render the same w side by side."),
    seeds: Optional[str] = typer.Option(None, "--seeds", callback=valid_seeds, help="Seeds, e.g. 0-3,7 (z = RandomState(seed).randn(1, z_dim)); default 0-7."),
    trunc: Optional[float] = typer.Option(None, "--trunc", callback=truncation_psi, help="Truncation psi (default 1 = none)."),
    noise_mode: NoiseMode = typer.Option(NoiseMode("const"), "--noise-mode", help="Noise maps: fresh random, the stored constants, or none."),
    outdir: Path = typer.Option(Path("out"), "--outdir", help="Output folder."),
    interpolate: int = typer.Option(0, "--interpolate", min=0, max=1000, help="Also write interpolation.gif: K frames from each seed to the next, looping back to the first."),
    projected_w: Optional[Path] = typer.Option(None, "--projected-w", help="Render w+ from a projected_w.npz instead of seeds, or from every <name>/projected_w.npz of a folder that project or toonify of a folder wrote."),
    device: str = DEVICE,
):
    """Render seeds (or projected latents) through one or more generators."""
    from cartoongan.models.latents import parse_seeds
    from cartoongan.pipelines.sample import sample_checkpoints

    if projected_w is not None:  # its w+ are rendered as they are: seeds and truncation would do nothing
        unused = [flag for flag, given in (("--seeds", seeds is not None), ("--trunc", trunc is not None),
                                           ("--interpolate", interpolate > 0)) if given]
        if unused:
            fail(f"{', '.join(unused)} cannot be used with --projected-w, which renders the projected w+ as they "
                 "are: drop " + ("it" if len(unused) == 1 else "them"), 2)
    seed_list = parse_seeds(seeds or "0-7")
    if interpolate and len(set(seed_list)) < 2:  # the walk from a seed back to itself: one still frame, K times
        times = f", {len(seed_list)} times" if len(seed_list) > 1 else ""
        fail(f"--interpolate walks from seed to seed, and --seeds gives one ({seed_list[0]}{times}): pass two or "
             "more, e.g. --seeds 0-3", 2)
    from cartoongan.data.render import NonFiniteRender

    with user_errors({NonFiniteRender: "pass a w that `project` wrote, or an earlier checkpoint" if projected_w
                      else "pass an earlier checkpoint of the run"}):
        res = sample_checkpoints(ckpts, seed_list, outdir, 1.0 if trunc is None else trunc, noise_mode.value,
                                 interpolate, device, projected_w=projected_w, reporter=RichReporter())
    for path in [res.grid, res.compare, res.gif]:
        if path:
            out.print(f"wrote {path}")
