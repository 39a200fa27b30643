"""A Milvus collection as the search backend (the engine the Navidrome design queries).

``--uri`` picks the server: a local file path ending in ``.db`` runs embedded Milvus Lite (the
offline default, ``<index dir>/milvus.db``); ``http://host:19530`` talks to a Milvus server or
cluster through the same ``pymilvus.MilvusClient`` (token from ``MILVUS_TOKEN``, if set).

The collection holds one entity per track: ``track_id`` (primary key), ``title``, ``artist`` and
the float32 unit ``vector``; an inner-product index answers queries, and a searcher maps each hit's
track id to its row in the index's ``ids.json`` (ids it does not know are skipped). Upserts go in
batches, and the stage counter ``milvus_upserted`` moves after each batch, so an interrupted upload
resumes where it stopped (an upsert of a row that is already there replaces it, so a batch in flight
is harmless).

A changed library is applied in place (:func:`update`): new and changed tracks are upserted and
removed ones deleted by track id, nothing else is written. On a server the collection answers
searches throughout (a search mid-update maps its hits through the index folder then in use); the
default Milvus Lite file inside the index folder is copied beside it and updated there, like the
other backends' files. Collections built before track-id keys (``row`` primary key) are rebuilt once.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MtxError
from ._topk import RowReader, n_candidates, rerank

log = logging.getLogger(__name__)

NAME = "milvus"
BATCH = 2048
TEXT_MAX = 512
ID_MAX = 2048              # bytes of a track id (the primary key); a longer id is refused
KEY = "track_id"           # backend_meta["key"]: collections keyed by track id (older ones: by row)
LITE_FILE = "milvus.db"
PENDING_FILE = "milvus.pending.json"   # ids an update was writing when it stopped (deleted if gone)


def default_uri(d: Path) -> str:
    return str(d / LITE_FILE)


def collection_name(index_name: str) -> str:
    return "mtx_" + re.sub(r"[^A-Za-z0-9_]", "_", index_name)


# Credentials given in a --uri, by the URL without them, for this process only: the URL that is recorded
# in the index metadata and stage records never holds them (MILVUS_TOKEN, or the same --uri, brings them back).
_CREDENTIALS: dict[str, str] = {}


def without_credentials(uri: str) -> str:
    """``uri`` with any ``user:password@`` removed and remembered for :func:`connect` in this process."""
    from ..redact import split_credentials

    if not uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        return uri
    bare, creds = split_credentials(uri)
    if creds is not None:
        _CREDENTIALS[bare] = f"{creds[0]}:{creds[1]}"
    return bare


def connect(uri: str):
    """A ``MilvusClient`` for a Lite file or a server URL.

    ``user:password@`` in a server URL becomes the client's token (Milvus takes ``user:password``
    as a token), so it is never part of the URL that reaches a log line or an error.
    """
    from ..extras import require_extra
    from ..redact import redact_url, split_credentials

    MilvusClient = require_extra("pymilvus", "milvus", "the milvus backend").MilvusClient
    is_remote = uri.startswith(("http://", "https://", "tcp://", "grpc://"))
    if not is_remote and not uri.endswith(".db"):
        raise MtxError(f"--uri {uri!r} is neither a Milvus Lite file (*.db) nor a server URL",
                       hint="use e.g. ./library.db, or http://localhost:19530 for a server")
    token = os.environ.get("MILVUS_TOKEN", "")
    if is_remote:
        uri, creds = split_credentials(uri)
        if creds is not None and not token:
            token = f"{creds[0]}:{creds[1]}"
        token = token or _CREDENTIALS.get(uri, "")
    else:
        require_extra("milvus_lite", "milvus", "Milvus Lite (a local *.db --uri)")
    try:
        return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
    except Exception as e:  # noqa: BLE001 - pymilvus raises many kinds; one line for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "check --uri (and MILVUS_TOKEN for a secured cluster)"
        if not is_remote and "MilvusLite" in first:
            hint = ("Milvus Lite serves one process at a time: close the other mtx using this file, "
                    "or run a Milvus server for concurrent searches")
        raise MtxError(f"cannot connect to Milvus at {redact_url(uri)}: {first}", hint=hint) from None


def load(client, name: str) -> None:
    """Load ``name`` into memory: a collection is searchable only while loaded.

    Milvus Lite and a server both start every new connection with the collection released
    (and a server may release it at any time), so every searcher loads it before its first search.
    """
    try:
        client.load_collection(name)
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise MtxError(f"Milvus cannot load collection {name!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                       hint="check the Milvus server's memory and log, or rebuild with `mtx search --force`") from None


def _create(client, name: str, dim: int) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("track_id", DataType.VARCHAR, max_length=ID_MAX, is_primary=True)
    schema.add_field("title", DataType.VARCHAR, max_length=TEXT_MAX)
    schema.add_field("artist", DataType.VARCHAR, max_length=TEXT_MAX)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    params = client.prepare_index_params()
    # FLAT is exact; a server may prefer AUTOINDEX, and the exact re-rank keeps the answer exact anyway.
    params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    # Strong consistency: a search right after an update (this process or another) sees it.
    client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")


def _text(v: Any) -> str:
    return ("" if v is None else str(v))[:TEXT_MAX // 4]   # VARCHAR max_length counts bytes; 4 per char at worst


def _key(track_id: str) -> str:
    if len(track_id.encode("utf-8")) > ID_MAX:
        raise MtxError(f"track id {track_id[:60]!r}... is longer than Milvus' {ID_MAX}-byte key",
                       hint="use the exact or ann backend for this library")
    return track_id


def _entity(track_id: str, item: dict[str, Any], vector: np.ndarray) -> dict[str, Any]:
    return {"track_id": _key(track_id), "title": _text(item.get("title")), "artist": _text(item.get("artist")),
            "vector": np.asarray(vector, dtype=np.float32).tolist()}


def build(d: Path, vectors: np.ndarray, options: dict[str, Any], progress, commit,
          done: dict[str, Any], ids: list[str], items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    uri = options.get("uri") or default_uri(d)
    name = collection_name(options["index_name"])
    client = connect(uri)
    n, dim = vectors.shape
    start = int(done.get("milvus_upserted", -1))
    if start < 0 or not client.has_collection(name):
        if client.has_collection(name):
            client.drop_collection(name)
        _create(client, name, dim)
        start = 0
        commit(milvus_upserted=0)
    else:
        log.info("resuming the Milvus upload at row %d of %d", start, n)
    with progress.task("Milvus upsert", total=n, unit="tracks", completed=start) as task:
        for s in range(start, n, BATCH):
            progress.check_interrupt()
            end = min(n, s + BATCH)
            block = np.asarray(vectors[s:end], dtype=np.float32)
            client.upsert(name, [_entity(ids[r], items.get(ids[r], {}), block[r - s]) for r in range(s, end)])
            commit(milvus_upserted=end)
            task.advance(end - s)
    client.flush(name)
    client.load_collection(name)
    return {"uri": uri, "collection": name, "key": KEY}


def _read_json(path: Path, default: Any) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def _release_lite(uri: str) -> None:
    """Close this process's embedded server of a Lite file (it holds the file open)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:   # pragma: no cover - only a Lite uri gets here, and it needs milvus_lite
        return
    server_manager_instance.release_server(uri)


