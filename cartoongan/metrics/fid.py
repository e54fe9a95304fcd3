"""Fréchet Inception Distance and Kernel Inception Distance from feature arrays.

Both take features [N, D] (float64 numpy; Inception pool3 gives D = 2048). FID compares Gaussians
fitted to the two sets; KID is the unbiased squared MMD with the cubic polynomial kernel
k(x, y) = (x.y / D + 1)^3, averaged over random subsets, as NVlabs' stylegan2-ada metrics compute it.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError


def _check(a: np.ndarray, b: np.ndarray, least: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < least:
        raise DataError(f"FID/KID need at least {least} images per set, got {len(a)} and {len(b)}")
    return a, b


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh(m)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is computed as tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): the same eigenvalues, but
    of a symmetric matrix, so eigh is exact and stable where a general sqrtm can go complex.
    """
    a, b = _check(a, b, 2)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(s_a)
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt)


def kid_from_features(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> float:
    """KID: mean over `subsets` random draws (without replacement, m = min(N_a, N_b, subset_size))
    of the unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3. Seeded, so the same features give the same number."""
    a, b = _check(a, b, 2)
    d = a.shape[1]
    m = min(len(a), len(b), subset_size)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.mean()
    return float(total / subsets)
