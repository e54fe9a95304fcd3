"""KID during training: g_ema's samples against the training set, and which step was best.

The training set's Inception features are computed once per run and cached in the run directory
(eval_real_features.npz, with a digest of the images: another dataset recomputes it), so an evaluation only costs the generated images' features.
"""
from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..metrics.fid import kid_from_features
from ..metrics.rendered import Features, seed_features
from ..models.generator import Generator
from ..outputs import atomic_write
from ..report import NullReporter, Reporter

CACHE = "eval_real_features.npz"  # features, and the digest of the images they are of


def default_features(device: torch.device) -> Features:
    """The real Inception network (tests replace this with a stub)."""
    from ..metrics.inception import InceptionFeatures

    return InceptionFeatures(device)


def images_digest(images: torch.Tensor, samples: int = 64) -> str:
    """A sha256 of the set's size, shape and up to `samples` evenly spaced images: tells another
    dataset from this one (for a few thousand 256 px faces, hashing them all would cost seconds)."""
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    for i in np.linspace(0, len(images) - 1, min(samples, len(images))).round().astype(int):
        h.update(images[int(i)].cpu().contiguous().numpy())
    return h.hexdigest()


def _read_cache(path: Path, digest: str) -> np.ndarray | None:
    """The cached training-set features, or None when absent, damaged or of another dataset."""
    try:
        # the file is ours to close: np.load leaves it open when the zip inside is damaged
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as cache:
            real, recorded = cache["features"], str(cache["digest"])
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        # TypeError: a plain .npy under this name, which np.load returns as an array
        return None
    return real if real.ndim == 2 and recorded == digest else None


class KidEvaluator:
    """Call with g_ema -> KID of its seeds 0..n-1 (const noise) against the training images; tracks the best."""

    def __init__(self, train_images: torch.Tensor, n: int, device: torch.device, run_dir: Path,
                 reporter: Reporter | None = None, features: Features | None = None, batch: int = 16):
        """train_images: uint8 [N, 3, H, W] (ImageDataset.images, on any device)."""
        self.n, self.device, self.batch = n, device, batch
        self.reporter = reporter or NullReporter()
        self.features = features or default_features(device)
        self.best = math.inf
        cache, digest = Path(run_dir) / CACHE, images_digest(train_images)
        self.digest = digest  # of the images every KID here is measured against
        self.real = _read_cache(cache, digest)
        if self.real is None:
            self.real = self.features(train_images.cpu().permute(0, 2, 3, 1).numpy(), self.reporter,
                                      "features of the training set")
            with atomic_write(cache) as fh:
                np.savez(fh, features=self.real, digest=np.array(digest))

    @torch.no_grad()
    def __call__(self, g_ema: Generator) -> float:
        # RENDER_CHUNK renders at a time: --eval-n 50000 at 1024 px held whole take 147 GiB. Unchecked:
        # a diverged g_ema scores badly (or NaN) in the log; the trainer's guard stops the run
        with self.reporter.progress(self.n, "features of g_ema") as bar:
            fake = seed_features(g_ema, self.n, self.features, batch=self.batch, progress=bar,
                                 check_finite=False, description="features of g_ema")
        return kid_from_features(self.real, fake)

    def improved(self, kid: float) -> bool:
        """Whether kid beats every earlier evaluation (then it becomes the best)."""
        if kid < self.best:
            self.best = kid
            return True
        return False
