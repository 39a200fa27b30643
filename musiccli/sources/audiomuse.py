"""AudioMuse-AI: songs and teacher embeddings from its PostgreSQL database, audio from its media server.

``mtx download audiomuse`` has two phases, both resumable:

1. **Import** (read-only, see ``audiomuse_db``): keyset pages over ``score.item_id``. For each
   page the teacher vectors are committed as store parts, then the song lines, then one ledger
   entry per song (``pending``: imported, audio not fetched yet; ``failed``: a vector that is the
   wrong size or not finite), then the cursor. A page re-read after a crash rewrites the same
   parts, and duplicate song lines are merged on reading, so a resumed import equals an
   uninterrupted one. When the last page is in, each store is assembled once.
2. **Audio**: from Jellyfin, Navidrome, or the files themselves (``--server local``), through
   ``sources._http.fetch`` (Range resume, retries), with ``--workers`` and ``--rate-limit``.

Running ``mtx download audiomuse`` again **rescans** (:func:`diff_songs`): the database is read again
into ``*.rescan.*`` files beside the current ones (resumable the same way), then compared with the
last import song by song. Added songs are fetched; a song whose database row changed is "changed"
and its audio is fetched again only when the audio itself changed (another server id or file path,
or the server now lists the file with another size, path, format or duration; a local file with
another size or mtime); removed songs leave the ledger and their fetched files are deleted.
Unchanged songs' files and ledger entries are not touched, so `unify` and `embed` (rows keyed by
track id and content hash) redo only what changed. ``scan.json`` holds the counts.

Layout under ``datasets/audiomuse/``::

    connection.json        target (host, port, database, user: no password), schema, server
    songs.jsonl            one line per song (metadata, parsed moods and features)
    cursor.json            the last committed page (keyset position)
    teachers/<name>.h5     teacher stores (mtx store layout, ids = record ids)
    import.json            written last: the import is complete (counts, dims)
    audio.jsonl            per fetched file: path, duration, size, content hash, and the server's
                           fingerprint of it (path, size, format, duration) to notice a changed file
    scan.json              what the last rescan found: added, changed, removed, unchanged, failed, fetched
                           (+ playlists, playlist_changes where there are playlists)
    playlists.json         playlists as captions: the database's ``playlist`` table and the media
                           server's own (Subsonic getPlaylists/getPlaylist), by item id
    audio/<xx>/<id>.<ext>  the audio files
    ledger.jsonl
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import os

import numpy as np

from .. import audiomuse_db as db
from .. import store as store_mod
from ..errors import MtxError
from ..manifest import CONTENT_HASH, Record, file_content_hash
from ..progress import Progress
from ..state import append_jsonl, atomic_write_json, iter_jsonl, read_json
from .base import DownloadConfig, ExpectedFile, Source, SourceInfo, register
from .ledger import FAILED, OK, PENDING, REMOVED, Ledger, LedgerEntry, end_torn_line

log = logging.getLogger(__name__)

NAME = "audiomuse"
PAGE_SIZE = 1000
ID_PREFIX = f"{NAME}:"
SONGS, CURSOR, IMPORTED, AUDIO_INDEX, CONNECTION = "songs.jsonl", "cursor.json", "import.json", "audio.jsonl", \
    "connection.json"
SCAN_NAME = "scan.json"
PLAYLISTS_NAME = "playlists.json"
# A rescan's import, beside the current one until it is applied (see AudioMuseSource._apply_rescan).
RESCAN_SONGS, RESCAN_CURSOR, RESCAN_IMPORTED, RESCAN_FAILED = "songs.rescan.jsonl", "cursor.rescan.json", \
    "import.rescan.json", "failed.rescan.jsonl"
FEATURES = ("danceable", "aggressive", "happy", "party", "relaxed", "sad")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

INFO = SourceInfo(
    name=NAME,
    description="Your AudioMuse-AI library: songs + MusiCNN/CLAP teacher vectors from its PostgreSQL, "
                "audio from Jellyfin/Navidrome/local files",
    license="(your files)",
    homepage="https://github.com/NeptuneHub/AudioMuse-AI",
    phase=None,
    options=("dsn", "server", "workers", "rate_limit"),
)


def record_id(item_id: str) -> str:
    return ID_PREFIX + item_id


def teacher_store_path(root: Path, name: str) -> Path:
    """Where the imported vectors of teacher ``name`` (musicnn, clap, ...) live."""
    return Path(root) / "teachers" / f"{name}.h5"


def imported_teachers(root: Path) -> dict[str, Path]:
    """Finished teacher stores of an import: name -> path."""
    marker = Path(root) / IMPORTED
    if not marker.exists():
        return {}
    done = read_json(marker).get("teachers", {})
    return {n: teacher_store_path(root, n) for n in done if teacher_store_path(root, n).exists()}


# --------------------------------------------------------------------------- captions (no LLM)
def _tempo_word(bpm: float) -> str:
    return "slow" if bpm < 80 else "mid-tempo" if bpm < 115 else "upbeat" if bpm < 140 else "fast"


def describe_song(song: dict[str, Any], n: int = 3) -> list[str]:
    """Captions from the mood vector, features, tempo, key and genre: the first is canonical.

    "An energetic, danceable rock track in A minor at 128 BPM". The phrasing of the alternatives
    depends only on the item id, so re-parsing gives the same manifest.
    """
    from ..captions import classify_tags, join_and, with_article

    moods = sorted(song.get("moods", {}).items(), key=lambda kv: -kv[1])
    ts = classify_tags([m for m, _ in moods])
    genres = ts.genres[:2]
    feats = [f for f, v in sorted(song.get("features", {}).items(), key=lambda kv: -kv[1]) if v >= 0.5]
    adjectives = list(dict.fromkeys([*(("energetic",) if "party" in feats or "aggressive" in feats else ()),
                                     *[f for f in feats if f in ("danceable", "aggressive", "happy", "relaxed",
                                                                 "sad")], *ts.moods[:1]]))[:2]
    genre = join_and(genres) if genres else None
    noun = "track" if genres else "piece"
    key = f"{song['key']} {song['scale']}" if song.get("key") and song.get("scale") else song.get("key")
    tempo = song.get("tempo")
    bpm = f"{round(float(tempo))} BPM" if isinstance(tempo, (int, float)) and tempo > 0 else None
    tail = " ".join(p for p in (f"in {key}" if key else None, f"at {bpm}" if bpm else None) if p)
    head = ", ".join(adjectives)
    first = with_article(" ".join(p for p in (head, genre, noun) if p), capital=True) + (f" {tail}" if tail else "")
    out = [first]
    rng = random.Random(hashlib.sha1(str(song.get("item_id")).encode()).hexdigest())
    if bpm:
        out.append(f"{(genre or 'music').capitalize()} at {bpm}" + (f", feeling {join_and(adjectives)}"
                                                                    if adjectives else ""))
    if adjectives and genres:
        out.append(f"{' and '.join(adjectives).capitalize()} {genre}" + (f" in {key}" if key else ""))
    if song.get("title") and song.get("artist"):
        out.append(f"{song['title']} by {song['artist']}")
    alts = out[1:]
    rng.shuffle(alts)
    return list(dict.fromkeys([first, *alts]))[:max(1, n)]


def song_tags(song: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """Tags (mood labels, then features at or above 0.5) and every label's score."""
    scores = {**song.get("moods", {}), **{f: v for f, v in song.get("features", {}).items()}}
    tags = [m for m, _ in sorted(song.get("moods", {}).items(), key=lambda kv: -kv[1])]
    tags += [f for f, v in sorted(song.get("features", {}).items(), key=lambda kv: -kv[1]) if v >= 0.5]
    return list(dict.fromkeys(tags)), scores


