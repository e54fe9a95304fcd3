"""Image IO: any PIL image to square RGB arrays, float tensors to 8-bit, grids and PNGs."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import DataError, Interrupted, OutputError
from ..filekind import NPY_MAGIC, is_legacy_torch, is_text, not_found, special_kind, zip_kind, zip_names
from ..outputs import atomic_write
from ..report import Reporter

EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif", ".bmp", ".tif", ".tiff"}
# photo formats PIL reads no face from here (a phone's HEIC): a folder's are left out, and said so
UNREAD_PHOTOS = {".heic": "HEIC", ".heif": "HEIF", ".jxl": "JPEG XL"}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16- and 32-bit integers scaled to 8-bit, 32-bit float (TIFF) read as
    [0, 1] (or as [0, 255] when it goes above 1), palette and alpha composited over white."""
    if img.mode == "F":  # PIL's own conversion clips a [0, 1] float picture to black
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        img = Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # mode I holds 8-, 16- or 32-bit data alike: the smallest of those ranges that holds it (a
        # 32-bit TIFF divided by 65535 was clipped to near-solid white)
        top = 65535.0 if img.mode.startswith("I;16") else next(t for t in (255.0, 65535.0, 2.0**31 - 1)
                                                                 if arr.max(initial=0.0) <= t)
        img = Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


# EXIF orientation (tag 0x0112) -> the transpose that shows the picture upright
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}


def upright(img: Image.Image) -> Image.Image:
    """The picture as a viewer shows it: a phone's portrait JPEG is stored sideways with an EXIF
    orientation. Only the tag is read (ImageOps.exif_transpose rewrites the EXIF block, which
    fails on damaged tags); an unreadable tag counts as upright."""
    try:
        method = _ORIENTATIONS.get(img.getexif().get(0x0112, 1))
    except Exception:  # damaged EXIF comes in many types; the pixels are still good
        method = None
    return img.transpose(method) if method is not None else img


def square_resize(img: Image.Image, size: int) -> np.ndarray:
    """Upright (EXIF orientation), centre-crop to a square, Lanczos-resize to size x size,
    -> [size, size, 3] uint8."""
    img = to_rgb(upright(img))
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.LANCZOS)
    return np.array(img, dtype=np.uint8)  # a writable copy


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] floats in [-1, 1] -> [B, H, W, 3] uint8, as (x * 127.5 + 128).clamp(0, 255)."""
    x = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(tiles: np.ndarray, cols: int, pad: int = 0) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one [rows*H, cols*W, 3] image, row-major, blank cells black."""
    n, h, w, c = tiles.shape
    rows = (n + cols - 1) // cols
    grid = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = tiles[i]
    return grid


def save_png(array: np.ndarray, path: Path) -> Path:
    """[H, W, 3] uint8 -> a PNG at `path`, written atomically (OutputError naming it on failure)."""
    return save_image(Image.fromarray(array), path)


def image_threads() -> int:
    """Threads for decoding or encoding many images: PIL's codecs and resampling release the GIL,
    so the cores this process may use, shared among torchrun's processes on this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(32, cores // local))


class PngWriter:
    """save_png of many images on a thread per core (zlib and PIL release the GIL): at 21 ms for a
    256 px PNG on one core, writing `sample --seeds 0-19999` or a prepared dataset outlasts what a
    GPU takes to render it. Use as a context manager; write() yields each path once its file is
    whole, in order."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or image_threads()
        self.pool: ThreadPoolExecutor | None = None
        self.written = 0  # files whole on disk; exact once the writer is closed (after a Ctrl-C too)
        self._lock = threading.Lock()

    def __enter__(self) -> "PngWriter":
        self.pool = ThreadPoolExecutor(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)  # the window's running writes finish whole

    def _save(self, image: np.ndarray, path: Path) -> Path:
        save_png(image, path)
        with self._lock:
            self.written += 1
        return path

    def stopped(self, total: int, outdir: Path, picture: str) -> Interrupted:
        """What a Ctrl-C kept, read once the writer is closed (the window's writes are whole by then)."""
        return Interrupted(f"interrupted after {self.written} of {total} images, each written to {outdir} as it "
                           f"was rendered; {picture} was not")

    def write(self, images, paths: list[Path]) -> Iterator[Path]:
        """images: [N, H, W, 3] uint8 (an array, or a sequence of them), N == len(paths); a window of
        a few per thread at a time, so a Ctrl-C waits for one window and memory holds no more."""
        window = 4 * self.threads
        for start in range(0, len(paths), window):
            stop = min(start + window, len(paths))
            yield from self.pool.map(lambda i: self._save(images[i], paths[i]), range(start, stop))


