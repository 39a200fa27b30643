"""Shared concurrency for downloads: a bounded work window and a polite rate limiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import TypeVar

from ..progress import Progress

T = TypeVar("T")
_END = object()


class RateLimiter:
    """At most ``rate`` starts per second across all threads (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def run_bounded(pool: Executor, submit: Callable[[T], Future], items: Iterable[T], window: int,
                on_done: Callable[[T, Future], None], progress: Progress) -> None:
    """Run ``items`` through ``pool`` with at most ``window`` in flight.

    After each completion ``on_done(item, future)`` records the result, then Ctrl-C is checked.
    A bounded window means an interrupt only waits for the few items already running (each of
    which commits or fails cleanly); queued work is cancelled.
    """
    queue = iter(items)
    running: dict[Future, T] = {}

    def submit_next() -> None:
        item = next(queue, _END)
        if item is not _END:
            running[submit(item)] = item  # type: ignore[index]

    for _ in range(max(1, window)):
        submit_next()
    try:
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                on_done(running.pop(fut), fut)
                progress.check_interrupt()
                submit_next()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
