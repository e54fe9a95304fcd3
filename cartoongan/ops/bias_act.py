"""Bias plus leaky ReLU with the sqrt(2) gain that keeps activations at unit variance."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def bias_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, slope: float = 0.2) -> torch.Tensor:
    """Add a per-channel bias, leaky ReLU, then the sqrt(2) gain that keeps unit variance.

    x: [B, C, ...]; bias: [C].
    """
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.view(shape).to(x.dtype)
    return F.leaky_relu(x, slope) * SQRT2