# --------------------------------------------------------------------------- import
def song_from_row(row: dict[str, Any], server_ids: bool = False) -> dict[str, Any]:
    """One songs.jsonl line; ``server_ids``: the layout where item_id is the media server's own id."""
    def num(k: str) -> float | None:
        v = row.get(k)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    song = {"item_id": str(row["item_id"]), "title": row.get("title"), "artist": row.get("author"),
            "album": row.get("album"), "album_artist": row.get("album_artist"),
            "year": int(row["year"]) if isinstance(row.get("year"), int) else None,
            "duration": num("duration"), "tempo": num("tempo"), "energy": num("energy"),
            "key": row.get("key") or None, "scale": row.get("scale") or None,
            "moods": db.parse_scores(row.get("mood_vector")), "features": db.parse_scores(row.get("other_features")),
            "file_path": row.get("server_file_path") or row.get("file_path"),
            "server_item_id": row.get("server_item_id") or (str(row["item_id"]) if server_ids else None)}
    return {k: v for k, v in song.items() if v not in (None, {}, "")}


class _Importer:
    """One import run: pages in, parts + songs + ledger + cursor out (in that order)."""

    def __init__(self, root: Path, conn, schema: db.Schema, server_id: str | None, ledger: Ledger | None,
                 max_items: int | None, rescan: bool = False) -> None:
        """``rescan``: write the ``*.rescan.*`` files and leave the ledger alone (``ledger`` unused);
        refused vectors go to ``failed.rescan.jsonl``, and the rescan is applied afterwards."""
        self.root, self.conn, self.schema, self.server_id = root, conn, schema, server_id
        self.ledger, self.max_items, self.rescan = ledger, max_items, rescan
        self.songs_file, self.cursor_file, self.marker = (RESCAN_SONGS, RESCAN_CURSOR, RESCAN_IMPORTED) if rescan \
            else (SONGS, CURSOR, IMPORTED)
        self.teachers = [t.name for t in db.TEACHERS if t.name in schema.teachers]
        if not self.teachers:
            raise MtxError("the database has no embedding tables (embedding, clap_embedding, ...)",
                           hint="run AudioMuse-AI's analysis first: mtx imports its vectors, it computes none")
        cursor = read_json(root / self.cursor_file) if (root / self.cursor_file).exists() else {}
        self.page = int(cursor.get("page", 0))
        self.after = str(cursor.get("after", ""))
        self.done = int(cursor.get("songs", 0))
        self.dims: dict[str, int] = {k: int(v) for k, v in cursor.get("dims", {}).items()}

    def run(self, progress: Progress) -> dict[str, Any]:
        total = db.count_songs(self.conn)
        if self.max_items is not None:
            total = min(total, self.max_items)
        with progress.task("Importing songs", total=total, unit="songs", completed=self.done) as task:
            for rows in db.iter_pages(self.conn, self.schema, self.teachers, self.server_id, self.after,
                                      self._page_size()):
                if self.max_items is not None:
                    rows = rows[: max(0, self.max_items - self.done)]
                if not rows:
                    break
                self._commit(rows)
                task.advance(len(rows))
                progress.check_interrupt()
                if self.max_items is not None and self.done >= self.max_items:
                    break
        return self._finish()

    def _page_size(self) -> int:
        if self.max_items is None:
            return PAGE_SIZE
        return max(1, min(PAGE_SIZE, self.max_items - self.done))

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        vectors: dict[str, list[tuple[str, np.ndarray]]] = {t: [] for t in self.teachers}
        songs, failed = [], []
        for row in rows:
            item = str(row["item_id"])
            try:
                decoded = {t: db.decode_vector(row.get(f"vec_{t}"), self._dim(t), db.TEACHER_BY_NAME[t].table)
                           for t in self.teachers}
            except db.VectorError as e:
                failed.append((item, str(e)))
                continue
            digest = hashlib.sha1()
            for t, v in decoded.items():
                if v is not None:
                    self.dims.setdefault(t, int(v.size))
                    vectors[t].append((record_id(item), v))
                    digest.update(t.encode() + b"\0" + v.tobytes())
            song = song_from_row(row, server_ids=self.schema.id_kind == "server")
            song["vectors_sha1"] = digest.hexdigest()   # AudioMuse-AI analysed the song again: it changed
            songs.append(song)
        self._check_systemic(rows, failed)
        for t in self.teachers:
            ids = [i for i, _ in vectors[t]]
            mat = np.stack([v for _, v in vectors[t]]) if ids else np.zeros((0, self.dims.get(t, 1)), np.float32)
            store_mod.write_part(teacher_store_path(self.root, t), self.page, ids, mat)
        append_jsonl(self.root / self.songs_file, songs)
        if self.rescan:
            append_jsonl(self.root / RESCAN_FAILED, [{"item_id": item, "reason": why} for item, why in failed])
        else:
            # One fsync per page: pending = imported, audio not fetched yet (an ok entry stays ok).
            self.ledger.record_many([LedgerEntry(id=s["item_id"], status=PENDING) for s in songs
                                     if not self.ledger.is_ok(s["item_id"])]
                                    + [LedgerEntry(id=item, status=FAILED, reason=why) for item, why in failed])
        self.page += 1
        self.done += len(rows)
        self.after = str(rows[-1]["item_id"])
        atomic_write_json(self.root / self.cursor_file, {"page": self.page, "after": self.after, "songs": self.done,
                                               "dims": self.dims})

    def _dim(self, teacher: str) -> int | None:
        return db.TEACHER_BY_NAME[teacher].dim or self.dims.get(teacher)

    def _check_systemic(self, rows: list[dict[str, Any]], failed: list[tuple[str, str]]) -> None:
        """Every row of the first page refused: the table holds another model's vectors; stop, say which."""
        if self.page == 0 and failed and len(failed) == len(rows):
            raise MtxError(f"every vector of the first {len(rows)} song(s) was refused, e.g. {failed[0][1]}",
                           hint="the database holds vectors of another size than AudioMuse-AI's "
                                "(MusiCNN 200, CLAP 512, lyrics 768); nothing was imported")

    def _finish(self) -> dict[str, Any]:
        counts = {}
        for t in self.teachers:
            path = teacher_store_path(self.root, t)
            dim = self.dims.get(t)
            if dim is None:  # the table exists but holds no vector for these songs
                store_mod.remove_parts(path)
                continue
            attrs = {"encoder": f"audiomuse-{t}", "encoder_version": "imported", "model_id": db.TEACHER_BY_NAME[t].table,
                     "dim": dim, "aggregation": "mean", "source": "AudioMuse-AI PostgreSQL",
                     "schema_version": self.schema.version}
            counts[t] = store_mod.assemble(path, dim, "float32", attrs, self.page)
            store_mod.remove_parts(path)
        summary = {"songs": self.done, "teachers": counts, "dims": {t: self.dims[t] for t in counts},
                   "schema": self.schema.version, "id_kind": self.schema.id_kind}
        atomic_write_json(self.root / self.marker, summary)
        log.info("audiomuse: imported %d song(s); teacher rows %s", self.done, counts)
        return summary


