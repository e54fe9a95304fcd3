"""Checkpoints in rosinality/stylegan2-pytorch's format: safe to load, atomic to write.

A checkpoint is a dict with `g_ema` (and `g`, `d`, `g_optim`, `d_optim` when training state is
kept), optional `latent_avg` and `ada_aug_p`, plus our own `cartoongan` entry (config as plain
data, step, provenance). Files from rosinality/Cartoon-StyleGAN load here with the architecture
inferred from tensor shapes.
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError

FORMAT_VERSION = 1


# rosinality's train.py stores its argparse namespace under "args"; nothing else may be unpickled
SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without executing code from it (torch.load with weights_only=True).

    NVlabs network pickles (.pkl, or any raw pickle stream) are converted on the fly by
    weights.nvlabs through a restricted unpickler, so every command accepts them too.
    """
    from .nvlabs import convert, looks_like_nvlabs_pickle  # nvlabs builds on this module

    if Path(path).is_file() and looks_like_nvlabs_pickle(path):
        return convert(path)
    ckpt = read_torch_file(path, map_location)
    if not isinstance(ckpt, dict) or not ({"g_ema", "g"} & set(ckpt)):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} holds no generator ('g_ema' or 'g'); found {keys}: pass a StyleGAN2 checkpoint")
    return ckpt


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Any torch.save file, read with weights_only=True (tensors and plain data only); one-line
    CheckpointError for a missing, unsafe or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported global"
        raise CheckpointError(
            f"refusing to load {path}: it needs pickled code or classes to load ({first[:160]}); "
            "re-save it as plain tensors (state dicts) and try again"
        ) from None
    except Exception as exc:  # torch raises many types for foreign or truncated bytes
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        ) from None
    return ckpt


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Write atomically: temp file in the same folder, fsync, rename. A kill mid-save leaves
    the previous file at `path` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def slim_checkpoint(ckpt: dict, keep_training_nets: bool = True) -> dict:
    """The checkpoint without optimiser and RNG state (for sharing): g_ema, latent_avg and metadata,
    plus g and d when keep_training_nets (so that it can still be fine-tuned)."""
    keys = ["g_ema", "latent_avg", "cartoongan"] + (["g", "d"] if keep_training_nets else [])
    return {k: ckpt[k] for k in keys if k in ckpt}
