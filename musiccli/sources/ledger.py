"""Per-item download ledger: an append-only JSONL file; the last entry for an id wins.

Appends are flushed and fsynced one line at a time, so a crash loses at most the
line being written, and a torn last line is ignored on reading.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OK, FAILED, PENDING = "ok", "failed", "pending"


@dataclass
class LedgerEntry:
    id: str
    status: str
    reason: str | None = None
    checksum: str | None = None
    path: str | None = None
    bytes: int | None = None
    time: float = 0.0


class Ledger:
    FILENAME = "ledger.jsonl"

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / self.FILENAME
        self._lock = threading.Lock()
        self.entries: dict[str, LedgerEntry] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    self.entries[d["id"]] = LedgerEntry(**d)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # torn last line after a crash

    def _append(self, entry: LedgerEntry) -> None:
        entry.time = time.time()
        line = json.dumps({k: v for k, v in entry.__dict__.items() if v is not None}, ensure_ascii=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.entries[entry.id] = entry

    def ok(self, id: str, path: Path | str | None = None, checksum: str | None = None,
           nbytes: int | None = None) -> None:
        self._append(LedgerEntry(id=id, status=OK, path=str(path) if path else None, checksum=checksum,
                                 bytes=nbytes))

    def failed(self, id: str, reason: str) -> None:
        self._append(LedgerEntry(id=id, status=FAILED, reason=reason))

    def pending(self, id: str) -> None:
        self._append(LedgerEntry(id=id, status=PENDING))

    def is_ok(self, id: str) -> bool:
        e = self.entries.get(id)
        return e is not None and e.status == OK

    def counts(self) -> dict[str, int]:
        c = Counter(e.status for e in self.entries.values())
        return {OK: c.get(OK, 0), FAILED: c.get(FAILED, 0), PENDING: c.get(PENDING, 0)}

    def failures(self) -> list[LedgerEntry]:
        return [e for e in self.entries.values() if e.status == FAILED]

    def summary(self) -> dict[str, Any]:
        return {**self.counts(), "failures": [{"id": e.id, "reason": e.reason} for e in self.failures()]}
