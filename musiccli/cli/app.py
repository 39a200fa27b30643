"""Root of the `mtx` CLI: global options and command wiring only."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import MtxError
from ._context import AppContext
from ._errors import MtxGroup

app = typer.Typer(
    cls=MtxGroup,
    name="mtx",
    help="Train text-to-music retrieval models and search music with text.\n\n"
         "Pipeline: download -> verify -> unify -> embed -> train -> eval -> export -> search. "
         "`mtx demo` runs it all offline on a synthetic dataset.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtx {__version__}")
        raise typer.Exit()


def _load_config_defaults(path: Path | None, state_root: Path, group=None) -> dict:
    """TOML defaults: one table per command, keys spelled like the command's flags.

    ``[search] top-k = 3`` sets ``--top-k``; ``top_k`` and the short form (``k``) work too. An
    unknown table or key is an error that names the closest valid one.
    """
    candidates = [path] if path else [state_root / "config.toml"]
    for p in candidates:
        if p is None or not p.exists():
            if path is not None:
                raise MtxError(f"config file not found: {path}", hint="check the --config path")
            continue
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise MtxError(f"{p} is not valid TOML: {e}", hint="fix the file or remove --config") from None
        return _map_config(p, data, group)
    return {}


def _closest(name: str, choices: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"did you mean {near[0]!r}?" if near else f"valid: {', '.join(sorted(choices))}"


def _map_config(path: Path, data: dict, group) -> dict:
    """Config tables -> Click default_map, keys translated from flag spellings to parameter names."""
    commands = dict(getattr(group, "commands", {}) or {})
    out: dict[str, dict] = {}
    for table, opts in data.items():
        if not isinstance(opts, dict):
            raise MtxError(f"{path}: {table!r} is not a table of a command",
                           hint=f"put it under a [command] table, e.g. [{next(iter(commands), 'train')}]")
        if commands and table not in commands:
            raise MtxError(f"{path}: unknown table [{table}]", hint=_closest(table, list(commands)))
        cmd = commands.get(table)
        if cmd is None:  # no command list to check against (library use): dashes -> underscores only
            out[table] = {k.replace("-", "_"): v for k, v in opts.items()}
            continue
        by_flag: dict[str, str] = {}
        for param in cmd.params:
            if getattr(param, "param_type_name", "") != "option" or param.name in ("help",):
                continue
            by_flag[param.name] = param.name
            by_flag[param.name.replace("_", "-")] = param.name
            for opt in param.opts:  # not secondary_opts: `no-baselines = true` would mean the opposite
                by_flag[opt.lstrip("-")] = param.name
                by_flag[opt.lstrip("-").replace("-", "_")] = param.name
        mapped: dict[str, object] = {}
        for key, value in opts.items():
            if key not in by_flag:
                spelled = sorted(k for k in by_flag if "_" not in k)
                raise MtxError(f"{path}: [{table}] has no key {key!r}", hint=_closest(key, spelled))
            mapped[by_flag[key]] = value
        out[table] = mapped
    return out


class _RedactFilter(logging.Filter):
    """URLs in log lines lose their credentials (musiccli.redact), whoever logged them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ..redact import redact_text

        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def _setup_logging(app_ctx: AppContext) -> None:
    from rich.logging import RichHandler

    # Rich shows our own progress; tqdm bars from transformers/huggingface_hub ("Loading weights")
    # would interleave with it. The variable is read when those libraries are imported, i.e. later.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    level = logging.DEBUG if app_ctx.verbose or app_ctx.debug else logging.WARNING if app_ctx.quiet else logging.INFO
    handler = RichHandler(console=app_ctx.out.err, show_time=False, show_path=app_ctx.debug,
                          show_level=app_ctx.debug or app_ctx.verbose, markup=False, rich_tracebacks=app_ctx.debug)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_RedactFilter())
    pkg = logging.getLogger("musiccli")
    pkg.handlers[:] = [handler]
    pkg.setLevel(level)
    pkg.propagate = False
    for noisy in ("transformers", "urllib3", "h5py", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not app_ctx.debug else logging.INFO)


@app.callback()
def root(
    ctx: typer.Context,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", envvar="MTX_HOME",
                                                   help="State directory shared by all stages "
                                                        "[default: the platform's user data dir]")] = None,
    config: Annotated[Path | None, typer.Option("--config", envvar="MTX_CONFIG",
                                                help="TOML file with per-command defaults "
                                                     "([train] epochs = 20); default <state>/config.toml.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and results.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    if state_dir is not None and state_dir.exists() and not state_dir.is_dir():
        raise typer.BadParameter(f"{state_dir} is a file, not a folder", param_hint="--state-dir / MTX_HOME")
    app_ctx = AppContext(state_root=str(state_dir) if state_dir else None, verbose=verbose, quiet=quiet, debug=debug)
    app_ctx.out.quiet = quiet
    ctx.obj = app_ctx
    _setup_logging(app_ctx)
    try:
        defaults = _load_config_defaults(config, app_ctx.state.root, ctx.command)
    except MtxError as e:
        app_ctx.out.error(e.message, e.hint)
        raise typer.Exit(1) from None
    if defaults:
        ctx.default_map = {**(ctx.default_map or {}), **defaults}


# ---------------------------------------------------------------- commands (pipeline order)
def _register() -> None:
    from . import demo, download, duplicates, embed, evaluate, export, search, train, unify, verify

    app.command("download")(download.command)
    app.command("verify")(verify.command)
    app.command("unify")(unify.command)
    app.command("embed")(embed.command)
    app.command("train")(train.command)
    app.command("eval")(evaluate.command)
    app.command("export")(export.command)
    app.command("search")(search.command)
    app.command("duplicates")(duplicates.command)
    app.command("demo")(demo.command)


_register()


def _quiet_broken_pipe(console=None) -> None:
    """The reader of our stdout went away (`mtx --help | head -3`): stop writing and exit 0, silently."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail either
    except (OSError, ValueError):
        pass
    if console is not None:
        console.quiet = True
    raise SystemExit(0)


def main() -> None:
    from rich.console import Console

    # Rich's default for a broken pipe is exit 1; for a CLI whose output is piped into head, that
    # is a normal end, not an error.
    Console.on_broken_pipe = _quiet_broken_pipe
    try:
        app(prog_name="mtx")
    except BrokenPipeError:
        _quiet_broken_pipe()
