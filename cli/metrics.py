"""`cartoongan metrics`: FID/KID/LPIPS/identity between two folders, zips or checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import COUNT_MAX, DEVICE, app, truncation_psi, user_errors
from .console import RichReporter, fail, result_json, result_table
from .project import LPIPS_W


@app.command()
def metrics(
    real: Path = typer.Argument(..., metavar="REAL", help="Reference images: a folder, a .zip or a checkpoint."),
    fakes: List[Path] = typer.Argument(..., metavar="FAKE...", help="Images to score: folders, .zip files or "
                                       "checkpoints (several: one row each, REAL's features extracted once)."),
    names: str = typer.Option("fid,kid", "--metrics", help="Comma list of fid, kid, lpips, identity "
                              "(lpips/identity pair same-named files, or the same seeds of two checkpoints)."),
    n: Optional[int] = typer.Option(None, "--n", min=2, max=COUNT_MAX, help="Images per source: the first N of a folder "
                                    "(default all), seeds 0..N-1 of a checkpoint (default 1000)."),
    trunc: Optional[float] = typer.Option(None, "--trunc", callback=truncation_psi, help="Truncation psi for "
                                          "checkpoints (default 1: none)."),
    lpips_weights: Optional[Path] = LPIPS_W,
    as_json: bool = typer.Option(False, "--json", help="Print {\"fid\": ..., ...} as JSON (several FAKE: "
                                 "{FAKE: {...}, ...})."),
    device: str = DEVICE,
):
    """Measure realism (FID, KID on Inception features) and similarity (LPIPS, identity)."""
    from cartoongan.device import resolve_device
    from cartoongan.errors import ConfigError, RowsStopped
    from cartoongan.data.render import NonFiniteRender
    from cartoongan.metrics.suite import compare_with_real, is_checkpoint, parse_metrics

    stopped = None
    with user_errors({NonFiniteRender: "score an earlier checkpoint of the run"}):
        chosen = parse_metrics(names)
        if trunc is not None and not any(is_checkpoint(p) for p in (real, *fakes)):
            raise ConfigError("--trunc truncates what a checkpoint renders, and REAL and FAKE are "
                              f"{'both' if len(fakes) == 1 else 'all'} image sets: drop it")
        if lpips_weights is not None and "lpips" not in chosen:
            raise ConfigError(f"--lpips-weights does nothing without lpips in --metrics ({','.join(chosen)}): "
                              "drop it, or add lpips")
        try:
            results = compare_with_real(real, fakes, chosen, n, resolve_device(device), RichReporter(),
                                        1.0 if trunc is None else trunc, lpips_weights=lpips_weights)
        except RowsStopped as exc:  # a Ctrl-C in a checkpoint sweep: the finished rows are kept
            results, stopped = exc.rows, exc
    _print_results(real, fakes[: len(results)], chosen, results, as_json, several=len(fakes) > 1)
    if stopped is not None:
        fail(str(stopped), 130)


def _print_results(real: Path, fakes: list[Path], chosen: list[str], results: list[dict], as_json: bool,
                   several: bool) -> None:
    if as_json:
        result_json({str(f): r for f, r in zip(fakes, results)} if several else results[0])
    elif several:
        result_table(f"vs {real}", ["FAKE", *chosen], [(f, *(f"{r[m]:.6g}" for m in chosen))
                                                        for f, r in zip(fakes, results)])
    else:
        result_table(f"{real} vs {fakes[0]}", ["metric", "value"], [(k, f"{v:.6g}") for k, v in results[0].items()])
