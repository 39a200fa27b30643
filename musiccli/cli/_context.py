"""Per-invocation context built by the root callback and shared by every command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import typer

from ..progress import StopFlag, graceful_sigint
from ..state import StateDir
from ._output import Output
from ._progress import RichProgress


@dataclass
class AppContext:
    state_root: str | None = None
    verbose: bool = False
    quiet: bool = False
    debug: bool = False
    out: Output = field(default_factory=Output)

    @property
    def state(self) -> StateDir:
        return StateDir.resolve(self.state_root)

    @contextmanager
    def progress(self, resume_hint: str | None = None) -> Iterator[RichProgress]:
        """Rich progress plus graceful Ctrl-C for the duration of one core call."""
        stop = StopFlag()
        if resume_hint:
            stop.resume_hint = resume_hint
        with graceful_sigint(stop), RichProgress(self.out.err, stop, enabled=self.out.human) as p:
            yield p


def get_ctx(ctx: typer.Context, json_mode: bool = False) -> AppContext:
    root = ctx.find_root()
    app_ctx = root.obj if isinstance(root.obj, AppContext) else AppContext()
    root.obj = app_ctx
    if json_mode:
        app_ctx.out.json_mode = True
    return app_ctx
