"""`cartoongan metrics`: FID/KID/LPIPS/identity between two folders, zips or checkpoints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .app import COUNT_MAX, DEVICE, app, finite_nonnegative, user_errors
from .console import RichReporter, out, result_table


@app.command()
def metrics(
    real: Path = typer.Argument(..., metavar="REAL", help="Reference images: a folder, a .zip or a checkpoint."),
    fake: Path = typer.Argument(..., metavar="FAKE", help="Images to score: a folder, a .zip or a checkpoint."),
    names: str = typer.Option("fid,kid", "--metrics", help="Comma list of fid, kid, lpips, identity "
                              "(lpips/identity pair same-named files, or the same seeds of two checkpoints)."),
    n: Optional[int] = typer.Option(None, "--n", min=2, max=COUNT_MAX, help="Images per source: the first N of a folder "
                                    "(default all), seeds 0..N-1 of a checkpoint (default 1000)."),
    trunc: Optional[float] = typer.Option(None, "--trunc", callback=finite_nonnegative, help="Truncation psi for "
                                          "checkpoints (default 1: none)."),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help="torchvision vgg16-397923af.pth "
                                                 "overriding the bundled LPIPS backbone."),
    as_json: bool = typer.Option(False, "--json", help="Print {\"fid\": ..., ...} as JSON."),
    device: str = DEVICE,
):
    """Measure realism (FID, KID on Inception features) and similarity (LPIPS, identity)."""
    from cartoongan.device import resolve_device
    from cartoongan.errors import ConfigError
    from cartoongan.metrics.suite import compute_metrics, is_checkpoint, parse_metrics

    with user_errors():
        chosen = parse_metrics(names)
        if trunc is not None and not (is_checkpoint(real) or is_checkpoint(fake)):
            raise ConfigError("--trunc truncates what a checkpoint renders, and REAL and FAKE are both image "
                              "sets: drop it")
        if lpips_weights is not None and "lpips" not in chosen:
            raise ConfigError(f"--lpips-weights does nothing without lpips in --metrics ({','.join(chosen)}): "
                              "drop it, or add lpips")
        result = compute_metrics(real, fake, chosen, n, resolve_device(device), RichReporter(),
                                 1.0 if trunc is None else trunc, lpips_weights=lpips_weights)
    if as_json:
        out.print_json(json.dumps(result))
        return
    result_table(f"{real} vs {fake}", ["metric", "value"], [(k, f"{v:.6g}") for k, v in result.items()])
