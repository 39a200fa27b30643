"""A moved state dir keeps working: everything inside it is stored relative to it.

Build a library, a run and an index; copy the state dir elsewhere (the original still there, then
deleted), and run eval, search, train (already complete) and unify against the copy: each uses the
copy's files, and nothing is refused as "different config".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner


def _cli(root: Path):
    from musiccli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["--state-dir", str(root), *args], catch_exceptions=False)

    return invoke


@pytest.mark.slow
def test_moved_state_dir_keeps_working(tmp_path: Path, tiny_backbone: Path) -> None:
    old = tmp_path / "old-state"
    cli = _cli(old)
    assert cli("download", "synth", "--n", "24", "--duration", "2", "--sample-rate", "16000",
               "--workers", "1").exit_code == 0
    bad = sorted((old / "datasets" / "synth").rglob("*.flac"))[0]
    bad.write_bytes(bad.read_bytes()[:200])                         # verify rejects it
    assert cli("verify", "synth").exit_code in (0, 1)
    r = cli("unify", "--name", "lib")
    assert r.exit_code == 0 and "rejected were left out" in r.output, r.output
    assert cli("embed", "--audio-encoder", "dsp", "--manifest", "lib", "--num-workers", "0").exit_code == 0
    train = ("train", "--audio-encoder", "dsp", "--manifest", "lib", "--text-backbone", str(tiny_backbone),
             "--epochs", "1", "--batch-size", "8")
    r = cli(*train)
    assert r.exit_code == 0, r.output
    assert cli("search", "dark metal", "-k", "3").exit_code == 0

    new = tmp_path / "new-state"
    shutil.copytree(old, new)
    cli = _cli(new)
    # The original still exists: the copy must use its own files, not the original's.
    r = cli("search", "dark metal", "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["hits"]
    assert hits and all(h["audio_path"].startswith(str(new)) for h in hits)
    shutil.rmtree(old)
    r = cli(*train)
    assert r.exit_code == 0 and "already" in r.output.lower(), r.output     # not "different config"
    r = cli("unify", "--name", "lib")
    assert r.exit_code == 0 and ("already" in r.output.lower() or "up to date" in r.output.lower()), r.output
    assert str(old) not in r.output.replace("\n", "")                      # it names the manifest where it is now
    # A new manifest from the parse cache written before the move names the files where they are now.
    assert cli("unify", "--name", "lib2", "--max-samples", "10").exit_code == 0
    from musiccli.manifest import read_manifest

    assert all(r.audio_path.startswith(str(new)) for r in read_manifest(new / "manifests" / "lib2.json"))
    r = cli("eval", "--json")
    assert r.exit_code == 0, r.output
    r = cli("search", "dark metal", "-k", "3", "--json")
    assert r.exit_code == 0 and all(h["audio_path"].startswith(str(new)) for h in json.loads(r.stdout)["hits"])
    r = cli("embed", "--audio-encoder", "dsp", "--manifest", "lib")
    assert r.exit_code == 0 and "already complete" in r.output, r.output
