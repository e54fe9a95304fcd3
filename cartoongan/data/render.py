"""Generators to 8-bit images: seeds (NVlabs z convention) to w+, w+ to uint8 pictures, in batches.

One path for everything that looks at a generator's seeds: `sample`, the metrics, in-training KID,
the ablation and the run's sample grids all see exactly the pixels a saved PNG holds.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.generator import Generator
from ..models.latents import z_from_seed
from ..report import Progress
from .images import to_uint8


@torch.no_grad()
def seeds_to_ws(gen: Generator, seeds: list[int] | range, truncation: float = 1.0) -> torch.Tensor:
    """Seeds -> truncated w+ [N, n_latent, style_dim] through gen's mapping network (w_avg is
    estimated when truncating a generator that has none)."""
    dev = gen.input.input.device
    z = torch.cat([z_from_seed(s, gen.style_dim) for s in seeds]).to(dev)
    if truncation != 1 and gen.w_avg is None:
        gen.estimate_w_avg()
    return gen.ws_from_z(z, truncation=truncation)


@torch.no_grad()
def render_ws(gen: Generator, ws: torch.Tensor, noise_mode: str = "const", batch: int = 8,
              progress: Progress | None = None) -> np.ndarray:
    """w+ [N, n_latent, style_dim] -> [N, size, size, 3] uint8, in batches (advancing `progress`)."""
    dev = gen.input.input.device
    out = []
    for i in range(0, len(ws), batch):
        out.append(to_uint8(gen.synthesis(ws[i: i + batch].to(dev), noise_mode=noise_mode).image))
        if progress is not None:
            progress.advance(len(out[-1]))
    return np.concatenate(out)


def render_seeds(gen: Generator, seeds: list[int] | range, truncation: float = 1.0, batch: int = 8,
                 progress: Progress | None = None) -> np.ndarray:
    """Seeds through gen with its stored noise -> [N, size, size, 3] uint8."""
    return render_ws(gen, seeds_to_ws(gen, seeds, truncation), "const", batch, progress)
