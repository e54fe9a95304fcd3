"""Image datasets: a folder (recursive) or a .zip of images, made square, resized and held in memory."""
from __future__ import annotations

import errno
import io
import os
import shutil
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import DataError, OutputError
from ..filekind import not_found, special_kind
from ..hostmem import gib, images_past_memory
from ..outputs import check_fresh_dir, check_outside, sole_writer
from ..report import NullReporter, Reporter
from .images import (BOMB_ERRORS, DECODE_ERRORS, EXTENSIONS, RENDER_FILE, UNREAD_PHOTOS, ImageTooLarge, PngWriter,
                     bombs_as_errors, image_threads, square_resize)


def image_sources(root: Path) -> list[tuple[str, callable]]:
    """(name, opener) for each candidate image under a folder or inside a .zip (see
    some_image_sources for the listing that says what it left out)."""
    return _without_sheets(_every_listed(root)[0])


def check_dataset_root(root: Path) -> None:
    """Refuse (DataError) a path that is no dataset, from the path alone (no listing, no image read):
    missing, a file other than a .zip, or a training run folder."""
    if root.is_file() and root.suffix.lower() == ".zip":
        if not zipfile.is_zipfile(root):  # its end record alone: cheap, where opening it lists every member
            raise _unreadable_zip(root)
        return
    if root.is_file():
        # the folder beside is only a good guess when the file is one of its pictures
        beside = f" (e.g. {root.parent})" if root.suffix.lower() in EXTENSIONS else ""
        raise DataError(f"{root} is a file, not a dataset: pass a folder of images{beside} or a .zip")
    if kind := special_kind(root):
        raise DataError(f"{root} is {kind}, not a dataset: pass a folder of images or a .zip")
    if not root.is_dir():
        raise DataError(not_found("dataset", root, " (pass a folder of images or a .zip)"))
    if is_run_folder(root):  # it would train on, or score, its own sample grids
        raise DataError(f"{root} is a training run folder, not a dataset (its pictures are sample grids): "
                        f"pass a folder of face images{_scoring_advice(root)}")
    if run := _run_holding(root):  # RUN/samples, tab-completed: the grids alone trained and scored as faces
        raise DataError(f"{root} is inside the training run {run}, not a dataset (its pictures are sample "
                        f"grids): pass a folder of face images{_scoring_advice(run)}")


def _run_holding(root: Path) -> Path | None:
    """The training run whose samples/ (or checkpoints/) folder `root` is, else None: its grids
    are no faces. A folder below (a user's `sample --outdir RUN/samples/eval`) or beside (`faces/`)
    is a set like any other. As given first (`..` folded), for the message."""
    for path in (Path(os.path.normpath(root)), root.resolve()):
        if path.name in RUN_FOLDERS and path.parent != Path(".") and is_run_folder(path.parent):
            return path.parent
    return None


def _scoring_advice(run: Path) -> str:
    checkpoint = run / "latest.pt"
    return f"; to score the run, pass its checkpoint {checkpoint}" if checkpoint.is_file() else ""


def _unreadable_zip(root: Path) -> DataError:
    return DataError(f"{root} is not a readable zip archive")


# what `sample` writes beside its seedNNNN.png: a folder of its renders given to `metrics` scored
# grid.png as a 21st face (FID 281.76 where the 20 renders give 267.83)
SHEETS = {"grid.png", "compare.png"}


def _render_folders(sources: list[tuple[str, callable]]) -> set[PurePosixPath]:
    return {PurePosixPath(name).parent for name, _ in sources if RENDER_FILE.fullmatch(PurePosixPath(name).name)}


def _without_sheets(sources: list[tuple[str, callable]]) -> list[tuple[str, callable]]:
    """sources less grid.png / compare.png wherever seedNNNN.png or projNNNN.png sit beside them, or
    in the folders beside them (several checkpoints' sample: compare.png above their folders)."""
    renders = _render_folders(sources)
    beside = renders | {folder.parent for folder in renders}
    return [(name, opener) for name, opener in sources
            if not (PurePosixPath(name).name in SHEETS and PurePosixPath(name).parent in beside)]


