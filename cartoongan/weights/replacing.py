"""An output that would replace a file of another kind is refused: `factor -o trained.pt` wrote a
67 KB factor file over a trained generator, and `export -o factor.pt` the other way round.

A file of the kind the command writes is replaced, as `cp` would (rerunning `swap` to the same
name is the usual thing to do), and so is one that holds nothing to keep (zero bytes, a torn torch
file); any other file is refused by what it is (a script, a picture, an archive).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import CartoonganError, OutputError
from ..filekind import is_legacy_torch, is_text, is_torch_zip, zip_kind, zip_names
from ..outputs import check_checkpoint_output
from .checkpoint import check_checkpoint, foreign_kind, read_torch_file

GENERATOR = "a generator checkpoint"
# an export of a source (the bundled demo64_photo.pt is one): swap over it kept g_ema alone, and
# `finetune --source` of it then refused a file with no discriminator
WITH_D = "a generator checkpoint with its discriminator (what finetune --source needs)"
FACTOR = "a SeFa factor file"
# a run's latest.pt copied out of its folder (a backup): swap or export over it kept G and lost the
# discriminator and optimiser state it resumes with
TRAINING = "a training checkpoint (G, D and optimiser state: it resumes)"
TRAINING_KEYS = ("g_optim", "d_optim", "train_state")


def held_kind(path: str | Path) -> str | None:
    """What an existing file holds, as a reader of it sees it: GENERATOR, FACTOR, another model's
    weights (DualStyleGAN, pSp, an NVlabs pickle), another PyTorch file, another kind of file (a
    text file, a PNG image), or None for no file, an empty one or a torn torch file."""
    from .dualstyle import is_dualstyle_state, is_psp_file  # both import checkpoint, as this does
    from .factor import is_factor_file
    from .nvlabs import looks_like_nvlabs_pickle

    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = read_torch_file(path, mmap=True)
    except CartoonganError:  # not loadable as plain data: an NVlabs pickle, or none a reader takes
        return "an NVlabs pickle" if looks_like_nvlabs_pickle(path) else _unloadable_kind(path)
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
    if any(key in obj for key in TRAINING_KEYS):
        return TRAINING
    return checkpoint_kind(obj)


def checkpoint_kind(ckpt: dict) -> str:
    """GENERATOR or WITH_D: what a checkpoint a command writes (or finds) holds."""
    return WITH_D if isinstance(ckpt.get("d"), dict) else GENERATOR


# a file of the first kind may be replaced by one of the second: nothing of it is lost
SUPERSETS = {(GENERATOR, WITH_D)}


def _unloadable_kind(path: Path) -> str | None:
    """What a file that loads as no model holds, or None for one that holds nothing to keep: empty,
    or a torch file cut short (a torn copy of a checkpoint, which `cp` would replace too). Any other
    file is someone's: a script or a picture under `-o` (`export -o train.py`) was replaced."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return None
    if not head:
        return None
    if is_legacy_torch(head):
        # protocol 4 and 5 no weights-only reader parses: still someone's model; 2 and 3 it reads,
        # so one that failed is torn
        return "a legacy PyTorch file" if head[1] >= 4 else None
    if head.startswith(b"PK"):
        names = zip_names(path)
        if names is None:  # no readable directory: cut short
            return None
        if is_torch_zip(names):  # whole, and not plain tensors: torch.save(model), a pickled class
            return "a PyTorch file that needs pickled code to load"
        return zip_kind(names)
    return foreign_kind(head) or ("a text file" if is_text(head) else "a file of another format")


def check_weights_output(path: str | Path, writes: str | tuple[str, ...], what: str = "-o",
                         inputs: Iterable = ()) -> Path:
    """outputs.check_checkpoint_output, and refuse (OutputError) an existing `path` holding another
    kind of file than `writes` (GENERATOR, WITH_D or FACTOR; a generator alone may become one with
    its D): it would be lost to a file of another use. Several kinds: what the command may write,
    before its inputs are read to tell which (checked again, with the one kind, once they are)."""
    path = check_checkpoint_output(path, what, inputs)
    held = held_kind(path)
    kinds = (writes,) if isinstance(writes, str) else writes
    if held is not None and not any(held == kind or (held, kind) in SUPERSETS for kind in kinds):
        writes = kinds[0]
        raise OutputError(f"{what} {path} holds {held}, which this would replace with {writes}: "
                          "name another file (or delete that one first)")
    return path
