"""The CLI reference page (docs/reference/cli.md), generated from the Typer app.

Every command, argument and option comes from the same Click objects that `mtx --help` renders,
so the page cannot drift from the code: tests/test_docs.py regenerates it and fails when the
committed page differs. Regenerate it with::

    python -m musiccli.cli._docgen docs/reference/cli.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROG = "mtx"
DEFAULT_PATH = Path("docs/reference/cli.md")
REGENERATE = f"python -m musiccli.cli._docgen {DEFAULT_PATH}"

_HEADER = f"""# CLI reference

<!-- Generated from the Typer app by `{REGENERATE}`. Do not edit by hand:
     tests/test_docs.py fails when this page differs from the generated one. -->

Every command of `{PROG}`, with its arguments and options exactly as `{PROG} COMMAND --help` lists
them. The [stage pages](../stages/download.md) explain what the commands do; a
[config file](state.md#config-file) may supply any option's default.
"""


def _plain(text: str) -> str:
    """Help text as written. mtx help texts are literal (MtxGroup escapes them for Rich when it renders
    `--help`), so a text that was already escaped for Rich is unescaped here."""
    return re.sub(r"\\(\[)", r"\1", text)


_MD_SPECIAL = re.compile(r"([\\*_\[\]<>#])")


def _md(text: str) -> str:
    """Escape Markdown outside `code spans`; code spans (already backticked in help texts) stay code."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span
            out.append(part)
            continue
        part = _MD_SPECIAL.sub(lambda m: {"<": "&lt;", ">": "&gt;"}.get(m.group(1), "\\" + m.group(1)), part)
        out.append(part)
    return "".join(out)


def _paragraphs(help_text: str) -> list[str]:
    """Docstring paragraphs, each joined onto one line (Click's \\b no-rewrap marker dropped)."""
    text = _plain(help_text.replace("\b", ""))
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", text.strip())]
    return [b for b in blocks if b]


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _param_line(param, ctx) -> str:
    """One bullet per parameter, from the same help record `--help` renders (names, type, default, range)."""
    record = param.get_help_record(ctx)
    if record is None:
        return ""
    names, rendered = record
    raw = param.help or ""
    # The record is the help text plus Click's "  [default: ...; x>=1]" suffix; only the help is Rich markup.
    suffix = rendered[len(raw):] if rendered.startswith(raw) else ""
    help_text = " ".join(_paragraphs(raw))
    line = f"- {_code(names)}"
    if help_text:
        line += f": {_md(help_text)}"
    suffix = " ".join(suffix.split())
    if suffix:
        line += f" {_code(suffix)}"
    return line


def _context(cmd, path: list[str], parent=None):
    from typer._click import Context

    return Context(cmd, info_name=path[-1], parent=parent)


def _command_section(cmd, path: list[str], level: int, parent_ctx) -> list[str]:
    ctx = _context(cmd, path, parent_ctx)
    out = [f"{'#' * level} {' '.join(path)}", ""]
    out += [p for para in _paragraphs(cmd.help or "") for p in (_md(para), "")]
    out += ["```text", " ".join([*path, *cmd.collect_usage_pieces(ctx)]), "```", ""]
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    args = [p for p in params if getattr(p, "param_type_name", "") == "argument"]
    opts = [p for p in params if getattr(p, "param_type_name", "") == "option"]
    if args:
        out += ["**Arguments**", ""] + [_param_line(p, ctx) for p in args] + [""]
    out += ["**Options**", ""] + [_param_line(p, ctx) for p in opts]
    out += ["- `-h, --help`: Show the help and exit.", ""]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            out += _command_section(sub, [*path, name], level + 1, ctx)
    return out


def render() -> str:
    """The whole page: the root command's global options, then every command in registration order."""
    from typer.main import get_command

    from .app import app

    group = get_command(app)
    ctx = _context(group, [PROG])
    lines = [_HEADER, "## Global options", ""]
    lines += [p for para in _paragraphs(group.help or "") for p in (_md(para), "")]
    lines += ["```text", f"{PROG} [GLOBAL OPTIONS] COMMAND [ARGS]...", "```", ""]
    lines += [_param_line(p, ctx) for p in group.params if not getattr(p, "hidden", False)]
    lines += ["- `-h, --help`: Show the help and exit.", ""]
    lines += ["Global options go before the command: `mtx --state-dir ./lab train ...`.", ""]
    for name, cmd in group.commands.items():
        if not getattr(cmd, "hidden", False):
            lines += _command_section(cmd, [PROG, name], 2, ctx)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def write(path: Path = DEFAULT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path


if __name__ == "__main__":
    written = write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH)
    sys.stdout.write(f"wrote {written}\n")
