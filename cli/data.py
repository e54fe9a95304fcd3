"""`cartoongan data synth | prepare`: the built-in synthetic faces, and clean datasets from photos."""
from __future__ import annotations

from pathlib import Path

import typer

from cartoongan.data.synthetic import DOMAINS

from .app import COUNT_MAX, IMAGE_SIZE_MAX, SEED_MAX, app, choices, user_errors
from .console import RichReporter, out

data_app = typer.Typer(no_args_is_help=True, help="Make datasets: built-in synthetic faces, or clean a folder of photos.")
app.add_typer(data_app, name="data")


Domain = choices("Domain", DOMAINS)


@data_app.command("synth")
def data_synth(
    domain: Domain = typer.Option(..., "--domain", help="Which built-in domain to draw."),
    n: int = typer.Option(1000, "--n", min=1, max=COUNT_MAX, help="Number of faces."),
    size: int = typer.Option(64, "--size", min=8, max=1024, help="Resolution."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write NNNNNN.png and params.jsonl."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed (same seed, same faces)."),
):
    """Procedural faces from one shared parameter distribution, drawn as photos or cartoons."""
    from cartoongan.data.synthetic import synthesize

    with user_errors():
        path = synthesize(domain.value, n, size, out_dir, seed, RichReporter())
    out.print(f"wrote {n} {domain.value} faces to {path}")


@data_app.command("prepare")
def data_prepare(
    src: Path = typer.Argument(..., metavar="SRC", help="Folder (recursive) or .zip of photos."),
    size: int = typer.Option(256, "--size", min=8, max=IMAGE_SIZE_MAX, help="Output resolution."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the square RGB PNGs."),
    align: bool = typer.Option(False, "--align", help="FFHQ-align the face of each photo (skipping photos without one) "
                               "instead of centre-cropping."),
):
    """Centre-crop (or FFHQ-align), resize and convert any folder of photos into a clean square dataset."""
    from cartoongan.data.dataset import prepare_folder

    with user_errors():
        data = prepare_folder(src, out_dir, size, RichReporter(), align=align)
    written = f"{len(data)} image{'' if len(data) == 1 else 's'}"
    out.print(f"wrote {written} to {out_dir}" + (f"; skipped {len(data.skipped)}" if data.skipped else ""))
