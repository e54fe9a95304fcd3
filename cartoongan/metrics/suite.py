"""`cartoongan metrics`: FID, KID, LPIPS and identity between two image sources.

A source is a folder or .zip of images, or a generator checkpoint (rendered for seeds 0..N-1, the
NVlabs z convention, const noise). Set metrics (FID, KID) compare the two distributions; paired
metrics (LPIPS, identity) compare image i of one source with image i of the other: files of the same
name in two folders, or the same seed through two checkpoints.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import DatasetReading, check_dataset_root, check_not_a_comparison, image_sources, load_dataset
from ..data.images import EXTENSIONS
from ..data.render import NonFiniteRender, render_seeds
from ..errors import CartoonganError, CheckpointError, ConfigError, DataError, naming, rows_kept
from ..filekind import not_found
from ..hostmem import gib, images_past_memory
from ..device import math_mode
from ..report import NullReporter, Reporter
from ..weights.known import KNOWN_GENERATORS, missing_checkpoint
from ..weights.checkpoint import load_checkpoint
from ..weights.networks import infer_generator_config, load_generator
from . import rendered
from .fid import fid_from_features, kid_from_features, require_images
from .rendered import Features, OneBar, seed_features

SET_METRICS = ("fid", "kid")
PAIRED_METRICS = ("lpips", "identity")
METRICS = SET_METRICS + PAIRED_METRICS
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".pkl", ".ckpt"}
DEFAULT_SAMPLES = 1000  # images rendered from a checkpoint when no n is given


@dataclass
class ImageSet:
    """images: uint8 [N, H, W, 3], or None for a set scored on its features alone (set metrics only,
    see load_images); keys pair images across sources (file names, or 'seedNNNN'); features: Inception
    features [N, D] once made."""

    images: np.ndarray | None
    keys: list[str]
    from_checkpoint: bool
    features: np.ndarray | None = None


def is_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES


def render_checkpoint(path: Path, n: int, device: torch.device, truncation: float = 1.0,
                      reporter: Reporter | None = None, batch: int = 8, features: Features | None = None,
                      ) -> ImageSet:
    """g_ema of a checkpoint for seeds 0..n-1 (const noise) -> uint8 [n, size, size, 3]; with
    `features`, their features only, made a chunk of renders at a time (images None)."""
    reporter = reporter or NullReporter()
    gen = load_generator(path, device)
    keys = [f"seed{s:04d}" for s in range(n)]
    if features is not None:
        with reporter.progress(n, f"rendering {path.name} and its features") as bar:
            made = seed_features(gen, n, features, truncation, batch, bar, description=f"features of {path.name}")
        return ImageSet(None, keys, True, made)
    with reporter.progress(n, f"rendering {path.name}") as bar:
        images = render_seeds(gen, range(n), truncation, batch, bar)
    return ImageSet(images, keys, True)


def load_images(source: str | Path, n: int | None, device: torch.device, truncation: float = 1.0,
                reporter: Reporter | None = None, features: Features | None = None) -> ImageSet:
    """A folder/zip (its first n images in name order, all when n is None) or a checkpoint (n seeds).
    features: given when only set metrics are asked for: the images are then not kept (50000 at
    1024 px are 147 GiB), only their features (0.8 GiB), made RENDER_CHUNK images at a time."""
    path = Path(source)
    if is_checkpoint(path):
        return render_checkpoint(path, n or DEFAULT_SAMPLES, device, truncation, reporter, features=features)
    if features is not None:
        return _folder_features(path, n, features, reporter or NullReporter())
    data = load_dataset(path, None, reporter, limit=n)  # its own size; not all 70,000 for --n 1000
    return ImageSet(data.images.permute(0, 2, 3, 1).numpy(), data.names, False)


def _folder_features(path: Path, n: int | None, features: Features, reporter: Reporter) -> ImageSet:
    """A folder/zip's features, decoded RENDER_CHUNK images at a time under one bar (the features
    advance it): load_images with `features`."""
    reading = DatasetReading(path, None, reporter, limit=n)
    with reporter.progress(reading.total, f"loading {path.name} and its features") as bar, \
            contextlib.closing(reading.chunks(rendered.RENDER_CHUNK, own_bar=False)) as blocks:
        made = [features(block, OneBar(bar), f"features of {path.name}") for block in blocks]
    return ImageSet(None, reading.names, False, np.concatenate(made))


def parse_metrics(text: str | list[str]) -> list[str]:
    """'fid,kid' -> ['fid', 'kid']; a ConfigError names an unknown one, or an empty one among others."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [t for t in items if t]
    if names and len(names) < len(items):  # as --seeds: most often a name left out ("fid,$M,kid")
        raise ConfigError(f"--metrics '{','.join(items)}' has an empty name between its commas: give e.g. fid,kid")
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(METRICS)}")
    return names


