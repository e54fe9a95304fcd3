"""Building blocks shared by the generator and the discriminator.

Equalised-learning-rate layers scale their weights at run time (He init folded into the
forward pass) so that Adam sees parameters of unit scale. Resampling follows the FIR filter
convention of StyleGAN2 (upfirdn2d): depthwise convolutions in pure PyTorch wrapped as ops that
are differentiable to any order without ever differentiating the fixed filters (ops.fir).
Module and parameter names follow rosinality/stylegan2-pytorch so that state dicts are
interchangeable without translation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.bias_act import SQRT2, bias_leaky_relu
from ..ops.fir import blur, make_kernel, upsample2x


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit mean square over its features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate and an optional fused leaky ReLU.

    lr_mul scales both the effective weight and bias learning rate (0.01 in the mapping
    network, so that w moves slowly compared with the synthesis weights).
    """

    def __init__(
        self,
        in_dim: int,  # input features
        out_dim: int,  # output features
        bias_init: float = 0.0,  # initial bias value (1 for style modulations)
        lr_mul: float = 1.0,  # learning-rate multiplier
        activation: bool = False,  # leaky ReLU with gain sqrt(2) after the bias
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward_scaled(self, x: torch.Tensor, gain: float) -> torch.Tensor:
        """gain * (x @ weight.T * scale + bias * lr_mul), the layer before its activation, as one
        addmm with the scales and the gain as its coefficients: no weight-sized product per call.
        A modulated conv folds its own weight scale in as the gain; the activated layers, sqrt 2.
        x: [B, in_dim] -> [B, out_dim]."""
        return torch.addmm(self.bias, x, self.weight.t(), beta=gain * self.lr_mul, alpha=gain * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_dim] -> [B, out_dim]."""
        if not self.activation:  # F.linear: inputs of any rank (the encoders); an lr_mul of 1 adds the bias as it is
            return F.linear(x, self.weight * self.scale, self.bias if self.lr_mul == 1 else self.bias * self.lr_mul)
        # lrelu(a) * sqrt2 = lrelu(a * sqrt2): the gain rides on the matmul's coefficients with the
        # scales, and the activation works in place (addmm's backward needs its inputs only)
        return F.leaky_relu_(self.forward_scaled(x, SQRT2), 0.2)


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate (weight scaled by 1/sqrt(fan_in) at run time)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def forward_activated(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """lrelu(conv(x) + bias) * sqrt2 in one conv and one in-place pass: the gain rides on the
        weight and bias (leaky ReLU is positively homogeneous), the bias on the conv, and the
        activation overwrites the conv's output, which the conv's backward does not need.
        x: [B, in_ch, H, W]; bias: [out_ch] -> [B, out_ch, H', W']."""
        y = F.conv2d(x, self.weight * (self.scale * SQRT2), bias * SQRT2, stride=self.stride, padding=self.padding)
        return F.leaky_relu_(y, 0.2)


class BiasLeakyReLU(nn.Module):
    """Learned per-channel bias followed by leaky ReLU with gain sqrt(2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """FIR low-pass filter with fixed padding; the kernel is a buffer so it lives in the state dict."""

    def __init__(self, pad: tuple[int, int], gain: float = 1.0, stride: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(gain=gain))
        self.pad = pad
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel, self.pad, self.stride)


class Upsample(nn.Module):
    """2x FIR upsampling of an image (used on the generator's skip/RGB path)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", make_kernel(gain=4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(x, self.kernel)
