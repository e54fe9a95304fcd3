"""`cartoongan info | export | convert`: describe, slim and convert checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


from .app import app, file_path, user_errors
from .console import RichReporter, out, result_json, result_table

def _readable(value) -> str:
    """A summary value as a person reads it: "res: 16, mapping: source", not a Python dict's repr,
    and "-" for an unset one (the table said "None": `'blend_width': None`). --json keeps the data."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_readable(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):  # an empty one (a 0-d array's shape) was a blank cell
        return ", ".join(map(_readable, value)) if value else "-"
    return "-" if value is None else str(value)


@app.command()
def info(ckpt: Path = typer.Argument(..., metavar="CKPT", help="Checkpoint to describe."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Describe a checkpoint (also DualStyleGAN generator.pt, pSp encoder.pt, exemplar codes .npy)."""
    from cartoongan.weights.dualstyle import describe_file

    with user_errors():
        summary = describe_file(ckpt)
    if as_json:
        result_json(summary)
        return
    report = RichReporter()
    result_table(str(ckpt), ["field", "value"], [(k, _readable(v)) for k, v in summary.items() if v is not None])
    for name, check in summary.get("networks", {}).items():
        if check != "loads":
            report.warn(f"{name} would be refused: {check}")


@app.command()
def export(
    ckpt: Path = typer.Argument(..., metavar="CKPT", help="Checkpoint to slim (e.g. RUN/latest.pt)."),
    output: Path = typer.Option(..., "-o", "--output", **file_path("shared.pt"), help="Checkpoint to write."),
    g_ema_only: bool = typer.Option(False, "--g-ema-only", help="Keep only g_ema (like convert_weight.py); else g and d too."),
):
    """Write a checkpoint without optimiser and RNG state, for sharing."""
    from cartoongan.weights.checkpoint import export_checkpoint

    with user_errors():
        path = export_checkpoint(ckpt, output, keep_training_nets=not g_ema_only)
    out.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@app.command()
def convert(
    pkl: Path = typer.Argument(..., metavar="PKL", help="NVlabs pickle: a stylegan2-ada-pytorch snapshot or a TF StyleGAN2 (G, D, Gs)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", **file_path("converted.pt"),
                                          help="Checkpoint to write (default: PKL with .pt)."),
):
    """Convert an NVlabs StyleGAN2 pickle to a checkpoint (read as data: the code inside is never run)."""
    from cartoongan.weights.nvlabs import convert_file, default_output

    with user_errors():
        path, ckpt = convert_file(pkl, output or default_output(pkl))
    meta = ckpt["cartoongan"]
    nets = ", ".join(k for k in ("g_ema", "g", "d", "latent_avg") if k in ckpt)
    out.print(f"wrote {path} ({meta['provenance']['format']}, {meta['generator']['size']}px, {nets})")
