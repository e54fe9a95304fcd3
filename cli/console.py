"""Rich output for the CLI: the Reporter the library talks through, and one-line errors."""
from __future__ import annotations

import codecs
import contextlib
import json
import logging
import math
import os
import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cartoongan.errors import ConfigError
from cartoongan.report import NullReporter
from cartoongan.train.distributed import launch_env

# torch.compile on a CPU-only box that has a CUDA toolkit (nvcc in /usr/local) logs a warning that no
# CUDA runtime is found, as if something were wrong: nothing is, a CPU run needs none
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: not record.getMessage().startswith("No CUDA runtime is found"))


def _encodable_output() -> None:
    """A stream in a legacy encoding (PYTHONIOENCODING=ascii, a Windows console redirected to a file)
    cannot hold an accented path or the tables' arrows: printing one raised UnicodeEncodeError, a
    traceback after the work was done. Such characters are written escaped (caf\\xe9) instead.
    A strict UTF-8 stream (Python's stdout under an installed en_US.UTF-8 locale) cannot hold a
    file name that is not UTF-8 (Linux allows any bytes): Python reads its bytes as surrogates,
    which are written back as the same bytes, so a script reading the result gets the real name.
    stderr too, where Python's default (backslashreplace) printed the name as the text "caf\\udce9"
    in every warning and error that named the file."""
    codecs.register_error(_BYTES_BACK, _bytes_back)
    for stream in (sys.stdout, sys.stderr):
        if not hasattr(stream, "reconfigure"):
            continue
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding not in ("utf8", "utf16", "utf32"):
            stream.reconfigure(errors="backslashreplace")
        elif encoding == "utf8" and getattr(stream, "errors", None) in ("strict", "backslashreplace", "surrogateescape"):
            stream.reconfigure(errors=_BYTES_BACK)


_BYTES_BACK = "cartoongan-bytes-back"


def _bytes_back(exc: UnicodeError):
    """surrogateescape where it can (a file name's own bytes), backslashreplace for any other
    character UTF-8 cannot hold (a lone surrogate not from a file name): printing never raises."""
    if isinstance(exc, UnicodeEncodeError):
        text = exc.object[exc.start: exc.end]
        if all(0xDC80 <= ord(c) <= 0xDCFF for c in text):
            return bytes(ord(c) - 0xDC00 for c in text), exc.end
    return codecs.backslashreplace_errors(exc)


_encodable_output()

def _no_terminal() -> bool:
    """Whether rich would fall back to 80 columns: no stream is a terminal and COLUMNS is unset."""
    for fd in (0, 1, 2):
        try:
            os.get_terminal_size(fd)
            return False
        except OSError:
            pass
    return "COLUMNS" not in os.environ


# Messages name paths and recipe tables ("[train]"), so text is escaped before it reaches rich's
# markup parser; `out` (stdout) prints results only and takes no markup at all. Piped to a log
# (`2> log`, a scheduler) rich folded the run tables (the fine-tuning plan, the ablation summary)
# at 80 columns, a cell over four lines: with no terminal, as wide as their cells, as results are.
# Progress bars keep their own width (they do not expand).
console = Console(stderr=True, width=1000 if _no_terminal() else None)


class _Results(Console):
    """stdout. Results are read by scripts and files as often as by people: a line of text (a path,
    Markdown) is never broken; with no terminal to fit, a table is as wide as its cells instead of
    folding them at 80 columns; in a terminal it folds to fit."""

    def print(self, *objects, **kwargs) -> None:
        if all(isinstance(o, str) for o in objects):
            kwargs.setdefault("soft_wrap", True)
        super().print(*objects, **kwargs)


out = _Results(markup=False, width=1000 if _no_terminal() else None)


