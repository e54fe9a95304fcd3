"""Features of a generator's seeds, rendered a chunk at a time.

FID and KID need the features of every render, not the renders: 50000 at 1024 px are 147 GiB of
pictures but 0.8 GiB of Inception features. The chunk is a multiple of the render batch (8, 16)
and of Inception's (16), so every batch holds the same images as in one pass and the features are
bit for bit those of one pass.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.render import render_seeds
from ..report import NullReporter, Progress

RENDER_CHUNK = 1024  # renders held at once: 3 GiB at 1024 px

Features = Callable[..., np.ndarray]  # (uint8 [N, H, W, 3], reporter, description) -> [N, D]


class OneBar(NullReporter):
    """A reporter whose every bar is one outer bar: the features of each chunk advance it."""

    def __init__(self, bar: Progress):
        self.bar = bar

    @contextlib.contextmanager
    def progress(self, total: int, description: str, completed: int = 0) -> Iterator[Progress]:
        yield self.bar


@torch.no_grad()
def seed_features(gen, n: int, features: Features, truncation: float = 1.0, batch: int = 8,
                  progress: Progress | None = None, check_finite: bool = True,
                  description: str = "features", chunk: int | None = None) -> np.ndarray:
    """features(images, reporter, description) of gen's seeds 0..n-1 (its stored noise) -> [n, D],
    holding `chunk` renders at a time (default RENDER_CHUNK). progress: advanced by features() as
    it goes (one bar for all chunks). check_finite: as render_seeds."""
    chunk = chunk or RENDER_CHUNK
    into = OneBar(progress) if progress is not None else NullReporter()
    out = []
    for start in range(0, n, chunk):
        seeds = range(start, min(n, start + chunk))
        images = render_seeds(gen, seeds, truncation, batch, check_finite=check_finite)
        out.append(features(images, into, description))
    return np.concatenate(out) if out else np.zeros((0, 0))
