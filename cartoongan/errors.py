"""User-facing errors: one line that names the problem and the fix."""
from __future__ import annotations

import contextlib
from typing import Iterator


class CartoonganError(Exception):
    """An error the CLI shows as a single line, without a traceback."""


class CheckpointError(CartoonganError):
    """A checkpoint file is missing, unreadable, unsafe or of the wrong layout."""


class DataError(CartoonganError):
    """A dataset is empty, unreadable or unusable."""


class ConfigError(CartoonganError):
    """A flag or recipe value is impossible."""


class TrainingDiverged(CartoonganError):
    """A loss became NaN or infinite."""


class Interrupted(CartoonganError, KeyboardInterrupt):
    """The user stopped a command with Ctrl-C (exit code 130): `what` the run kept, then `hint`, how
    to go on, which a pipeline that trains as one of its stages replaces with its own. Still a
    KeyboardInterrupt, for library callers that stop on one."""

    def __init__(self, what: str, hint: str = ""):
        super().__init__(f"{what}: {hint}" if hint else what)
        self.what, self.hint = what, hint

    def with_hint(self, hint: str) -> "Interrupted":
        return Interrupted(self.what, hint)


class OutputError(CartoonganError):
    """An output path cannot be written: wrong kind of path, no permission, disk full."""


def first_line(exc: BaseException, limit: int, empty: str | None = None) -> str:
    """The first line of exc's message, cut to `limit` characters, for quoting in a one-line error;
    `empty` (default: the exception's type name) when the message is blank."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if empty is None else empty
    line = text.splitlines()[0]
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]  # at a word's end, not in the middle of one
    return (cut if len(cut) > limit // 2 else line[:limit]) + "…"


@contextlib.contextmanager
def naming(path) -> Iterator[None]:
    """Make every CartoonganError raised inside name `path` (prefixed unless the message already does)."""
    try:
        yield
    except CartoonganError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from None


@contextlib.contextmanager
def ctrl_c_hint(hint: str) -> Iterator[None]:
    """A pipeline's plain Ctrl-C (outside its training stages, which say what they kept) as an
    Interrupted that says how to go on: running the pipeline again picks up what it finished."""
    try:
        yield
    except Interrupted as exc:  # a stage's own account (what it kept) stands; the pipeline's hint joins it
        raise (exc if exc.hint else exc.with_hint(hint)) from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted", hint) from None


class RowsStopped(Interrupted):
    """A Ctrl-C ended a command that builds its table row by row (bench; metrics of several FAKE):
    `rows` holds those finished, which the command still prints."""

    def __init__(self, rows: list, total: int, what: str = "rows", done: int | None = None):
        super().__init__(f"interrupted after {len(rows) if done is None else done} of {total} {what}: the table "
                         "holds those")
        self.rows = rows


@contextlib.contextmanager
def rows_kept(rows: list, total: int, what: str = "rows", finished: list | None = None) -> Iterator[None]:
    """Turn a Ctrl-C inside into RowsStopped with the rows so far (minutes of GPU time, or of
    Inception features, are not thrown away for the one row that did not finish); with none
    finished yet, the plain interruption. finished: the units of `total` done, where one gives
    several rows (a profiled phase its top ops), counted by its length."""
    try:
        yield
    except KeyboardInterrupt:
        if not rows:
            raise
        raise RowsStopped(list(rows), total, what, None if finished is None else len(finished)) from None
