"""The `cartoongan` Typer app. Each command parses flags, builds a config, calls one library function."""
from __future__ import annotations

import contextlib
import json
import math
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from cartoongan.errors import CartoonganError

from .console import RichReporter, fail, out

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune a StyleGAN2 face generator into a cartoon-face generator.")


class NoiseMode(str, Enum):
    random = "random"
    const = "const"
    none = "none"


@contextlib.contextmanager
def user_errors():
    """Expected problems become one line on stderr and exit code 1 (2 for usage, 130 for Ctrl-C)."""
    try:
        yield
    except CartoonganError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def valid_seeds(value: str) -> str:
    from cartoongan.sampling import parse_seeds

    try:
        parse_seeds(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def finite_nonnegative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")


@app.command()
def sample(
    ckpts: List[Path] = typer.Argument(..., help="One or more checkpoints; several render the same w side by side."),
    seeds: str = typer.Option("0-7", "--seeds", callback=valid_seeds, help="Seeds, e.g. 0-3,7 (z = RandomState(seed).randn(1, 512))."),
    trunc: float = typer.Option(1.0, "--trunc", callback=finite_nonnegative, help="Truncation psi (1 = none)."),
    noise_mode: NoiseMode = typer.Option(NoiseMode.const, "--noise-mode", help="random | const | none."),
    outdir: Path = typer.Option(Path("out"), "--outdir", help="Output folder."),
    interpolate: int = typer.Option(0, "--interpolate", min=0, help="Also write interpolation.gif with K frames per seed."),
    projected_w: Optional[Path] = typer.Option(None, "--projected-w", help="Render w+ from a projected_w.npz instead of seeds."),
    device: str = DEVICE,
):
    """Render seeds (or projected latents) through one or more generators."""
    from cartoongan.sampling import parse_seeds, sample_checkpoints

    seed_list = parse_seeds(seeds)
    with user_errors():
        ws = None
        if projected_w is not None:
            from cartoongan.projection import load_projected_w

            ws = load_projected_w(projected_w)
        res = sample_checkpoints(ckpts, seed_list, outdir, trunc, noise_mode.value, interpolate, device, ws=ws)
    for path in [res.grid, res.compare, res.gif]:
        if path:
            out.print(f"wrote {path}")


@app.command()
def info(ckpt: Path = typer.Argument(..., help="Checkpoint to describe."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Describe a checkpoint: resolution, widths, contents, step and provenance."""
    from cartoongan.checkpoint import describe, load_checkpoint

    with user_errors():
        summary = describe(load_checkpoint(ckpt))
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    RichReporter().table(str(ckpt), ["field", "value"], [(k, v) for k, v in summary.items()])


def main() -> None:
    app()
