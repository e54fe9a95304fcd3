"""Seeds to latents: seed lists as users type them, and the NVlabs z convention."""
from __future__ import annotations

import re

import numpy as np
import torch


MAX_SEEDS = 100_000  # an image each: more is a typo (0-4294967295), not a render to wait hours for


def parse_seeds(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]. Raises ValueError naming the bad part."""
    return parse_ranges(text, "seed", 2**32 - 1, MAX_SEEDS, "an image each")


def parse_ranges(text: str, what: str, maximum: int, max_count: int, cost: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7] for any list of non-negative integers users type (seeds, the
    directions of `edit`). Raises ValueError naming the bad part; cost says why max_count."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)  # ASCII only: \d takes other scripts' digits too
        if not m:
            raise ValueError(f"'{part}' is not a {what} or a range like 0-3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"range '{part}' runs backwards")
        if hi > maximum:
            raise ValueError(f"{what} {hi} exceeds {'2**32 - 1' if maximum == 2**32 - 1 else maximum}")
        if len(values) + hi - lo + 1 > max_count:
            raise ValueError(f"'{text}' asks for more than {max_count} {what}s ({cost}): give a shorter range")
        values.extend(range(lo, hi + 1))
    if not values:
        raise ValueError(f"no {what}s given")
    return values


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """The NVlabs convention: np.random.RandomState(seed).randn(1, z_dim). -> [1, z_dim] float32."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).float()