# --------------------------------------------------------------------------- audio
def audio_rel(item_id: str, suffix: str | None) -> str:
    safe = item_id if _SAFE_ID.match(item_id) else hashlib.sha1(item_id.encode()).hexdigest()
    ext = re.sub(r"[^A-Za-z0-9]", "", suffix or "")[:8] or "audio"
    return f"audio/{safe[:2]}/{safe}.{ext}"


def read_songs(root: Path, name: str = SONGS) -> dict[str, dict[str, Any]]:
    """item_id -> song; a page re-read after a crash wrote some lines twice: the last one wins."""
    return {d["item_id"]: d for d in iter_jsonl(Path(root) / name) if "item_id" in d}


# What of a song row makes it "changed" (everything mtx reads from it), and what of it names its audio.
SONG_FIELDS = ("title", "artist", "album", "album_artist", "year", "duration", "tempo", "energy", "key", "scale",
               "moods", "features", "file_path", "server_item_id", "vectors_sha1")
AUDIO_FIELDS = ("server_item_id", "file_path")


def _same(old: dict[str, Any], new: dict[str, Any], fields: tuple[str, ...]) -> bool:
    # A field an older import did not record (vectors_sha1) is not a change.
    return all(old.get(f) == new.get(f) for f in fields if not (f == "vectors_sha1" and f not in old))


