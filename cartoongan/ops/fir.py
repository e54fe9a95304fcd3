"""FIR filtering and 2x resampling with StyleGAN2's upfirdn2d conventions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

BLUR_KERNEL = (1, 3, 3, 1)


def make_kernel(taps=BLUR_KERNEL, gain: float = 1.0) -> torch.Tensor:
    """2D FIR kernel [k, k]: outer product of the 1D taps, normalised to sum to `gain`."""
    k1 = torch.tensor(taps, dtype=torch.float32)
    k = k1[:, None] * k1[None, :]
    return k / k.sum() * gain


def _depthwise(kernel: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    return kernel.to(dtype)[None, None].expand(channels, 1, *kernel.shape)


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], stride: int = 1) -> torch.Tensor:
    """Pad by (before, after) on both axes, then filter each channel with `kernel` [k, k].

    x: [B, C, H, W] -> [B, C, (H + before + after - k) // stride + 1, ...]. The kernel is
    symmetric, so correlation equals the convolution of upfirdn2d.
    """
    c = x.shape[1]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, _depthwise(kernel, c, x.dtype), stride=stride, groups=c)


def upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(x, kernel, up=2, pad=(2, 1)) as one strided transposed depthwise conv.

    x: [B, C, H, W] -> [B, C, 2H, 2W]; `kernel` [4, 4] already carries the gain of 4.
    """
    c = x.shape[1]
    return F.conv_transpose2d(x, _depthwise(kernel, c, x.dtype), stride=2, padding=1, groups=c)
