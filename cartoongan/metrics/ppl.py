"""Perceptual path length (Karras et al. 2019, as NVlabs' StyleGAN2 metric computes it).

For each sample: draw z0, z1 ~ N(0, I) and t ~ U(0, 1) ("full" sampling; "end" uses t = 0);
in Z, take slerp(z0, z1, t) and slerp(z0, z1, t + eps) and map both; in W, map z0 and z1 and lerp
the w's. Both latents go through synthesis with the same (constant) noise, the images are
optionally cropped to the face region, and the sample is distance(img_t, img_t+eps) / eps^2 with
the LPIPS (VGG) distance. Samples outside the 1st..99th percentile are dropped and the rest are
averaged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.generator import Generator

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # [N,3,H,W] x2 in [-1, 1] -> [N]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the directions of a and b ([N, D]; t: [N, 1]), unit-norm output."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(-1, keepdim=True)
    p = t * torch.acos(d.clamp(-1, 1))
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    return a * torch.cos(p) + c * torch.sin(p)


def face_crop(images: torch.Tensor) -> torch.Tensor:
    """NVlabs' FFHQ face region: rows 3/8..7/8, columns 2/8..6/8 of [N, C, H, W]."""
    c = images.shape[2] // 8
    return images[:, :, c * 3: c * 7, c * 2: c * 6]


def path_length_samples(gen: Generator, distance: Distance, n: int, space: str = "w", eps: float = 1e-4,
                        sampling: str = "full", crop: bool = False, batch: int = 16, seed: int = 0) -> np.ndarray:
    """n raw PPL samples distance(img(t), img(t + eps)) / eps^2 (float64 [n])."""
    if space not in ("w", "z"):
        raise ValueError(f"space must be 'w' or 'z', got {space!r}")
    if sampling not in ("full", "end"):
        raise ValueError(f"sampling must be 'full' or 'end', got {sampling!r}")
    dev = gen.input.input.device
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        z = torch.randn(2 * m, gen.style_dim, generator=rng, device="cpu").to(dev)
        t = (torch.rand(m, 1, generator=rng, device="cpu") * (sampling == "full")).to(dev)
        with torch.no_grad():
            if space == "z":
                z0, z1 = z[:m], z[m:]
                w = gen.mapping(torch.cat([slerp(z0, z1, t), slerp(z0, z1, t + eps)]))
            else:
                w0, w1 = gen.mapping(z).chunk(2)
                w = torch.cat([torch.lerp(w0, w1, t), torch.lerp(w0, w1, t + eps)])
            img = gen.synthesis(gen.broadcast(w), noise_mode="const").image.float()
            if crop:
                img = face_crop(img)
            if img.shape[-1] > 256:  # NVlabs compares at most 256 px (area downsampling)
                img = F.adaptive_avg_pool2d(img, 256)
            a, b = img.chunk(2)
            out.append((distance(a, b).reshape(-1).double() / eps**2).cpu())
    return torch.cat(out).numpy()


def ppl_from_samples(samples: np.ndarray) -> float:
    """Mean of the samples inside the 1st..99th percentile (NVlabs' outlier filter)."""
    lo, hi = np.percentile(samples, 1, method="lower"), np.percentile(samples, 99, method="higher")
    return float(samples[(samples >= lo) & (samples <= hi)].mean())


def perceptual_path_length(gen: Generator, distance: Distance, n: int = 1000, space: str = "w", eps: float = 1e-4,
                           sampling: str = "full", crop: bool = False, batch: int = 16, seed: int = 0) -> float:
    """PPL of gen's mapping + synthesis (see the module docstring). NVlabs reports n = 50 000."""
    return ppl_from_samples(path_length_samples(gen, distance, n, space, eps, sampling, crop, batch, seed))
