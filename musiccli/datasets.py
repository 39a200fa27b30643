"""Dataset identity: which source a name means, and what identifies a downloaded dataset.

``download`` writes a dataset dir; ``verify`` and ``unify`` read it. What they must agree on
lives here, so neither reads the other's module: resolving a source name, the identity of a
dataset dir's contents, and its size on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MtxError
from .sources import get_source, source_names
from .sources.base import Source
from .sources.ledger import Ledger
from .state import TMP_PREFIX, StageStatus, StateDir, is_done, load_stage


def resolve_source(name: str) -> Source:
    if name not in source_names():
        raise MtxError(f"unknown source {name!r}; valid sources: {', '.join(source_names())}",
                       hint="run `mtx download --help` for the list")
    return get_source(name)


def dataset_identity(root: Path) -> dict[str, Any]:
    """What identifies the current contents of a dataset dir for later stages.

    The ledger is appended to for every downloaded item, so its size and mtime change
    whenever the dataset does. (Not the directory's mtime: verify writes its results
    into the dataset dir, which must not change the dataset's identity.)
    """
    ledger = Path(root) / Ledger.FILENAME
    try:
        st = ledger.stat()
        out: dict[str, Any] = {"ledger_bytes": st.st_size, "ledger_mtime_ns": st.st_mtime_ns}
    except FileNotFoundError:
        return {"ledger": None}
    # Playlists the scan read (folder, audiomuse: captions shared by their tracks), rewritten only when they
    # changed: a changed playlist changes the records' metadata, though no file did.
    playlists = Path(root) / "playlists.json"
    if playlists.is_file():
        pst = playlists.stat()
        out["playlists"] = [pst.st_size, pst.st_mtime_ns]
    return out


def disk_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(TMP_PREFIX):
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


def download_key(source: str) -> str:
    """The download stage's key for a source: one dataset dir, one stage output."""
    return f"download:{source}"


@dataclass(frozen=True)
class DownloadStatus:
    """What the download stage recorded for a dataset dir (``None`` status: no record, e.g. copied in)."""

    source: str
    status: str | None
    failed_items: int = 0

    @property
    def usable(self) -> bool:
        """Downstream stages use a dataset whose download is complete, with or without failed items."""
        return self.status is None or is_done(self.status)


def download_status(state: StateDir, source: str) -> DownloadStatus:
    record = load_stage(state, download_key(source))
    if record is None:
        return DownloadStatus(source, None)
    failed = record.failed_items if record.status == StageStatus.COMPLETE_WITH_FAILURES.value else 0
    return DownloadStatus(source, record.status, int(failed))
