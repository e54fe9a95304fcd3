"""Output paths: checked before any work, written atomically, every failure one line naming the path.

Every command that writes calls one of the `check_*` functions first (before it reads data or
builds networks), and writes through `atomic_write` (or inside `writing`), so that a full disk
or a missing permission becomes an OutputError and never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import OutputError
from .filekind import special_kind

_FIXES = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EACCES: "choose a place you can write to",
    errno.EPERM: "choose a place you can write to",
    errno.EROFS: "write elsewhere",
    errno.EISDIR: "a folder is in the way",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way",
}


def write_failed(path: str | os.PathLike, exc: OSError) -> OutputError:
    """An OutputError naming `path` and the cause of `exc` (e.g. 'No space left on device')."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _FIXES.get(exc.errno)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_in_the_way(Path(path))):
        fix = f"{blocker} is a file, where a folder is needed: move it away"  # not the whole path's fault
    return OutputError(f"cannot write {path}: {reason}" + (f" ({fix})" if fix else ""))


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest folder of `path` that exists as something other than a folder, if any."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn any OSError raised inside into an OutputError naming `path`."""
    try:
        yield
    except OSError as exc:
        raise write_failed(path, exc) from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", durable: bool = False) -> Iterator:
    """Yield a file in `path`'s folder that replaces `path` only once it is completely written.

    On any failure the temporary file is removed and `path` is left as it was; an OSError becomes
    an OutputError naming `path`. durable: fsync the file and its folder (checkpoints), so that a
    power cut leaves either the old or the new file.
    """
    path = Path(path)
    check_replaceable(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # named before it exists (mkstemp names it only on return): a Ctrl-C landing inside the
        # create still has the finally below remove it, where it used to leave a 0-byte .tmp
        _sweep_dead_temps(path.parent)
        tmp = path.parent / _temp_name(path.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:  # someone else's file by that name: never ours to remove
            tmp = None
            raise
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))  # created 0600 while partial
        os.replace(tmp, path)
        tmp = None
        if durable:
            _fsync_folder(path.parent)
    except OSError as exc:
        raise write_failed(path, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # a create that failed (read-only, name too long) left none
                Path(tmp).unlink(missing_ok=True)


def check_replaceable(path: Path) -> None:
    """Refuse (OutputError) to replace a file its permissions keep from being written: `cp` refuses
    it, and the rename below would not (it needs the folder writable only)."""
    try:
        shut = path.is_file() and not os.access(path, os.W_OK)
    except OSError:  # a name too long, a folder not entered: the write itself names that
        return
    if shut:
        raise OutputError(f"{path} is read-only: make it writable (chmod u+w) to replace it, or write another file")


def check_replaceable_in(folder: Path, names: Iterable[str]) -> None:
    """check_replaceable for each of the files `names` a command writes in `folder`, before it
    starts: a read-only one was found when its turn came, after the renders or steps before it."""
    try:
        present = {e.name for e in os.scandir(folder) if e.is_file()}
    except OSError:
        return  # not there yet: nothing to replace
    for name in present.intersection(names):
        check_replaceable(folder / name)


def _mode_for(path: Path) -> int:
    """The permissions of what replaces `path`: its own where it exists (a file kept from the group
    stays so, as `cp` over it keeps them), else an ordinary file's under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


# A temp file's name says whose it is (host, pid), so that a later write into the same folder can
# remove what a killed writer left (as large as a checkpoint) without touching a live one's: a dead
# pid on this host is the only proof. A pid that was reused keeps its file: harmless, just kept.


def _owner_tag() -> str:
    """This host and pid namespace, in 6 hex digits: a container that shares the host's name and a
    folder with it numbers its processes apart, so its pids say nothing here (nor ours there)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: the host name alone
        namespace = 0
    return hashlib.sha1(f"{socket.gethostname()}:{namespace}".encode(errors="surrogateescape")).hexdigest()[:6]


_HOST_TAG = _owner_tag()
_OUR_TEMP = re.compile(rf"^\..+\.{_HOST_TAG}p(\d+)-[0-9a-f]+\.tmp$")  # a temp file of a writer on this host
_swept: set[str] = set()  # folders already swept by this process: one listing each, not one per file


def _temp_name(name: str) -> str:
    """`.NAME.OWNER-RANDOM.tmp`; a name near the file system's 255 bytes is shortened, so that a
    name the final file can have never fails as its temp file's."""
    if len(os.fsencode(name)) > 200:
        name = name[:60]
    return f".{name}.{_HOST_TAG}p{os.getpid()}-{secrets.token_hex(3)}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process is alive
        return True
    return True


def _sweep_dead_temps(folder: Path) -> None:
    """Remove the temp files that a killed writer on this host left in `folder` (once per process)."""
    key = os.path.abspath(folder)
    if key in _swept:
        return
    _swept.add(key)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if _OUR_TEMP.match(name) and not is_live_temp(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def is_live_temp(name: str) -> bool:
    """Whether `name` is the temp file of a write still going on: this process's, or a live one's
    on this host. (Another host's cannot be told apart from a dead one's.)"""
    match = _OUR_TEMP.match(name)
    return bool(match) and (int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))))


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: reading means setting it to 0 and back, and two PngWriter threads doing that at once
# could leave the process at 0 (every later file world-writable).
_UMASK = _read_umask()


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- checks, run before any work ------------------------------------------------------------
def _nearest_existing(path: Path, what: str) -> Path:
    """The first of `path` and its parents that exists; a dangling link on the way is refused (mkdir
    through it fails late, with "File exists")."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
        if candidate.is_symlink():
            raise OutputError(f"{what} {path}: {candidate} is a link to {os.readlink(candidate)}, which does not "
                              "exist (or loops): create that folder, or name another")
    return Path(".")


def _check_creatable(path: Path, what: str) -> None:
    """`path` is an existing folder, or a folder that can be created, and can be written in."""
    base = _nearest_existing(path, what)
    if not base.is_dir():
        kind = special_kind(base) or "a file"  # `--out /dev/null`: a device, not a file
        if base == path:
            raise OutputError(f"{what} {path} is {kind}, not a folder: choose a folder")
        raise OutputError(f"{what} {path} cannot be created: {base} is {kind}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT:  # an existing folder "not found": a virtual file system (/proc)
            reason = "its file system takes no new files (a virtual one, like /proc)"
        raise OutputError(f"{what} {path} cannot be written: {base}: {reason} "
                          f"({_FIXES.get(exc.errno, 'choose another place')})") from None


def check_output_dir(path: str | os.PathLike, what: str = "--outdir") -> Path:
    """Refuse (OutputError) an output folder that is a file, lies under a file, or cannot be written."""
    path = Path(path)
    _check_creatable(path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str = "--output",
                      inputs: Iterable[str | os.PathLike] = (), example: str = "out.pt") -> Path:
    """Refuse (OutputError) an output file that is a folder, a device, one of the command's inputs,
    or whose folder cannot be created or written. example: a file name for the folder message."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder: name a file, e.g. {path / example}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{what} {path} exists and is not a regular file: name a file")
    if _input_at(path, inputs) is not None:
        raise OutputError(f"{what} {path} is also an input of this command: write to another file")
    _check_creatable(path.parent, f"{what} {path}: folder")
    check_replaceable(path)
    return path


