"""A Milvus standalone server (2.3.5, the binary in the PyPI ``milvus`` wheel) on a free port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import free_port, stop, venv_tool, wait_port

# An index folder searched from a fresh process (argv: index dir, queries .npy): prints the top-10 ids per query.
SEARCH_IN_A_NEW_PROCESS = r"""
import json, sys
from pathlib import Path
import numpy as np
from musiccli.index_backends import milvus
d, q = Path(sys.argv[1]), np.load(sys.argv[2])
meta = json.loads((d / "meta.json").read_text())
ids = json.loads((d / "ids.json").read_text())
s = milvus.open(d, meta, np.load(d / "vectors.npy", mmap_mode="r"))
print(json.dumps([[ids[r] for r in s.search(x, 10)[0].tolist()] for x in q]))
"""


@contextmanager
def milvus_server(tmp: Path) -> Iterator[str]:
    """Yields the server's URI (``http://127.0.0.1:<port>``) once it answers."""
    import subprocess

    server_bin = venv_tool("milvus", "milvus-server")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(server_bin), "--data", str(tmp / "data"), "--proxy-port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, proc, 180, log)
        from pymilvus import MilvusClient

        deadline = time.monotonic() + 120
        while True:   # the proxy listens before the coordinators are ready
            try:
                MilvusClient(uri=uri, timeout=5).list_collections()
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(1)
        yield uri
    finally:
        stop(proc)
