"""An output that would replace a file of another kind is refused: `factor -o trained.pt` wrote a
67 KB factor file over a trained generator, and `export -o factor.pt` the other way round.

A file of the kind the command writes is replaced, as `cp` would (rerunning `swap` to the same
name is the usual thing to do), and so is one no reader takes for a model (a torn copy, zero bytes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import CartoonganError, OutputError
from ..filekind import is_legacy_torch
from ..outputs import check_checkpoint_output
from .checkpoint import check_checkpoint, read_torch_file

GENERATOR = "a generator checkpoint"
FACTOR = "a SeFa factor file"


def held_kind(path: str | Path) -> str | None:
    """What an existing file holds, as a reader of it sees it: GENERATOR, FACTOR, another model's
    weights (DualStyleGAN, pSp, an NVlabs pickle), another PyTorch file, or None for no file or
    none a reader takes (zero bytes, torn, foreign)."""
    from .dualstyle import is_dualstyle_state, is_psp_file  # both import checkpoint, as this does
    from .factor import is_factor_file
    from .nvlabs import looks_like_nvlabs_pickle

    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = read_torch_file(path, mmap=True)
    except CartoonganError:  # not loadable as plain data: an NVlabs pickle, or none a reader takes
        if looks_like_nvlabs_pickle(path):
            return "an NVlabs pickle"
        # a legacy torch file of pickle protocol 4+ is unreadable weights-only, and still someone's model
        return "a legacy PyTorch file" if is_legacy_torch(_head(path)) else None
    if is_factor_file(obj):
        return FACTOR
    if isinstance(obj, dict) and is_dualstyle_state(obj.get("g_ema")):
        return "a DualStyleGAN generator"
    if is_psp_file(obj):
        return "a pSp encoder"
    try:
        check_checkpoint(path, obj)
    except CartoonganError:
        return "a PyTorch file of another kind"
    return GENERATOR


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(32)
    except OSError:
        return b""


def check_weights_output(path: str | Path, writes: str, what: str = "-o", inputs: Iterable = ()) -> Path:
    """outputs.check_checkpoint_output, and refuse (OutputError) an existing `path` holding another
    kind of file than `writes` (GENERATOR or FACTOR): it would be lost to a file of another use."""
    path = check_checkpoint_output(path, what, inputs)
    held = held_kind(path)
    if held is not None and held != writes:
        raise OutputError(f"{what} {path} holds {held}, which this would replace with {writes}: "
                          "name another file (or delete that one first)")
    return path
