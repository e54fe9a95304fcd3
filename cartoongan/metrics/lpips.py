"""LPIPS perceptual distance (VGG16 backbone) for projection and metrics."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CartoonganError

VGG_FILE = "vgg16-397923af.pth"  # the file torchvision's vgg16 download writes to its hub cache


def lpips_vgg(weights: str | Path | None = None):
    """LPIPS (VGG) with the backbone from `weights` or torchvision's hub cache; never random weights."""
    import lpips

    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE
    if not path.is_file():
        raise CartoonganError(
            f"LPIPS needs the VGG16 ImageNet weights {VGG_FILE}, and this machine cannot download them: "
            f"put the file at {path} or pass --lpips-weights PATH (or use --loss mse)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CartoonganError(f"{path} is not a readable VGG16 state dict") from None
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    for name, param in model.net.named_parameters():  # slice{k}.{i}.weight <- features.{i}.weight
        key = "features." + name.split(".", 1)[1]
        if key not in state or state[key].shape != param.shape:
            raise CartoonganError(f"{path} is not torchvision's VGG16 (no '{key}' of shape {tuple(param.shape)})")
        param.data.copy_(state[key])
    return model.eval().requires_grad_(False)
