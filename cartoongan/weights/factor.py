"""SeFa factor files: latent directions of a generator (pipelines/sefa.py finds them), in the format
of rosinality's closed_form_factorization.py: {"ckpt": its source, "eigvec": [style_dim, K], one
direction per column, strongest first}; ours add "values", the singular values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .checkpoint import read_torch_file, save_checkpoint


@dataclass
class Factor:
    """Directions of W, one per column of eigvec [style_dim, style_dim], strongest first;
    singular values [style_dim] where known (a rosinality file has none)."""
    eigvec: torch.Tensor
    values: torch.Tensor | None = None
    source: str = ""


def save_factor(factor: Factor, path: str | Path) -> Path:
    """Write factor as rosinality's factor.pt ({"ckpt": source, "eigvec": [D, D]}, plus "values"),
    atomically (the caller has checked the path: outputs.check_checkpoint_output)."""
    obj = {"ckpt": factor.source, "eigvec": factor.eigvec.contiguous()}
    if factor.values is not None:
        obj["values"] = factor.values
    return save_checkpoint(path, obj)


def load_factor(path: str | Path, style_dim: int) -> Factor:
    """A factor.pt written by `cartoongan factor` or rosinality's closed_form_factorization.py,
    checked against a generator's style_dim. One-line errors naming the file."""
    obj = read_torch_file(path)
    eigvec = obj.get("eigvec") if isinstance(obj, dict) else None
    if not isinstance(eigvec, torch.Tensor):
        raise CheckpointError(f"{path} is not a factor file (no 'eigvec' tensor): write one with "
                              "`cartoongan factor CKPT -o factor.pt`")
    if eigvec.ndim != 2 or eigvec.shape[0] != style_dim or not eigvec.is_floating_point():
        raise CheckpointError(f"{path}: its directions are {tuple(eigvec.shape)} ({eigvec.dtype}), the generator "
                              f"needs [{style_dim}, K] floats: factorize this model with `cartoongan factor`")
    if not torch.isfinite(eigvec).all():
        raise CheckpointError(f"{path}: its directions hold NaN or inf values (a damaged file): factorize again")
    values = obj.get("values")
    return Factor(eigvec.float(), values if isinstance(values, torch.Tensor) else None, str(obj.get("ckpt") or ""))


def is_factor_file(obj) -> bool:
    """Whether a loaded torch file is a factor file (and no checkpoint that happens to hold 'eigvec')."""
    return isinstance(obj, dict) and isinstance(obj.get("eigvec"), torch.Tensor) and \
        not any(k in obj for k in ("g_ema", "g", "state_dict"))


def describe_factor(obj: dict) -> dict:
    """A summary for `cartoongan info` of a loaded factor file."""
    eigvec, values = obj["eigvec"], obj.get("values")
    summary = {"kind": "SeFa factor (latent directions; cartoongan edit --factor)", "style_dim": eigvec.shape[0],
               "directions": eigvec.shape[1] if eigvec.ndim == 2 else None, "factorized_from": obj.get("ckpt")}
    if isinstance(values, torch.Tensor) and values.numel() and float(values.square().sum()) > 0:
        energy = values.double().square()
        summary["variance_share_first_5"] = round(float(energy[:5].sum() / energy.sum()), 4)
    return summary