def check_not_a_comparison(root: Path) -> None:
    """_refuse_comparisons from a listing alone (no image read), for a command that reads other
    sources first (metrics' REAL features: minutes); a listing that fails is left to its turn."""
    try:
        every = _every_listed(root)[0]
    except DataError:
        return
    _refuse_comparisons(root, every)


def _refuse_comparisons(root: Path, every: list[tuple[str, callable]]) -> None:
    """Refuse a listing that holds a `sample` of several checkpoints (compare.png above a folder of
    renders per checkpoint): read as one set, two models' renders were scored as one model's."""
    models: dict[PurePosixPath, list[str]] = {}  # a folder -> its subfolders of renders
    for folder in _render_folders(every):
        if folder != folder.parent:  # (renders at the top: no checkpoint's folder)
            models.setdefault(folder.parent, []).append(folder.name)
    for name, _ in every:
        path = PurePosixPath(name)
        if path.name == "compare.png" and len(found := sorted(models.get(path.parent, []))) >= 2:
            where = root / path.parent
            one = f"e.g. {where / found[0]}" if root.is_dir() else "unzip it and pass one of those folders"
            raise DataError(f"{where} is `sample`'s comparison of {len(found)} checkpoints ({_shown(found, 3)}): "
                            f"read as one set, their renders would be scored as one model's; pass one checkpoint's "
                            f"folder ({one}), or a set without it")


def _say_left_out(root: Path, every: list, sources: list, runs: list[Path], left_out: list[str],
                  reporter: Reporter) -> None:
    """Warn of the files a listing left out: animations, photos of a format not read, the pictures
    of training runs inside the folder (and, as info, sample's contact sheets)."""
    if sheets := sorted({n for n, _ in every} - {n for n, _ in sources}):
        reporter.info(f"left out {_shown(sheets, 3)} in {root}: `sample`'s contact sheet(s) beside its renders, "
                      "not faces")
    gifs = [n for n in left_out if Path(n).suffix.lower() == ".gif"]
    if gifs and sources:  # a GIF-only folder is named by the "no readable images" error, with the formats read
        reporter.warn(f"left out {len(gifs)} GIF(s) in {root} ({_shown(gifs, 3)}): GIFs are animations here; "
                      "save the faces among them as PNG to use them")
    if (unread := _unread_photos(left_out)) and sources:  # else the "no readable images" error names them
        reporter.warn(f"left out {_unread_note(unread)} in {root}")
    if runs:
        shown = _shown([str(r.relative_to(root)) for r in runs], 3)
        reporter.warn(f"left out the training run folder(s) inside {root} ({shown}): their pictures are "
                      "sample grids, not faces")


def _unread_photos(left_out: list[str]) -> list[str]:
    return [n for n in left_out if Path(n).suffix.lower() in UNREAD_PHOTOS]


def _unread_note(unread: list[str]) -> str:
    kinds = "/".join(sorted({UNREAD_PHOTOS[Path(n).suffix.lower()] for n in unread}))
    return (f"{len(unread)} {kinds} photo(s) ({_shown(unread, 3)}), a format not read here: save them as JPEG or "
            "PNG to use them")


