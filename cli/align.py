"""`cartoongan align`: cut the FFHQ-aligned face out of a photo."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import IMAGE_SIZE_MAX, app, file_path, user_errors
from .console import RichReporter, fail, out


@app.command()
def align(
    photo: Path = typer.Argument(..., metavar="PHOTO", help="Photo with a face (any size or mode; EXIF orientation is applied)."),
    output: Path = typer.Option(..., "-o", "--output", **file_path("aligned.png"), help="Aligned PNG to write (OUT_0.png, OUT_1.png, ... with --all-faces, one face too)."),
    size: int = typer.Option(256, "--size", min=8, max=IMAGE_SIZE_MAX, help="Side of the aligned square, in pixels."),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", help="A .npy (68, 2) array of x, y landmarks "
                                             "(dlib's 68-point order) to use instead of detecting."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Write one crop per detected face, left to right."),
):
    """Align a face the FFHQ way (dlib landmarks, eyes level, FFHQ framing) for projection and toonify."""
    from cartoongan.data.align import NoFaceFound, align_file

    if landmarks is not None and all_faces:
        fail("--all-faces cannot be used with --landmarks, which place one face: drop one of them", 2)
    with user_errors({NoFaceFound: "use a photo with a clear, frontal face, or give its landmarks with --landmarks FILE.npy"}):
        paths = align_file(photo, output, size, landmarks, all_faces, RichReporter())
    for path in paths:
        out.print(f"wrote {path}")
