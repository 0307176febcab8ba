"""Progress of a multi-board flash: one rich bar per board on a TTY, plain lines otherwise."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn


class LineReporter:
    """One line per step, for logs and pipes (no cursor tricks)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo

    def begin(self, board: str) -> None:
        self.echo(f"{board}: connecting")

    def total(self, board: str, total: int) -> None:
        pass

    def advance(self, board: str, step: str, amount: int = 0) -> None:
        self.echo(f"{board}: {step}")

    def end(self, board: str, ok: bool, summary: str) -> None:
        self.echo(f"{board}: {'ok' if ok else 'FAILED'} {summary}")


class BarReporter:
    """A rich progress bar per board; use as a context manager around the flash."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.fields[board]:<16}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[step]}"),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._totals: dict[str, int] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def begin(self, board: str) -> None:
        self._tasks[board] = self._progress.add_task("", total=None, board=board, step="connect")

    def total(self, board: str, total: int) -> None:
        self._totals[board] = total
        self._progress.update(self._tasks[board], total=total)

    def advance(self, board: str, step: str, amount: int = 0) -> None:
        self._progress.update(self._tasks[board], advance=amount, step=step)

    def end(self, board: str, ok: bool, summary: str) -> None:
        task = self._tasks[board]
        mark = "[green]ok[/]" if ok else "[red]FAILED[/]"
        if ok:
            self._progress.update(task, completed=self._totals.get(board, 1))
        self._progress.update(task, step=f"{mark} {summary}")
