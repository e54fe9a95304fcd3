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
import re
import tempfile
from pathlib import Path

import torch

from .architecture import channel_widths
from .discriminator import Discriminator
from .errors import CheckpointError
from .generator import Generator

FORMAT_VERSION = 1
# rosinality's train.py stores its argparse namespace under "args"; nothing else may be unpickled
SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without executing code from it (torch.load with weights_only=True)."""
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
    if not isinstance(ckpt, dict) or not ({"g_ema", "g"} & set(ckpt)):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} holds no generator ('g_ema' or 'g'); found {keys}: pass a StyleGAN2 checkpoint")
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


# ---- architecture from tensor shapes ------------------------------------------------------
def _fit_widths(widths: dict[int, int], what: str) -> dict:
    """Find (channel_multiplier, channel_base, channel_max) that reproduce per-resolution widths."""
    size, cmax = max(widths), max(widths.values())
    candidates = [(m, 16384) for m in (1, 2, 4, 8)] + [(1, widths[size] * size)]
    for mult, base in candidates:
        if channel_widths(size, mult, base, cmax) == widths:
            return dict(channel_multiplier=mult, channel_base=base, channel_max=cmax)
    raise CheckpointError(f"{what} has channel widths {widths} that no StyleGAN2 width rule reproduces")


def _require(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd or not torch.is_tensor(sd[key]):
        raise CheckpointError(f"{what} state dict lacks '{key}': not a rosinality-layout StyleGAN2 {what}")
    return sd[key]


def infer_generator_config(sd: dict) -> dict:
    """Generator constructor arguments from a rosinality-layout state dict."""
    style_dim = _require(sd, "style.1.weight", "generator").shape[1]
    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    n_rgb = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
    widths = {4: _require(sd, "input.input", "generator").shape[1]}
    for b in range(1, n_rgb + 1):
        widths[4 * 2**b] = _require(sd, f"convs.{2 * b - 1}.conv.weight", "generator").shape[1]
    return dict(size=4 * 2**n_rgb, style_dim=style_dim, n_mlp=n_mlp, **_fit_widths(widths, "generator"))


def infer_discriminator_config(sd: dict) -> dict:
    """Discriminator constructor arguments from a rosinality-layout state dict."""
    n_res = sum(1 for k in sd if k.startswith("convs.") and k.endswith(".conv1.0.weight"))
    size = 4 * 2**n_res
    widths = {size: _require(sd, "convs.0.0.weight", "discriminator").shape[0]}
    for k in range(1, n_res + 1):
        widths[size // 2**k] = _require(sd, f"convs.{k}.conv2.1.weight", "discriminator").shape[0]
    return dict(size=size, **_fit_widths(widths, "discriminator"))


def _load_state(module: torch.nn.Module, sd: dict, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        parts = [f"{len(v)} {n} (e.g. {v[0]})" for n, v in (("missing", missing), ("unexpected", extra),
                                                             ("mis-shaped", bad)) if v]
        raise CheckpointError(f"{what} weights do not fit the network: {', '.join(parts)}")
    module.load_state_dict(sd, strict=True)


def generator_config(ckpt: dict, which: str = "g_ema") -> dict:
    meta = ckpt.get("cartoongan") or {}
    if isinstance(meta, dict) and isinstance(meta.get("generator"), dict):
        return dict(meta["generator"])
    return infer_generator_config(ckpt[which])


def build_generator(ckpt: dict, which: str = "g_ema", device: str | torch.device = "cpu") -> Generator:
    """A Generator holding the checkpoint's `which` weights (g_ema, or g), with w_avg when stored."""
    if which not in ckpt:
        which = "g" if which == "g_ema" and "g" in ckpt else which
    if which not in ckpt or not isinstance(ckpt[which], dict):
        raise CheckpointError(f"checkpoint has no '{which}' generator weights")
    try:
        gen = Generator(**generator_config(ckpt, which))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint's generator configuration is invalid: {exc}") from None
    _load_state(gen, ckpt[which], f"generator '{which}'")
    if torch.is_tensor(ckpt.get("latent_avg")):
        gen.w_avg = ckpt["latent_avg"].detach().float().reshape(-1)[: gen.style_dim].clone()
    return gen.to(device)


def build_discriminator(ckpt: dict, device: str | torch.device = "cpu") -> Discriminator:
    """A Discriminator holding the checkpoint's `d` weights."""
    if not isinstance(ckpt.get("d"), dict):
        raise CheckpointError("checkpoint has no discriminator ('d')")
    meta = ckpt.get("cartoongan") or {}
    cfg = meta.get("discriminator") if isinstance(meta, dict) and isinstance(meta.get("discriminator"), dict) \
        else infer_discriminator_config(ckpt["d"])
    disc = Discriminator(**cfg)
    _load_state(disc, ckpt["d"], "discriminator 'd'")
    return disc.to(device)


def generator_checkpoint(g_ema: Generator, **meta) -> dict:
    """A checkpoint holding only g_ema and latent_avg (like rosinality's convert_weight.py), plus metadata."""
    ckpt = {"g_ema": {k: v.detach().cpu() for k, v in g_ema.state_dict().items()},
            "cartoongan": {"version": FORMAT_VERSION, "generator": dict(g_ema.config), **meta}}
    if g_ema.w_avg is not None:
        ckpt["latent_avg"] = g_ema.w_avg.detach().cpu()
    return ckpt


def describe(ckpt: dict) -> dict:
    """A summary for `cartoongan info`: architecture, contents, step and provenance."""
    which = "g_ema" if "g_ema" in ckpt else "g"
    cfg = generator_config(ckpt, which)
    n_params = sum(v.numel() for k, v in ckpt[which].items() if not k.startswith("noises."))
    meta = ckpt.get("cartoongan") if isinstance(ckpt.get("cartoongan"), dict) else {}
    return {
        "resolution": cfg["size"],
        "style_dim": cfg["style_dim"],
        "mapping_layers": cfg["n_mlp"],
        "channels": channel_widths(cfg["size"], cfg["channel_multiplier"], cfg["channel_base"], cfg["channel_max"]),
        "generator_parameters": n_params,
        "contains": [k for k in ("g", "g_ema", "d", "g_optim", "d_optim", "latent_avg", "ada_aug_p") if k in ckpt],
        "step": meta.get("step"),
        "kind": meta.get("kind"),
        "provenance": meta.get("provenance"),
        "format": "cartoongan" if meta else "rosinality",
    }


def slim_checkpoint(ckpt: dict, keep_training_nets: bool = True) -> dict:
    """The checkpoint without optimiser and RNG state (for sharing): g_ema, latent_avg and metadata,
    plus g and d when keep_training_nets (so that it can still be fine-tuned)."""
    keys = ["g_ema", "latent_avg", "cartoongan"] + (["g", "d"] if keep_training_nets else [])
    return {k: ckpt[k] for k in keys if k in ckpt}
