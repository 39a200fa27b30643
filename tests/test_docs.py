"""The docs cannot drift from the code: the site builds strictly, the CLI reference is generated, and
every module, command and flag the docs name exists."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from musiccli import names
from musiccli.cli import _docgen
from musiccli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = {DOCS / "reference" / "cli.md"}
PAGES = sorted(p for p in DOCS.rglob("*.md") if p not in GENERATED)
TEXTS = [ROOT / "README.md", *PAGES]

# Flags of other tools (pip, torchrun, pytest, mkdocs, benchmarks/*.py) that the docs mention on their own.
FOREIGN_FLAGS = {"--no-deps", "--nproc-per-node", "--exclude-editable", "--durations", "--strict", "--ann-size",
                 "--headless", "--dump-dom", "--screenshot"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move reference material into docs/"


def test_fresh_machine_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3 -m venv .venv"), ci
    for page in (ROOT / "README.md", DOCS / "install.md"):
        assert ci in page.read_text().splitlines(), f"{_rel(page)} must show .ci/run's command verbatim:\n{ci}"


def test_cli_reference_is_generated_from_the_app() -> None:
    committed = (ROOT / _docgen.DEFAULT_PATH).read_text()
    assert committed == _docgen.render(), (
        f"{_docgen.DEFAULT_PATH} is stale: regenerate it with `{_docgen.REGENERATE}`")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (extra: docs)")
def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    # No --quiet: it silences the warnings that --strict counts, and the build then passes regardless.
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                          "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in out.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert out.returncode == 0, "`mkdocs build --strict` failed:\n" + "\n".join(warnings or [out.stderr])
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


def test_readme_links_point_to_files() -> None:
    text = (ROOT / "README.md").read_text()
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = ROOT / target.split("#", 1)[0]
        if not path.exists():
            missing.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"


# ---------------------------------------------------------------- modules named in the docs
def _defines(module_file: Path, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", module_file.read_text()) is not None


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        found = _module_file(parts[:cut])
        if found is not None:
            rest = parts[cut:]  # an object of the module (its methods are not checked)
            return not rest or _defines(found, rest[0])
    return False


def _named_modules(text: str) -> set[str]:
    found = set(re.findall(r"\bmusiccli/[\w/]*\w(?:\.py)?/?", text))
    found |= {m.rstrip(".") for m in re.findall(r"\bmusiccli(?:\.\w+)+", text)}
    for module, imported in re.findall(r"from (musiccli[\w.]*) import (\w+(?:, *\w+)*)", text):
        found |= {f"{module}.{n.strip()}" for n in imported.split(",") if n.strip()}
    return found


@pytest.mark.parametrize("page", TEXTS, ids=_rel)
def test_docs_name_modules_that_exist(page: Path) -> None:
    missing = []
    for name in sorted(_named_modules(page.read_text())):
        if "/" in name:
            path = ROOT / name
            ok = path.exists() or path.with_suffix(".py").exists()
        else:
            ok = _dotted_exists(name)
        if not ok:
            missing.append(name)
    assert not missing, f"{_rel(page)} names modules or objects that do not exist: {missing}"


# ---------------------------------------------------------------- commands and flags named in the docs
def _options(cmd) -> set[str]:
    out = {"-h", "--help"}
    for p in cmd.params:
        out |= set(getattr(p, "opts", ())) | set(getattr(p, "secondary_opts", ()))
    return out


GROUP = get_command(app)
GLOBAL = _options(GROUP)
GLOBAL_WITH_VALUE = {"--state-dir", "--config"}
COMMANDS = {name: cmd for name, cmd in GROUP.commands.items()}
ALL_FLAGS = GLOBAL | {o for cmd in COMMANDS.values() for o in _options(cmd)}


def _snippets(text: str) -> list[str]:
    """Fenced code blocks, line by line and without comments, then inline code spans."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [re.sub(r"\s#\s.*$", "", line) for block in blocks for line in block.splitlines()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return lines + re.findall(r"``?([^`\n]+)``?", prose)


_WRAPPERS = {"sudo", "time", "nice", "exec", "env", "nohup", "watch"}


def _is_mtx(token: str) -> bool:
    return token == "mtx" or token.endswith(("/mtx", "=mtx"))  # .venv/bin/mtx, ExecStart=%h/.local/bin/mtx


def _mtx_calls(snippet: str) -> list[list[str]]:
    """The argument lists of `mtx ...` (or `python -m musiccli ...`) calls in one snippet.

    `mtx` counts only where a command starts (after environment assignments, cron fields or a wrapper such
    as `nice`), so prose inside a code block ("Description=Keep the mtx library in sync") is not a call."""
    calls = []
    for part in re.split(r"&&|\|\||;|\|", snippet):
        try:
            tokens = shlex.split(part)
        except ValueError:
            tokens = part.split()
        for i, tok in enumerate(tokens):
            if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "musiccli":
                calls.append(tokens[i + 2:])
                break
        else:
            i = 0
            while i < len(tokens) and not _is_mtx(tokens[i]) and (
                    re.match(r"^[A-Za-z_]\w*=", tokens[i]) or re.fullmatch(r"[\d*/,-]+", tokens[i])
                    or tokens[i] in _WRAPPERS):
                i += 1
            if i < len(tokens) and _is_mtx(tokens[i]):
                calls.append(tokens[i + 1:])
    return calls


def _check_call(args: list[str]) -> list[str]:
    problems = []
    i = 0
    while i < len(args) and args[i].startswith("-"):  # global options before the command
        flag = args[i].split("=", 1)[0]
        if flag not in GLOBAL:
            problems.append(f"mtx {flag} (not a global option)")
        i += 2 if flag in GLOBAL_WITH_VALUE and "=" not in args[i] else 1
    if i >= len(args):
        return problems
    command = args[i]
    if command.isupper() or not re.fullmatch(r"[a-z][a-z0-9-]*", command):
        return problems  # a placeholder (`mtx COMMAND --help`) or a prose fragment
    if command not in COMMANDS:
        return [*problems, f"mtx {command} (no such command)"]
    allowed = _options(COMMANDS[command])
    for tok in args[i + 1:]:
        if tok.startswith("--") and len(tok) > 2 or re.fullmatch(r"-[a-zA-Z]", tok):
            flag = tok.split("=", 1)[0]
            if flag not in allowed:
                problems.append(f"mtx {command} {flag}")
    return problems


@pytest.mark.parametrize("page", TEXTS, ids=_rel)
def test_docs_use_commands_and_flags_that_exist(page: Path) -> None:
    problems = []
    for snippet in _snippets(page.read_text()):
        calls = _mtx_calls(snippet)
        for args in calls:
            problems += _check_call(args)
        if not calls:
            m = re.match(r"(--[a-z][a-z0-9-]*)(/?)", snippet.strip())  # `--min/--max-duration`: a shorthand
            if m and not m.group(2) and m.group(1) not in ALL_FLAGS | FOREIGN_FLAGS:
                problems.append(f"{m.group(1)} (no command has this flag)")
    assert not problems, f"{_rel(page)} names commands or flags that do not exist: {sorted(set(problems))}"


def test_every_source_and_encoder_is_documented() -> None:
    datasets = (DOCS / "guides" / "datasets.md").read_text()
    embed = (DOCS / "stages" / "embed.md").read_text()
    assert [s for s in names.SOURCES if f"`{s}`" not in datasets] == []
    assert [e for e in names.AUDIO_ENCODERS if f"`{e}`" not in embed] == []
