"""The one place where exceptions become messages and exit codes."""

from __future__ import annotations

from typing import Any

import click
from typer.core import TyperGroup

from ..errors import Interrupted, MtxError
from ._output import Output


class MtxGroup(TyperGroup):
    """Turns MtxError into one red line + hint and exit code 1 (traceback only with --debug)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # keep the pipeline order, not alphabetical

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
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


def _app_ctx(ctx: click.Context):
    return getattr(ctx.find_root(), "obj", None)


def _out(ctx: click.Context) -> Output:
    obj = _app_ctx(ctx)
    return obj.out if obj is not None and hasattr(obj, "out") else Output()


def _debug(ctx: click.Context) -> bool:
    obj = _app_ctx(ctx)
    return bool(getattr(obj, "debug", False))