def _every_listed(root: Path) -> tuple[list[tuple[str, callable]], list[Path], list[str]]:
    check_dataset_root(root)
    if root.is_file():  # a .zip
        try:
            zf = zipfile.ZipFile(root)
        except zipfile.BadZipFile:  # an end record that passed, over a damaged directory
            raise _unreadable_zip(root) from None
        # by entry, not by name: members that share a name (an archive appended to) are each their
        # own image, where reading by name gave the last one every time
        # (and hidden ones left out: __MACOSX/._x.gif is no animation of the set)
        listed = [(member_name(m), m) for m in zf.infolist() if not m.is_dir()]
        listed = [(name, m) for name, m in listed if not _hidden(Path(name).parts)]
        # in the order a folder of the same tree is read (by path parts: a/0.png before a-b.png), so
        # `metrics --n 2` of a folder and of its zip score the same images
        members = sorted(((name, m) for name, m in listed if Path(name).suffix.lower() in EXTENSIONS),
                         key=lambda item: PurePosixPath(item[0]).parts)
        left_out = [name for name, _ in listed if Path(name).suffix.lower() in (".gif", *UNREAD_PHOTOS)]
        return [(name, (lambda m=m: _zip_member(zf, m))) for name, m in members], [], left_out
    # one walk of the tree serves both questions below
    entries = [p for p in _walk(root) if not _hidden(p.relative_to(root).parts)]
    # a run written inside the data (`--data demo/`): its sample grids are no faces to learn or score
    runs = sorted(p.parent for p in entries if p.name == "log.jsonl" and is_run_folder(p.parent))
    entries = [p for p in entries if not any(run in p.parents for run in runs)]
    # a link to a missing file stays in: its open fails, so it is named among the unreadable ones;
    # so does a FIFO or device under an image's name, which is never opened (a FIFO would wait
    # for a writer forever), where it used to be left out without a word
    files = sorted(p for p in entries if p.suffix.lower() in EXTENSIONS and not p.is_dir())
    left_out = sorted(str(p.relative_to(root)) for p in entries if p.suffix.lower() in (".gif", *UNREAD_PHOTOS))
    return [(str(p.relative_to(root)), _opener(p)) for p in files], runs, left_out


def member_name(member: zipfile.ZipInfo) -> str:
    """A zip member's name as the folder it was zipped from lists it. Info-ZIP on Linux stores UTF-8
    names without the flag that says so, and zipfile reads them as the spec's cp437 ('ä.jpg' as
    '├ñ.jpg'): sorted and paired apart from the folder's. Names that are no UTF-8 stay cp437's."""
    if member.flag_bits & 0x800:
        return member.filename
    try:
        return member.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return member.filename


def _opener(path: Path) -> callable:
    """open(path, "rb") when called; for a FIFO, device or socket, an OSError instead (a bad image)."""
    kind = special_kind(path)
    if kind is None:
        return lambda: open(path, "rb")

    def refuse():
        raise OSError(errno.EINVAL, f"{kind}, not an image file")
    return refuse


def _walk(root: Path) -> list[Path]:
    """Every entry under `root`, through links to folders too (a set gathered as `ln -s /disk/webtoon
    data/`, which rglob does not enter), each folder once: a link back to a folder above it (`up ->
    ..`, `self -> .`) or to one already walked would repeat the set, or never end."""
    entries, seen = [], set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = Path(os.path.realpath(top))
        seen.add(real)
        kept = []
        for d in sorted(dirs):
            target = Path(os.path.realpath(os.path.join(top, d)))
            if target in seen or target == real or target in real.parents:
                continue
            seen.add(target)  # a second link to it, met later, is left out
            kept.append(d)
        dirs[:] = kept
        entries += [Path(top) / name for name in (*kept, *files)]
    return entries


