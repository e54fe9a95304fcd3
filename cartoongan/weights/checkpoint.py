"""Checkpoints in rosinality/stylegan2-pytorch's format: safe to load, atomic to write.

A checkpoint is a dict with `g_ema` (and `g`, `d`, `g_optim`, `d_optim` when training state is
kept), optional `latent_avg` and `ada_aug_p`, plus our own `cartoongan` entry (config as plain
data, step, provenance). Files from rosinality/Cartoon-StyleGAN load here with the architecture
inferred from tensor shapes.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import shlex
import signal
import threading
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError, first_line, naming
from ..filekind import NPY_MAGIC, is_legacy_torch, is_npz, is_text, is_torch_zip, special_kind, zip_names
from ..outputs import atomic_write
from .known import missing_checkpoint

FORMAT_VERSION = 1


# rosinality's train.py stores its argparse namespace under "args"; nothing else may be unpickled
SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Read a checkpoint without executing code from it (torch.load with weights_only=True).
    `mmap`: map the tensors' bytes instead of reading them, for a caller that reads the metadata.

    NVlabs network pickles (.pkl, or any raw pickle stream) are converted on the fly by
    weights.nvlabs through a restricted unpickler, so every command accepts them too.
    """
    from .nvlabs import convert, looks_like_nvlabs_pickle  # nvlabs builds on this module

    if Path(path).is_file() and looks_like_nvlabs_pickle(path):
        return convert(path)
    return check_checkpoint(path, read_torch_file(path, map_location, mmap))


def check_checkpoint(path: str | os.PathLike, ckpt) -> dict:
    """ckpt, as read from `path` by read_torch_file, if it holds a StyleGAN2 generator in a layout
    we know; else one-line CheckpointError naming the file."""
    from .dualstyle import is_dualstyle_state, is_psp_file  # dualstyle builds on this module

    if isinstance(ckpt, dict) and is_dualstyle_state(ckpt.get("g_ema")):
        raise CheckpointError(f"{path} is a DualStyleGAN generator, not a StyleGAN2 one: use its folder with "
                              "`cartoongan dualstyle --model FOLDER`")
    if is_psp_file(ckpt):
        raise CheckpointError(f"{path} is a pSp encoder, not a StyleGAN2 checkpoint: `cartoongan dualstyle` "
                              "finds it beside --model, or takes it as --encoder")
    if isinstance(ckpt, dict) and "eigvec" in ckpt and not ({"g_ema", "g", "state_dict"} & set(ckpt)):
        # factor.is_factor_file (factor builds on this module)
        raise CheckpointError(f"{path} is a SeFa factor file (`cartoongan factor` writes them), not a generator: "
                              "pass it as `edit --factor`, and the checkpoint it was made from here")
    if isinstance(ckpt, dict) and not ({"g_ema", "g"} & set(ckpt)):
        ckpt = _bare_state_dict(path, ckpt)
    if not isinstance(ckpt, dict) or not ({"g_ema", "g"} & set(ckpt)):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} holds no generator ('g_ema' or 'g'); found {keys}: pass a StyleGAN2 checkpoint")
    for key in ("g_ema", "g", "d"):
        if isinstance(ckpt.get(key), dict):
            ckpt[key] = unwrapped(ckpt[key])
    _check_layout(path, ckpt)
    return ckpt


def _bare_state_dict(path, ckpt: dict) -> dict:
    """`torch.save(g_ema.state_dict(), path)`: a generator's weights with no checkpoint dict around
    them, taken as its g_ema; a discriminator's alone is refused, naming what it is."""
    if not _is_state_dict(ckpt):
        return ckpt
    state = unwrapped(ckpt)
    if {"style.1.weight", "input.input"} <= set(state):
        return {"g_ema": state}
    if {"final_conv.0.weight", "final_linear.0.weight"} <= set(state):
        raise CheckpointError(f"{path} is a discriminator's state dict alone, with no generator: pass the "
                              "checkpoint (or generator state dict) saved beside it")
    return ckpt


def provenance(ckpt: dict) -> dict:
    """What a checkpoint recorded of its inputs ({} when nothing; load_checkpoint has refused a
    'cartoongan' or 'provenance' entry that is not a dict)."""
    return (ckpt.get("cartoongan") or {}).get("provenance") or {}


# what a wrapper puts before every name when its state_dict() is saved instead of the network's:
# DataParallel / DistributedDataParallel ('module.') and torch.compile ('_orig_mod.')
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrapped(state: dict) -> dict:
    """A state dict saved through wrappers (any nesting of them), with their prefixes taken off every
    name; a prefix on only some names is no wrapper's and stays."""
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(isinstance(k, str) and k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# first bytes of files that get passed as checkpoints by mistake; torch.load would call an image
# "a pickle that needs code" (its bytes are no zip, so it tries the legacy pickle format)
FOREIGN_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                 NPY_MAGIC: "a NumPy array (.npy)", b"BM": "a BMP image"}


