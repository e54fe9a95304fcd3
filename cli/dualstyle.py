"""`cartoongan dualstyle`: exemplar-based stylisation with DualStyleGAN's released models."""
from __future__ import annotations

import math
import re
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from cartoongan.errors import ConfigError

from .app import DEVICE, app, truncation_psi, user_errors
from .console import RichReporter, out


class DSNoise(str, Enum):
    const = "const"
    random = "random"


def _weights(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--weight takes comma-separated finite numbers (one per w+ slot), got '{text}'")
    return values


def _style_id(text: str) -> tuple[Optional[int], bool]:
    if text == "all":
        return None, True
    if not re.fullmatch(r"[0-9]+", text):  # not str.isdigit: "²" is a digit to it, and no int
        raise ConfigError(f"--style-id takes a position in the exemplar-code file or 'all', got '{text}'")
    return int(text), False


def _refuse_unused_with_no_res(no_res: bool, **given: bool) -> None:
    """--no-res renders the intrinsic StyleGAN2 alone: every exemplar option would go unused (and
    --style-id all would make a sheet of one picture repeated)."""
    unused = [f"--{flag.replace('_', '-')}" for flag, on in given.items() if on]
    if no_res and unused:
        raise ConfigError(f"--no-res renders the intrinsic StyleGAN2 alone, without an exemplar, so "
                          f"{', '.join(unused)} would be unused: drop {'it' if len(unused) == 1 else 'them'} or --no-res")


@app.command()
def dualstyle(
    input_path: Optional[Path] = typer.Argument(None, metavar="INPUT", help="A face photo (aligned unless --no-align), or an intrinsic code .npy (1, n_latent, style_dim)."),
    model: Path = typer.Option(..., "--model", help="A style folder of the release: generator.pt and (refined_)exstyle_code.npy."),
    style_id: str = typer.Option("0", "--style-id", help="Exemplar position in the code file, or 'all' for a contact sheet."),
    style: Optional[Path] = typer.Option(None, "--style", help="Encode this exemplar picture instead of using a stored code."),
    weight: Optional[str] = typer.Option(None, "--weight", help="n_latent comma-separated blend weights (default 0.75 x 7, then 1)."),
    trunc: Optional[float] = typer.Option(None, "--trunc", callback=truncation_psi, help="Intrinsic truncation towards 0 (default 0.75; 0.5 with --random)."),
    preserve_color: bool = typer.Option(False, "--preserve-color", help="Keep the content's colours (its codes replace the exemplar's colour codes)."),
    wplus: bool = typer.Option(False, "--wplus", help="Intrinsic codes in W+ (encoder_wplus.pt, or a W+ .npy)."),
    no_res: bool = typer.Option(False, "--no-res", help="Skip the extrinsic path: the intrinsic StyleGAN2 alone."),
    noise_mode: DSNoise = typer.Option(DSNoise.const, "--noise-mode", help="const (stored maps, repeatable) | random."),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="pSp file (default: encoder.pt or encoder_wplus.pt one level above --model)."),
    random: Optional[int] = typer.Option(None, "--random", min=1, max=1000, help="Render N random faces (seeds 0..N-1) in the chosen style instead."),
    align: bool = typer.Option(True, "--align/--no-align", help="FFHQ-align the photo's face first (saved as "
                               "aligned.png); --no-align for crops that are already aligned."),
    outdir: Path = typer.Option(Path("out"), "--outdir", help="Output folder."),
    device: str = DEVICE,
):
    """Stylise a face after an exemplar with DualStyleGAN (official generator.pt / encoder.pt / exstyle codes)."""
    from cartoongan.pipelines.dualstyle import DualStyleOptions, random_portraits, stylize

    from .project import no_face_fix

    with user_errors(no_face_fix()):
        _refuse_unused_with_no_res(no_res, style_id=style_id != "0", style=style is not None,
                                   weight=weight is not None, preserve_color=preserve_color)
        sid, all_styles = _style_id(style_id)
        opts = DualStyleOptions(style_id=sid, all_styles=all_styles, style_image=style, weights=_weights(weight),
                                truncation=trunc if trunc is not None else (0.5 if random is not None else 0.75),
                                preserve_color=preserve_color, wplus=wplus, use_res=not no_res,
                                noise_mode=noise_mode.value, encoder=encoder)
        if random is not None:
            if all_styles or style is not None:
                raise ConfigError("--random renders one stored style: give --style-id N, not 'all' or --style")
            if input_path is not None:  # it was ignored, and its face never showed up in random.png
                raise ConfigError(f"--random renders new faces, so INPUT {input_path} would be unused: "
                                  "give INPUT or --random N, not both")
            unused = [flag for flag, on in (("--preserve-color", preserve_color), ("--wplus", wplus),
                                            ("--encoder", encoder is not None)) if on]
            if unused:  # random faces have no content codes and need no encoder: these went unsaid
                raise ConfigError(f"--random renders faces from seeds, with no photo to encode or keep the colours "
                                  f"of, so {', '.join(unused)} would be unused: drop "
                                  f"{'it' if len(unused) == 1 else 'them'} or --random")
            res = random_portraits(model, random, outdir, opts, device, RichReporter())
        else:
            if input_path is None:
                raise ConfigError("give INPUT (a photo or an intrinsic code .npy), or --random N")
            if encoder is not None and input_path.suffix.lower() == ".npy" and (style is None or wplus):
                # (a --style picture beside a Z+ code is encoded with it)
                raise ConfigError(f"INPUT {input_path} is an intrinsic code, which needs no encoding, so --encoder "
                                  "would be unused: drop it, or give a photo")
            res = stylize(input_path, model, outdir, opts, device, RichReporter(), align=align)
    if res.style_name:
        out.print(f"style: {res.style_name}")
    for path in [res.result, res.instyle, res.overview, res.sheet]:
        if path:
            out.print(f"wrote {path}")
