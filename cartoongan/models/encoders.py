"""The pSp encoder (Richardson et al., 2021) as DualStyleGAN uses it: image -> n_latent codes.

GradualStyleEncoder: an IR-SE ResNet backbone (four stages of bottleneck units with
squeeze-and-excitation; IR-SE-50 has 3, 4, 14 and 3 units of width 64, 128, 256, 512), a feature
pyramid over the ends of stages 2, 3 and 4, and one "style head" per w+ slot: slots 0-2 read the
coarsest map, 3-6 the middle one, the rest the finest. Each head halves its map with stride-2
convolutions down to 1x1, then an equalised linear layer gives the slot's code. Module names follow
the released `encoder.pt` (under the prefix `encoder.`), so its state dict loads as it is.

Whether the codes are Z+ (DualStyleGAN's `encoder.pt`) or W+ (`encoder_wplus.pt`) is a property of
the trained weights, not of the network; `PSPEncoder.space` records it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EqualLinear

COARSE_END, MIDDLE_END = 3, 7  # heads 0-2 read the coarse map, 3-6 the middle one, 7+ the fine one
IRSE50_UNITS = (3, 4, 14, 3)
IRSE50_WIDTHS = (64, 128, 256, 512)


class SqueezeExcite(nn.Module):
    """Channel gating: global average, 1x1 down by `reduction`, ReLU, 1x1 up, sigmoid, multiply."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


class IRSEUnit(nn.Module):
    """Bottleneck unit: BN, 3x3 conv, PReLU, 3x3 conv (carrying the stride), BN, SE; plus a shortcut
    that subsamples (same width) or is a strided 1x1 conv + BN (width change)."""

    def __init__(self, in_ch: int, depth: int, stride: int):
        super().__init__()
        self.stride = stride
        if in_ch != depth:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        else:
            self.shortcut_layer = None  # a 1x1 max-pool with this stride: plain subsampling
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SqueezeExcite(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x[:, :, ::self.stride, ::self.stride] if self.shortcut_layer is None else self.shortcut_layer(x)
        return self.res_layer(x) + short


class StyleHead(nn.Module):
    """Stride-2 3x3 convs with leaky ReLU (slope 0.01) from `spatial` px down to 1, then an
    equalised linear layer: a feature map [B, C, s, s] -> one code [B, C]."""

    def __init__(self, channels: int, spatial: int):
        super().__init__()
        n_down = max(1, spatial.bit_length() - 1)
        layers: list[nn.Module] = []
        for _ in range(n_down):
            layers += [nn.Conv2d(channels, channels, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


def stage_plan(units: tuple[int, ...], widths: tuple[int, ...], stem: int) -> list[tuple[int, int, int]]:
    """(in_ch, depth, stride) of every unit: each stage opens with a stride-2 unit."""
    plan, in_ch = [], stem
    for n, depth in zip(units, widths):
        plan += [(in_ch, depth, 2)] + [(depth, depth, 1)] * (n - 1)
        in_ch = depth
    return plan


class GradualStyleEncoder(nn.Module):
    """pSp's encoder: image [B, 3, S, S] in [-1, 1] -> codes [B, n_styles, style_dim].

    The official one: units IRSE50_UNITS, widths IRSE50_WIDTHS, input 256 px, 18 styles of 512.
    The code width equals the last stage's width (512 there).
    """

    def __init__(self, n_styles: int = 18, units: tuple[int, ...] = IRSE50_UNITS,
                 widths: tuple[int, ...] = IRSE50_WIDTHS, input_size: int = 256, in_ch: int = 3):
        super().__init__()
        if len(units) != 4 or len(widths) != 4:
            raise ValueError("the pyramid needs exactly four backbone stages")
        self.config = dict(n_styles=n_styles, units=tuple(units), widths=tuple(widths), input_size=input_size, in_ch=in_ch)
        self.input_size = input_size
        self.n_styles = n_styles
        self.input_layer = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        self.body = nn.Sequential(*[IRSEUnit(*u) for u in stage_plan(units, widths, widths[0])])
        ends = [sum(units[: i + 1]) - 1 for i in range(4)]
        self.taps = (ends[1], ends[2], ends[3])  # fine, middle, coarse maps
        top = widths[3]
        coarse = input_size // 16  # the stem keeps the size, each stage halves it
        self.styles = nn.ModuleList(
            StyleHead(top, coarse if i < COARSE_END else 2 * coarse if i < MIDDLE_END else 4 * coarse)
            for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(widths[2], top, 1)
        self.latlayer2 = nn.Conv2d(widths[1], top, 1)

    @staticmethod
    def _upsample_add(x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=lateral.shape[2:], mode="bilinear", align_corners=True) + lateral

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, input_size, input_size] in [-1, 1] -> [B, n_styles, style_dim]."""
        x = self.input_layer(x)
        feats = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                feats[i] = x
        fine_in, mid_in, coarse = (feats[t] for t in self.taps)
        middle = self._upsample_add(coarse, self.latlayer1(mid_in))
        fine = self._upsample_add(middle, self.latlayer2(fine_in))
        codes = [head(coarse if i < COARSE_END else middle if i < MIDDLE_END else fine)
                 for i, head in enumerate(self.styles)]
        return torch.stack(codes, dim=1)


@dataclass
class PSPEncoder:
    """A loaded pSp file: the encoder, the code it adds to every output (`latent_avg`, when the
    file was trained with start_from_latent_avg) and which space the codes live in."""

    encoder: GradualStyleEncoder
    latent_avg: torch.Tensor | None  # [style_dim] or [n_styles, style_dim]
    space: str  # "z+" or "w+"

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] (any size: area-averaged to the input size when larger,
        as the official script does) -> codes [B, n_styles, style_dim] in `space`."""
        size = self.encoder.input_size
        if image.shape[-1] != size or image.shape[-2] != size:
            image = F.adaptive_avg_pool2d(image, size) if image.shape[-1] > size else \
                F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        codes = self.encoder(image)
        if self.latent_avg is not None:
            codes = codes + self.latent_avg.to(codes)
        return codes

    def to(self, device) -> "PSPEncoder":
        self.encoder.to(device)
        if self.latent_avg is not None:
            self.latent_avg = self.latent_avg.to(device)
        return self