def check_image_output(path: str | Path, what: str = "-o") -> Path:
    """Refuse an image output whose name promises no image format (face.pt, face): save_image would
    write a PNG under it, which every tool that goes by the name misreads."""
    path = Path(path)
    if path.suffix.lower() not in EXTENSIONS:
        raise OutputError(f"{what} {path}: this writes an image; name a .png file (or "
                          f"{', '.join(sorted(EXTENSIONS - {'.png'}))}), e.g. {path.with_suffix('.png').name}")
    return path


def save_image(img: Image.Image, path: Path, **options) -> Path:
    """Write a PIL image (format from the suffix; options e.g. for an animated GIF) atomically."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    with atomic_write(path) as fh:
        img.save(fh, format=fmt, **options)
    return Path(path)


@contextlib.contextmanager
def bombs_as_errors() -> Iterator[None]:
    """Make PIL's DecompressionBombWarning (over MAX_IMAGE_PIXELS) an error like the Error (over twice that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


class ImageTooLarge(DataError):
    """A picture over PIL's decompression-bomb limit: readable, but refused (downscale it)."""


# a picture over the limit, inside bombs_as_errors (which turns the warning into an error)
BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# what decoding an untrusted image file can raise inside bombs_as_errors (PIL's
# UnidentifiedImageError is an OSError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, *BOMB_ERRORS)


@contextlib.contextmanager
def image_errors(name, what: str = "photo") -> Iterator[None]:
    """Open and decode a user's image inside: a missing file, a decompression bomb (PIL's warning
    threshold included) or an unreadable file becomes one DataError that names it. A device or
    FIFO is refused before anything opens it (reading a FIFO would wait for a writer forever)."""
    if kind := special_kind(name):
        raise DataError(f"{name} is {kind}, not an image file: name the {what} itself")
    try:
        with bombs_as_errors():
            yield
    except FileNotFoundError:
        raise DataError(not_found(what, name)) from None
    except IsADirectoryError:
        raise DataError(f"{name} is a folder, not an image file: name the {what} itself") from None
    except BOMB_ERRORS as exc:
        raise ImageTooLarge(f"{name} is too large to decode safely ({str(exc).split(', could')[0]}): "
                        "downscale it and try again") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
            raise DataError(not_found(what, name)) from None
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
            raise  # the file system's own (a name too long, no permission), not the picture's: the CLI names it
        kind = _other_format(name)
        if kind:  # a checkpoint or array in the photo's place: arguments swapped or mistyped
            raise DataError(f"{name} is {kind}, not an image: pass the {what} (PNG or JPEG) here") from None
        raise DataError(f"{name} is not a readable image (damaged, or not an image format PIL reads): "
                        "save it again as PNG or JPEG") from None


# the files `sample` writes per latent (seedNNNN.png; projNNNN.png of projected w)
RENDER_FILE = re.compile(r"(seed|proj)\d{4,}\.png")


def _other_format(path) -> str | None:
    """What a file PIL cannot decode is instead, going by its first bytes: a PyTorch checkpoint
    (torch.save's zip, or its legacy pickle), a NumPy array or archive, another zip, text; None for
    anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return None
    if head.startswith(NPY_MAGIC):
        return "a NumPy array (.npy)"
    if head.startswith(b"PK\x03\x04"):
        kind = zip_kind(zip_names(path))
        # project/toonify take a folder of photos, not its zip ("not a readable image" said nothing of it)
        return kind + " (unzip it to pass its folder)" if kind == "a zip archive" else kind
    if is_legacy_torch(head):
        return "a PyTorch checkpoint"  # the pre-1.6 pickle format, whatever the file's name
    if head and is_text(head[:8]):  # PIL has read the text formats it knows (PPM, XBM)
        return "a text file"
    return None


def load_photo(path: str | Path, size: int, reporter: Reporter | None = None) -> torch.Tensor:
    """Any image file -> centre-cropped, resized [1, 3, size, size] in [-1, 1]. With a `reporter`,
    a picture under a quarter of `size` gets a warning: it is blown up into a blur."""
    with image_errors(path), Image.open(path) as img:
        img.load()
        arr = square_resize(img, size)
        side = min(img.size)
    if reporter is not None and side < size / 4:
        reporter.warn(f"{path} is {side} px on its short side, under a quarter of {size} px: it was upscaled, "
                      "so the result matches a blur; use a larger picture")
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
