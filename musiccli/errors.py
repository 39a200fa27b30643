"""The one exception type that core code raises for anything a user can fix."""

from __future__ import annotations

from .redact import redact_text


class MtxError(Exception):
    """A user-facing error: one line of message plus an actionable hint.

    The CLI renders it as a red line and the hint, and exits 1. Core code raises
    it instead of printing or calling ``sys.exit``.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        # A message or hint built from a URL never carries its credentials: not on screen, not in a
        # stage record that stores the message, not in a --debug traceback.
        message = redact_text(message)
        hint = redact_text(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class Interrupted(MtxError):
    """Raised at a unit boundary after Ctrl-C; committed work is safe."""


def unknown_choice(kind: str, name: str, choices: list[str] | tuple[str, ...] | set[str]) -> MtxError:
    """Error for an unknown registry name, listing the valid ones."""
    listed = ", ".join(sorted(choices))
    return MtxError(f"unknown {kind} {name!r}", hint=f"choose one of: {listed}")