def fingerprint(track=None, path: Path | None = None) -> dict[str, Any] | None:
    """What identifies the audio file a song was fetched from: the media server's listing of it
    (path, size, format, duration), or a local file's size and mtime. None when nothing is known."""
    if path is not None:
        try:
            st = path.stat()
        except OSError:
            return None
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if track is None:
        return None
    fp = {"path": track.path, "size": getattr(track, "size", None), "suffix": track.suffix,
          "duration": round(float(track.duration), 1) if track.duration is not None else None}
    return {k: v for k, v in fp.items() if v is not None} or None


def same_audio(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Two fingerprints agree on every key both know (an unknown one is no evidence of a change)."""
    if not old or not new:
        return True
    return all(old[k] == new[k] for k in set(old) & set(new))


def clean_playlist_name(name: str) -> str:
    """"Late_Night  Drive" -> "Late Night Drive": the caption a playlist gives its songs."""
    return " ".join(str(name).replace("_", " ").split()) or str(name)


def playlist_members(data: dict[str, Any]) -> dict[str, list[str]]:
    """item id -> the names of its playlists (sorted), from a ``playlists.json``."""
    out: dict[str, set[str]] = {}
    for name, ids in (data.get("playlists") or {}).items():
        for i in ids:
            out.setdefault(i, set()).add(name)
    return {i: sorted(v) for i, v in out.items()}


def diff_songs(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]
               ) -> tuple[list[str], list[str], list[str], list[str]]:
    """(added, changed, removed, unchanged) item ids between two imports (by database row)."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(i for i in set(new) & set(old) if not _same(old[i], new[i], SONG_FIELDS))
    unchanged = sorted(i for i in set(new) & set(old) if _same(old[i], new[i], SONG_FIELDS))
    return added, changed, removed, unchanged


@register
class AudioMuseSource(Source):
    info = INFO

    def identity(self, cfg: DownloadConfig) -> dict[str, Any]:
        from ..mediaserver import make_server

        target = db.describe(db.resolve_dsn(cfg.dsn))
        return {"max_items": cfg.max_items, "database": target, "server": make_server(cfg.server).describe()}

    rescans = True   # `mtx download audiomuse` again rescans the database and records what changed

    def download(self, cfg: DownloadConfig, root: Path, ledger: Ledger, progress: Progress) -> None:
        from ..mediaserver import make_server

        server = make_server(cfg.server, state_root=root.parent.parent)   # <state>/datasets/audiomuse
        root.mkdir(parents=True, exist_ok=True)
        rescan = (root / IMPORTED).exists()   # an earlier import finished: read the database again
        if not rescan or not (root / RESCAN_IMPORTED).exists():   # a first import, or a rescan's (resumed)
            self._import(cfg, root, ledger, server, progress, rescan)
        report = self._apply_rescan(root, ledger, server, progress) if rescan else None
        fetched = self._fetch_audio(cfg, root, ledger, server, progress)
        playlists = self._record_playlists(cfg, root, server)
        if report is not None:
            report["fetched"] = fetched
            report.update(playlists)
            atomic_write_json(root / SCAN_NAME, report)
            log.info("audiomuse: %s", ", ".join(f"{v} {k}" for k, v in report.items()))

    # ------------------------------------------------------------------ playlists
    @staticmethod
    def _record_playlists(cfg: DownloadConfig, root: Path, server) -> dict[str, int]:
        """Read the database's and the media server's playlists into ``playlists.json`` (by item id;
        rewritten only when they changed, so an unchanged library keeps its identity). Returns
        ``playlists`` and ``playlist_changes`` (songs whose playlists changed), or {} when none exist."""
        path = root / PLAYLISTS_NAME
        old = read_json(path) if path.is_file() else None
        songs = read_songs(root)
        conn = db.connect(db.resolve_dsn(cfg.dsn))
        try:
            from_db = {n: [i for i in ids if i in songs] for n, ids in db.read_playlists(conn).items()}
        finally:
            conn.close()
        by_server = {s.get("server_item_id") or item: item for item, s in songs.items()}
        try:
            from_server = {n: [by_server[t] for t in ids if t in by_server] for n, ids in server.playlists()}
        except MtxError as e:   # keep what the server said last time rather than drop its playlists
            log.warning("audiomuse: cannot read the %s server's playlists (%s); keeping the last ones",
                        server.kind, e.message)
            from_server = (old or {}).get("server", {})
        merged: dict[str, list[str]] = {}
        for name, ids in [*from_db.items(), *from_server.items()]:
            members = merged.setdefault(clean_playlist_name(name), [])
            members += [i for i in ids if i not in members]
        merged = {n: ids for n, ids in merged.items() if ids}
        if not merged and old is None:
            return {}
        new = {"playlists": merged, "database": from_db, "server": from_server}
        before, after = playlist_members(old or {}), playlist_members(new)
        if new != old:
            atomic_write_json(path, new)
        return {"playlists": len(merged),
                "playlist_changes": sum(1 for i in set(before) | set(after) if before.get(i) != after.get(i))}

    def _import(self, cfg: DownloadConfig, root: Path, ledger: Ledger, server, progress: Progress,
                rescan: bool) -> None:
        dsn = db.resolve_dsn(cfg.dsn)
        conn = db.connect(dsn)
        try:
            schema = db.detect_schema(conn)
            server_id = db.pick_server(schema, server.kind)
            log.info("audiomuse: schema %s, item ids are %s ids%s", schema.version, schema.id_kind,
                     f" (mapped through music server {server_id})" if server_id else "")
            atomic_write_json(root / CONNECTION, {"database": db.describe(dsn), "schema": schema.to_dict(),
                                                  "server": server.describe(), "server_id": server_id})
            if rescan and not (root / RESCAN_CURSOR).exists():   # a fresh rescan: nothing of an older one
                for name in (RESCAN_SONGS, RESCAN_FAILED):
                    (root / name).unlink(missing_ok=True)
                for t in db.TEACHERS:
                    store_mod.remove_parts(teacher_store_path(root, t.name))
            end_torn_line(root / (RESCAN_SONGS if rescan else SONGS))
            _Importer(root, conn, schema, server_id, ledger, cfg.max_items, rescan=rescan).run(progress)
        finally:
            conn.close()

    # ------------------------------------------------------------------ rescan
    def changes(self, root: Path) -> dict[str, Any] | None:
        """What the last rescan found (added, changed, removed, unchanged, failed, fetched)."""
        path = Path(root) / SCAN_NAME
        return read_json(path) if path.is_file() else None

    def _apply_rescan(self, root: Path, ledger: Ledger, server, progress: Progress) -> dict[str, int]:
        """Compare the rescan's songs with the current ones and update the ledger and files; then the
        rescan's files replace the current ones (the marker last: a crash before it redoes this, which
        is idempotent, and a crash after the songs were replaced only finishes the renames)."""
        if not (root / RESCAN_SONGS).exists():   # applied already; only the renames were cut short
            self._commit_rescan(root)
            return {k: int(v) for k, v in (self.changes(root) or {}).items() if k != "fetched"}
        old, new = read_songs(root), read_songs(root, RESCAN_SONGS)
        refused = {d["item_id"]: d.get("reason", "refused") for d in iter_jsonl(root / RESCAN_FAILED)
                   if "item_id" in d}
        audio = {d["item_id"]: d for d in iter_jsonl(root / AUDIO_INDEX) if "item_id" in d}
        added, changed, removed, unchanged = diff_songs(old, new)
        gone_bad = [i for i in removed if i in refused]   # still in the database, its vector now refused
        removed = [i for i in removed if i not in refused]
        listing = self._listing(server, progress) if server.kind != "local" and old else {}
        refetch, notes = [], []
        for item in changed + unchanged:
            if not ledger.is_ok(item):
                continue   # failed or still pending: the fetch below tries it anyway
            was, now, seen = old[item], new[item], audio.get(item, {})
            current = self._fingerprint(now, listing, server.kind)
            if not _same(was, now, AUDIO_FIELDS) or not same_audio(seen.get("fingerprint"), current):
                refetch.append(item)
            elif current is not None and seen.get("fingerprint") is None:
                notes.append({**seen, "item_id": item, "fingerprint": current})   # known from now on
        refetched_unchanged = sorted(set(refetch) & set(unchanged))   # same row, another file on the server
        report = {"added": len(added), "changed": len(changed) + len(refetched_unchanged),
                  "removed": len(removed), "unchanged": len(unchanged) - len(refetched_unchanged),
                  "failed": 0}
        for item in removed + gone_bad + refetch:
            self._drop_file(root, item, audio.get(item), ledger)
        entries = [LedgerEntry(id=i, status=REMOVED) for i in removed
                   if (e := ledger.entries.get(i)) is not None and e.status != REMOVED]
        entries += [LedgerEntry(id=i, status=PENDING) for i in [*added, *refetch]
                    if (e := ledger.entries.get(i)) is None or e.status != PENDING]
        for item, why in refused.items():
            if (e := ledger.entries.get(item)) is None or e.status != FAILED:
                entries.append(LedgerEntry(id=item, status=FAILED, reason=why))
            report["failed"] += 1
        ledger.record_many(entries)
        if notes:
            append_jsonl(root / AUDIO_INDEX, notes)
        atomic_write_json(root / SCAN_NAME, {**report, "fetched": 0})
        self._commit_rescan(root)
        return report

    @staticmethod
    def _commit_rescan(root: Path) -> None:
        for src, dst in ((RESCAN_SONGS, SONGS), (RESCAN_CURSOR, CURSOR), (RESCAN_IMPORTED, IMPORTED)):
            if (root / src).exists():
                os.replace(root / src, root / dst)
        (root / RESCAN_FAILED).unlink(missing_ok=True)

    @staticmethod
    def _drop_file(root: Path, item: str, seen: dict[str, Any] | None, ledger: Ledger) -> None:
        """Delete a fetched file (and a partial transfer of it); a local file read in place is the user's."""
        entry = ledger.entries.get(item)
        rel = (seen or {}).get("path") or (entry.path if entry is not None else None)
        if not rel or Path(rel).is_absolute():
            return
        path = root / rel
        path.unlink(missing_ok=True)
        (path.parent / f".tmp-{path.name}.part").unlink(missing_ok=True)

    @staticmethod
    def _fingerprint(song: dict[str, Any], listing: dict, kind: str) -> dict[str, Any] | None:
        if kind == "local":
            return fingerprint(path=Path(song["file_path"])) if song.get("file_path") else None
        return fingerprint(listing.get(song.get("server_item_id") or song["item_id"]))

    @staticmethod
    def _listing(server, progress: Progress) -> dict:
        listing = {}
        with progress.task(f"Listing {server.kind}", unit="tracks") as task:
            for t in server.tracks():
                listing[t.id] = t
                task.advance(1)
        log.info("%s lists %d track(s)", server.kind, len(listing))
        return listing

    # ------------------------------------------------------------------ audio phase
    def _fetch_audio(self, cfg: DownloadConfig, root: Path, ledger: Ledger, server, progress: Progress) -> int:
        """Fetch every song whose ledger entry is not ok; returns how many files were fetched."""
        from ._parallel import RateLimiter, run_bounded

        songs = read_songs(root)
        todo = [s for item, s in songs.items() if not ledger.is_ok(item)]
        if not todo:
            return 0
        listing = self._listing(server, progress) if server.kind != "local" else {}
        end_torn_line(root / AUDIO_INDEX)
        fetched = [0]
        pacer = RateLimiter(cfg.rate_limit)
        with progress.task("Fetching audio", total=len(todo), unit="files") as task, \
                ThreadPoolExecutor(max_workers=cfg.n_workers) as pool:
            def done(song: dict[str, Any], fut) -> None:  # noqa: ANN001
                item = song["item_id"]
                try:
                    rel, nbytes, duration, server_path, digest = fut.result()
                except MtxError as e:
                    ledger.failed(item, getattr(e, "reason", None) or e.message[:200])
                else:
                    line = {"item_id": item, "path": rel, "bytes": nbytes, "duration": duration,
                            "server_path": server_path, CONTENT_HASH: digest,
                            "fingerprint": self._fingerprint(song, listing, server.kind)}
                    append_jsonl(root / AUDIO_INDEX, [{k: v for k, v in line.items() if v is not None}])
                    ledger.ok(item, path=rel, nbytes=nbytes)
                    fetched[0] += 1
                task.advance(1)

            run_bounded(pool, lambda s: pool.submit(self._fetch_one, s, root, server, listing, pacer), todo,
                        window=2 * cfg.n_workers, on_done=done, progress=progress)
        return fetched[0]

    @staticmethod
    def _fetch_one(song: dict[str, Any], root: Path, server, listing: dict, pacer
                   ) -> tuple[str, int, float | None, str | None, str | None]:
        """(path under root or the file itself, bytes, duration, the media server's own path of the file,
        the content hash of a fetched file; a local file read in place is keyed by its size and mtime)."""
        from ._http import fetch

        item = song["item_id"]
        if server.kind == "local":
            src = song.get("file_path")
            if not src:
                raise MtxError("no file_path in the database (older AudioMuse-AI versions do not store it)",
                               hint="use --server jellyfin or --server navidrome")
            path = Path(src)
            if not path.is_file():
                raise MtxError(f"file not found: {src}", hint="mount the music where AudioMuse-AI saw it")
            # In place: nothing is copied; the ledger points at the user's file.
            st = path.stat()
            # Keyed by its stat, as manifest.content_hash keys a file without a hash (no re-read of the library).
            return str(path), st.st_size, song.get("duration"), src, f"stat:{st.st_size}:{st.st_mtime_ns}"
        server_id = song.get("server_item_id") or item
        track = listing.get(server_id)
        if track is None:
            raise MtxError(f"not on the {server.kind} server (id {server_id})",
                           hint="the song was removed from the server after AudioMuse-AI analysed it")
        rel = audio_rel(item, track.suffix or (Path(track.path).suffix.lstrip(".") if track.path else None))
        url, headers = server.download(server_id)
        pacer.wait()
        res = fetch(url, root / rel, headers=headers, accept=server.check_download)
        return (rel, res.bytes, song.get("duration") or track.duration, track.path or song.get("file_path"),
                file_content_hash(root / rel))

    # ------------------------------------------------------------------ parsing
    def _present(self, root: Path) -> list[tuple[dict[str, Any], Path, float | None, str | None, str | None]]:
        root = Path(root)
        ledger = Ledger(root)
        songs = read_songs(root)
        index = {d["item_id"]: d for d in iter_jsonl(root / AUDIO_INDEX) if "item_id" in d}
        out = []
        for item in sorted(songs):
            entry = ledger.entries.get(item)
            if entry is None or entry.status != OK or not entry.path:
                continue
            path = Path(entry.path)
            path = path if path.is_absolute() else root / path
            seen = index.get(item, {})
            out.append((songs[item], path, songs[item].get("duration") or seen.get("duration"),
                        seen.get("server_path") or songs[item].get("file_path"), seen.get(CONTENT_HASH)))
        return out

    def records(self, root: Path) -> list[Record]:
        from ..audio import AudioError, audio_info

        out = []
        path_ = Path(root) / PLAYLISTS_NAME
        playlists = playlist_members(read_json(path_)) if path_.is_file() else {}
        for song, path, duration, server_path, digest in self._present(root):
            if duration is None:
                try:
                    duration = audio_info(path).duration
                except AudioError as e:
                    log.warning("audiomuse: %s: %s; left out", song["item_id"], e.message)
                    continue
            # A playlist is a caption its songs share, named as the user (or AudioMuse-AI) named it.
            captions = list(dict.fromkeys([*describe_song(song), *playlists.get(song["item_id"], [])]))
            tags, scores = song_tags(song)
            extra = {k: song[k] for k in ("album", "year", "tempo", "key", "scale", "energy", "server_item_id")
                     if k in song}
            if server_path:   # where the media server (and a player beside it) has the file: M3U server mode
                extra["server_path"] = server_path
            if digest:        # a fetched file's bytes (embed keys rows by it); a local file: its size and mtime
                extra[CONTENT_HASH] = digest
            if song["item_id"] in playlists:
                extra["playlists"] = playlists[song["item_id"]]
            extra.update({"item_id": song["item_id"], "moods": song.get("moods", {}),
                          "features": song.get("features", {}), "tag_scores": scores, "caption_source": "tags"})
            out.append(Record(id=record_id(song["item_id"]), audio_path=str(path), caption=captions[0],
                              duration=float(duration), alt_captions=captions[1:], dataset=NAME,
                              artist=song.get("artist"), title=song.get("title"), tags=tags, extra=extra))
        return out

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        return [ExpectedFile(id=song["item_id"], path=path, duration=duration,
                             duration_tolerance=max(1.0, 0.01 * float(duration or 0)))
                for song, path, duration, _, _ in self._present(root)]

__all__ = ["AudioMuseSource", "INFO", "describe_song", "diff_songs", "fingerprint", "imported_teachers",
           "read_songs", "record_id", "same_audio", "song_from_row", "teacher_store_path"]
