"""What a file is, going by its first bytes: the sniffing behind both directions of a swapped
argument ("X is a PNG image, not a checkpoint" and "X is a PyTorch checkpoint, not an image")."""
from __future__ import annotations

import errno
import os
import stat
import zipfile
from pathlib import Path

NPY_MAGIC = b"\x93NUMPY"
# torch.save's legacy (non-zip) format opens with a pickled magic number, a LONG1 of 10 bytes;
# protocol 2 puts it at byte 2, protocol 4 after a FRAME opcode (byte 11)
TORCH_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def special_kind(path: str | Path) -> str | None:
    """What an existing path that is neither a regular file nor a folder is ("a device", "a named
    pipe (FIFO)", "a socket"), else None. Reading a FIFO would block until someone writes to it."""
    try:
        mode = Path(path).stat().st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    return "a socket" if stat.S_ISSOCK(mode) else None


def not_found(what: str, path: str | Path, hint: str = "") -> str:
    """The line for an input that is not there: `<what> not found: PATH<hint>`, or, where `ls`
    would still list it, why: a link whose target is gone (a drive not mounted) or a loop of
    links. `hint` (" (pass a folder ...)") is left out then, as the name itself is right."""
    problem = link_problem(path)
    return f"{what} not found: {path}" + (f": {problem}" if problem else hint)


def link_problem(path: str | Path) -> str | None:
    """Why a path that is not there is still listed, with the fix; None where it is simply absent."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "it is a loop of symbolic links: fix the link"
        if os.path.islink(path):
            return f"it is a link to {os.readlink(path)}, which does not exist: mount or restore that, or fix the link"
    except ValueError:  # a NUL in the name
        pass
    return None


def is_text(head: bytes) -> bool:
    """Whether a file's first bytes are printable text (torch.save's zip and its protocol-2+ pickle
    start with a byte that is not)."""
    return all(32 <= b < 127 or b in b"\t\n\r" for b in head)


def is_legacy_torch(head: bytes) -> bool:
    """Whether a file's first bytes (32 or more) open torch.save's legacy pickle format, whatever
    its pickle protocol."""
    return head[:1] == b"\x80" and TORCH_LEGACY_MAGIC in head[:32]


def zip_names(path: str | Path) -> list[str] | None:
    """The members of a zip file, or None when it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def is_npz(names: list[str] | None) -> bool:
    """Whether a zip's members are np.savez's: top-level .npy files only (torch.save's sit in a folder)."""
    return bool(names) and all(n.endswith(".npy") and "/" not in n for n in names)


def zip_kind(names: list[str] | None) -> str | None:
    """What a zip holds, by its members (zip_names): a PyTorch checkpoint, a NumPy archive, or
    another zip archive; None when it is no readable zip."""
    if names is None:
        return None
    if is_torch_zip(names):
        return "a PyTorch checkpoint"
    return "a NumPy archive (.npz)" if is_npz(names) else "a zip archive"


def is_torch_zip(names: list[str] | None) -> bool:
    """Whether a zip's members are torch.save's: a folder holding data.pkl."""
    return any(n.endswith("/data.pkl") or n == "data.pkl" for n in names or ())
