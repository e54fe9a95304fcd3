"""StyleGAN2 generator: mapping network, modulated convolutions, noise and skip-RGB synthesis.

Attribute names mirror rosinality/stylegan2-pytorch so the state dict loads there with
strict=True. Synthesis block b (b = 0, 1, ...) works at resolution 4 * 2**b; block 0 reads
w slots 0 (conv) and 1 (toRGB); block b >= 1 reads 2b-1, 2b (convs) and 2b+1 (toRGB).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.bias_act import SQRT2
from .architecture import channel_widths, log2_size
from .layers import BiasLeakyReLU, Blur, EqualLinear, PixelNorm, Upsample

NOISE_MODES = ("random", "const", "none")


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by a style and whose outputs are demodulated.

    Computed by activation scaling (x * s, one shared-weight conv, output * d) rather than a
    per-sample grouped conv: mathematically identical, and one large conv is faster than B small
    ones on CPUs and GPUs alike. Set `grouped = True` to use the grouped form (benchmarks).
    """

    grouped = False

    @classmethod
    @contextlib.contextmanager
    def grouped_mode(cls, enabled: bool = True):
        """Compute every ModulatedConv2d in the grouped form inside the block (benchmarks)."""
        before, cls.grouped = cls.grouped, enabled
        try:
            yield
        finally:
            cls.grouped = before

    def __init__(
        self,
        in_ch: int,  # input feature channels
        out_ch: int,  # output feature channels
        kernel_size: int,  # 3 for synthesis convs, 1 for toRGB
        style_dim: int,  # dimension of w
        demodulate: bool = True,  # normalise each output channel to unit expected variance
        upsample: bool = False,  # 2x transposed conv followed by the FIR blur
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            # transposed conv gives 2H+1 samples; padding 1+1 and a 4-tap filter bring it to 2H
            self.blur = Blur(pad=(1, 1), gain=4.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x: [B, in_ch, H, W], w: [B, style_dim] -> [B, out_ch, H', W'] (H' = 2H when upsampling)."""
        y, d = self.forward_undemodulated(x, w)
        return y if d is None else y * d[:, :, None, None].to(y.dtype)

    def forward_undemodulated(self, x: torch.Tensor, w: torch.Tensor):
        """The conv output before demodulation, and the demodulation factors d [B, out_ch] (None
        without demodulation), so that callers can fuse the scaling with what follows."""
        # conv(x * s, W * scale) = conv(x * (s * scale), W): the equalised-lr scale rides on the
        # [B, in_ch] style, inside the modulation's addmm, not on the weight (a weight-sized
        # product and its backward per layer and call); demodulation is unchanged by it
        s = self.modulation.forward_scaled(w, self.scale)
        weight = self.weight[0]
        if self.grouped:
            return self._grouped_forward(x, s, weight), None
        x = x * s[:, :, None, None].to(x.dtype)
        if self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2))
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if not self.demodulate:
            return x, None
        return x, torch.rsqrt(s.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)

    def _grouped_forward(self, x: torch.Tensor, s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b, cin, h, w = x.shape
        wt = weight[None] * s[:, None, :, None, None]  # [B, out, in, k, k]
        if self.demodulate:
            wt = wt * torch.rsqrt(wt.square().sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
        cout, k = wt.shape[1], wt.shape[-1]
        x = x.reshape(1, b * cin, h, w)
        if self.upsample:
            wt = wt.transpose(1, 2).reshape(b * cin, cout, k, k)
            x = F.conv_transpose2d(x, wt.to(x.dtype), stride=2, groups=b)
            return self.blur(x.view(b, cout, *x.shape[2:]))
        x = F.conv2d(x, wt.reshape(b * cout, cin, k, k).to(x.dtype), padding=self.padding, groups=b)
        return x.view(b, cout, *x.shape[2:])


class NoiseInjection(nn.Module):
    """Holds the learned strength (initially zero) of the per-pixel noise a StyledConv adds;
    StyledConv applies it inside its fused epilogue."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class StyledConv(nn.Module):
    """Modulated conv, noise, bias and leaky ReLU: one synthesis layer."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_ch)
        self.conv_clamp = conv_clamp  # NVlabs: clamp the activated output to +-conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None, use_noise: bool = True) -> torch.Tensor:
        """x: [B, in_ch, H, W] -> [B, out_ch, H', W']; noise [B or 1, 1, H', W'] or None for fresh noise.

        Computes lrelu(conv * d + strength * noise + bias) * sqrt(2) in three passes over the
        activations: the sqrt(2) gain moves inside the (positively homogeneous) leaky ReLU onto
        the small tensors d, bias and noise strength.
        """
        y, d = self.conv.forward_undemodulated(x, w)
        gain = SQRT2
        bias = (self.activate.bias * gain).to(y.dtype).view(1, -1, 1, 1)
        if d is None:
            out = y * gain + bias
        else:
            out = torch.addcmul(bias, y, (d * gain).to(y.dtype)[:, :, None, None])
        # in place from here: neither addcmul's backward nor the add's needs this buffer, and
        # leaky ReLU's backward reads its output's sign, so one buffer serves the three passes
        if use_noise:
            if noise is None:
                noise = torch.randn(y.shape[0], 1, y.shape[2], y.shape[3], device=y.device, dtype=y.dtype)
            noise, strength = noise.to(y.dtype), (self.noise.weight * gain).to(y.dtype)
            # in place can't grow a batch: a larger noise batch broadcasts out of place
            out = out.addcmul_(noise, strength) if noise.shape[0] <= out.shape[0] else torch.addcmul(out, noise, strength)
        out = F.leaky_relu_(out, 0.2)
        return out if self.conv_clamp is None else out.clamp(-self.conv_clamp, self.conv_clamp)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation), added to the upsampled previous RGB image."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, conv_clamp: float | None = None):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.conv_clamp = conv_clamp  # NVlabs: clamp this layer's RGB (not the running sum)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W], skip: [B, 3, H/2, W/2] or None -> RGB [B, 3, H, W]."""
        out = self.conv(x, w) + self.bias.to(x.dtype)
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


@dataclass
class SynthesisOutput:
    """image: [B, 3, size, size]; rgbs[b] / features[b]: the skip RGB image and the conv
    features after block b (filled only when asked for), lowest resolution first."""

    image: torch.Tensor
    rgbs: list[torch.Tensor] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)


class Generator(nn.Module):
    """StyleGAN2 generator (config F layout) with rosinality's parameter names."""

    def __init__(
        self,
        size: int,  # output resolution, a power of two >= 8
        style_dim: int = 512,  # dimension of z and w
        n_mlp: int = 8,  # depth of the mapping network
        channel_multiplier: int = 2,  # rosinality's width multiplier (2 = config F)
        channel_base: int = 16384,  # width = min(channel_max, multiplier * base / resolution)
        channel_max: int = 512,  # widest feature map
        lr_mlp: float = 0.01,  # learning-rate multiplier of the mapping network
        conv_clamp: float | None = None,  # clamp synthesis activations and RGB to +-X (NVlabs models: 256)
    ):
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.log_size = log2_size(size)
        self.config = dict(size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=channel_multiplier,
                           channel_base=channel_base, channel_max=channel_max, lr_mlp=lr_mlp,
                           conv_clamp=conv_clamp)
        self.channels = channel_widths(size, channel_multiplier, channel_base, channel_max)
        self.resolutions = sorted(self.channels)
        self.n_latent = self.log_size * 2 - 2
        self.num_layers = (self.log_size - 2) * 2 + 1

        self.style = nn.Sequential(
            PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)]
        )
        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], style_dim, conv_clamp=conv_clamp)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False, conv_clamp=conv_clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for res in self.resolutions[1:]:
            self.convs.append(StyledConv(ch[res // 2], ch[res], style_dim, upsample=True, conv_clamp=conv_clamp))
            self.convs.append(StyledConv(ch[res], ch[res], style_dim, conv_clamp=conv_clamp))
            self.to_rgbs.append(ToRGB(ch[res], style_dim, conv_clamp=conv_clamp))
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        # NHWC activations: whole models run faster in it on the CPU at every width measured
        # (`bench --kernels`), and GPU tensor cores want it
        self.channels_last = True
        # not part of the state dict: rosinality keeps it beside, as `latent_avg`
        self.register_buffer("w_avg", None, persistent=False)

    # ---- structure -------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.resolutions)

    def block_modules(self, b: int) -> list[nn.Module]:
        """The modules of synthesis block b (resolution 4 * 2**b); block 0 includes the constant."""
        if b == 0:
            return [self.input, self.conv1, self.to_rgb1]
        return [self.convs[2 * b - 2], self.convs[2 * b - 1], self.to_rgbs[b - 1]]

    def block_noise_names(self, b: int) -> list[str]:
        """Names (under `noises`) of the constant noise buffers that block b reads."""
        return ["noise_0"] if b == 0 else [f"noise_{2 * b - 1}", f"noise_{2 * b}"]

    def block_w_slots(self, b: int) -> list[int]:
        """The w+ slots that block b reads."""
        return [0, 1] if b == 0 else [2 * b - 1, 2 * b, 2 * b + 1]

    # ---- latents ---------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, style_dim] -> w: [B, style_dim]."""
        return self.style(z)

    def broadcast(self, w: torch.Tensor, w2: torch.Tensor | None = None, crossover: int | None = None) -> torch.Tensor:
        """w (and w2 from slot `crossover` on, for style mixing) -> w+: [B, n_latent, style_dim]."""
        ws = w.unsqueeze(1).expand(-1, self.n_latent, -1)
        if w2 is None:
            return ws
        if crossover is None or not 0 < crossover < self.n_latent:
            raise ValueError(f"crossover must be in 1..{self.n_latent - 1}, got {crossover}")
        tail = w2.unsqueeze(1).expand(-1, self.n_latent - crossover, -1)
        return torch.cat([ws[:, :crossover], tail], dim=1)

    def truncate(self, ws: torch.Tensor, psi: float) -> torch.Tensor:
        """Move w (or w+) toward the average w by factor psi (1 = no truncation)."""
        if psi == 1:
            return ws
        if self.w_avg is None:
            raise RuntimeError("truncation needs w_avg: call estimate_w_avg() or load a checkpoint with latent_avg")
        return torch.lerp(self.w_avg.to(ws.dtype), ws, psi)

    @torch.no_grad()
    def estimate_w_avg(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Set and return w_avg: the mean of n mapped z ~ N(0, I) drawn from a fixed seed. [style_dim]"""
        gen = torch.Generator().manual_seed(seed)
        # drawn on the CPU, whose RNG stream is the same on every machine: one seed, one w_avg
        z = torch.randn(n, self.style_dim, generator=gen, device="cpu").to(self.input.input.device)
        self.w_avg = self.mapping(z).mean(0)
        return self.w_avg

    def ws_from_z(self, z, z2=None, crossover=None, truncation: float = 1.0) -> torch.Tensor:
        """z (and z2 for mixing): [B, style_dim] -> w+ [B, n_latent, style_dim]."""
        w2 = None if z2 is None else self.mapping(z2)
        return self.truncate(self.broadcast(self.mapping(z), w2, crossover), truncation)

    # ---- synthesis -------------------------------------------------------------------
    def make_noise(self, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh noise maps [batch, 1, r, r] for every conv, to share between two forward passes;
        drawn by `generator` on its own device (a CPU one gives the same maps on every device)."""
        dev = self.input.input.device
        draw_on = generator.device if generator is not None else dev
        sizes = [2 ** ((i + 5) // 2) for i in range(self.num_layers)]
        return [torch.randn(batch, 1, r, r, generator=generator, device=draw_on).to(dev) for r in sizes]

    def _noise_list(self, noise_mode: str, noises) -> list:
        if noises is not None:
            return list(noises)
        if noise_mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if noise_mode in ("random", "none"):
            return [None] * self.num_layers
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random", noises=None,
                  return_rgbs: bool = False, return_features: bool = False,
                  n_blocks: int | None = None) -> SynthesisOutput:
        """w+: [B, n_latent, style_dim] -> SynthesisOutput with image [B, 3, size, size].

        `n_blocks` renders only the first n blocks (the structure loss's source needs no more than
        its taps); the image is then the skip RGB at resolution 4 * 2**(n - 1), and the outputs
        are exactly the full render's first n.
        """
        if ws.ndim != 3 or ws.shape[1] != self.n_latent:
            raise ValueError(f"ws must be [B, {self.n_latent}, {self.style_dim}], got {tuple(ws.shape)}")
        n_blocks = self.n_blocks if n_blocks is None else n_blocks
        if not 1 <= n_blocks <= self.n_blocks:
            raise ValueError(f"n_blocks must be in 1..{self.n_blocks}, got {n_blocks}")
        noise = self._noise_list(noise_mode, noises)
        use = noise_mode != "none" or noises is not None
        out = SynthesisOutput(image=None)
        x = self.input(ws.shape[0]).to(ws.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # unbind, not ws[:, i]: its backward is one stack, where each select's backward would
        # write a zero-filled w+ gradient and add it to the others (two launches per slot)
        w = ws.unbind(1)
        skip = None
        for layer, k, rgb in self.layer_order(n_blocks):
            if rgb:
                skip = layer(x, w[k], skip)
                self._record(out, x, skip, return_rgbs, return_features)
            else:
                x = layer(x, w[k], noise[k], use)
        out.image = skip
        return out

    def layer_order(self, n_blocks: int | None = None) -> list[tuple[nn.Module, int, bool]]:
        """The synthesis layers of the first n_blocks blocks in the order they run, each with its
        w+ slot (also its noise index) and whether it is a toRGB (taking x and the running skip)
        rather than a StyledConv (taking x and noise): one order for every synthesis loop."""
        order = [(self.conv1, 0, False), (self.to_rgb1, 1, True)]
        for b in range(1, self.n_blocks if n_blocks is None else n_blocks):
            order += [(self.convs[2 * b - 2], 2 * b - 1, False), (self.convs[2 * b - 1], 2 * b, False),
                      (self.to_rgbs[b - 1], 2 * b + 1, True)]
        return order

    @staticmethod
    def _record(out: SynthesisOutput, x, skip, rgbs: bool, features: bool) -> None:
        if rgbs:
            out.rgbs.append(skip)
        if features:
            out.features.append(x)

    def forward(self, z: torch.Tensor, z2: torch.Tensor | None = None, crossover: int | None = None,
                truncation: float = 1.0, noise_mode: str = "random", noises=None) -> torch.Tensor:
        """z: [B, style_dim] -> image [B, 3, size, size] in about [-1, 1]."""
        return self.synthesis(self.ws_from_z(z, z2, crossover, truncation), noise_mode, noises).image
