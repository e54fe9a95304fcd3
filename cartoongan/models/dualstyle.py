"""DualStyleGAN (Yang et al., CVPR 2022): a frozen StyleGAN2 plus an extrinsic style path.

The intrinsic path is an ordinary StyleGAN2 (`generator`, rosinality's key names). The extrinsic
path takes an exemplar's code, already mapped to W+ by the intrinsic mapping network, and acts in
two ways, by w+ slot k (rosinality's slot order, see generator.py):

- structure, slots k <= `res_index` (the convolutions at 4-32 px): the exemplar's W+ row goes
  through a small transform `style` (pixel norm, equalised linear layers, lr multiplier 0.01) and
  drives a ModRes block `res[k]` placed after the slot-k convolution:
  `x <- x + w_k * ModRes_k(x, T(ex_k))`;
- colour, slots k > `res_index`: the style input of slot k becomes
  `w_k * res[k](ex_k) + (1 - w_k) * latent_k`, `res[k]` an equalised linear layer.

The toRGB slots at or below `res_index` read the intrinsic code unchanged. Module names follow the
released checkpoints (`generator.`, `style.1`, `style.2`, `res.0`...), so their state dicts load
as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from .generator import Generator
from .discriminator import ConvLayer
from .layers import EqualLinear, PixelNorm

RES_INDEX = 6  # last slot with a ModRes block in the released models (4-32 px)
INSTANCE_NORM_EPS = 1e-5  # torch.nn.InstanceNorm2d's default, which the released models were trained with


def default_weights(n_latent: int = 18, res_index: int = RES_INDEX) -> list[float]:
    """The official default blend: 0.75 for the structure slots, 1 for the colour slots."""
    return [0.75 if k <= res_index else 1.0 for k in range(n_latent)]


class AdaIN(nn.Module):
    """Instance norm, then a per-channel scale and shift predicted by a plain linear layer.

    `style` is an ordinary nn.Linear (not equalised), its output split as (gamma, beta).
    """

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.style = nn.Linear(style_dim, 2 * channels)
        with torch.no_grad():  # identity at initialisation: gamma = 1, beta = 0
            self.style.bias[:channels] = 1
            self.style.bias[channels:] = 0

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W], s: [B, style_dim] -> [B, C, H, W]."""
        gamma, beta = self.style(s)[:, :, None, None].chunk(2, dim=1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        return gamma * (x - mean) * torch.rsqrt(var + INSTANCE_NORM_EPS) + beta


class ModRes(nn.Module):
    """Modulative residual block: two (AdaIN, conv, leaky ReLU) stages added back, scaled by w."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        # rosinality's ConvLayer (keys `0.weight`, `1.bias`), as the discriminator's
        self.conv = ConvLayer(channels, channels, 3)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.norm = AdaIN(channels, style_dim)
        self.norm2 = AdaIN(channels, style_dim)
        with torch.no_grad():  # a near-zero residual at initialisation (training is out of scope)
            self.conv[0].weight.mul_(0.01)
            self.conv2[0].weight.mul_(0.01)

    def forward(self, x: torch.Tensor, s: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """x: [B, C, H, W], s: [B, style_dim] (the transformed exemplar code) -> [B, C, H, W]."""
        if weight == 0:
            return x
        out = self.conv2(self.norm2(self.conv(self.norm(x, s)), s))
        return x + out * weight


def colour_layer(style_dim: int) -> EqualLinear:
    """An equalised linear layer initialised near the identity (as the paper's T_c starts)."""
    layer = EqualLinear(style_dim, style_dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(style_dim) * style_dim**0.5 + torch.randn(style_dim, style_dim) * 0.01)
    return layer


class DualStyleGenerator(nn.Module):
    """DualStyleGAN: `generator` (intrinsic StyleGAN2), `style` (structure transform), `res`
    (one module per w+ slot: ModRes for slots 0..res_index, colour layers after)."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, n_structure_mlp: int = 2,
                 res_index: int = RES_INDEX, **generator_kw):
        super().__init__()
        self.generator = Generator(size, style_dim=style_dim, n_mlp=n_mlp, **generator_kw)
        g = self.generator
        self.res_index = res_index
        self.config = dict(g.config, n_structure_mlp=n_structure_mlp, res_index=res_index)
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=0.01, activation=True)
                                                  for _ in range(n_structure_mlp)])
        self.res = nn.ModuleList()
        for k in range(g.n_latent):
            if k <= res_index:
                self.res.append(ModRes(g.channels[self.conv_resolution(k)], style_dim))
            else:
                self.res.append(colour_layer(style_dim))

    @property
    def size(self) -> int:
        return self.generator.size

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    @property
    def style_dim(self) -> int:
        return self.generator.style_dim

    @staticmethod
    def conv_resolution(k: int) -> int:
        """Resolution of the convolution that reads w+ slot k (slot 0: 4 px; 2b-1, 2b: 4*2**b)."""
        return 4 * 2 ** ((k + 1) // 2)

    # ---- codes -----------------------------------------------------------------------
    def map_zplus(self, z: torch.Tensor) -> torch.Tensor:
        """Z+ [B, n_latent, style_dim] -> W+ [B, n_latent, style_dim], each row through the
        intrinsic mapping network (how both paths' codes enter the model)."""
        b, n, d = z.shape
        return self.generator.mapping(z.reshape(b * n, d)).reshape(b, n, d)

    def intrinsic_ws(self, code: torch.Tensor, space: str = "z+", truncation: float = 1.0) -> torch.Tensor:
        """Intrinsic code -> truncated W+ [B, n_latent, style_dim].

        code: Z+ or W+ [B, n_latent, style_dim], or z [B, style_dim] (space "z", one w for all
        slots). Truncation scales W+ towards 0, not towards the average w, as the released
        scripts do (truncation_latent=0); psi >= 1 leaves it alone.
        """
        if space == "z":
            ws = self.generator.broadcast(self.generator.mapping(code))
        elif space == "z+":
            ws = self.map_zplus(code)
        elif space == "w+":
            ws = code
        else:
            raise ValueError(f"space must be z, z+ or w+, got {space!r}")
        return ws * truncation if truncation < 1 else ws

    # ---- synthesis -------------------------------------------------------------------
    def synthesis(self, ws: torch.Tensor, exstyle: torch.Tensor | None, weights=None, use_res: bool = True,
                  fuse_index: int | None = None, noise_mode: str = "const", noises=None) -> torch.Tensor:
        """Render an image [B, 3, size, size].

        ws: intrinsic W+ [B, n_latent, style_dim] (already truncated); exstyle: extrinsic W+
        [B or 1, n_latent, style_dim] (the exemplar's Z+ mapped by `map_zplus`); weights: n_latent
        blend weights (default `default_weights`); fuse_index: slots above it skip the extrinsic
        path (default: none do); use_res=False renders the intrinsic StyleGAN2 alone.
        """
        g = self.generator
        n = g.n_latent
        weights = list(default_weights(n, self.res_index) if weights is None else weights)
        if len(weights) != n:
            raise ValueError(f"need {n} interpolation weights, got {len(weights)}")
        fuse_index = n if fuse_index is None else fuse_index
        if use_res:
            if exstyle is None:
                raise ValueError("use_res needs an extrinsic code")
            exstyle = exstyle.expand(ws.shape[0], -1, -1)
            structure = self.map_structure(exstyle)
        noise = g._noise_list(noise_mode, noises)
        use_noise = noise_mode != "none" or noises is not None

        def active(k: int) -> bool:  # slot 0's ModRes needs fuse_index > 0, the others >= k
            return use_res and fuse_index >= max(k, 1)

        def style_in(k: int) -> torch.Tensor:
            if active(k) and k > self.res_index:
                return weights[k] * self.res[k](exstyle[:, k]) + (1 - weights[k]) * ws[:, k]
            return ws[:, k]

        def conv(layer, x: torch.Tensor, k: int) -> torch.Tensor:
            x = layer(x, style_in(k), noise[k], use_noise)
            if active(k) and k <= self.res_index:
                x = self.res[k](x, structure[:, k], weights[k])
            return x

        x = g.input(ws.shape[0]).to(ws.dtype)
        if g.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skip = None
        for layer, k, rgb in g.layer_order():
            if rgb:
                skip = layer(x, style_in(k), skip)
            else:
                x = conv(layer, x, k)
        return skip

    def map_structure(self, exstyle: torch.Tensor) -> torch.Tensor:
        """Extrinsic W+ [B, n_latent, D] -> the ModRes blocks' inputs [B, n_latent, D] (row-wise)."""
        b, n, d = exstyle.shape
        return self.style(exstyle.reshape(b * n, d)).reshape(b, n, d)

    def forward(self, code: torch.Tensor, ex_zplus: torch.Tensor, space: str = "z+", truncation: float = 1.0,
                **synthesis_kw) -> torch.Tensor:
        """Intrinsic code (see intrinsic_ws) and the exemplar's Z+ code [B or 1, n_latent, D] -> image."""
        ws = self.intrinsic_ws(code, space, truncation)
        return self.synthesis(ws, self.map_zplus(ex_zplus), **synthesis_kw)