def foreign_kind(head: bytes) -> str | None:
    """What a file is whose first bytes are `head`, when they are an image's or an array's magic."""
    return next((what for magic, what in FOREIGN_MAGIC.items() if head.startswith(magic)), None)


def _refuse_known_non_checkpoints(path: Path) -> bytes:
    """The file's first 32 bytes, once they are not those of an empty file or a known non-checkpoint."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if kind := foreign_kind(head):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {kind}; pass a .pt file written by "
                              "torch.save (cartoongan, rosinality's train.py)")
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch or copy it again")
    if head.startswith(b"PK") and is_npz(zip_names(path)):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a NumPy .npz archive (projected latents "
                              "go to `cartoongan sample CKPT --projected-w FILE`)")
    return head


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False):
    """Any torch.save file, read with weights_only=True (tensors and plain data only); one-line
    CheckpointError for a missing, unsafe or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(missing_checkpoint(path))
    if kind := special_kind(path):
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file: name a .pt file")
    if not path.is_file():
        hint = f" (a training run's is {path / 'latest.pt'})" if (path / "latest.pt").is_file() else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: name a .pt inside it{hint}")
    head = _refuse_known_non_checkpoints(path)
    if is_text(head):  # a run's config.toml or log.jsonl, tab-completed in place of its latest.pt
        latest = path.parent / "latest.pt"
        beside = f"; the run's checkpoint is {latest}" if latest.is_file() else ""
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a text file{beside}")
    if head.startswith(b"PK") and (names := zip_names(path)) is not None and not is_torch_zip(names):
        # torch's reader says "[enforce fail at inline_container.cc:180] . file in archive is not in a subdirectory"
        shown = f"a zip archive of {len(names)} file(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" \
            if names else "an empty zip archive"
        raise CheckpointError(f"{path} is {shown}, not a PyTorch checkpoint: "
                              "pass a .pt file written by torch.save (a zip of images is a dataset: --data)")
    if not head.startswith((b"\x80", b"PK")):
        # torch.save writes a zip, or (legacy) a pickle of protocol 2+, whose first byte is PROTO;
        # anything else would reach the weights-only unpickler as "unsupported operand", which
        # reads like a refused class
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or another format: "
                              "its first bytes are not a pickle or a zip archive)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # a sparse tensor inside (a hand-made factor file) draws torch's note on validating it,
            # a line of torch's internals before the one line a command says about the file
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            # a legacy file of pickle protocol 3 reads fine, and torch says so in three lines a time
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # torch maps only its zip format: a legacy file (torch < 1.6, as older rosinality
            # checkpoints are) is read whole rather than refused as unreadable
            mapped = mmap and head.startswith(b"PK")
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mapped or None)
    except pickle.UnpicklingError as exc:
        if is_legacy_torch(head) and "Unsupported operand" in str(exc):
            code = f"import torch; torch.save(torch.load({str(path)!r}, weights_only=False), 'resaved.pt')"
            raise CheckpointError(
                f"{path} is a legacy (non-zip) PyTorch file pickled with protocol 4 or higher, which torch's "
                f"weights-only loader cannot read: re-save it once where you trust it, e.g. "
                f"`python -c {shlex.quote(code)}`") from None
        raise CheckpointError(
            f"refusing to load {path}: it needs pickled code or classes to load "
            f"({_refused_global(exc)}); "
            "re-save it as plain tensors (state dicts) and try again"
        ) from None
    except Exception as exc:  # torch raises many types for foreign or truncated bytes
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format: "
            f"{_unreadable_reason(path, head, exc)})"
        ) from None
    return ckpt


def _refused_global(exc: pickle.UnpicklingError) -> str:
    """What weights_only refused, out of torch's paragraph whose first line is generic advice."""
    found = re.search(r"(?:unsupported|blocked)[^\n]*?GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
    return f"refused global {found.group(1)}" if found else first_line(exc, 160, "unsupported global")


def _unreadable_reason(path: Path, head: bytes, exc: Exception) -> str:
    # a zip cut short fails with a bare EINVAL from seeking to its missing directory
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        return "a zip archive without its end: the file was cut short, e.g. by an interrupted copy"
    return first_line(exc, 120)


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())


def unusual_tensor(value: torch.Tensor) -> str | None:
    """What makes a tensor one no network can load or compute with, and what to do (None for an
    ordinary one): torch.save keeps sparse, quantized and meta (data-less) tensors, which would
    fail later as tracebacks."""
    if value.is_meta:
        return ("a meta tensor (a shape with no values: the network was saved before its weights were "
                "loaded or made): save it again from a network that holds its weights")
    if value.layout != torch.strided:
        kind = str(value.layout).removeprefix("torch.").replace("_", " ")
        return f"a {kind} tensor: save it again with dense tensors (tensor.to_dense())"
    if value.is_quantized:
        return "a quantized tensor: save it again with float tensors (tensor.dequantize())"
    return None


def _check_tensors(path: Path, key: str, state: dict) -> None:
    for name, value in state.items():
        if odd := unusual_tensor(value):
            raise CheckpointError(f"{path}: '{key}' holds {odd} (at {name!r})")