def _json_safe(value):
    """NaN and inf as null, at any depth: json.dumps writes them as NaN, which strict parsers
    (Python's json in strict mode, jq, JavaScript) refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def result_json(value) -> None:
    """A command's result as JSON on stdout; what JSON cannot hold as a number (NaN) is null, and
    anything else that is no JSON type (a path) is its text."""
    out.print_json(json.dumps(_json_safe(value), default=str, allow_nan=False))


def result_table(title, columns, rows) -> None:
    """A command's result as a table on stdout (`info X > file` keeps it; progress and warnings
    stay on stderr). `out` takes no markup, so nothing is escaped."""
    # the title as its own line, never broken: a table's title folds to the table's width, and
    # `metrics a/b/c d/e/latest.pt` printed "d/e/latest." and "pt" on two lines
    out.print(str(title))
    table = Table()
    for c in columns:
        table.add_column(str(c), overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    out.print(table)


def _fields(fields: dict) -> str:
    return "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


class _Bar:
    def __init__(self, progress: Progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if not fields:
            self._p.update(self._t, advance=n)
            return
        self._p.update(self._t, advance=n, info=escape(_fields(fields)))


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 3600}:{int(seconds) // 60 % 60:02d}:{int(seconds) % 60:02d}"


class _LineBar:
    """A bar as a line every EVERY seconds and one at the end, where stderr is no terminal (a log,
    CI, nohup, `2> log`): rich draws a bar there only once it is done, so an 11-minute fine-tune
    printed its plan and then nothing until its last step, as if hung."""

    EVERY = 30.0

    def __init__(self, description: str, total: int, completed: int):
        self.description, self.total, self.n, self.first = description, total, completed, completed
        self.info = ""
        self.start = self.last = time.monotonic()
        self.shown: tuple[int, str] | None = None  # (count, fields) of the last line printed

    def advance(self, n: int = 1, **fields) -> None:
        self.n += n
        if fields:
            self.info = _fields(fields)
        now = time.monotonic()
        if now - self.last >= self.EVERY:
            self.last = now
            self.line(now)

    def line(self, now: float | None = None) -> None:
        elapsed = (now or time.monotonic()) - self.start
        done = self.n - self.first
        left = f", {_clock(elapsed / done * (self.total - self.n))} left" if 0 < done and self.n < self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        text = f"{self.description} {self.n}/{self.total}{share} {_clock(elapsed)}{left}" + (f"  {self.info}" if self.info else "")
        console.print(escape(one_line(text)), highlight=False, soft_wrap=True)
        self.shown = (self.n, self.info)

    def close(self) -> None:
        """The closing line, unless a tick printed this very state (the last step at a 30 s mark)."""
        if self.shown != (self.n, self.info):
            self.line()


class RichReporter:
    """Progress bars, tables and warnings on the terminal (stderr, so stdout stays clean for --json).
    Under torchrun only rank 0 reports: every rank reads the same data and plan, and K ranks said
    each warning and the fine-tuning plan K times over. Errors (`fail`) still come from any rank."""

    def info(self, message: str) -> None:
        if not _other_rank():
            console.print(escape(message))

    def warn(self, message: str) -> None:
        if not _other_rank():
            console.print(f"[yellow]warning:[/] {escape(one_line(message))}")

    def table(self, title, columns, rows) -> None:
        if _other_rank():
            return
        table = Table(title=escape(str(title)))
        for c in columns:
            table.add_column(escape(str(c)))
        for r in rows:
            table.add_row(*[escape(str(x)) for x in r])
        console.print(table)

    @contextlib.contextmanager
    def progress(self, total: int, description: str, completed: int = 0):
        if _other_rank():
            # torchrun's other ranks: the one terminal shows rank 0's bars only
            with NullReporter().progress(total, description, completed) as bar:
                yield bar
            return
        if not console.is_terminal:
            bar = _LineBar(description, total, completed)
            try:
                yield bar
            finally:
                bar.close()
            return
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                      console=console, transient=False) as prog:
            task = prog.add_task(escape(description), total=total, completed=completed, info="")
            yield _Bar(prog, task)


def _other_rank() -> bool:
    try:
        return launch_env()[0] != 0
    except ConfigError:  # the command itself says what is wrong with the environment, when it starts
        return False


# control characters a file name may hold (a newline is legal on Linux), shown escaped
_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c != 9} | {10: "\\n", 13: "\\r", 127: "\\x7f"}


def one_line(message: str) -> str:
    """A message as one line whatever the names inside it hold: a file called 'a<newline>b.png'
    would otherwise split an error or warning in two."""
    return message.translate(_CONTROL)


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit: the CLI's only error path for expected problems."""
    console.print(f"[red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    sys.exit(code)
