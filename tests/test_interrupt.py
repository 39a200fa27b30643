"""Ctrl-C through the real CLI: stop at a unit boundary, say how to resume, resume to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["download", "synth", "--n", "60", "--duration", "2", "--sample-rate", "16000", "--workers", "1"]


def _mtx(state: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "musiccli", "--state-dir", str(state), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "audio").rglob("*.flac"))}


@pytest.mark.slow
def test_sigint_stops_cleanly_and_continue_matches_an_uninterrupted_run(tmp_path: Path):
    state = tmp_path / "interrupted"
    ledger = state / "datasets" / "synth" / "ledger.jsonl"
    proc = _mtx(state, *ARGS)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and ledger.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the download finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--continue" in out and "Traceback" not in out

    refused = _mtx(state, *ARGS)
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 1 and "interrupted download found" in out

    resumed = _mtx(state, *ARGS, "--continue")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out

    clean = _mtx(tmp_path / "clean", *ARGS)
    out, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, out
    root = lambda s: s / "datasets" / "synth"  # noqa: E731
    assert _files(root(state)) == _files(root(tmp_path / "clean")) and len(_files(root(state))) == 60
    assert (root(state) / "metadata.csv").read_bytes() == (root(tmp_path / "clean") / "metadata.csv").read_bytes()
