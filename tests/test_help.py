"""Every command's help renders its text as written and lists the registry choices."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from musiccli import names
from musiccli.cli.app import app

GROUP = get_command(app)
COMMANDS = list(GROUP.commands)


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "300"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_no_eaten_markup(command: str) -> None:
    text = _help(*([command] if command else []))
    # What eaten markup leaves behind: empty brackets, or a space before punctuation.
    for bad in (r"\(\s*\)", r"\[\s*\]", r"\( ", r"\w \)", r" [.,;:](\s|$)"):
        assert not re.search(bad, text), f"{bad!r} in `mtx {command} --help`: {re.search(bad, text)}"
    cmd = GROUP.commands[command] if command else GROUP
    for param in cmd.params:
        raw = getattr(param, "help", None)
        if not raw:
            continue
        # Sentences keep single spaces (Rich panels pad with runs of spaces, so check the texts themselves).
        plain = re.sub(r"\\(\[)", r"\1", raw)
        assert "  " not in plain, (command, param.name, plain)
        words = [w for w in re.split(r"\s+", plain) if w]
        flat = " ".join(text.split())
        for w in words:
            assert w in flat or w.rstrip(".,;:") in flat, (command, param.name, w)


def test_help_lists_registry_choices() -> None:
    download = " ".join(_help("download").split())
    embed = " ".join(_help("embed").split())
    train = " ".join(_help("train").split())
    for name in names.SOURCES:
        assert name in download
    for name in names.AUDIO_ENCODERS:
        assert name in embed and name in train
    for name in (*names.LOSSES, *names.TEXT_BACKBONES):
        assert name in train
    for name in names.AGGREGATIONS:
        assert name in embed
    assert "[train] epochs = 20" in " ".join(_help().split())
    assert "see `mtx embed --help`" not in embed


@pytest.mark.parametrize(("args", "expected"), [
    (["download", ""], names.SOURCES),
    (["embed", "--audio-encoder", "m"], ("mert", "music2latent", "musicgen", "muq", "musicnn")),
    (["train", "--loss", ""], names.LOSSES),
    (["train", "--text-backbone", ""], names.TEXT_BACKBONES),
    (["embed", "--aggregation", ""], names.AGGREGATIONS),
])
def test_shell_completion_offers_registry_names(args: list[str], expected: tuple[str, ...]) -> None:
    env = {"_MTX_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(["mtx", *args]),
           "COMP_CWORD": str(len(args))}
    result = CliRunner().invoke(app, [], env=env, prog_name="mtx")
    offered = set(result.output.split())
    assert set(expected) <= offered, (args, result.output)


def test_help_piped_into_head_exits_quietly() -> None:
    out = subprocess.run(f"set -o pipefail; {sys.executable} -m musiccli --help | head -3",
                         shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
