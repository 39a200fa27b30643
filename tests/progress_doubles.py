"""A Progress test double that interrupts a stage part-way, as Ctrl-C would."""

from __future__ import annotations

from contextlib import contextmanager

from musiccli.progress import NullProgress


class StopAfter(NullProgress):
    """Interrupts after ``n`` advanced units.

    mode "flag" sets the StopFlag (the graceful path: the stage stops at its next unit
    boundary); mode "kbd" raises KeyboardInterrupt from inside ``advance`` (an abrupt stop
    in the middle of the loop).
    """

    def __init__(self, n: int, mode: str = "flag") -> None:
        super().__init__()
        self.n, self.mode, self.seen = n, mode, 0

    @contextmanager
    def task(self, description, total=None, unit="items", completed=0):  # noqa: ANN001
        outer = self

        class _Task:
            def advance(self, k: int = 1) -> None:
                outer.seen += k
                if outer.seen >= outer.n:
                    if outer.mode == "kbd":
                        raise KeyboardInterrupt
                    outer.stop.request()

            def update(self, *, total=None, completed=None) -> None:  # noqa: ANN001
                pass

        yield _Task()
