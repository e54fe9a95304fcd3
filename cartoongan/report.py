"""How the library talks to a person: through a Reporter the caller passes in.

The library never prints. The CLI passes a RichReporter (progress bars, tables, warnings);
tests and library users get the silent NullReporter by default, or a ListReporter to inspect.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, Sequence


class Progress(Protocol):
    def advance(self, n: int = 1, **fields) -> None: ...


class Reporter(Protocol):
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None: ...
    def progress(self, total: int, description: str, completed: int = 0) -> contextlib.AbstractContextManager[Progress]: ...


class _NullProgress:
    def advance(self, n: int = 1, **fields) -> None:
        pass


class NullReporter:
    """Says nothing."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def table(self, title, columns, rows) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, total: int, description: str, completed: int = 0) -> Iterator[Progress]:
        yield _NullProgress()


class ListReporter(NullReporter):
    """Keeps every message, for tests and programmatic callers."""

    def __init__(self):
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.tables: list[tuple[str, list, list]] = []
        self.bars: list[_CountingProgress] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def table(self, title, columns, rows) -> None:
        self.tables.append((title, list(columns), [list(r) for r in rows]))

    @contextlib.contextmanager
    def progress(self, total: int, description: str, completed: int = 0) -> Iterator[Progress]:
        bar = _CountingProgress(description, total, completed)
        self.bars.append(bar)
        yield bar


class _CountingProgress:
    """A bar's description, total and how far it was advanced."""

    def __init__(self, description: str, total: int, completed: int):
        self.description, self.total, self.completed = description, total, completed

    def advance(self, n: int = 1, **fields) -> None:
        self.completed += n
