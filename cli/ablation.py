"""`cartoongan ablation`: the paper's four methods fine-tuned and measured side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import DEVICE, app, user_errors
from .console import RichReporter, out


@app.command()
def ablation(
    out_dir: Path = typer.Option(Path("ablation"), "--out", help="Folder for data, runs, table and figure."),
    source: Optional[Path] = typer.Option(None, "--source", help="Photo-domain checkpoint (default: the bundled 64 px one)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Fine-tuning steps per method (default: the ablation64 recipes)."),
    n_eval: int = typer.Option(200, "--n-eval", min=0, max=50000, help="Samples for FID/KID (0 skips them)."),
    n_structure: int = typer.Option(64, "--n-structure", min=1, max=50000, help="Seeds for the structure score."),
    n_ppl: int = typer.Option(100, "--n-ppl", min=0, max=100000, help="PPL samples (0 skips PPL)."),
    device: str = DEVICE,
):
    """FreezeD+ADA, FreezeG, FreezeSG and FreezeSG+structure loss from one source with one budget: a Markdown
    table (FID/KID vs the cartoon set, structure score vs the source, PPL) and a figure of the same seeds."""
    from cartoongan.data.render import NonFiniteRender
    from cartoongan.pipelines.ablation import run_ablation

    with user_errors({NonFiniteRender: "delete that run's folder under OUT/runs so the next ablation trains it again"}):
        res = run_ablation(out_dir, RichReporter(), source=source, iters=iters, n_eval=n_eval,
                           n_structure=n_structure, n_ppl=n_ppl, device=device)
    out.print(res.markdown, markup=False)
    out.print(f"table: {res.table}\nfigure (rows: source, then the methods in table order): {res.figure}")
