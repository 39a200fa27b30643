"""The one place where exceptions become messages and exit codes."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from ..errors import Interrupted, MtxError
from ..state import MAX_NAME_LENGTH, is_no_space, no_space_error
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

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            escape_help(cmd)
        return cmd

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        escape_help(self)
        for cmd in self.commands.values():
            escape_help(cmd)
        super().format_help(ctx, formatter)

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
        except BrokenPipeError:
            quiet_broken_pipe()   # the reader of stdout went away (`mtx search --help | head`)
        except Exception as e:  # an unexpected bug: still one line unless --debug
            if _debug(ctx):
                raise
            known = system_error(e, _state_root(ctx))
            if known is not None:
                _out(ctx).error(*known)
                ctx.exit(1)
            _out(ctx).error(f"internal error: {type(e).__name__}: {e}",
                            "rerun with --debug for the traceback, and please report it")
            ctx.exit(1)


def quiet_broken_pipe(console=None) -> None:
    """The reader of our stdout went away (`mtx --help | head -3`): stop writing and exit 0, silently."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail either
    except (OSError, ValueError):
        pass
    if console is not None:
        console.quiet = True
    raise SystemExit(0)


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def system_error(e: BaseException, state_root: Path | None) -> tuple[str, str] | None:
    """(message, hint) for an error of the machine rather than the code: a full disk, a read-only or
    misplaced state dir. Libraries wrap these (h5py's OSError text, safetensors' SafetensorError),
    so the whole exception chain and its text are searched."""
    for err in _chain(e):
        text = str(err)
        code = getattr(err, "errno", None)
        where = getattr(err, "filename", None) or (str(state_root) if state_root else "the output folder")
        if code in (errno.ENOSPC, errno.EDQUOT) or is_no_space(text):
            full = no_space_error(where)
            return full.message, full.hint
        if code == errno.ENAMETOOLONG:
            return (f"a file name is too long: {where}",
                    f"use shorter names (at most {MAX_NAME_LENGTH} characters for runs, manifests and indexes)")
        if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "Read-only file system" in text:
            if state_root is not None and _inside(where, state_root):
                return (f"state dir {state_root} is read-only (cannot write {where})",
                        "make it writable, or point --state-dir / MTX_HOME at a writable folder")
            return f"cannot write {where}: permission denied", "check the permissions of that path"
        if code == errno.ENOTDIR or isinstance(err, NotADirectoryError):
            return (f"{where}: a part of this path is a file, not a folder",
                    "point --state-dir / MTX_HOME at a folder (it is created if missing)")
    return None


def _inside(path: str, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except (ValueError, OSError):
        return False


def _state_root(ctx: typer.Context) -> Path | None:
    obj = _app_ctx(ctx)
    root = getattr(obj, "state_root", None)
    if root:
        return Path(root)
    try:
        from ..state import default_state_dir

        return default_state_dir()
    except Exception:  # noqa: BLE001 - only used to word the message
        return None


def escape_help(cmd: Any) -> None:
    """Escape Rich markup in a command's help texts once, so "[train] epochs = 20" prints as written.

    Typer renders help with ``rich_markup_mode="rich"``, which would eat any bracketed text.
    """
    if getattr(cmd, "_mtx_help_escaped", False):
        return
    from rich.markup import escape

    for attr in ("help", "short_help", "epilog"):
        if getattr(cmd, attr, None):
            setattr(cmd, attr, escape(getattr(cmd, attr)))
    for param in getattr(cmd, "params", []):
        if getattr(param, "help", None):
            param.help = escape(param.help)
    cmd._mtx_help_escaped = True


def _app_ctx(ctx: typer.Context):
    return getattr(ctx.find_root(), "obj", None)


def _out(ctx: typer.Context) -> Output:
    obj = _app_ctx(ctx)
    return obj.out if obj is not None and hasattr(obj, "out") else Output()


def _debug(ctx: typer.Context) -> bool:
    return bool(getattr(_app_ctx(ctx), "debug", False))
