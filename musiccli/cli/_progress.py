"""Rich rendering of the core progress protocol (counts, rate and ETA)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)

from ..progress import StopFlag


class _RichTask:
    def __init__(self, progress: Progress, task_id, unit: str) -> None:
        self._p = progress
        self._id = task_id
        self._unit = unit

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._id, n)

    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        kwargs = {}
        if total is not None:
            kwargs["total"] = total
        if completed is not None:
            kwargs["completed"] = completed
        self._p.update(self._id, **kwargs)


class _Rate(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # noqa: ANN001
        from rich.text import Text

        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


class RichProgress:
    """Implements ``musiccli.progress.Progress`` with a live Rich display."""

    def __init__(self, console: Console, stop: StopFlag, enabled: bool = True) -> None:
        self.stop = stop
        self._enabled = enabled
        self._progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), _Rate(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=False, disable=not enabled, refresh_per_second=4,
        )

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def task(self, description: str, total: int | None = None, unit: str = "items",
             completed: int = 0) -> Iterator[_RichTask]:
        tid = self._progress.add_task(description, total=total, completed=completed, unit=unit)
        try:
            yield _RichTask(self._progress, tid, unit)
        finally:
            self._progress.stop_task(tid)

    def check_interrupt(self) -> None:
        self.stop.check()