def _check_layout(path: Path, ckpt: dict) -> None:
    """The types and sizes every reader relies on, checked where the file is read."""
    for key in ("g_ema", "g", "d"):
        if key in ckpt and not _is_state_dict(ckpt[key]):
            value = ckpt[key]
            odd = next((k for k, v in value.items() if not torch.is_tensor(v)), None) if isinstance(value, dict) else None
            what = (f"'{key}' holds a {type(value[odd]).__name__} at {odd!r}, not a tensor" if odd is not None
                    else f"'{key}' is a {type(value).__name__}, expected a state dict (parameter name -> tensor)")
            raise CheckpointError(f"{path}: {what}: not a StyleGAN2 checkpoint")
        if key in ckpt:
            _check_tensors(path, key, ckpt[key])
    meta = ckpt.get("cartoongan", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'cartoongan' is a {type(meta).__name__}, expected a dict")
    if not isinstance(meta.get("provenance", {}), dict):
        raise CheckpointError(f"{path}: 'cartoongan.provenance' is a {type(meta['provenance']).__name__}, "
                              "expected a dict: the file was edited by hand")
    avg = ckpt.get("latent_avg")
    if avg is None:
        return
    style = ckpt["g_ema" if "g_ema" in ckpt else "g"].get("style.1.weight")
    style_dim = style.shape[1] if torch.is_tensor(style) and style.ndim == 2 else None
    if torch.is_tensor(avg) and (odd := unusual_tensor(avg)):
        raise CheckpointError(f"{path}: latent_avg is {odd}")
    if not torch.is_tensor(avg) or avg.ndim == 0 or (style_dim and avg.shape[-1] != style_dim):
        shape = tuple(avg.shape) if torch.is_tensor(avg) else type(avg).__name__
        raise CheckpointError(f"{path}: latent_avg is {shape}, expected a w of {style_dim or 'style_dim'} values "
                              "like the generator's; the file mixes two models")
    if not torch.isfinite(avg).all():
        raise CheckpointError(f"{path}: latent_avg holds NaN or inf values")


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Write atomically: temp file in the same folder, fsync, rename. A kill or a failed write
    (disk full: OutputError naming `path`) leaves the previous file at `path` intact and no temp file."""
    path = Path(path)
    with _signals_deferred(), atomic_write(path, durable=True) as fh:
        _torch_save(ckpt, fh)
    return path


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C and SIGTERM until the file in progress is complete: a second Ctrl-C (which
    stops a run at once) or a SIGTERM then takes effect right after the save, instead of tearing
    it into a traceback from torch.save's writer. Python handlers run in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    # after a whole file only (an error of the save itself goes up as it is), now with their own
    # handlers: SIGTERM first, as a Ctrl-C handler may raise and end the replay; two Ctrl-Cs still stop
    for sig in sorted(caught[:4], key=lambda s: s != signal.SIGTERM):
        signal.raise_signal(sig)


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write (torch.save may re-raise it as a
    RuntimeError about an 'unexpected pos', losing the cause)."""

    def __init__(self, fh):
        self._fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def _torch_save(obj, fh) -> None:
    sink = _RecordingWriter(fh)
    try:
        torch.save(obj, sink)
    except (RuntimeError, OSError):
        if sink.error is not None:
            raise sink.error from None
        raise


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, keep_training_nets: bool = True) -> Path:
    """`cartoongan export`: write `src` without optimiser and RNG state to `dst` (checked first)."""
    from .networks import build_discriminator, build_generator  # networks imports this module
    from .replacing import GENERATOR, WITH_D, checkpoint_kind, check_weights_output  # so does replacing

    check_weights_output(dst, (GENERATOR, WITH_D), "--output", inputs=[src])  # before src is read; once read:
    slim = slim_checkpoint(load_checkpoint(src), keep_training_nets)
    check_weights_output(dst, checkpoint_kind(slim), "--output", inputs=[src])
    if not any(key in slim for key in ("g_ema", "g")):  # metadata only; load_checkpoint saw a generator: g
        raise CheckpointError(f"{src} holds no g_ema, so --g-ema-only would keep no generator: export it without "
                              "--g-ema-only (g stays)")
    # what every reader of the export will check (fit, dtype, NaN): refused here, not after sharing it
    with naming(src):
        for key in ("g_ema", "g"):
            if key in slim:
                build_generator(slim, key)
        if "d" in slim:
            build_discriminator(slim)
    return save_checkpoint(dst, slim)


def slim_checkpoint(ckpt: dict, keep_training_nets: bool = True) -> dict:
    """The checkpoint without optimiser and RNG state (for sharing): g_ema, latent_avg and metadata,
    plus g and d when keep_training_nets (so that it can still be fine-tuned)."""
    keys = ["g_ema", "latent_avg", "cartoongan"] + (["g", "d"] if keep_training_nets else [])
    return {k: ckpt[k] for k in keys if k in ckpt}
