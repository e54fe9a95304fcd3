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
    require_images(len(a), len(b), least)
    return a, b


def require_images(n_a: int, n_b: int, least: int = 2) -> None:
    """A DataError unless both sets hold at least `least` images (callers check before extracting features)."""
    if min(n_a, n_b) < least:
        raise DataError(f"FID/KID need at least {least} images per set, got {n_a} and {n_b}")


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray, s_a: np.ndarray, s_b: np.ndarray) -> float:
    """tr((S_a S_b)^(1/2)) for the covariances of feature sets a and b, without a general sqrtm.

    Fewer images than dimensions (the usual case below 2048 images): with centred data A, B,
    S_a S_b = A^T A B^T B / (n_a - 1)(n_b - 1) has the non-zero eigenvalues of (A B^T)(A B^T)^T, so the
    trace is the sum of the singular values of the small n_a x n_b matrix A B^T. More images: with
    S_a = L L^T (Cholesky), S_a S_b has the eigenvalues of the symmetric L^T S_b L. Both are exact
    (no complex round-off as with scipy's sqrtm) and take seconds where sqrtm takes minutes on a CPU.
    """
    na, nb = len(a) - 1, len(b) - 1
    if max(len(a), len(b)) <= a.shape[1]:
        cross = (a - a.mean(0)) @ (b - b.mean(0)).T
        return float(np.linalg.svd(cross, compute_uv=False).sum() / np.sqrt(na * nb))
    try:
        low = np.linalg.cholesky(s_a)
    except np.linalg.LinAlgError:  # singular S_a (e.g. duplicate images): the symmetric square root
        vals, vecs = np.linalg.eigh(s_a)
        low = vecs * np.sqrt(np.clip(vals, 0, None))
    eig = np.linalg.eigvalsh(low.T @ s_b @ low)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)) of features [N_a, D], [N_b, D]."""
    a, b = _check(a, b, 2)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mean_term = ((a.mean(0) - b.mean(0)) ** 2).sum()
    fid = mean_term + np.trace(s_a) + np.trace(s_b) - 2 * _trace_sqrt_product(a, b, s_a, s_b)
    # A squared distance between Gaussians: the sum of large terms that cancel for one set against
    # itself leaves round-off like -2e-13, which a user reads as a bug. (KID stays signed: its
    # unbiased estimator is truly negative for close sets.)
    return float(max(fid, 0.0))


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
