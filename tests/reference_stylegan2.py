"""A slow, literal StyleGAN2 generator written from rosinality's documented layout.

Independent of cartoongan's modules: it reads a rosinality-format state dict by key name and
computes the forward pass with per-sample weight modulation and upfirdn2d by explicit zero
insertion, padding and convolution, the way the papers describe it. Used only to check parity.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F


def expected_generator_shapes(size, style_dim, n_mlp, channels):
    """Every key and shape of rosinality's Generator state dict, from its documented layout."""
    shapes = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"] = (style_dim, style_dim)
        shapes[f"style.{i}.bias"] = (style_dim,)
    log = int(math.log2(size))

    def styled(prefix, cin, cout, up):
        shapes[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (cout,)

    def rgb(prefix, cin, up):
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)
        shapes[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)

    shapes["input.input"] = (1, channels[4], 4, 4)
    styled("conv1", channels[4], channels[4], False)
    rgb("to_rgb1", channels[4], False)
    for b, i in enumerate(range(3, log + 1)):
        r = 2**i
        styled(f"convs.{2 * b}", channels[r // 2], channels[r], True)
        styled(f"convs.{2 * b + 1}", channels[r], channels[r], False)
        rgb(f"to_rgbs.{b}", channels[r], True)
    for layer in range((log - 2) * 2 + 1):
        r = 2 ** ((layer + 5) // 2)
        shapes[f"noises.noise_{layer}"] = (1, 1, r, r)
    return shapes


def _kernel(gain):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum() * gain


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    b, c, h, w = x.shape
    y = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
    y[:, :, ::up, ::up] = x
    y = F.pad(y, (pad[0], pad[1], pad[0], pad[1]))
    k = torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(y, k, groups=c)[:, :, ::down, ::down]


def _linear(x, sd, prefix, lr_mul, act):
    wt = sd[prefix + ".weight"]
    out = x @ (wt * lr_mul / math.sqrt(wt.shape[1])).t() + sd[prefix + ".bias"] * lr_mul
    return F.leaky_relu(out, 0.2) * math.sqrt(2) if act else out


def _modconv(x, style, sd, prefix, demod, up):
    weight = sd[prefix + ".weight"][0]
    cout, cin, k, _ = weight.shape
    s = _linear(style, sd, prefix + ".modulation", 1.0, False)
    outs = []
    for i in range(x.shape[0]):
        wi = weight / math.sqrt(cin * k * k) * s[i].view(1, cin, 1, 1)
        if demod:
            wi = wi / torch.sqrt(wi.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if up:
            o = F.conv_transpose2d(x[i: i + 1], wi.transpose(0, 1), stride=2)
            o = upfirdn2d(o, _kernel(4.0), pad=(1, 1))
        else:
            o = F.conv2d(x[i: i + 1], wi, padding=k // 2)
        outs.append(o)
    return torch.cat(outs)


def _styled(x, style, sd, prefix, noise, up):
    x = _modconv(x, style, sd, prefix + ".conv", True, up)
    x = x + sd[prefix + ".noise.weight"] * noise
    return F.leaky_relu(x + sd[prefix + ".activate.bias"].view(1, -1, 1, 1), 0.2) * math.sqrt(2)


def _rgb(x, style, sd, prefix, skip):
    out = _modconv(x, style, sd, prefix + ".conv", False, False) + sd[prefix + ".bias"]
    if skip is not None:
        out = out + upfirdn2d(skip, _kernel(4.0), up=2, pad=(2, 1))
    return out


@torch.no_grad()
def reference_generate(sd, z, n_mlp, lr_mlp=0.01):
    """Image [B, 3, size, size] of rosinality's Generator([z], randomize_noise=False)."""
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        x = _linear(x, sd, f"style.{i}", lr_mlp, True)
    w = x
    n_rgb = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
    out = sd["input.input"].repeat(z.shape[0], 1, 1, 1)
    out = _styled(out, w, sd, "conv1", sd["noises.noise_0"], False)
    skip = _rgb(out, w, sd, "to_rgb1", None)
    for b in range(n_rgb):
        out = _styled(out, w, sd, f"convs.{2 * b}", sd[f"noises.noise_{2 * b + 1}"], True)
        out = _styled(out, w, sd, f"convs.{2 * b + 1}", sd[f"noises.noise_{2 * b + 2}"], False)
        skip = _rgb(out, w, sd, f"to_rgbs.{b}", skip)
    return skip
