"""Generators to 8-bit images: seeds (NVlabs z convention) to w+, w+ to uint8 pictures, in batches.

One path for everything that looks at a generator's seeds: `sample`, the metrics, in-training KID,
the ablation and the run's sample grids all see exactly the pixels a saved PNG holds.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..models.generator import Generator
from ..models.latents import z_from_seed
from ..report import Progress
from .images import to_uint8


# Truncation psi beyond this leaves the mapping's range by an order of magnitude: no face, and
# from about 1e37 on an overflow to inf/NaN. Practitioners use 0.5..1, at most 2 for variety.
TRUNCATION_MAX = 10.0


def check_truncation(psi: float, name: str = "truncation psi") -> float:
    """psi itself, or ConfigError naming `name` when it is not a finite number in 0..TRUNCATION_MAX."""
    if not (0 <= psi <= TRUNCATION_MAX):  # NaN fails both
        raise ConfigError(f"{name} must be a number from 0 to {TRUNCATION_MAX:g} (1 = none, 0.5-0.8 usual), got {psi}")
    return psi


@torch.no_grad()
def seeds_to_ws(gen: Generator, seeds: list[int] | range, truncation: float = 1.0) -> torch.Tensor:
    """Seeds -> truncated w+ [N, n_latent, style_dim] through gen's mapping network (w_avg is
    estimated when truncating a generator that has none)."""
    check_truncation(truncation)
    dev = gen.input.input.device
    z = torch.cat([z_from_seed(s, gen.style_dim) for s in seeds]).to(dev)
    if truncation != 1 and gen.w_avg is None:
        gen.estimate_w_avg()
    return gen.ws_from_z(z, truncation=truncation)


class NonFiniteRender(DataError):
    """A generator drew NaN or inf: each command adds the fix its inputs allow (`user_errors` fixes)."""


NOT_FINITE = ("the generator rendered NaN or inf values: its latents lie far outside the mapping's range, or its "
              "weights are damaged (a diverged run)")


@torch.no_grad()
def render_ws(gen: Generator, ws: torch.Tensor, noise_mode: str = "const", batch: int = 8,
              progress: Progress | None = None, check_finite: bool = True) -> np.ndarray:
    """w+ [N, n_latent, style_dim] -> [N, size, size, 3] uint8, in batches (advancing `progress`).

    check_finite: a render holding NaN or inf raises DataError (8-bit conversion would save it as a
    black or white picture, and a metric would score it); off for a training run's own diagnostics."""
    dev = gen.input.input.device
    out = []
    for i in range(0, len(ws), batch):
        image = gen.synthesis(ws[i: i + batch].to(dev), noise_mode=noise_mode).image
        if check_finite and not torch.isfinite(image).all():
            raise NonFiniteRender(NOT_FINITE)
        out.append(to_uint8(image))
        if progress is not None:
            progress.advance(len(out[-1]))
    return np.concatenate(out)


def render_seeds(gen: Generator, seeds: list[int] | range, truncation: float = 1.0, batch: int = 8,
                 progress: Progress | None = None, check_finite: bool = True) -> np.ndarray:
    """Seeds through gen with its stored noise -> [N, size, size, 3] uint8 (check_finite: see render_ws)."""
    return render_ws(gen, seeds_to_ws(gen, seeds, truncation), "const", batch, progress, check_finite)
