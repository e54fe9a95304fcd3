"""A run directory on disk: config.toml, log.jsonl, samples/NNNNNN.png, checkpoints/NNNNNN.pt, latest.pt, best.pt.

The trainer decides when to write; this module knows where and how. Only the main process of a
data-parallel run writes.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch

from ..config import RunConfig, to_toml
from ..data.dataset import RUN_FOLDERS
from ..data.images import make_grid, save_png
from ..errors import CartoonganError, OutputError
from ..filekind import special_kind
from ..data.render import render_seeds
from ..models.generator import Generator
from ..outputs import atomic_write, check_replaceable_in, is_live_temp, lock_with_pid, visible_entries, writing
from .evaluate import CACHE as EVAL_CACHE
from ..weights.checkpoint import load_checkpoint, save_checkpoint


# what a run that failed before its first checkpoint leaves behind: a new run may take the folder over
# (eval_real_features.npy: the feature cache of earlier versions)
UNSAVED_ENTRIES = {"config.toml", "log.jsonl", "samples", "checkpoints", EVAL_CACHE, "eval_real_features.npy"}


# the names a run writes files under, and folders under
RUN_FILES = (".lock", "config.toml", "log.jsonl", "best.pt", EVAL_CACHE)


def check_run_layout(folder: Path) -> None:
    """Refuse (OutputError) a run folder where one of the run's own names holds the other kind (a
    folder named log.jsonl, a file named checkpoints), before any work: the write that failed on it
    later named the run folder or came after a step, and its "continue with --resume" failed again."""
    for name in RUN_FILES:
        kind = "a folder" if (folder / name).is_dir() else special_kind(folder / name)  # a FIFO: a write that waits
        if kind:
            raise OutputError(f"{folder / name} is {kind}, where the run keeps its {name} file: move it "
                              f"away, then resume {folder}")
    for name in RUN_FOLDERS:
        if (folder / name).exists() and not (folder / name).is_dir():
            raise OutputError(f"{folder / name} is a file, where the run keeps its {name}/ folder: move it "
                              f"away, then resume {folder}")


def holds_unsaved_run(folder: Path) -> bool:
    """Whether `folder` holds only what a run that never saved a checkpoint wrote (config.toml,
    log, samples; no latest.pt, no checkpoints): starting a new run there loses nothing. False
    when the folder cannot be listed (the caller's own checks then say why)."""
    try:
        names = set(visible_entries(folder))
        if "config.toml" not in names or not names <= UNSAVED_ENTRIES:
            return False
        numbered = folder / "checkpoints"
        return not (numbered.is_dir() and any(numbered.iterdir()))
    except OSError:
        return False


def _row_step(line: str) -> float:
    """A log line's step (inf for a torn or foreign line, which a resumed log drops)."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # torn; or a number or nesting past what the parser takes
        return math.inf
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else math.inf


def _in_training(folder: Path, pid: str) -> str:
    pid = pid.strip()
    return (f"{folder} is being trained by another process{f' (pid {pid})' if pid else ''}: "
            "wait for it to end, or stop it, then resume")


def check_not_in_training(folder: Path) -> None:
    """Refuse (CartoonganError) a run folder whose .lock another process holds: it is training."""
    try:
        fd = os.open(folder / ".lock", os.O_RDONLY)
    except OSError:  # no lock file: nobody has trained here since it was written
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CartoonganError(_in_training(folder, os.pread(fd, 32, 0).decode(errors="replace"))) from None
    finally:
        os.close(fd)  # closing drops the shared lock taken for the test


def latest_stamp(folder: Path) -> tuple[int, int, int] | None:
    """Which latest.pt a run folder holds (inode, mtime, size), None when it holds none: every
    save replaces the file, so another process's save shows as another stamp."""
    try:
        st = (folder / "latest.pt").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


_UNCHECKED = object()


class RunDirectory:
    def __init__(self, path: str | Path, writes: bool = True):
        self.path = Path(path)
        self.writes = writes  # False on the non-main ranks of a data-parallel run
        self.expected: object = _UNCHECKED  # latest_stamp when the run was checked and loaded
        self.saved_step: int | None = None  # the step latest.pt holds, once start() or save() knows it

    @property
    def latest(self) -> Path:
        return self.path / "latest.pt"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run's .lock while training: a second process training the same run (a second
        --resume, say) stops at once instead of overwriting this one's checkpoints and log. The
        lock is the kernel's (flock): a killed process leaves none behind."""
        if not self.writes:
            yield
            return
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / ".lock", "a+")
        with fh:
            holder = lock_with_pid(fh)
            if holder is not None:
                raise CartoonganError(_in_training(self.path, holder))
            yield

    def start(self, cfg: RunConfig, step: int = 0, numbered: bool = False) -> None:
        """Create the folder and write the resolved config.toml (called with the lock held). A run
        that has no latest.pt yet starts afresh: what an earlier attempt wrote before failing (log,
        samples) goes first. A resumed one (at `step`) drops the log rows past its checkpoint, which
        a killed process wrote and the resumed run writes again, and a killed save's temp files."""
        if self.writes and self.expected is not _UNCHECKED and latest_stamp(self.path) != self.expected:
            raise CartoonganError(self._trained_meanwhile())
        if self.writes:
            # a read-only latest.pt (kept from being replaced) was found at the first save, after
            # the steps before it; log.jsonl matters to a resume only (a new run clears it), best.pt
            # to evaluations only, and config.toml is written below, before any step
            resumed = self.latest.exists()
            check_replaceable_in(self.path, ["latest.pt", *(["log.jsonl"] if resumed else []),
                                             *(["best.pt"] if cfg.train.eval_every else [])])
            with writing(self.path):
                self.path.mkdir(parents=True, exist_ok=True)
                for tmp in (*self.path.glob(".*.pt.*.tmp"), *self.path.glob("checkpoints/.*.pt.*.tmp")):
                    if not is_live_temp(tmp.name):  # a kill mid-save's, as large as a checkpoint; not
                        tmp.unlink(missing_ok=True)  # a running `export RUN/latest.pt -o RUN/x.pt`'s
                if not self.latest.exists():
                    self._clear_unsaved()
                else:
                    self.saved_step = step
                    if step:
                        self._truncate_log(step)
                        if numbered:
                            self._restore_numbered(step)
            with atomic_write(self.path / "config.toml", "w") as fh:  # a refused write keeps the old one
                fh.write(to_toml(cfg))

    def expect(self, stamp: tuple[int, int, int] | None) -> None:
        """The latest.pt this run was checked against and loaded (None: a new run, so none): start()
        refuses another. The lock is taken only once the data and networks are loaded, minutes on
        a large dataset, and a second run on the folder could train and save in between."""
        self.expected = stamp

    def _trained_meanwhile(self) -> str:
        if self.expected is None:
            return (f"{self.path} now holds a run, which another process started while this one was loading: "
                    f"nothing of it was changed; continue it with --resume {self.path}, or choose another --out")
        return (f"{self.latest} was replaced while this run was loading it (another process trained {self.path} "
                "meanwhile): nothing of it was changed; resume again to go on from its newest checkpoint")

    def _truncate_log(self, step: int) -> None:
        path = self.path / "log.jsonl"
        if not path.is_file():
            return
        # utf-8-sig: an editor's BOM would make the first row foreign to _row_step, and dropped
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines(keepends=True)
        kept = [line for line in lines if _row_step(line) <= step]
        # a last row without its newline (an editor, a copy cut short) would take the next row onto
        # its line: two rows that no reader parses, dropped as torn by the resume after
        if len(kept) != len(lines) or (kept and not kept[-1].endswith("\n")):
            with atomic_write(path, "w") as fh:
                fh.writelines(line if line.endswith("\n") else line + "\n" for line in kept)

    def _restore_numbered(self, step: int) -> None:
        """save() writes latest.pt, then checkpoints/NNNNNN.pt: a kill between the two left the
        series without the step latest.pt holds, and the resumed run, going on past that step,
        would never write it (a hole in a `metrics run/checkpoints/*.pt` sweep). Copied, not
        linked: the copy stays what it is when the next latest.pt replaces this one."""
        numbered = self.path / "checkpoints" / f"{step:06d}.pt"
        if numbered.exists():
            return
        with open(self.latest, "rb") as src, atomic_write(numbered, durable=True) as fh:
            shutil.copyfileobj(src, fh, 1 << 20)

    def _clear_unsaved(self) -> None:
        (self.path / "log.jsonl").unlink(missing_ok=True)  # the feature cache stays: it knows its dataset
        for png in (self.path / "samples").glob("[0-9]*.png"):
            png.unlink()

    def save(self, ckpt: dict, step: int, numbered: bool) -> Path | None:
        """latest.pt, plus checkpoints/NNNNNN.pt when `numbered`; both written atomically."""
        if not self.writes:
            return None
        # latest.pt first: a kill between the two writes leaves the run resumable
        try:
            latest = save_checkpoint(self.latest, ckpt)
        except KeyboardInterrupt:  # a Ctrl-C held during the save, replayed once the file is whole
            self.saved_step = step
            raise
        self.saved_step = step
        if numbered:
            save_checkpoint(self.path / "checkpoints" / f"{step:06d}.pt", ckpt)
        return latest

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def save_best(self, ckpt: dict) -> Path | None:
        """best.pt: the checkpoint with the lowest KID so far (--eval-every), written atomically."""
        return save_checkpoint(self.best, ckpt) if self.writes else None

    def best_after(self, step: int, kind: str, model: dict) -> tuple[int, float] | None:
        """(step, KID) of a best.pt written after `step` by a run of this `kind` and `model` config:
        a kill between a new best and the next latest.pt leaves one, newer than the checkpoint a
        run resumes from. None when there is none, or it is another run's, or it cannot be read
        (the next better KID replaces it then)."""
        if not self.best.is_file():
            return None
        try:
            ckpt = load_checkpoint(self.best, mmap=True)  # its step and KID: no need to read 1 GB
            meta = ckpt["cartoongan"]
            best_step, kid = int(meta["step"]), float(ckpt["train_state"]["best_kid"])
            ours = meta.get("kind") == kind and meta["config"]["model"] == model
        except (CartoonganError, KeyError, TypeError, ValueError):
            return None
        return (best_step, kid) if ours and best_step > step and math.isfinite(kid) else None

    @torch.no_grad()
    def save_samples(self, g_ema: Generator, step: int, n: int) -> Path | None:
        """samples/NNNNNN.png: seeds 0..n-1 through g_ema with the stored noise, in a square-ish grid."""
        if not self.writes:
            return None
        # a diverged g_ema's grid shows it; the trainer's own guard decides about the run
        images = render_seeds(g_ema, range(n), batch=n, check_finite=False)
        return save_png(make_grid(images, cols=math.ceil(math.sqrt(len(images)))),
                        self.path / "samples" / f"{step:06d}.png")

    def append_log(self, row: dict) -> None:
        """One JSON object per line in log.jsonl."""
        if self.writes:
            with writing(self.path / "log.jsonl"), open(self.path / "log.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
