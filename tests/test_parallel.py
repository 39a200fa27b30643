"""The shared download concurrency: rate limiting and the bounded work window."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from musiccli.errors import Interrupted
from musiccli.progress import NullProgress, StopFlag
from musiccli.sources._parallel import RateLimiter, run_bounded


def test_rate_limiter_spaces_starts():
    limiter = RateLimiter(20.0)  # 20 starts per second
    t0 = time.monotonic()
    for _ in range(4):
        limiter.wait()
    assert time.monotonic() - t0 >= 0.14
    t0 = time.monotonic()
    RateLimiter(0).wait()
    assert time.monotonic() - t0 < 0.05


def test_run_bounded_keeps_the_window_and_records_every_item():
    in_flight, peak, lock = 0, 0, threading.Lock()
    done: list[int] = []

    def work(i: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.01)
        with lock:
            in_flight -= 1
        return i * i

    with ThreadPoolExecutor(max_workers=4) as pool:
        run_bounded(pool, lambda i: pool.submit(work, i), range(20), 3,
                    lambda i, fut: done.append(fut.result()), NullProgress())
    assert sorted(done) == [i * i for i in range(20)] and peak <= 3


def test_run_bounded_stops_at_an_interrupt_without_starting_more():
    stop = StopFlag()
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        return i

    def on_done(i: int, fut) -> None:  # noqa: ANN001
        if len(started) >= 3:
            stop.request()  # what Ctrl-C does

    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(Interrupted):
        run_bounded(pool, lambda i: pool.submit(work, i), range(100), 2, on_done, NullProgress(stop))
    assert len(started) <= 5
