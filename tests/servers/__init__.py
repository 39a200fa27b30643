"""Real third-party servers for the integration tests, started on 127.0.0.1 by fixtures.

``.ci/install_servers.sh`` installs them: supysonic and Milvus (standalone, from the PyPI
``milvus`` wheel) in their own virtual environments under ``$MTX_TEST_SERVERS`` (default
``~/.cache/mtx-test-servers``), MPD and mpc from Debian. A test skips, naming what is missing,
only when that install failed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

SUPYSONIC_VERSION = "0.7.9"
MILVUS_VERSION = "2.3.5"


def servers_dir() -> Path:
    return Path(os.environ.get("MTX_TEST_SERVERS") or Path.home() / ".cache" / "mtx-test-servers")


def venv_tool(venv: str, tool: str) -> Path:
    """A console script of one of the servers' venvs, or a skip naming the install step."""
    path = servers_dir() / venv / "bin" / tool
    if not path.exists():
        pytest.skip(f"{venv} is not installed under {servers_dir()} (run .ci/install_servers.sh; "
                    f"set MTX_TEST_SERVERS to its folder)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True (its whole process group)."""
    import signal

    # The group, even when its leader has exited: a launcher (milvus-server) can leave its server child
    # running in the group, which then holds the ports of the next start.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        proc.poll()
        time.sleep(0.2)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.poll()
