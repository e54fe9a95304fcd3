"""Adaptive discriminator augmentation (ADA, Karras et al. 2020), differentiable, in pure PyTorch.

Every transform fires per sample with probability p. Geometric ones compose into one affine
matrix per sample, applied with a single bilinear resampling (reflection padding); colour ones compose
into one 4x4 matrix applied to RGB. Gradients flow through, so G learns through augmented fakes, and
to any order (ops.resample), so R1 differentiates twice through augmented reals on every device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.resample import resample


def _gate(n: int, p: float, device) -> torch.Tensor:
    return (torch.rand(n, device=device) < p).float()


def _lognormal(n: int, std: float, device) -> torch.Tensor:
    return torch.exp2(torch.randn(n, device=device) * std)


def _mat3(n, device, a=None, b=None, c=None, d=None, tx=None, ty=None) -> torch.Tensor:
    m = torch.eye(3, device=device).repeat(n, 1, 1)
    for (i, j), v in {(0, 0): a, (0, 1): b, (1, 0): c, (1, 1): d, (0, 2): tx, (1, 2): ty}.items():
        if v is not None:
            m[:, i, j] = v
    return m


def _rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _mat3(len(theta), theta.device, c, -s, s, c)


def geometric_matrix(n: int, size: int, p: float, device) -> torch.Tensor:
    """Random output->input affine maps [n, 3, 3] in normalised coordinates (identity where not drawn)."""
    g = torch.eye(3, device=device).repeat(n, 1, 1)
    flip = 1 - 2 * (_gate(n, p, device) * torch.randint(0, 2, (n,), device=device))
    g = g @ _mat3(n, device, a=flip)
    k = _gate(n, p, device) * torch.randint(0, 4, (n,), device=device)
    g = g @ _rotation(k * (math.pi / 2))
    t = torch.round((torch.rand(n, 2, device=device) * 2 - 1) * 0.125 * size) * 2 / size
    t = t * _gate(n, p, device)[:, None]
    g = g @ _mat3(n, device, tx=t[:, 0], ty=t[:, 1])
    s = torch.lerp(torch.ones(n, device=device), _lognormal(n, 0.2, device), _gate(n, p, device))
    g = g @ _mat3(n, device, a=s, d=s)
    p_rot = 1 - math.sqrt(max(0.0, 1 - p))  # rotation is drawn twice; keep the total near p
    g = g @ _rotation((torch.rand(n, device=device) * 2 - 1) * math.pi * _gate(n, p_rot, device))
    a = torch.lerp(torch.ones(n, device=device), _lognormal(n, 0.2, device), _gate(n, p, device))
    g = g @ _mat3(n, device, a=a, d=1 / a)
    g = g @ _rotation((torch.rand(n, device=device) * 2 - 1) * math.pi * _gate(n, p_rot, device))
    t = torch.randn(n, 2, device=device) * 0.125 * 2 * _gate(n, p, device)[:, None]
    return g @ _mat3(n, device, tx=t[:, 0], ty=t[:, 1])


def color_matrix(n: int, p: float, device) -> torch.Tensor:
    """Random colour transforms [n, 4, 4] acting on homogeneous RGB (identity where not drawn)."""
    eye = torch.eye(4, device=device)
    # constants made on the device: torch.tensor(..., device=cuda) is a host-to-device copy that
    # waits for the GPU, and building one from 0-d device tensors reads each of them back
    v = F.pad(torch.full((3,), 1 / math.sqrt(3), device=device), (0, 1))  # the luma axis, homogeneous
    vv = torch.outer(v, v)
    c = eye.repeat(n, 1, 1)
    bright = torch.randn(n, device=device) * 0.2 * _gate(n, p, device)
    t = eye.repeat(n, 1, 1)
    t[:, :3, 3] = bright[:, None]
    c = t @ c
    con = torch.lerp(torch.ones(n, device=device), _lognormal(n, 0.5, device), _gate(n, p, device))
    s = eye.repeat(n, 1, 1)
    s[:, :3, :3] *= con[:, None, None]
    c = s @ c
    flip = _gate(n, p, device) * torch.randint(0, 2, (n,), device=device)
    c = (eye - 2 * vv * flip[:, None, None]) @ c
    theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * _gate(n, p, device)
    v3 = v[:3]
    cross = torch.linalg.cross(v3.expand(3, 3), torch.eye(3, device=device), dim=1).t()  # cross @ x = v3 x x
    rot = eye.repeat(n, 1, 1)
    ct, st = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    rot[:, :3, :3] = ct * torch.eye(3, device=device) + st * cross + (1 - ct) * torch.outer(v3, v3)
    c = rot @ c
    sat = torch.lerp(torch.ones(n, device=device), _lognormal(n, 1.0, device), _gate(n, p, device))
    return (vv + (eye - vv) * sat[:, None, None]) @ c


def augment(images: torch.Tensor, p: float) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] -> augmented images of the same shape (draws from the global RNG)."""
    if p <= 0:
        return images
    n, _, h, w = images.shape
    dev = images.device
    # the grid stays fp32 whatever the images' dtype, autocast included (it would run the matrix
    # products and affine_grid in bf16): bf16 fakes and fp32 reals must be resampled at the same
    # positions, or D could tell them apart by the rounding
    with torch.autocast(dev.type, enabled=False):
        g = geometric_matrix(n, h, p, dev)
        grid = F.affine_grid(g[:, :2, :], list(images.shape), align_corners=False)
        c = color_matrix(n, p, dev).to(images.dtype)
    x = resample(images, grid)
    x = c[:, :3, :3] @ x.reshape(n, 3, h * w) + c[:, :3, 3:]
    return x.reshape(n, 3, h, w)


