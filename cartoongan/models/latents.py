"""Seeds to latents: seed lists as users type them, and the NVlabs z convention."""
from __future__ import annotations

import re

import numpy as np
import torch


MAX_SEEDS = 100_000  # an image each: more is a typo (0-4294967295), not a render to wait hours for


def parse_seeds(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]. Raises ValueError naming the bad part."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)  # ASCII only: \d takes other scripts' digits too
        if not m:
            raise ValueError(f"'{part}' is not a seed or a range like 0-3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"range '{part}' runs backwards")
        if hi > 2**32 - 1:
            raise ValueError(f"seed {hi} exceeds 2**32 - 1")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise ValueError(f"'{text}' asks for more than {MAX_SEEDS} seeds (an image each): give a shorter range")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """The NVlabs convention: np.random.RandomState(seed).randn(1, z_dim). -> [1, z_dim] float32."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).float()
