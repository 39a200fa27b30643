"""config.toml: keys spelled like the flags, unknown tables and keys named with the closest valid one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from musiccli.cli.app import app


def _run(tmp_path: Path, toml: str, *args: str):
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    return CliRunner().invoke(app, ["--state-dir", str(tmp_path / "state"), "--config", str(cfg), *args],
                              catch_exceptions=False)


@pytest.mark.parametrize("toml", ['[search]\ntop-k = 3\n', '[search]\ntop_k = 3\n', '[search]\nk = 3\n'])
def test_keys_spelled_like_flags(tmp_path: Path, toml: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_search(state, cfg, progress):
        seen["k"] = cfg.k
        raise SystemExit(0)

    monkeypatch.setattr("musiccli.search.search", fake_search)
    _run(tmp_path, toml, "search", "jazz")
    assert seen == {"k": 3}


@pytest.mark.parametrize(("toml", "message", "hint"), [
    ('[search]\ntop-kk = 3\n', "[search] has no key 'top-kk'", "did you mean 'top-k'?"),
    ('[serch]\ntop-k = 3\n', "unknown table [serch]", "did you mean 'search'?"),
    ('[train]\nepoch = 3\n', "[train] has no key 'epoch'", "did you mean 'epochs'?"),
    ('top-k = 3\n', "'top-k' is not a table of a command", "put it under a [command] table"),
])
def test_unknown_keys_and_tables_name_the_closest(tmp_path: Path, toml: str, message: str, hint: str) -> None:
    result = _run(tmp_path, toml, "search", "jazz")
    assert result.exit_code == 1
    assert message in result.output and hint in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("toml", "args", "message", "hint"), [
    ('[embed]\nworkers = true\n', ["embed"], "[embed] workers = true: a boolean where a value is expected",
     "workers takes an int, as --workers does"),
    ('[embed]\nwindow = false\n', ["embed"], "[embed] window = false: a boolean", "window takes a float"),
    ('[embed]\ntags = 1\n', ["embed"], "[embed] tags = 1 is not true or false", "write tags = true or tags = false"),
    ('[search]\ntop-k = 2.5\n', ["search", "jazz"], "[search] top-k = 2.5: Input should be a valid integer",
     "fix top-k in"),
    ('[embed]\nbatch-size = "many"\n', ["embed"], '[embed] batch-size = "many": Input should be a valid integer',
     "fix batch-size in"),
])
def test_config_type_errors_name_the_file_and_key(tmp_path: Path, toml: str, args: list[str], message: str,
                                                  hint: str) -> None:
    result = _run(tmp_path, toml, *args)
    assert result.exit_code == 1, result.output
    flat = " ".join(result.output.split())
    assert f"{tmp_path / 'config.toml'}: {message}" in flat and hint in flat, flat
    assert "--workers" not in message and "Invalid value" not in flat and "Traceback" not in flat


def test_config_values_of_the_right_type_are_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_search(state, cfg, progress):
        seen.update(k=cfg.k)
        raise SystemExit(0)

    monkeypatch.setattr("musiccli.search.search", fake_search)
    _run(tmp_path, '[search]\ntop-k = "4"\n[embed]\nworkers = 2\nwindow = 5\ntags = true\n', "search", "jazz")
    assert seen == {"k": 4}