def update(d: Path, old: Path, vectors: np.ndarray, source: np.ndarray, meta: dict[str, Any],
           options: dict[str, Any], progress) -> dict[str, Any]:
    """Apply a changed library to the collection of the index in ``old``; ``d`` holds its successor.

    ``source[k]`` is the old row that row ``k`` of ``vectors`` copies, or -1 for a new or changed
    track (see ``search.update_index``). Upserted: those rows, and kept rows whose title or artist
    changed; deleted: old ids that are gone. Returns the backend meta with ``upserted_rows`` and
    ``deleted_rows``.
    """
    import shutil

    bm = dict(meta.get("backend_meta", {}))
    name = bm.get("collection") or collection_name(options["index_name"])
    ids: list[str] = _read_json(d / "ids.json", [])
    items: dict[str, dict[str, Any]] = _read_json(d / "items.json", {})
    # No --uri: the Lite file in the index folder (where it is now, should the state dir have moved).
    uri = options.get("uri") or default_uri(old)
    final_uri = uri
    lite_copy = not options.get("uri")
    if lite_copy:
        # The default Lite file lives in the index folder: update a copy beside it, swapped in with it.
        _release_lite(uri)
        if Path(uri).exists():
            shutil.copytree(uri, d / LITE_FILE) if Path(uri).is_dir() else shutil.copy2(uri, d / LITE_FILE)
        uri = str(d / LITE_FILE)
    client = connect(uri)
    if bm.get("key") != KEY or not client.has_collection(name):
        log.info("milvus: collection %s %s; building it anew", name,
                 "is keyed by row (older mtx)" if client.has_collection(name) else "is missing")
        built = build(d, vectors, {**options, "uri": uri}, progress, lambda **_: None, {}, ids, items)
        if lite_copy:
            _release_lite(uri)
        return {**built, "uri": final_uri, "upserted_rows": len(ids), "deleted_rows": 0}
    old_ids: list[str] = _read_json(old / "ids.json", [])
    old_items: dict[str, dict[str, Any]] = _read_json(old / "items.json", {})
    pending: list[str] = _read_json(old / PENDING_FILE, [])
    kept = source >= 0
    retitled = [k for k in np.flatnonzero(kept).tolist()
                if any(_text(items.get(ids[k], {}).get(f)) != _text(old_items.get(ids[k], {}).get(f))
                       for f in ("title", "artist"))]
    rows = sorted(set(np.flatnonzero(~kept).tolist()) | set(retitled))
    current = set(ids)
    gone = sorted((set(old_ids) | set(pending)) - current)
    if not lite_copy:   # the collection is shared: remember what is being written until the swap
        from ..state import atomic_write_json

        atomic_write_json(old / PENDING_FILE, sorted(set(pending) | {ids[k] for k in rows}))
    with progress.task("Milvus update", total=len(rows) + len(gone), unit="tracks") as task:
        for s in range(0, len(rows), BATCH):
            progress.check_interrupt()
            batch = rows[s:s + BATCH]
            client.upsert(name, [_entity(ids[k], items.get(ids[k], {}), vectors[k]) for k in batch])
            task.advance(len(batch))
        for s in range(0, len(gone), BATCH):
            progress.check_interrupt()
            client.delete(name, ids=gone[s:s + BATCH])
            task.advance(len(gone[s:s + BATCH]))
    if not uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        client.flush(name)   # a Lite file (copied and swapped in, or opened by the next process): on disk now
    # On a server no flush: the collection is Strong-consistent, so every later search, from any
    # client, sees the writes (a flush per small update would only seal many tiny segments; measured
    # at 20,000 x 512 with 1 % changed: 3.3 s with a flush, 0.42 s without).
    load(client, name)
    if lite_copy:
        _release_lite(uri)
    log.info("milvus: %d track(s) upserted, %d deleted in %s", len(rows), len(gone), name)
    return {**bm, "uri": final_uri, "collection": name, "key": KEY,
            "upserted_rows": len(rows), "deleted_rows": len(gone)}


