"""`cartoongan convert`: NVlabs network pickles to ordinary checkpoints, without running their code."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, user_errors
from .console import out


@app.command()
def convert(
    pkl: Path = typer.Argument(..., help="NVlabs pickle: a stylegan2-ada-pytorch snapshot or a TF StyleGAN2 (G, D, Gs)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Checkpoint to write (default: PKL with .pt)."),
):
    """Convert an NVlabs StyleGAN2 pickle to a checkpoint (read as data: the code inside is never run)."""
    from cartoongan.weights.nvlabs import convert_file

    with user_errors():
        path, ckpt = convert_file(pkl, output or pkl.with_suffix(".pt"))
    meta = ckpt["cartoongan"]
    nets = ", ".join(k for k in ("g_ema", "g", "d", "latent_avg") if k in ckpt)
    out.print(f"wrote {path} ({meta['provenance']['format']}, {meta['generator']['size']}px, {nets})")
