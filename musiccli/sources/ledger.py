"""Per-item download ledger: an append-only JSONL file; the last entry for an id wins.

Appends are flushed and fsynced one line at a time, so a crash loses at most the
line being written, and a torn last line is ignored on reading. Opening a ledger ends
a torn last line first, so the next append starts a line of its own instead of being
glued to (and lost with) the fragment.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..state import append_jsonl, iter_jsonl

OK, FAILED, PENDING, REMOVED = "ok", "failed", "pending", "removed"   # removed: gone from a rescanned library


def end_torn_line(path: Path) -> None:
    """Terminate a JSON Lines file whose last line was cut by a crash (no trailing newline)."""
    try:
        with open(path, "rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
    except FileNotFoundError:
        pass


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, as ``state.iter_jsonl`` reads it (blank, torn and non-object lines
    skipped), decoded in one call and kept while the file is unchanged: a ledger or index of 20,000
    lines is read by every stage of a sync, and a ``json.loads`` per line dominated a sync that had
    nothing to do.

    The lines are decoded as one JSON array; when that fails or yields another number of values than
    there are lines (a torn or hand-edited line), the file is read line by line instead. A torn line is
    a prefix of an object, whose ``{`` no later complete line can close, so it always fails the array.
    """
    try:
        key = _file_key(path)
    except FileNotFoundError:
        return []
    with _CACHE_LOCK:
        cached = _READ_CACHE.get(key)
    if cached is None:
        cached = _decode_jsonl(path)
        if key[3] <= _CACHE_MAX_BYTES:
            with _CACHE_LOCK:
                while len(_READ_CACHE) >= _CACHE_FILES:
                    _READ_CACHE.pop(next(iter(_READ_CACHE)))
                _READ_CACHE[key] = cached
    # Copies, so a caller that edits an object never changes what the next reader gets.
    return [d.copy() for d in cached]


# The last few files read, by identity (see _file_key): the stages of one sync read the same ledger and
# index several times; an append-only file that grew, or was replaced, has another key.
_READ_CACHE: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_FILES = 4
_CACHE_MAX_BYTES = 16 << 20   # a 20,000-track library index is about 7 MB; larger files are not kept
_EDGE = 512


def _file_key(path: Path) -> tuple[Any, ...]:
    """Path, device, inode, size, mtime, and the first and last bytes: a file rewritten within one tick of
    the clock that stamps mtimes, with the same size and a reused inode, still differs at its edges
    (each ledger line ends with its time)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        head = f.read(_EDGE)
        tail = b""
        if st.st_size > _EDGE:
            f.seek(st.st_size - _EDGE)
            tail = f.read(_EDGE)
    return (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, head, tail)


def _decode_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            # "\n" only, as reading a file line by line splits (str.splitlines would also cut at the
            # U+2028 a tag may hold, unescaped with ensure_ascii=False)
            lines = [line for line in f.read().split("\n") if line.strip()]
    except FileNotFoundError:
        return []
    if not lines:
        return []
    try:
        values = json.loads("[" + ",".join(lines) + "]")
    except ValueError:   # JSONDecodeError, or a number too large
        values = None
    if values is None or len(values) != len(lines):
        return list(iter_jsonl(lines))
    return [d for d in values if isinstance(d, dict)]


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
        # Called after an item is recorded (the stage's failure policy watches them; it may raise).
        self.on_ok: Callable[[str], None] | None = None
        self.on_failed: Callable[[str, str], None] | None = None
        self._load()
        end_torn_line(self.path)

    def _load(self) -> None:
        make = LedgerEntry
        entries = self.entries
        for d in read_jsonl(self.path):
            try:
                entries[d["id"]] = make(**d)
            except (KeyError, TypeError):
                continue

    def _append(self, entry: LedgerEntry) -> None:
        entry.time = time.time()
        with self._lock:
            append_jsonl(self.path, [{k: v for k, v in entry.__dict__.items() if v is not None}])
            self.entries[entry.id] = entry

    def record_many(self, entries: list[LedgerEntry]) -> None:
        """Append many entries with one write and one fsync (a page of a database import)."""
        now = time.time()
        for e in entries:
            e.time = now
        with self._lock:
            append_jsonl(self.path, [{k: v for k, v in e.__dict__.items() if v is not None} for e in entries])
            self.entries.update((e.id, e) for e in entries)
        for e in entries:
            if e.status == OK and self.on_ok is not None:
                self.on_ok(e.id)
            elif e.status == FAILED and self.on_failed is not None:
                self.on_failed(e.id, e.reason or "unknown")

    def ok(self, id: str, path: Path | str | None = None, checksum: str | None = None,
           nbytes: int | None = None) -> None:
        self._append(LedgerEntry(id=id, status=OK, path=str(path) if path else None, checksum=checksum,
                                 bytes=nbytes))
        if self.on_ok is not None:
            self.on_ok(id)

    def failed(self, id: str, reason: str) -> None:
        from ..redact import redact_text

        reason = redact_text(reason)  # reasons may quote URLs
        self._append(LedgerEntry(id=id, status=FAILED, reason=reason))
        if self.on_failed is not None:
            self.on_failed(id, reason)

    def removed(self, id: str) -> None:
        """The item is gone from the library (a rescan): neither ok nor failed any more."""
        self._append(LedgerEntry(id=id, status=REMOVED))

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
