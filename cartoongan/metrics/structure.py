"""Structure-preservation score: how much of one image's layout another image keeps.

The score compares *where edges are and which way they run*, nothing else:

1. each image is blurred with a Gaussian of sigma = size/64 px (1 px at 64 px), which removes
   pixel-scale texture, noise, speckle and the double edge of a drawn outline;
2. the colour structure tensor (Di Zenzo) is formed from the R, G and B gradients, and kept as the
   doubled-angle vector (Jxx - Jyy, 2 Jxy), rescaled to the gradient magnitude |g|;
3. that orientation field is averaged over a Gaussian window of twice the blur (local structure);
4. the score is the cosine between the two images' fields (a magnitude-weighted mean of
   cos 2(theta_a - theta_b)), so 1 = the same edges, ~0 = unrelated layouts.

Why this measures structure and not style: colour enters only through *where* channels change,
not the colours themselves (a hue rotation, a palette swap or a contrast/brightness change leaves
the field's orientations and positions, and the cosine ignores its overall scale); the doubled angle
makes an edge's polarity irrelevant (dark-on-light and light-on-dark count the same, so a cartoon's
black outline matches the photo's soft step); the blur removes texture, shading grain and noise
below about 1/32 of the image. What is left, and must match, is the position and direction of the
boundaries between regions: face outline, hair line, eyes, mouth, shoulders.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.generator import Generator
from ..models.latents import z_from_seed


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders. x: [N, C, H, W]."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def orientation_field(images: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Local edge-orientation field of RGB images.

    images: [N, 3, H, W] in [-1, 1] -> [N, 2, H, W]: the doubled-angle structure-tensor vector
    (|g| cos 2theta, |g| sin 2theta), averaged over a window of 2 sigma. sigma defaults to H/64.
    """
    x = images.float()
    sigma = sigma or max(x.shape[-1] / 64, 0.5)
    x = _gaussian_blur(x, sigma)
    gx = (x[..., :, 2:] - x[..., :, :-2])[..., 1:-1, :] / 2  # central differences, [N, 3, H-2, W-2]
    gy = (x[..., 2:, :] - x[..., :-2, :])[..., :, 1:-1] / 2
    jxx, jyy, jxy = (gx * gx).sum(1), (gy * gy).sum(1), (gx * gy).sum(1)
    mag = (jxx + jyy).sqrt().clamp_min(1e-8)  # = |g|^2 / |g|: weight edges by strength, not squared strength
    field = torch.stack([(jxx - jyy) / mag, 2 * jxy / mag], dim=1)
    return _gaussian_blur(field, 2 * sigma)


def structure_similarity(a: torch.Tensor, b: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Per-pair structure score of two batches of RGB images [N, 3, H, W] in [-1, 1] -> [N] in [-1, 1].

    Images of different sizes are compared at the smaller size (area resampling).
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"need the same number of images, got {a.shape[0]} and {b.shape[0]}")
    size = min(a.shape[-1], b.shape[-1])
    a, b = (F.interpolate(x.float(), size=(size, size), mode="area") if x.shape[-1] != size else x for x in (a, b))
    fa, fb = orientation_field(a, sigma).flatten(1), orientation_field(b, sigma).flatten(1)
    return (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)


@torch.no_grad()
def generator_structure_scores(source: Generator, target: Generator, seeds: list[int], truncation: float = 1.0,
                               batch: int = 16) -> torch.Tensor:
    """Structure score of target vs source for the same latents: w from the source's mapping for each
    seed (NVlabs seeds, optional truncation), the same w+ and the generators' constant noise through
    both. Returns [len(seeds)] scores; their mean is the model's structure-preservation score."""
    dev = source.input.input.device
    if truncation != 1 and source.w_avg is None:
        source.estimate_w_avg()
    scores = []
    for i in range(0, len(seeds), batch):
        z = torch.cat([z_from_seed(s, source.style_dim) for s in seeds[i: i + batch]]).to(dev)
        ws = source.ws_from_z(z, truncation=truncation)
        a = source.synthesis(ws, noise_mode="const").image
        b = target.synthesis(ws.to(target.input.input.device), noise_mode="const").image
        scores.append(structure_similarity(a, b.to(dev)).cpu())
    return torch.cat(scores)