def _hidden(parts: tuple[str, ...]) -> bool:
    """A path (relative to the dataset root) that is no picture of the set: inside or named as a hidden
    entry (.ipynb_checkpoints, .thumbnails, a staging folder) or macOS's AppleDouble companions (a
    zip made on a Mac holds __MACOSX/._0001.png beside each 0001.png; each would be an unreadable
    image in the warning)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


RUN_FOLDERS = ("samples", "checkpoints")  # what a training run makes inside its folder (train/run_dir.py)


def is_run_folder(root: Path) -> bool:
    """Whether a folder is one pretrain/finetune wrote (train/run_dir.py): its config and its log."""
    return (root / "config.toml").is_file() and (root / "log.jsonl").is_file()


# a member bigger than this is no face picture (a 4096 px PNG is at most 64 MiB): skipped unread,
# as a zip bomb's would otherwise be inflated into memory whole
MAX_MEMBER_BYTES = 256 * 2**20


class UnreadableMember(OSError):
    """A zip member that cannot be read: the loaders skip it (and name it) like a corrupt image."""


def _zip_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo) -> io.BytesIO:
    name = member_name(member)
    if member.file_size > MAX_MEMBER_BYTES:
        raise UnreadableMember(f"{name} inflates to over {MAX_MEMBER_BYTES >> 20} MiB")
    try:
        return io.BytesIO(zf.read(member))
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as exc:
        # a bad CRC, an encrypted member (RuntimeError), a compression method zipfile lacks
        raise UnreadableMember(f"{name}: {exc}") from None


# a dataset moves onto a CUDA device when it takes at most this share of the device's free memory
DEVICE_SHARE = 0.25


def placement(nbytes: int, device: torch.device, free_bytes: int | None) -> str:
    """Where to keep a dataset of `nbytes` that feeds `device`: 'device' for a CUDA device with room
    (DEVICE_SHARE of its free memory), so batches never cross the bus; else 'host'."""
    if device.type == "cuda" and free_bytes is not None and nbytes <= DEVICE_SHARE * free_bytes:
        return "device"
    return "host"


@dataclass
class ImageDataset:
    """images: [N, 3, size, size] uint8; names in the same order; skipped: files that failed to decode."""

    images: torch.Tensor
    names: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def place_for(self, device: torch.device) -> str:
        """Keep the images where batches for `device` are cheapest to draw (see `placement`);
        returns 'device' or 'host'."""
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        where = placement(self.images.numel() * self.images.element_size(), device, free)
        if where == "device":
            self.images = self.images.to(device)
        return where

    def batch(self, n: int, xflip: bool, device: torch.device,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """n random images, optionally mirrored, as floats in [-1, 1]: [n, 3, S, S] in `memory_format`
        (laid out while still uint8, a quarter of the float bytes).

        The indices and flips come from the RNG of the images' device, so a dataset kept on the GPU
        never waits for the host. A host batch bound for CUDA is pinned first: a copy from pageable
        memory would block the host until the GPU has finished all the work queued before it.
        """
        src = self.images.device
        idx = torch.randint(len(self), (n,), device=src)
        x = self.images[idx]
        if xflip:
            flip = torch.rand(n, device=src) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = x.contiguous(memory_format=memory_format)
        if src.type == "cpu" and device.type == "cuda":
            x = x.pin_memory()
        return x.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def some_image_sources(root: Path, reporter: Reporter) -> list[tuple[str, callable]]:
    """image_sources with what was left out said, refused (DataError, before any progress bar) when
    there is no image file at all."""
    every, runs, left_out = _every_listed(root)
    _refuse_comparisons(root, every)
    sources = _without_sheets(every)
    _say_left_out(root, every, sources, runs, left_out, reporter)
    if not sources:
        unread = _unread_photos(left_out)
        raise DataError(f"no readable images in {root} (looked for {', '.join(sorted(EXTENSIONS))}"
                        f"{_hidden_note(root)}){_checkpoints_note(root)}" + (f"; it holds {_unread_note(unread)}"
                                                                             if unread else ""))
    return sources


def _checkpoints_note(root: Path) -> str:
    """For the no-images error: a folder of checkpoints (a run's checkpoints/) given as image data."""
    if root.is_file():
        return ""
    found = sorted(p.name for p in root.iterdir() if p.suffix.lower() in (".pt", ".pth", ".pkl") and p.is_file())
    if not found:
        return ""
    return (f"; it holds {len(found)} checkpoint(s) ({_shown(found, 3)}): a command that renders them takes "
            f"the files, e.g. {root / ('*' + Path(found[0]).suffix)}")


def _hidden_note(root: Path) -> str:
    """For the no-images error only: the images that the hidden-entry rule left out, if any (a set
    kept under .faces/ would otherwise look empty for no reason given)."""
    if root.is_file():
        with zipfile.ZipFile(root) as zf:
            names = [Path(member_name(m)) for m in zf.infolist()]
    else:
        names = [p.relative_to(root) for p in _walk(root)]
    hidden = sorted(n for n in names if n.suffix.lower() in EXTENSIONS and _hidden(n.parts))
    return (f"; {len(hidden)} under hidden names or __MACOSX/ were left out, e.g. {hidden[0]}: move them "
            "to a visible folder") if hidden else ""


def native_side(sources: list[tuple[str, callable]], n: int | None = None) -> int:
    """The most common shorter side among the first n sources (up to 256 of them, evenly spread):
    a set seen as it is, where one odd file (a thumbnail sorting first) does not resize it all.
    64 when none is readable (load_dataset then says so)."""
    sources = sources[:n]
    sides = [_side(opener) for _, opener in sources[:: max(1, -(-len(sources) // 256))]]
    sides = [s for s in sides if s]
    return Counter(sides).most_common(1)[0][0] if sides else 64


def _side(opener) -> int | None:
    try:
        with bombs_as_errors(), opener() as fh, Image.open(fh) as img:
            return min(img.size)
    except (*DECODE_ERRORS, zipfile.BadZipFile):
        return None


def load_dataset(root: str | Path, size: int | None, reporter: Reporter | None = None,
                 limit: int | None = None) -> ImageDataset:
    """Decode every image under `root` (folder or .zip), or its first `limit` readable ones in name
    order, squared to `size` (None: the set's own most common side, see native_side). Corrupt files
    are skipped and named in a warning."""
    reading = DatasetReading(root, size, reporter, limit)
    _check_fits(reading.root, reading.total, reading.size)
    rows = _Rows(reading.total, reading.size)
    for square in reading.images():
        rows.add(square)
    return ImageDataset(rows.done(), reading.names, reading.skipped)


class DatasetReading:
    """The images of a folder or .zip, decoded in name order as load_dataset reads them, for a
    caller that needs only something computed from them (FID's features), a chunk at a time:
    `names` and `skipped` are complete once `images()` or `chunks()` is exhausted."""

    def __init__(self, root: str | Path, size: int | None, reporter: Reporter | None = None,
                 limit: int | None = None):
        self.root, self.reporter = Path(root), reporter or NullReporter()
        self.sources = some_image_sources(self.root, self.reporter)
        self.size = size or native_side(self.sources, limit)
        self.total = len(self.sources) if limit is None else min(limit, len(self.sources))
        self.names: list[str] = []
        self.skipped: list[str] = []  # unreadable, then those past the decompression-bomb limit

    def images(self, own_bar: bool = True) -> Iterator[np.ndarray]:
        """Each readable image as [size, size, 3] uint8, under a progress bar of its own (none with
        own_bar False: the caller shows its own); the warnings on what was skipped (and the error
        when nothing was readable) come at the end. A caller that stops early closes it
        (contextlib.closing), or its bar and decoding threads stay open till the process ends."""
        unreadable, huge, tiny = [], [], []
        with (self.reporter if own_bar else NullReporter()).progress(self.total, f"loading {self.root.name}") as bar:
            for name, (square, small, failure) in _decoded(self.sources, self.size, self.total):
                bar.advance()
                if failure:
                    (huge if failure == "huge" else unreadable).append(name)
                    continue
                self.names.append(name)
                if small:
                    tiny.append(name)
                yield square
        self.skipped = unreadable + huge
        self._warn(unreadable, huge, tiny)

    def chunks(self, n: int, own_bar: bool = True) -> Iterator[np.ndarray]:
        """images() in blocks of up to n: uint8 [k, size, size, 3], each filled in place (one block's
        memory, where a list stacked at the end held it twice)."""
        images = self.images(own_bar)
        try:
            while True:
                block, k = np.empty((n, self.size, self.size, 3), np.uint8), 0
                for square in images:
                    block[k], k = square, k + 1
                    if k == n:
                        break
                if k:
                    yield block[:k]
                if k < n:
                    return
        finally:
            images.close()

    def _warn(self, unreadable: list[str], huge: list[str], tiny: list[str]) -> None:
        root, reporter = self.root, self.reporter
        if unreadable:
            reporter.warn(f"skipped {len(unreadable)} unreadable image(s) in {root}: {_shown(unreadable)}")
        _warn_huge(root, huge, reporter)
        if tiny:
            reporter.warn(f"{len(tiny)} image(s) in {root} are under a quarter of {self.size} px and were upscaled: "
                          f"{_shown(tiny)}")
        if not self.names:
            raise DataError(f"no readable images in {root} (looked for {', '.join(sorted(EXTENSIONS))})")


def _decode(opener, size: int) -> tuple[np.ndarray | None, bool, str | None]:
    """One source -> (its square [size, size, 3] uint8, whether it was a thumbnail blown up, None),
    or (None, False, "huge" | "unreadable"). Called inside bombs_as_errors (see _decoded)."""
    try:
        with opener() as fh, Image.open(fh) as img:
            img.load()
            return square_resize(img, size), min(img.size) < size / 4, None  # a blur the model learns from
    except BOMB_ERRORS:
        return None, False, "huge"
    except (*DECODE_ERRORS, zipfile.BadZipFile):
        return None, False, "unreadable"


def _decoded(sources: list[tuple[str, callable]], size: int, wanted: int):
    """(name, _decode result) in source order until `wanted` images decoded, in windows of a few per
    thread (FFHQ's 70,000 PNGs at 1024 px would be about half an hour on one core). Each window is whole before the
    next starts, so a Ctrl-C waits for at most one window and no decoded image piles up unread."""
    threads = image_threads()
    with bombs_as_errors(), ThreadPoolExecutor(threads) as pool:  # the warnings filter is process-wide
        got, start = 0, 0
        while got < wanted and start < len(sources):
            # never more than are still wanted: `metrics --n 3` of a large folder decodes 3
            chunk = sources[start: start + min(4 * threads, wanted - got)]
            start += len(chunk)
            for (name, _), result in zip(chunk, pool.map(lambda s: _decode(s[1], size), chunk)):
                got += result[2] is None
                yield name, result


def _warn_huge(root: Path, huge: list[str], reporter: Reporter) -> None:
    if huge:  # readable, so "unreadable" would send the user looking for damage that is not there
        reporter.warn(f"skipped {len(huge)} image(s) in {root} over PIL's decompression-bomb limit "
                      f"({Image.MAX_IMAGE_PIXELS} pixels), too large to decode safely: downscale them: {_shown(huge)}")


def load_aligned_dataset(root: str | Path, size: int, reporter: Reporter | None = None) -> ImageDataset:
    """FFHQ-align the best face of every photo under `root` (folder or .zip); photos without a face
    or unreadable ones are skipped and named in warnings."""
    from .align import NoFaceFound, align_image, read_photo

    reporter = reporter or NullReporter()
    root = Path(root)
    sources = some_image_sources(root, reporter)
    names, faceless, unreadable, huge, unalignable = [], [], [], [], {}
    rows = _Rows(len(sources), size)
    with reporter.progress(len(sources), f"aligning {root.name}") as bar:
        for name, opener in sources:
            try:
                with opener() as fh:
                    img = read_photo(fh, name)
            except ImageTooLarge:
                huge.append(name)
            except (DataError, OSError):  # OSError: a zip member that cannot be read
                unreadable.append(name)
            else:
                try:
                    face = np.asarray(align_image(img, size, name=name)[0], dtype=np.uint8)
                except NoFaceFound:
                    faceless.append(name)
                except DataError as exc:  # a face found but too small, or cut off: the photo reads fine
                    unalignable[name] = str(exc)
                else:
                    rows.add(face)
                    names.append(name)
            bar.advance()
    for what, skipped in (("photo(s) with no face", faceless), ("unreadable image(s)", unreadable)):
        if skipped:
            reporter.warn(f"skipped {len(skipped)} {what} in {root}: {_shown(skipped)}")
    if unalignable:
        first, why = next(iter(unalignable.items()))
        reporter.warn(f"skipped {len(unalignable)} face(s) that could not be aligned in {root}: "
                      f"{_shown(list(unalignable))} ({first}: {why})")
    _warn_huge(root, huge, reporter)
    if not names:
        raise DataError(f"no faces found in {root}")
    images = rows.done()
    return ImageDataset(images, names, faceless + unreadable + list(unalignable) + huge)


def _check_fits(root: Path, n: int, size: int) -> None:
    """DataError, before any decoding, when n images of `size` px cannot be held in host memory."""
    if past := images_past_memory(n, size):
        need, free, fits = past
        raise DataError(f"{root}: {n} images at {size} px take {gib(need)} in memory and {gib(free)} is free: "
                        f"use a folder of {fits} images or fewer")


class _Rows:
    """Decoded images written straight into one preallocated [N, 3, S, S] uint8 tensor: a list of
    arrays stacked and then transposed held the dataset three times over at the peak."""

    def __init__(self, capacity: int, size: int):
        self.images = torch.empty(capacity, 3, size, size, dtype=torch.uint8, device="cpu")  # decoded on the host
        self.n = 0

    def add(self, hwc: np.ndarray) -> None:
        """hwc: [S, S, 3] uint8."""
        # numpy's strided copy, through a view of the same memory: torch's copy_ of a permuted
        # source spreads each small image over its thread pool, 30x slower with the cores busy
        self.images.numpy()[self.n] = hwc.transpose(2, 0, 1)
        self.n += 1

    def done(self) -> torch.Tensor:
        """[n, 3, S, S]; copied out only when skipped files left much of the block unused."""
        used = self.images[: self.n]
        return used.clone() if self.n < 0.9 * len(self.images) else used


def _shown(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def warn_unless_power_of_two(size: int, reporter: Reporter) -> None:
    """A set written at a size no StyleGAN2 model has: still fine for metrics, but training would
    resample it a second time, which softens it."""
    if size & (size - 1):
        lower, upper = 1 << (size.bit_length() - 1), 1 << size.bit_length()
        reporter.warn(f"--size {size} is not a power of two, and a StyleGAN2 model is (64, 128, 256 px, ...): "
                      f"training would resample these images a second time; --size {lower} or {upper} avoids that")


def prepare_folder(src: str | Path, out: str | Path, size: int, reporter: Reporter | None = None,
                   align: bool = False) -> ImageDataset:
    """Write a clean square RGB PNG dataset (NNNNNN.png) from any folder or zip of photos: centre-cropped,
    or with `align` FFHQ-aligned faces (photos without a face are skipped and named).

    `out` must be new or empty and outside `src` (checked before anything is read)."""
    out = Path(out)
    check_outside(out, src, "--out", "the prepared images would be read back as photos of the source")
    check_fresh_dir(out, "--out", "data prepare writes NNNNNN.png there")
    reporter = reporter or NullReporter()
    warn_unless_power_of_two(size, reporter)
    with sole_writer(out, "data prepare"):
        check_fresh_dir(out, "--out", "data prepare writes NNNNNN.png there")  # again: nobody else fills it now
        data = load_aligned_dataset(src, size, reporter) if align else load_dataset(src, size, reporter)
        _write_whole(data.images.permute(0, 2, 3, 1).numpy(), out, reporter)
    return data


def _staging_folder(out: Path) -> Path:
    """A new hidden folder on `out`'s filesystem, so that moving the images in is a rename: beside
    `out`, or inside it (the folder check found it writable) where `out` is a mount point or its
    parent is closed to us."""
    beside, inside = out.parent / f".{out.name}.partial", out / ".partial"
    mounted = out.exists() and os.stat(out).st_dev != os.stat(out.parent).st_dev
    for staging in (inside,) if mounted else (beside, inside):
        shutil.rmtree(staging, ignore_errors=True)  # an earlier run's, killed before it could clean up
        try:
            staging.mkdir(parents=True)
            return staging
        except OSError:
            continue
    raise OutputError(f"--out {out}: cannot create a folder to write the images in")


def _write_whole(images: np.ndarray, out: Path, reporter: Reporter) -> None:
    """images [N, S, S, 3] uint8 as out/NNNNNN.png, all or none: they are written to a hidden folder
    beside `out` and moved in once every one is whole, so a Ctrl-C or a full disk during the minutes
    that 70,000 PNGs take leaves `out` as it was, and the same command can run again."""
    staging = _staging_folder(out)
    try:
        with reporter.progress(len(images), f"writing {out.name}") as bar, PngWriter() as writer:
            for _ in writer.write(images, [staging / f"{i:06d}.png" for i in range(len(images))]):
                bar.advance()
        try:
            out.mkdir(parents=True, exist_ok=True)
            for i in range(len(images)):
                os.replace(staging / f"{i:06d}.png", out / f"{i:06d}.png")
        except OSError as exc:
            raise OutputError(f"--out {out}: moving the written images in failed: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