class AdaController:
    """Tunes p so that E[sign(D(real))] stays at `target` (the ADA heuristic)."""

    def __init__(self, target: float = 0.6, interval: int = 4, kimg: float = 500.0, batch: int = 16, p: float = 0.0):
        self.target, self.interval, self.kimg, self.batch = target, interval, kimg, batch
        self.p = p
        self.pending: list[torch.Tensor] = []
        self.steps = 0

    def observe(self, real_logits: torch.Tensor) -> None:
        """Record a D step's real logits (kept on device; no host sync until the update)."""
        # the count is filled on the device: torch.tensor(x, device=cuda) would be a blocking copy
        count = torch.full((), float(real_logits.numel()), device=real_logits.device)
        self.pending.append(torch.stack([real_logits.detach().sign().sum().float(), count]))
        self.steps += 1

    def maybe_update(self, reduce=None) -> float:
        """Every `interval` observations, move p by sign(r_t - target) * batch * interval / (kimg * 1000).
        `reduce` sums the [sign sum, count] tensor across processes; the one host read is r_t itself."""
        if self.steps < self.interval:
            return self.p
        stats = self._pending_total()
        if reduce is not None:
            stats = reduce(stats)
        rt = (stats[0] / stats[1]).item()
        self.p = min(1.0, max(0.0, self.p + math.copysign(1, rt - self.target) * self.batch * self.interval / (self.kimg * 1000)))
        self.last_rt = rt
        self.pending, self.steps = [], 0
        return self.p

    def _pending_total(self) -> torch.Tensor:
        """[sign sum, count] of the observations since the last update, on the newest one's device:
        a resumed run's first entry was loaded on the CPU, the new ones are on the GPU, and reading
        each back would wait for the GPU once per entry."""
        if not self.pending:
            return torch.zeros(2, device="cpu")
        dev = self.pending[-1].device
        return torch.stack([t.to(dev) for t in self.pending]).sum(0)

    def state_dict(self) -> dict:
        return {"p": self.p, "pending": self._pending_total().cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.steps = int(state["steps"])
        self.pending = [state["pending"]] if self.steps else []
