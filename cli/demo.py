"""`cartoongan demo`: the whole pipeline on the built-in synthetic faces."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import DEVICE, app, user_errors
from .console import RichReporter, out

@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo"), "--out", help="Folder for data, runs and pictures."),
    source: Optional[Path] = typer.Option(None, "--source", help="Photo-domain checkpoint (default: the bundled one)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Fine-tuning steps (default: recipes/demo_finetune.toml)."),
    device: str = DEVICE,
):
    """Run the whole pipeline on built-in synthetic faces and write compare.png and interpolation.gif."""
    from cartoongan.pipelines.demo import run_demo

    with user_errors():
        res = run_demo(out_dir, RichReporter(), source=source, finetune_iters=iters, device=device)
    out.print(f"source | cartoon | swapped, same seeds: {res.compare}")
    out.print(f"interpolation: {res.gif}")
