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