class MilvusSearcher:
    def __init__(self, d: Path, meta: dict[str, Any], exact: np.ndarray) -> None:
        bm = meta.get("backend_meta", {})
        # No --uri: the Lite file in this folder (recorded absolute, but the state dir may have moved).
        self.client = connect(meta.get("backend_options", {}).get("uri") or default_uri(d))
        self.name = bm.get("collection") or collection_name(meta["name"])
        if not self.client.has_collection(self.name):
            raise MtxError(f"Milvus has no collection {self.name!r}", hint="rebuild it with `mtx search --force`")
        self.exact = exact
        self.rows = RowReader(d / "vectors.npy")   # scattered re-rank reads, no mapping
        # Hits name track ids (the collection may be mid-update: ids this folder lacks are skipped).
        self.by_id = ({t: r for r, t in enumerate(_read_json(d / "ids.json", []))} if bm.get("key") == KEY
                      else None)
        load(self.client, self.name)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        c = min(n_candidates(k), len(self.exact))
        data = [np.asarray(q, dtype=np.float32).tolist()]
        try:
            res = self._search(data, c)
        except Exception as e:  # noqa: BLE001 - pymilvus raises many kinds
            if "load" not in str(e).lower() and "released" not in str(e).lower():
                raise
            # A server may release the collection between two searches (memory pressure, an admin).
            log.info("milvus: collection %s was released; loading it again", self.name)
            load(self.client, self.name)
            res = self._search(data, c)
        if self.by_id is None:   # an older collection keyed by row
            rows = np.array([int(h["id"] if "id" in h else h["row"]) for h in res[0]], dtype=np.int64)
        else:
            found = (self.by_id.get(str(h["id"] if "id" in h else h["track_id"])) for h in res[0])
            rows = np.array([r for r in found if r is not None], dtype=np.int64)
        return rerank(self.rows, q, rows, k)

    def _search(self, data: list[list[float]], limit: int):
        return self.client.search(self.name, data=data, limit=limit, search_params={"metric_type": "IP"},
                                  output_fields=["row"] if self.by_id is None else [])


def open(d: Path, meta: dict[str, Any], exact: np.ndarray) -> MilvusSearcher:  # noqa: A001 - the backend API
    return MilvusSearcher(d, meta, exact)
