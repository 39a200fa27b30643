"""The one place where exceptions become messages and exit codes."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from ..errors import Interrupted, MtxError
from ._output import Output


def _control_exceptions() -> tuple[type[BaseException], ...]:
    # Typer vendors click: its Exit/Abort and usage errors must pass through untouched so that
    # Typer maps them to their own exit codes (0/1 for Exit, 2 for usage errors).
    found: list[type[BaseException]] = [typer.Exit, typer.Abort]
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # older Typer without a vendored click
        from click.exceptions import ClickException  # type: ignore[no-redef]
    found.append(ClickException)
    return tuple(found)


_CONTROL = _control_exceptions()


class MtxGroup(TyperGroup):
    """Turns MtxError into one red line + hint and exit code 1 (traceback only with --debug)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.commands)  # keep the pipeline order, not alphabetical

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _CONTROL:
            raise
        except Interrupted as e:
            _out(ctx).error(e.message, e.hint)
            ctx.exit(130)
        except MtxError as e:
            if _debug(ctx):
                raise
            _out(ctx).error(e.message, e.hint)
            ctx.exit(1)
        except KeyboardInterrupt:
            _out(ctx).error("aborted", "rerun the same command with --continue to resume")
            ctx.exit(130)
        except Exception as e:  # an unexpected bug: still one line unless --debug
            if _debug(ctx):
                raise
            _out(ctx).error(f"internal error: {type(e).__name__}: {e}",
                            "rerun with --debug for the traceback, and please report it")
            ctx.exit(1)


def _app_ctx(ctx: typer.Context):
    return getattr(ctx.find_root(), "obj", None)


def _out(ctx: typer.Context) -> Output:
    obj = _app_ctx(ctx)
    return obj.out if obj is not None and hasattr(obj, "out") else Output()


def _debug(ctx: typer.Context) -> bool:
    return bool(getattr(_app_ctx(ctx), "debug", False))
