"""MPD (Debian ``mpd``) on 127.0.0.1 with a temp config, driven with ``mpc``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import free_port, stop, wait_port


@dataclass
class Mpd:
    port: int
    music: Path
    playlists: Path

    def mpc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["mpc", "-h", "127.0.0.1", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=60, check=check)

    def load(self, name: str) -> list[str]:
        """Load stored playlist ``name`` into an empty queue; the queue's file URIs."""
        self.mpc("clear")
        self.mpc("load", name)
        return [x for x in self.mpc("-f", "%file%", "playlist").stdout.splitlines() if x]

    def titles(self) -> list[str]:
        return [x for x in self.mpc("-f", "%title%", "playlist").stdout.splitlines() if x]


@contextmanager
def mpd(tmp: Path, music: Path) -> Iterator[Mpd]:
    """``music``: MPD's music_directory, written as given (a symlink stays a symlink)."""
    binary = shutil.which("mpd") or ("/usr/bin/mpd" if Path("/usr/bin/mpd").exists() else None)
    if binary is None or shutil.which("mpc") is None:
        pytest.skip("mpd/mpc are not installed (Debian packages `mpd` and `mpc`; .ci/install_servers.sh installs them)")
    tmp.mkdir(parents=True, exist_ok=True)
    playlists = tmp / "playlists"
    playlists.mkdir(exist_ok=True)
    port = free_port()
    conf = tmp / "mpd.conf"
    conf.write_text(
        f'music_directory "{music}"\nplaylist_directory "{playlists}"\ndb_file "{tmp / "mpd.db"}"\n'
        f'log_file "{tmp / "mpd.log"}"\nstate_file "{tmp / "state"}"\nbind_to_address "127.0.0.1"\n'
        f'port "{port}"\nauto_update "no"\nzeroconf_enabled "no"\n'
        'audio_output {\n  type "null"\n  name "null"\n}\n'
        'decoder {\n  plugin "wildmidi"\n  enabled "no"\n}\n')
    log = tmp / "stdout.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "--no-daemon", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_port(port, proc, 30, log)
        server = Mpd(port, music, playlists)
        server.mpc("--wait", "update")
        yield server
    finally:
        stop(proc)
