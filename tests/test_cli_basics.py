"""The CLI shell: command list, global options, error formatting, config defaults, completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from musiccli.cli._completion import SHELLS, completion_script

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["download", "verify", "unify", "embed", "train", "eval", "export", "search", "demo"]


def test_help_lists_every_command_in_pipeline_order(cli):
    r = cli("--help")
    assert r.exit_code == 0
    commands = r.output[r.output.index("Commands"):]
    positions = [commands.find(f" {c} ") for c in STAGES]
    assert all(p >= 0 for p in positions), r.output
    assert positions == sorted(positions)


@pytest.mark.parametrize("command", [c for c in STAGES if c != "demo"])
def test_every_stage_has_continue_and_force(cli, command):
    out = cli(command, "--help").output
    assert "--continue" in out and "--force" in out


@pytest.mark.parametrize("command", ["verify", "eval", "search"])
def test_result_commands_offer_json(cli, command):
    assert "--json" in cli(command, "--help").output


def test_unknown_encoder_is_one_line_with_choices_and_no_traceback(cli):
    r = cli("embed", "--audio-encoder", "nope")
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    assert "unknown audio encoder 'nope'" in r.output and "dsp" in r.output and "mert" in r.output


def test_unknown_source_lists_choices(cli):
    r = cli("download", "nosuch")
    assert r.exit_code == 1 and "synth" in r.output and "fma" in r.output


def test_usage_error_exits_2(cli):
    assert cli("unify", "--max-samples", "notanumber").exit_code == 2


def test_missing_manifest_has_a_hint(cli):
    r = cli("embed")
    assert r.exit_code == 1 and "mtx unify" in r.output


def test_debug_shows_the_traceback(state_dir):
    from typer.testing import CliRunner

    from musiccli.cli.app import app
    from musiccli.errors import MtxError

    r = CliRunner().invoke(app, ["--state-dir", str(state_dir), "--debug", "embed"])
    assert r.exit_code != 0 and isinstance(r.exception, MtxError)


def test_continue_and_force_together_are_refused(cli):
    r = cli("unify", "--continue", "--force")
    assert r.exit_code == 1 and "exclude each other" in r.output


def test_config_file_supplies_defaults(cli, state_dir, tmp_path):
    cfg = tmp_path / "mtx.toml"
    cfg.write_text('[unify]\nname = "from-config"\ndry-run = true\n')
    r = cli("--config", str(cfg), "unify", "--help")
    assert "from-config" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[unify\n")
    r = cli("--config", str(bad), "unify")
    assert r.exit_code == 1 and "not valid TOML" in r.output


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.output.startswith("mtx ")


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_scripts_are_current(shell):
    committed = (ROOT / "completions" / SHELLS[shell]).read_text()
    assert committed == completion_script(shell), (
        "completions/ is stale: run `python -m musiccli.cli._completion completions/`")


def _complete(words: str, cword: int, tmp_path: Path) -> list[str]:
    env = {**os.environ, "_MTX_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword),
           "MTX_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "musiccli"], env=env, capture_output=True, text=True, timeout=60)
    return out.stdout.split()


def test_bash_completion_completes_commands_and_registry_names(tmp_path):
    assert "embed" in _complete("mtx em", 1, tmp_path)
    assert {"dsp", "mert", "clap"} <= set(_complete("mtx embed --audio-encoder ", 3, tmp_path))
    assert "fma" in _complete("mtx download f", 2, tmp_path)


def test_manifest_with_missing_fields_is_one_clear_line(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "a", "audio_path": "/x.wav", "duration": 3.0}]')
    r = cli("embed", "--manifest", str(bad))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "lacks required field(s): caption" in r.output
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a",')
    r = cli("embed", "--manifest", str(broken))
    assert r.exit_code == 1 and "not valid JSON" in r.output
