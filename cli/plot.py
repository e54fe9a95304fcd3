"""`cartoongan plot RUN`: training curves to a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, file_path, user_errors
from .console import RichReporter, out


@app.command()
def plot(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (or its log.jsonl) written by pretrain/finetune."),
    output: Optional[Path] = typer.Option(None, "-o", "--out", **file_path("curves.png"), help="PNG to write (default RUN/curves.png)."),
):
    """Draw the loss, KID/FID (when logged) and ADA p curves of a run."""
    from cartoongan.metrics.plot import plot_run

    with user_errors():
        path = plot_run(run, output, RichReporter())
    out.print(f"wrote {path}")
