"""StyleGAN2 residual discriminator with minibatch standard deviation.

Names mirror rosinality/stylegan2-pytorch (`convs.0` is fromRGB, `convs.k` for k >= 1 the
residual block that halves resolution size / 2**(k-1), then `final_conv`, `final_linear`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .architecture import channel_widths, log2_size
from .layers import BiasLeakyReLU, Blur, EqualConv2d, EqualLinear


class Clamp(nn.Module):
    """Clamp to +-limit (NVlabs' conv_clamp); holds no state, so state-dict keys stay rosinality's."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.limit, self.limit)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [bias + leaky ReLU] -> [clamp]; a Sequential so its keys match rosinality."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False,
                 bias: bool = True, activate: bool = True, conv_clamp: float | None = None):
        layers: list[nn.Module] = []
        stride, padding = 1, kernel_size // 2
        if downsample:
            p = 2 + (kernel_size - 1)
            if kernel_size == 1:
                # blur-then-subsample equals a strided blur; the 1x1 conv then runs on 1/4 of the pixels
                layers.append(Blur(pad=((p + 1) // 2, p // 2), stride=2))
            else:
                layers.append(Blur(pad=((p + 1) // 2, p // 2)))
                stride = 2
            padding = 0
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(BiasLeakyReLU(out_ch))
        if conv_clamp is not None:
            layers.append(Clamp(conv_clamp))
        super().__init__(*layers)
        self.downsample, self.activate = downsample, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_ch, H, W] -> [B, out_ch, H', W'] (H' = H / 2 when downsampling)."""
        i = 0
        if self.downsample:
            x, i = self[0](x), 1
        if self.activate:  # conv, bias, gain and leaky ReLU in one conv and one in-place pass
            x, i = self[i].forward_activated(x, self[i + 1].bias), i + 2
        else:
            x, i = self[i](x), i + 1
        return x if i == len(self) else self[i](x)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second downsampling) plus a 1x1 downsampling skip, summed / sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, conv_clamp: float | None = None):
        super().__init__()
        # NVlabs clamps both convs (before the 1/sqrt(2) of the sum) but not the skip
        self.conv1 = ConvLayer(in_ch, in_ch, 3, conv_clamp=conv_clamp)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, conv_clamp=conv_clamp)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: the sum is a fresh buffer that no backward reads
        return (self.conv2(self.conv1(x)) + self.skip(x)).mul_(1 / math.sqrt(2))


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the std over groups of samples, averaged over features and pixels.

    x: [B, C, H, W] -> [B, C + 1, H, W]. Groups stride the batch as in rosinality (sample i
    groups with i + B/G, ...). The group is the largest size <= group_size dividing B.
    """
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = x.float().view(g, -1, c, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # [B/g]
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: image [B, 3, size, size] -> logits [B, 1]."""

    def __init__(
        self,
        size: int,  # input resolution, a power of two >= 8
        channel_multiplier: int = 2,  # rosinality's width multiplier
        channel_base: int = 16384,  # width = min(channel_max, multiplier * base / resolution)
        channel_max: int = 512,  # widest feature map
        stddev_group: int = 4,  # minibatch-stddev group size
        conv_clamp: float | None = None,  # clamp conv outputs to +-X (NVlabs models: 256)
    ):
        super().__init__()
        self.size = size
        self.config = dict(size=size, channel_multiplier=channel_multiplier, channel_base=channel_base,
                           channel_max=channel_max, conv_clamp=conv_clamp)
        ch = channel_widths(size, channel_multiplier, channel_base, channel_max)
        self.channels = ch
        layers: list[nn.Module] = [ConvLayer(3, ch[size], 1, conv_clamp=conv_clamp)]
        for i in range(log2_size(size), 2, -1):
            layers.append(ResBlock(ch[2**i], ch[2 ** (i - 1)], conv_clamp))
        self.convs = nn.Sequential(*layers)
        self.stddev_group = stddev_group
        self.channels_last = True  # NHWC activations: faster convs on CPUs (oneDNN) and GPUs
        self.final_conv = ConvLayer(ch[4] + 1, ch[4], 3, conv_clamp=conv_clamp)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 16, ch[4], activation=True), EqualLinear(ch[4], 1))

    @property
    def n_blocks(self) -> int:
        """Residual blocks, counted from the highest resolution."""
        return len(self.convs) - 1

    def block_modules(self, k: int) -> list[nn.Module]:
        """Residual block k (1 = highest resolution, which also owns fromRGB)."""
        return [self.convs[0], self.convs[1]] if k == 1 else [self.convs[k]]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        x = minibatch_stddev(self.convs(img), self.stddev_group)
        x = self.final_conv(x)
        return self.final_linear(x.flatten(1))
