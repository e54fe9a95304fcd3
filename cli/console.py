"""Rich output for the CLI: the Reporter the library talks through, and one-line errors."""
from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
out = Console()


class _Bar:
    def __init__(self, progress: Progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if not fields:
            self._p.update(self._t, advance=n)
            return
        info = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self._p.update(self._t, advance=n, info=info)


class RichReporter:
    """Progress bars, tables and warnings on the terminal (stderr, so stdout stays clean for --json)."""

    def info(self, message: str) -> None:
        console.print(message)

    def warn(self, message: str) -> None:
        console.print(f"[yellow]warning:[/] {message}")

    def table(self, title, columns, rows) -> None:
        table = Table(title=title)
        for c in columns:
            table.add_column(str(c))
        for r in rows:
            table.add_row(*[str(x) for x in r])
        console.print(table)

    @contextlib.contextmanager
    def progress(self, total: int, description: str, completed: int = 0):
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                      console=console, transient=False) as prog:
            task = prog.add_task(description, total=total, completed=completed, info="")
            yield _Bar(prog, task)


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit: the CLI's only error path for expected problems."""
    console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)
