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
    atomically (the caller has checked the path: replacing.check_weights_output)."""
    obj = {"ckpt": factor.source, "eigvec": factor.eigvec.contiguous()}
    if factor.values is not None:
        obj["values"] = factor.values
    return save_checkpoint(path, obj)


def load_factor(path: str | Path, style_dim: int | None = None) -> Factor:
    """A factor.pt written by `cartoongan factor` or rosinality's closed_form_factorization.py,
    checked (against a generator's style_dim when given). One-line errors naming the file."""
    return checked_factor(read_torch_file(path), path, style_dim)


# rosinality's and our directions are an SVD's: unit columns. A column of another length moves w by
# degree times it, so a rescaled or foreign file would walk off the mapping's range (grey sheets).
# Loose enough for a file saved in bfloat16 (columns up to 2e-3 off), tight for anything rescaled.
UNIT_TOLERANCE = 1e-2


def checked_factor(obj, path: str | Path, style_dim: int | None = None) -> Factor:
    """The Factor of a loaded factor file, or CheckpointError naming what is wrong with it."""
    eigvec = obj.get("eigvec") if isinstance(obj, dict) else None
    if not isinstance(eigvec, torch.Tensor):
        damaged = f"a damaged factor file (its 'eigvec' is a {type(eigvec).__name__}, not a tensor)" \
            if isinstance(obj, dict) and "eigvec" in obj else "not a factor file (no 'eigvec' tensor)"
        raise CheckpointError(f"{path} is {damaged}: write one with `cartoongan factor CKPT -o factor.pt`")
    needs = f"[{style_dim}, K]" if style_dim is not None else "[style_dim, K]"
    if eigvec.layout != torch.strided or eigvec.ndim != 2 or not eigvec.is_floating_point() or \
            eigvec.shape[1] == 0 or (style_dim is not None and eigvec.shape[0] != style_dim):
        layout = "" if eigvec.layout == torch.strided else f", {str(eigvec.layout).removeprefix('torch.')}"
        raise CheckpointError(f"{path}: its directions are {tuple(eigvec.shape)} ({eigvec.dtype}{layout}), "
                              f"{'the generator needs' if style_dim is not None else 'a factor holds'} {needs} "
                              "dense floats: factorize the model with `cartoongan factor`")
    if not torch.isfinite(eigvec).all():
        raise CheckpointError(f"{path}: its directions hold NaN or inf values (a damaged file): factorize again")
    lengths = eigvec.double().norm(dim=0)
    if ((lengths - 1).abs() > UNIT_TOLERANCE).any():
        raise CheckpointError(f"{path}: its directions are not unit vectors (lengths {float(lengths.min()):.3g} to "
                              f"{float(lengths.max()):.3g}; an SVD's are 1): a damaged or rescaled file, factorize again")
    values = obj.get("values")
    if not (isinstance(values, torch.Tensor) and values.layout == torch.strided and values.is_floating_point()
            and values.shape == (eigvec.shape[1],) and bool(torch.isfinite(values).all())):
        values = None  # optional (rosinality's files have none), and only `info` reads it
    return Factor(eigvec.float(), values, str(obj.get("ckpt") or ""))


def is_factor_file(obj) -> bool:
    """Whether a loaded torch file is meant as a factor file (and no checkpoint that happens to hold
    'eigvec'): an 'eigvec' of any kind, so that a damaged one is named as a factor file's fault."""
    return isinstance(obj, dict) and "eigvec" in obj and not any(k in obj for k in ("g_ema", "g", "state_dict"))


def describe_factor(obj: dict, path: str | Path) -> dict:
    """A summary for `cartoongan info` of a loaded factor file (CheckpointError when edit would refuse it)."""
    factor = checked_factor(obj, path)
    summary = {"kind": "SeFa factor (latent directions; cartoongan edit --factor)",
               "style_dim": factor.eigvec.shape[0], "directions": factor.eigvec.shape[1],
               "factorized_from": factor.source or None}
    if factor.values is not None and float(factor.values.square().sum()) > 0:
        energy = factor.values.double().square()
        summary["variance_share_first_5"] = round(float(energy[:5].sum() / energy.sum()), 4)
    return summary