# names that promise another format: a checkpoint written under one is misread by every tool that
# goes by the name (an image viewer, np.load, NVlabs' loader for .pkl, ...)
NOT_CHECKPOINT_SUFFIXES = {
    ".png": "a PNG image", ".jpg": "a JPEG image", ".jpeg": "a JPEG image", ".gif": "a GIF", ".webp": "a WebP image",
    ".bmp": "a BMP image", ".tif": "a TIFF image", ".tiff": "a TIFF image", ".npy": "a NumPy array",
    ".npz": "a NumPy archive", ".pkl": "an NVlabs pickle", ".toml": "a TOML file", ".json": "a JSON file",
    ".jsonl": "a JSON-lines log", ".txt": "a text file", ".md": "a Markdown file", ".zip": "a zip archive",
    ".safetensors": "a safetensors file (another format, which no StyleGAN2 tool here reads)",
    ".onnx": "an ONNX model",
}


def check_checkpoint_output(path: str | os.PathLike, what: str = "--output",
                            inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """check_output_file, and refuse a name that promises another format (out.png, w.npz, g.pkl)
    and a training run's own checkpoint files (latest.pt, best.pt, checkpoints/*.pt beside a
    config.toml): an export written there would replace what the run resumes from with a file it
    cannot resume."""
    path = check_output_file(path, what, inputs)
    kind = NOT_CHECKPOINT_SUFFIXES.get(path.suffix.lower())
    if kind:
        raise OutputError(f"{what} {path} names {kind}, and this writes a PyTorch checkpoint: "
                          f"name a .pt file, e.g. {path.with_suffix('.pt')}")
    folder = Path(os.path.realpath(path.parent))  # `-o 000002.pt` typed inside checkpoints/, or a link to it
    numbered = folder.name.lower() == "checkpoints"
    run = folder.parent if numbered else folder
    if (run / "config.toml").is_file() and (numbered or path.name.lower() in ("latest.pt", "best.pt")):
        raise OutputError(f"{what} {path} is a checkpoint file of the training run {run}; writing there would "
                          "replace what the run resumes from: name another file")
    return path


def check_keeps_inputs(outdir: str | os.PathLike, outputs: str | Iterable[str],
                       inputs: Iterable[str | os.PathLike | None], what: str = "--outdir") -> None:
    """Refuse (OutputError) an output folder where a file the command writes there is one of its
    inputs, by any name (through a symlink or a hard link too): a photo named target.png in
    project's --outdir, say. `outputs`: the names the command writes, or a regex of the paths it
    writes relative to `outdir` (seedNNNN.png for any seed: sample's SAMPLE_FILES). A folder (or
    anything but a file) under one of those names is refused too: it would be found only when that
    file is written, after the work it holds (sample's compare.png, after every render)."""
    pattern = outputs if isinstance(outputs, str) else "|".join(map(re.escape, outputs))
    base = Path(os.path.realpath(outdir))
    files = [src for src in inputs if src is not None and Path(src).is_file()]
    for rel in _written_paths(base, pattern):  # samefile: the input itself, a symlink or a hard link
        if not (base / rel).is_file():
            kind = "a folder" if (base / rel).is_dir() else "not a regular file"
            raise OutputError(f"{Path(outdir) / rel} is {kind}, where the command writes a file: move it away, "
                              f"or use another {what}")
        src = _input_at(base / rel, files)
        if src is not None:
            raise OutputError(f"{what} {outdir} would overwrite the input {src} (the command writes {rel} "
                              "there): choose another folder")


def check_subfolders(outdir: str | os.PathLike, names: Iterable[str], what: str = "--out") -> None:
    """Refuse a file (or a broken link) where the command makes one of its folders under `outdir`:
    it would be found when that stage runs, after the ones before it (ablation's samples/, after
    every method's training)."""
    for name in names:
        path = Path(outdir) / name
        if os.path.lexists(path) and not path.is_dir():
            kind = "a file" if path.is_file() else "not a folder"
            raise OutputError(f"{path} is {kind}, where the command makes a folder: move it away, or use another {what}")


def _written_paths(base: Path, pattern: str) -> list[str]:
    """The entries already in `base`, one folder deep at most (as outputs go), whose paths relative
    to it the command would write (a file or not)."""
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        for path in [entry, *(entry.iterdir() if entry.is_dir() and not entry.is_symlink() else [])]:
            rel = path.relative_to(base).as_posix()
            if re.fullmatch(pattern, rel):
                found.append(rel)
    return found


def _input_at(path: Path, inputs: Iterable[str | os.PathLike]):
    """The one of `inputs` that is the file at `path` (the same file by any name), or None."""
    if not path.exists():
        return None
    return next((src for src in inputs if Path(src).exists() and os.path.samefile(path, src)), None)


def visible_entries(folder: Path) -> list[str]:
    """Names in `folder`, without hidden ones (.DS_Store, .gitkeep, temporary files), sorted."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def leftover_files(folder: str | os.PathLike, stale: Callable[[str], bool]) -> list[str]:
    """Names in `folder` that `stale` picks (an earlier run's files this one does not replace), in
    natural order (out_2 before out_10); [] when the folder is not there yet or cannot be listed."""
    try:
        names = [e.name for e in os.scandir(folder) if stale(e.name)]
    except OSError:
        return []
    return sorted(names, key=lambda name: [int(t) if i % 2 else t for i, t in enumerate(re.split(r"([0-9]+)", name))])


def warn_of_leftovers(folder: str | os.PathLike, stale: Callable[[str], bool], reporter, what: str = "file(s)",
                      advice: str = "") -> None:
    """Warn (through `reporter`) of the files in `folder` that `stale` picks: an earlier run's
    outputs this one does not replace, which a reader of the folder would take for this run's."""
    left = leftover_files(folder, stale)
    if left:
        reporter.warn(f"{folder} also holds {len(left)} {what} this run does not write ({first_names(left)}): an "
                      f"earlier run's, left as they are" + (f"; {advice}" if advice else ""))


NAME_BYTES = 200  # of a folder name the toolkit makes from its inputs': 255 is the usual limit per name


def name_that_fits(name: str, key: str, size: int = NAME_BYTES) -> str:
    """`name`, or where it passes `size` bytes on disk (a deep tree's joined path, two long stems
    with their parents), its longest start that leaves room for "_" and a hash of `key`."""
    if len(os.fsencode(name)) <= size:
        return name
    digest = hashlib.sha1(os.fsencode(key)).hexdigest()[:8]
    while len(os.fsencode(name)) > size - 9:
        name = name[:-1]  # whole characters: a name cut inside a UTF-8 sequence would not decode
    return f"{name}_{digest}"


def first_names(names: list[str], n: int = 3) -> str:
    """The first n names, comma-separated, with ", ..." when there are more (for a message)."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def check_fresh_dir(path: str | os.PathLike, what: str, purpose: str,
                    reusable: Callable[[list[str]], bool] | None = None) -> Path:
    """An output folder that is new or empty (or whose entries `reusable` accepts), and writable.

    purpose: what the folder is for, for the message (e.g. 'data synth writes NNNNNN.png there').
    """
    path = check_output_dir(path, what)
    try:
        names = visible_entries(path) if path.is_dir() else []
    except OSError as exc:
        raise OutputError(f"{what} {path} cannot be listed: {exc.strerror or exc}") from None
    if names and not (reusable and reusable(names)):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise OutputError(f"{what} {path} is not empty (holds {shown}); {purpose}: choose a new or empty folder")
    return path


def check_outside(path: str | os.PathLike, folder: str | os.PathLike, what: str, why: str) -> None:
    """Refuse an output `path` inside the input `folder` (e.g. a run inside its own dataset)."""
    folder = Path(folder)
    if folder.is_dir() and Path(path).resolve().is_relative_to(folder.resolve()):
        raise OutputError(f"{what} {path} is inside {folder}: {why}; choose a folder outside it")


def lock_with_pid(fh) -> str | None:
    """Take the kernel's exclusive lock (flock) on a file opened "a+", and write this process's pid
    in it; a killed process leaves no lock behind. None when taken; else, while another process
    holds it, the pid that process wrote ("" if none), and nothing is taken."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        return fh.read().strip()
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return None


def _open_lock_file(out: Path):
    name = f".{out.name}.writing.lock"
    if len(os.fsencode(name)) > 255:  # a legal name of 241-255 bytes has no room for the lock's
        name = f".{hashlib.sha1(os.fsencode(out.name)).hexdigest()[:16]}.writing.lock"
    failure = None
    for path in (out.parent / name, out / ".writing.lock"):
        try:
            return open(path, "a+")
        except OSError as exc:
            failure = failure or exc
    raise OutputError(f"--out {out}: cannot create a lock file beside or inside it "
                      f"({failure.strerror or failure}): name a folder you can write in")


def _still_named(fh) -> bool:
    """Whether the open file `fh` is still the one its name leads to (not unlinked, not replaced)."""
    try:
        here, there = os.fstat(fh.fileno()), os.stat(fh.name)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def sole_writer(out: Path, command: str) -> Iterator[None]:
    """Hold a lock on the dataset folder `out` while `command` (data prepare, data synth) fills
    it: the same command started twice each found it empty (or its own), then both wrote, the
    later one's files over part of the earlier's: a set of two sources (two seeds' faces under
    the other's params.jsonl). The second now stops at once. The lock is the kernel's (flock: a
    killed process leaves none), on a hidden file beside `out` (inside it where the parent is
    closed to us), removed at the end."""
    out = Path(out)
    with contextlib.suppress(OSError):
        out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # each retry means a holder ended between our open and our lock
        fh = _open_lock_file(out)
        pid = lock_with_pid(fh)
        if pid is None and not _still_named(fh):
            fh.close()  # we locked the file its holder unlinked at its end: a third run would lock a new one
            continue
        break
    with fh:
        if pid is not None:
            raise OutputError(f"--out {out} is being written by another process{f' (pid {pid})' if pid else ''}: "
                              f"wait for it to end, or choose another folder for this {command}")
        try:
            yield
        finally:
            Path(fh.name).unlink(missing_ok=True)  # while still held: a later run makes its own
