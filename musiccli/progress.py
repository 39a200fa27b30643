"""A tiny progress protocol so that core code can report progress without printing.

Core functions take a ``Progress`` and open tasks on it; the CLI passes a Rich
implementation, library users and tests get ``NullProgress`` by default.
Interruption (Ctrl-C) is also exposed here: loops call ``progress.check_interrupt()``
at unit boundaries, which raises :class:`~musiccli.errors.Interrupted` once the
user asked to stop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from .errors import Interrupted


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def update(self, *, total: int | None = None, completed: int | None = None) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None, unit: str = "items",
             completed: int = 0) -> AbstractContextManager[Task]: ...

    def check_interrupt(self) -> None: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        pass


class StopFlag:
    """Set by the SIGINT handler; checked by loops at unit boundaries."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.resume_hint = "rerun the same command with --continue"

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted("interrupted: committed work is saved", hint=self.resume_hint)


class NullProgress:
    """Progress that shows nothing; still honours a stop flag."""

    def __init__(self, stop: StopFlag | None = None) -> None:
        self.stop = stop or StopFlag()

    @contextmanager
    def task(self, description: str, total: int | None = None, unit: str = "items",
             completed: int = 0) -> Iterator[Task]:
        yield _NullTask()

    def check_interrupt(self) -> None:
        self.stop.check()


@contextmanager
def graceful_sigint(stop: StopFlag) -> Iterator[StopFlag]:
    """First Ctrl-C asks the running stage to stop at the next unit; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ANN001
        if stop.requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.request()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
