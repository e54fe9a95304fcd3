"""StyleGAN2 losses and regularisers as small pure functions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic D loss: softplus(D(fake)) + softplus(-D(real)), batch means."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: softplus(-D(G(z))), batch mean."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||d D(x) / d x||^2 at real images (which must require grad)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def path_length_penalty(images: torch.Tensor, ws: torch.Tensor, mean_path: torch.Tensor, decay: float = 0.01):
    """Path-length regulariser. images [B, 3, H, W] made from ws [B, L, D] (requires grad).

    Returns (penalty, new running mean, mean path length of this batch).
    """
    noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    new_mean = mean_path + decay * (lengths.mean().detach() - mean_path)
    return (lengths - new_mean).square().mean(), new_mean, lengths.mean().detach()


def structure_loss(target_maps: list[torch.Tensor], source_maps: list[torch.Tensor], n: int,
                   weight: float = 1.0) -> torch.Tensor:
    """weight * sum_k MSE(target_k, source_k) over maps k = 1..n (the resolutions 8, 16, ..., 2**(n+2)).

    The lists hold one map per synthesis block, lowest resolution (4 px) first; block 0 is skipped
    to follow the reference code's numbering.
    """
    terms = [F.mse_loss(t.float(), s.detach().float()) for t, s in zip(target_maps[1: n + 1], source_maps[1: n + 1])]
    return weight * torch.stack(terms).sum()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model, for parameters. Buffers (constant noise maps, FIR
    kernels) are ema's own, as in rosinality's accumulate: never trained, they differ only where the
    two were built apart, as rosinality's train.py builds g and g_ema. Copied from g, a fine-tune of
    such a source drew its g_ema's frozen blocks with other constant noise than the source's."""
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - beta)


def ema_beta(batch: int, half_life_kimg: float) -> float:
    """Per-step EMA factor for a half-life given in thousands of images."""
    return 0.5 ** (batch / (half_life_kimg * 1000))
