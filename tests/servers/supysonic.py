"""supysonic (a Subsonic API server from PyPI) in its own venv, on 127.0.0.1, with a temp config,
database and music folder of real FLAC files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import free_port, stop, venv_tool, wait_port

# Titles that a playlist or an M3U must carry through intact.
TITLES = ["Rain on Glass", "Café del Mar", "One, Two; Three", "Track #4", "Ωmega Drone", "Low Tide",
          "Night Bus", "Paper Moon", "Dust", "Static Bloom", "Echo Park", "Last Light"]

_SETUP = r"""
import json, sys
from supysonic.config import IniConfig
from supysonic.db import init_database, release_database
from supysonic.cli import cli
config = IniConfig(["supysonic.conf"])
init_database(config.BASE["database_uri"])
try:
    for args in json.loads(sys.argv[1]):
        cli.main(args=args, obj=config, standalone_mode=False)
finally:
    release_database()
"""


@dataclass
class Supysonic:
    url: str
    root: Path
    music: Path
    users: dict[str, str]
    files: list[Path] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.root / "supysonic.db"

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        with sqlite3.connect(self.db) as con:
            rows = con.execute(statement, params).fetchall()
        return rows


def write_library(music: Path, n: int = len(TITLES)) -> list[Path]:
    """FLAC files with title/artist/album tags: even ones 8 kHz mono (low bitrate), odd ones 44.1 kHz stereo."""
    import soundfile as sf

    files = []
    for i in range(n):
        sr, ch = (8000, 1) if i % 2 == 0 else (44100, 2)
        t = np.arange(int(sr * 1.0)) / sr
        tone = (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t)).astype(np.float32)
        if ch == 2:   # noise keeps FLAC from compressing the 44.1 kHz files below a few hundred kbps
            tone = tone + 0.2 * np.random.default_rng(i).standard_normal(len(t)).astype(np.float32)
        artist = f"Artist {i // 3}"
        d = music / artist / "Album"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{i + 1:02d} {TITLES[i % len(TITLES)]}.flac"
        with sf.SoundFile(path, "w", samplerate=sr, channels=ch, format="FLAC") as f:
            f.title, f.artist, f.album = TITLES[i % len(TITLES)], artist, "Album"
            f.write(np.stack([tone] * ch, axis=1))
        files.append(path)
    return files


@contextmanager
def supysonic(tmp: Path, users: dict[str, str], admins: tuple[str, ...] = (), music: Path | None = None
              ) -> Iterator[Supysonic]:
    server_bin = venv_tool("supysonic", "supysonic-server")
    python = server_bin.parent / "python"
    tmp.mkdir(parents=True, exist_ok=True)
    if music is None:
        music = tmp / "music"
        files = write_library(music)
    else:
        files = sorted(music.rglob("*.flac"))
    (tmp / "cache").mkdir(exist_ok=True)
    (tmp / "supysonic.conf").write_text(
        "[base]\n"
        f"database_uri = sqlite:///{tmp / 'supysonic.db'}\n"
        "[webapp]\n"
        f"cache_dir = {tmp / 'cache'}\nlog_level = INFO\nlog_file = {tmp / 'webapp.log'}\nmount_webui = no\n"
        "[daemon]\n"
        f"socket = {tmp / 'daemon.sock'}\nrun_watcher = no\n")
    steps = []
    for name, password in users.items():
        steps.append(["user", "add", name, "-p", password])
        if name in admins:
            steps.append(["user", "setroles", name, "-A"])
    steps += [["folder", "add", "music", str(music)], ["folder", "scan", "--foreground", "music"]]
    subprocess.run([str(python), "-c", _SETUP, json.dumps(steps)], cwd=tmp, check=True, capture_output=True,
                   timeout=120)
    port = free_port()
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(server_bin), "-S", "waitress", "-h", "127.0.0.1", "-p", str(port),
                                 "--threads", "4"], cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_port(port, proc, 60, log)
        yield Supysonic(f"http://127.0.0.1:{port}", tmp, music, dict(users), files)
    finally:
        stop(proc)


__all__ = ["TITLES", "Supysonic", "supysonic", "write_library", "sys"]
