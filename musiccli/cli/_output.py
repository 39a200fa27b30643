"""One output sink for all commands: human (Rich), json, or quiet."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from ..redact import redact_text
from ..state import to_jsonable


@dataclass
class Output:
    quiet: bool = False
    json_mode: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=False, highlight=False, soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))
    _warned: set[str] = field(default_factory=set)

    @property
    def human(self) -> bool:
        return not (self.quiet or self.json_mode)

    def info(self, message: str) -> None:
        """A human status line (suppressed in quiet/json modes; goes to stderr in json mode)."""
        if self.quiet:
            return
        (self.err if self.json_mode else self.console).print(redact_text(message))

    def warn(self, message: str) -> None:
        """A warning line on stderr, at most once per command; human mode only (json results carry
        their warnings in a ``warnings`` field, and --quiet means only errors and results)."""
        if not self.human or message in self._warned:
            return
        self._warned.add(message)
        self.err.print(f"[yellow]warning:[/] {escape(redact_text(message))}")

    def table(self, table: Table) -> None:
        if self.human:
            self.console.print(table)

    def result(self, data: Any) -> None:
        """The machine-readable result; printed only in json mode."""
        if self.json_mode:
            text = json.dumps(to_jsonable(data), indent=2, ensure_ascii=False)
            sys.stdout.write(redact_text(text) + "\n")
            sys.stdout.flush()

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(f"[bold red]error:[/] {escape(redact_text(message))}")
        if hint:
            self.err.print(f"[dim]hint:[/] {escape(redact_text(hint))}")


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def make_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right" if _numeric(rows, i) else "left")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    return t


def _numeric(rows: list[list[Any]], i: int) -> bool:
    return bool(rows) and all(isinstance(r[i], (int, float)) for r in rows if i < len(r))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return escape(redact_text(str(v))) if v is not None else ""