def _check_pairable(real_is_checkpoint: bool, fake_is_checkpoint: bool) -> None:
    if real_is_checkpoint != fake_is_checkpoint:
        raise ConfigError("paired metrics (lpips, identity) need two folders with the same file names "
                          "or two checkpoints (same seeds), not a folder and a checkpoint")


def pair(real: ImageSet, fake: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """The images of both sets that share a key, in the same order: two uint8 [P, H, W, 3] arrays."""
    _check_pairable(real.from_checkpoint, fake.from_checkpoint)
    # by the path without its suffix: a/x.png pairs with a/x.jpg, never with b/x.png
    keys = _aligned_keys(*[[Path(k).with_suffix("").as_posix() for k in s.keys] for s in (real, fake)])
    for which, named in zip(("REAL", "FAKE"), keys):
        if len(set(named)) < len(named):
            twice = next(k for k in named if named.count(k) > 1)
            raise DataError(f"paired metrics pair images by name without the suffix, and {which} holds {twice} "
                            "more than once (e.g. x.png and x.jpg): rename one")
    index = {k: i for i, k in enumerate(keys[1])}
    matches = [(i, index[k]) for i, k in enumerate(keys[0]) if k in index]
    if not matches:
        raise DataError("paired metrics need images of the same name in both folders; none match")
    ri, fi = zip(*matches)
    return real.images[list(ri)], fake.images[list(fi)]


def _aligned_keys(real: list[str], fake: list[str]) -> tuple[list[str], list[str]]:
    """The two sets' keys, less a top folder that every key of a set shares where that pairs more
    of them: `zip -r set.zip set` names set/x.png what the folder names x.png, and paired none
    (two such zips, real/x.png and fake/x.png, lose both)."""
    cut = [_without_top(keys) for keys in (real, fake)]
    options = [(real, fake), (cut[0] or real, fake), (real, cut[1] or fake), (cut[0] or real, cut[1] or fake)]
    return max(options, key=lambda pair: len(set(pair[0]) & set(pair[1])))  # a tie: as named


def _without_top(keys: list[str]) -> list[str] | None:
    """keys less the one top folder they all share, or None where they share none."""
    if not keys or not all("/" in k for k in keys) or len({k.split("/", 1)[0] for k in keys}) != 1:
        return None
    return [k.split("/", 1)[1] for k in keys]


def _to_float(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [-1, 1] [N, 3, size, size] (antialiased bilinear when resized)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


@torch.no_grad()
def mean_lpips(a: np.ndarray, b: np.ndarray, net: torch.nn.Module, device: torch.device,
               reporter: Reporter | None = None, batch: int = 8) -> float:
    """Mean LPIPS over pairs of uint8 [P, H, W, 3] images (resized to the smaller side); net: an
    LPIPS module (lpips.lpips_vgg), built by the caller before any image is read."""
    reporter = reporter or NullReporter()
    net = net.to(device)
    size = min(a.shape[1], b.shape[1])
    total = 0.0
    with reporter.progress(len(a), "lpips") as bar:
        for i in range(0, len(a), batch):
            d = net(_to_float(a[i: i + batch], size, device), _to_float(b[i: i + batch], size, device))
            total += d.sum().item()
            bar.advance(len(d))
    return total / len(a)


def compute_metrics(real: str | Path, fake: str | Path, names: str | list[str] = ("fid", "kid"),
                    n: int | None = None, device: torch.device | str = "cpu", reporter: Reporter | None = None,
                    truncation: float = 1.0, features=None, lpips_weights: str | Path | None = None,
                    ) -> dict[str, float]:
    """The chosen metrics between two sources -> {"fid": ..., "kid": ..., "lpips": ..., "identity": ...}.

    features: an InceptionFeatures-like callable (images, reporter, description) -> [N, D]
    (default: the real Inception network, built once for both sets).
    """
    return compare_with_real(real, [fake], names, n, device, reporter, truncation, features, lpips_weights)[0]


def compare_with_real(real: str | Path, fakes: list[str | Path], names: str | list[str] = ("fid", "kid"),
                      n: int | None = None, device: torch.device | str = "cpu", reporter: Reporter | None = None,
                      truncation: float = 1.0, features=None, lpips_weights: str | Path | None = None,
                      ) -> list[dict[str, float]]:
    """compute_metrics of REAL against each of several FAKE sources (a checkpoint sweep), REAL read
    and its features extracted once: one dict per fake, in order. A Ctrl-C after the first is
    finished raises RowsStopped holding those done."""
    reporter = reporter or NullReporter()
    device = torch.device(device)
    names = parse_metrics(names)
    _check_sources(real, fakes, names)
    if any(m in PAIRED_METRICS for m in names):  # otherwise a checkpoint's renders are not held
        _check_renders_fit(real, fakes, n or DEFAULT_SAMPLES)
    # figures comparable across runs: Inception and LPIPS in IEEE fp32 on any GPU; the caller's
    # math mode (a training run's TF32) comes back afterwards
    with math_mode("fp32"):
        scorer = _Scorer(names, device, reporter, features, lpips_weights)
        with naming(real):
            a = _loaded(real, n, device, truncation, reporter, scorer.streamed)
        results: list[dict[str, float]] = []
        failed = None
        with rows_kept(results, len(fakes), "FAKE sources"):
            for fake in fakes:
                b = None  # the last FAKE's images go before the next one's are made
                try:
                    with naming(fake):
                        b = _loaded(fake, n, device, truncation, reporter, scorer.streamed)
                        if any(m in SET_METRICS for m in names):  # one readable image of two listed
                            require_images(len(a.keys), len(b.keys))
                except (NonFiniteRender, CheckpointError, DataError) as exc:
                    if len(fakes) == 1:
                        raise
                    # one diverged, damaged or (since the checks) deleted source of a sweep: the
                    # others' rows are still worth their minutes of rendering and features
                    gone = not Path(fake).exists()
                    reporter.warn(f"{fake} was removed after the sweep started: its row is NaN" if gone
                                  else f"{exc}: its row is NaN")
                    results.append({m: math.nan for m in names})
                    failed = exc
                    continue
                results.append(scorer.score(real, a, fake, b))
        if failed is not None and all(math.isnan(v) for r in results for v in r.values()):
            raise failed  # a table of NaN only is no result
        return results


def _check_renders_fit(real: str | Path, fakes: list[str | Path], n: int) -> None:
    """Before any source is read: REAL's renders and one FAKE's, held at once (uint8, whole), against
    free host memory: the OOM killer would end the command without a word, minutes into it. (A
    folder's images are checked as it loads.) A checkpoint that does not load is left to its turn."""
    held = [Path(real)] if is_checkpoint(Path(real)) else []
    sizes = [s for s in map(_render_size, held + [Path(f) for f in fakes if is_checkpoint(Path(f))]) if s]
    sets = len(held) + any(is_checkpoint(Path(f)) for f in fakes)
    if sizes and (past := images_past_memory(n, max(sizes), sets=sets)):
        need, free, fits = past
        raise ConfigError(f"--n {n} renders at {max(sizes)} px of {sets} checkpoint(s) held at once take {gib(need)} "
                          f"in memory and {gib(free)} is free: use --n {fits} or less")


def _render_size(path: Path) -> int | None:
    """The side of the images a checkpoint renders, read from its weights (mapped), or None."""
    try:
        ckpt = load_checkpoint(path, mmap=True)
        return infer_generator_config(ckpt.get("g_ema") or ckpt["g"])["size"]
    except (CartoonganError, KeyError, ValueError):
        return None


def _loaded(source: str | Path, n: int | None, device: torch.device, truncation: float,
            reporter: Reporter, features: Features | None) -> ImageSet:
    got = load_images(source, n, device, truncation, reporter, features)
    if n is not None and len(got.keys) < n:
        reporter.warn(f"{source} has {len(got.keys)} readable image(s), fewer than --n {n}: using those")
    return got


class _Scorer:
    """The networks of the chosen metrics, built before any image is read (missing weights or a bad
    --lpips-weights cost one line, not a minute of loading and rendering first), and REAL's
    Inception features, extracted once for every FAKE."""

    def __init__(self, names: list[str], device: torch.device, reporter: Reporter, features=None,
                 lpips_weights: str | Path | None = None):
        self.names, self.device, self.reporter = names, device, reporter
        if any(m in SET_METRICS for m in names) and features is None:
            from .inception import InceptionFeatures

            features = InceptionFeatures(device)
        self.features, self.lpips_net, self.embedder, self.real_features = features, None, None, None
        # set metrics alone need no image kept: every source is then read or rendered into features
        self.streamed = None if any(m in PAIRED_METRICS for m in names) else features
        if "lpips" in names:
            from .lpips import lpips_vgg

            self.lpips_net = lpips_vgg(lpips_weights)
        if "identity" in names:
            from .identity import FaceEmbedder

            self.embedder = FaceEmbedder()

    def _features(self, source: str | Path, got: ImageSet) -> np.ndarray:
        if got.features is None:
            got.features = self.features(got.images, self.reporter, f"features of {Path(source).name}")
        return got.features

    def score(self, real: str | Path, a: ImageSet, fake: str | Path, b: ImageSet) -> dict[str, float]:
        names, result = self.names, {}
        if any(m in SET_METRICS for m in names):
            require_images(len(a.keys), len(b.keys))  # before minutes of Inception features (of images held)
            if self.real_features is None:
                self.real_features = self._features(real, a)
            fb = self._features(fake, b)
            if "fid" in names:
                result["fid"] = fid_from_features(self.real_features, fb)
            if "kid" in names:
                result["kid"] = kid_from_features(self.real_features, fb)
        if any(m in PAIRED_METRICS for m in names):
            pa, pb = pair(a, b)
            unpaired = len(a.keys) + len(b.keys) - 2 * len(pa)
            if unpaired:
                self.reporter.warn(f"paired metrics: {len(pa)} pair(s) of the same name; {unpaired} image(s) "
                                   "without a partner left out")
            if "lpips" in names:
                result["lpips"] = mean_lpips(pa, pb, self.lpips_net, self.device, self.reporter)
            if "identity" in names:
                from .identity import mean_identity

                result["identity"] = mean_identity(pa, pb, self.reporter, self.embedder)
        return {m: result[m] for m in names}


def _listed(source: str | Path, alone: bool) -> int | None:
    """How many images a folder or zip lists; None for one whose listing fails (a zip with a
    damaged directory) in a sweep, where its own turn gives it a NaN row (alone: the error now)."""
    try:
        return len(image_sources(Path(source)))
    except DataError:
        if alone:
            raise
        return None


def _check_sources(real: str | Path, fakes: list[str | Path], names: list[str]) -> None:
    """What can be told of every source without reading an image: one line before any progress bar."""
    for source in (real, *fakes):
        path = Path(source)
        if not path.exists():
            if path.name in KNOWN_GENERATORS:  # a model to download, not a typo: say where from
                raise CheckpointError(missing_checkpoint(path))
            raise DataError(not_found("source", source, " (pass a folder of images, a .zip or a checkpoint)"))
        if path.is_file() and not is_checkpoint(path) and path.suffix.lower() not in (".zip", *EXTENSIONS):
            raise DataError(f"{source} is neither a folder or .zip of images nor a checkpoint (named .pt, .pth, "
                            ".pkl or .ckpt): pass one of those (a checkpoint under another name: rename it)")
        if not is_checkpoint(path):
            check_dataset_root(path)  # a file or a run folder that is no dataset, named without a listing
            check_not_a_comparison(path)
    if any(m in SET_METRICS for m in names):
        # a one-image set, before another source's minutes of features (a listing, no image read)
        few = [str(s) for s in (real, *fakes) if not is_checkpoint(Path(s)) and _listed(s, s == real or len(fakes) == 1) == 1]
        if few:
            raise DataError(f"FID/KID need at least 2 images per set, and {' and '.join(few)} "
                            f"hold{'s' if len(few) == 1 else ''} one: add images, or score another folder")
    seen = set()
    for fake in fakes:  # after the existence checks: resolve() raises on a loop of links
        key = Path(fake).resolve()
        if key in seen:
            raise ConfigError(f"FAKE {fake} is given twice: name each source once")
        seen.add(key)
    if any(m in PAIRED_METRICS for m in names):
        for fake in fakes:
            _check_pairable(is_checkpoint(Path(real)), is_checkpoint(Path(fake)))
