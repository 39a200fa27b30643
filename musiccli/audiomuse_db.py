"""Read-only access to an AudioMuse-AI PostgreSQL database (psycopg 3).

What lives here: the connection settings (``--dsn``, ``DATABASE_URL`` or AudioMuse-AI's own
``POSTGRES_*`` variables with its defaults), schema detection, parsing of the ``label:score``
text columns, decoding of the ``BYTEA`` vectors (``numpy.float32.tobytes()``, little-endian),
and keyset pagination over ``score.item_id``.

Every session is read-only twice over: the connection asks for
``default_transaction_read_only=on`` and each page runs in a transaction opened with
``SET TRANSACTION READ ONLY``, so even a bug here cannot write to the user's database.
Passwords never leave this module: :func:`describe` gives the redacted target for logs,
stage records and results.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import MtxError

log = logging.getLogger(__name__)

# AudioMuse-AI's defaults (config.py): the same variables configure both programs.
PG_DEFAULTS = {"POSTGRES_USER": "audiomuse", "POSTGRES_PASSWORD": "audiomusepassword",
               "POSTGRES_HOST": "localhost", "POSTGRES_PORT": "5432", "POSTGRES_DB": "audiomusedb"}


@dataclass(frozen=True)
class Teacher:
    """One embedding table imported as an mtx store ``audiomuse-<name>``."""

    name: str                 # store / encoder name suffix
    table: str
    dim: int | None           # None: taken from the first vector (MuQ-MuLan's width varies by version)
    description: str


TEACHERS = (
    Teacher("musicnn", "embedding", 200, "MusiCNN embeddings from AudioMuse-AI's `embedding` table (200-d)"),
    Teacher("clap", "clap_embedding", 512, "CLAP (or DCLAP, in CLAP's space) audio embeddings (512-d)"),
    Teacher("mulan", "mulan_embedding", None, "MuQ-MuLan audio embeddings (older AudioMuse-AI versions)"),
    Teacher("lyrics", "lyrics_embedding", 768, "lyrics embeddings (newer AudioMuse-AI versions, 768-d)"),
)
TEACHER_BY_NAME = {t.name: t for t in TEACHERS}

# score columns by version; anything else present is ignored.
SCORE_BASE = ("item_id", "title", "author", "album", "album_artist", "tempo", "key", "scale", "mood_vector")
SCORE_OPTIONAL = ("energy", "other_features", "year", "rating", "file_path", "duration")


# --------------------------------------------------------------------------- connection
def _psycopg(module: str):
    from .extras import require_extra

    return require_extra(module, "audiomuse", "reading the AudioMuse-AI database (mtx download audiomuse)")


def resolve_dsn(dsn: str | None = None, env: dict[str, str] | None = None) -> str:
    """``--dsn`` beats ``DATABASE_URL`` beats the ``POSTGRES_*`` variables (AudioMuse-AI defaults)."""
    env = os.environ if env is None else env
    if dsn:
        return dsn
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    make_conninfo = _psycopg("psycopg.conninfo").make_conninfo

    v = {k: env.get(k) or d for k, d in PG_DEFAULTS.items()}
    return make_conninfo(host=v["POSTGRES_HOST"], port=v["POSTGRES_PORT"], user=v["POSTGRES_USER"],
                         password=v["POSTGRES_PASSWORD"], dbname=v["POSTGRES_DB"])


def describe(dsn: str) -> dict[str, str]:
    """The target without secrets: host, port, database and user (for logs, records and results)."""
    conninfo_to_dict = _psycopg("psycopg.conninfo").conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - psycopg raises ProgrammingError subclasses; never echo the dsn
        raise MtxError("the database connection string cannot be parsed",
                       hint="use postgresql://user:password@host:5432/dbname or key=value pairs") from None
    return {k: str(parts.get(k) or "") for k in ("host", "port", "dbname", "user")}


def connect(dsn: str, timeout: float = 10.0):
    """A read-only psycopg connection; a refused or failed login becomes one clear MtxError."""
    psycopg = _psycopg("psycopg")

    target = describe(dsn)
    where = f"{target['user'] or '?'}@{target['host'] or 'localhost'}:{target['port'] or '5432'}/{target['dbname']}"
    try:
        conn = psycopg.connect(dsn, connect_timeout=max(1, int(timeout)),
                               options="-c default_transaction_read_only=on", autocommit=False)
    except psycopg.OperationalError as e:
        # The server's message may quote the user, never the password; keep only its first line.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MtxError(f"cannot connect to the AudioMuse-AI database {where}: {_scrub(first, dsn)}",
                       hint="check --dsn / DATABASE_URL / POSTGRES_HOST, PORT, USER, PASSWORD and DB") from None
    conn.read_only = True
    return conn


def _scrub(text: str, dsn: str) -> str:
    """Remove the password from a server message, should a driver ever echo it."""
    conninfo_to_dict = _psycopg("psycopg.conninfo").conninfo_to_dict

    try:
        pw = conninfo_to_dict(dsn).get("password")
    except Exception:  # noqa: BLE001
        pw = None
    return text.replace(str(pw), "***") if pw else text


# --------------------------------------------------------------------------- schema
@dataclass
class Schema:
    score_columns: list[str]
    version: str                       # "legacy" | "dec-2025" | "current"
    id_kind: str                       # "server" (item_id = media-server id) | "content" (fp_... ids)
    teachers: dict[str, str] = field(default_factory=dict)   # teacher name -> vector column
    map_columns: list[str] = field(default_factory=list)     # track_server_map columns (content ids)
    servers: list[dict[str, Any]] = field(default_factory=list)  # music_servers rows, creds left out

    def to_dict(self) -> dict[str, Any]:
        return {"score_columns": self.score_columns, "version": self.version, "id_kind": self.id_kind,
                "teachers": self.teachers, "map_columns": self.map_columns, "servers": self.servers}


def _columns(cur, table: str) -> list[tuple[str, str]]:
    cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position", (table,))
    return [(r[0], r[1]) for r in cur.fetchall()]


def detect_schema(conn) -> Schema:
    """Which AudioMuse-AI layout this database has (read from information_schema only)."""
    with conn.transaction():
        cur = conn.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        score = [c for c, _ in _columns(cur, "score")]
        if not score:
            raise MtxError("the database has no `score` table: it is not an AudioMuse-AI database",
                           hint="point --dsn at the database AudioMuse-AI uses (POSTGRES_DB, default audiomusedb)")
        missing = [c for c in ("item_id", "title", "author", "mood_vector") if c not in score]
        if missing:
            raise MtxError(f"the `score` table lacks column(s) {', '.join(missing)}",
                           hint="this AudioMuse-AI version is not supported; please report its schema")
        teachers: dict[str, str] = {}
        for t in TEACHERS:
            cols = _columns(cur, t.table)
            names = [c for c, kind in cols if kind == "bytea" and c not in ("axis_vector", "poincare_embedding")]
            if "item_id" in [c for c, _ in cols] and names:
                teachers[t.name] = "embedding" if "embedding" in names else names[0]
        map_cols = [c for c, _ in _columns(cur, "track_server_map")]
        servers: list[dict[str, Any]] = []
        if map_cols and _columns(cur, "music_servers"):
            server_cols = [c for c, _ in _columns(cur, "music_servers")]
            wanted = [c for c in ("server_id", "name", "server_type", "is_default") if c in server_cols]
            cur.execute(f"SELECT {', '.join(wanted)} FROM music_servers ORDER BY server_id")  # noqa: S608
            servers = [dict(zip(wanted, (str(v) if not isinstance(v, bool) else v for v in row)))
                       for row in cur.fetchall()]
    if "year" in score or "file_path" in score:
        version = "current"
    elif "energy" in score and "other_features" in score:
        version = "dec-2025"
    else:
        version = "legacy"
    id_kind = "content" if {"item_id", "server_id", "provider_track_id"} <= set(map_cols) else "server"
    return Schema(score_columns=score, version=version, id_kind=id_kind, teachers=teachers,
                  map_columns=map_cols, servers=servers)


def pick_server(schema: Schema, server_type: str | None) -> str | None:
    """The ``music_servers.server_id`` to map content ids through (default server of that type)."""
    if schema.id_kind != "content":
        return None
    rows = [s for s in schema.servers if server_type in (None, "local") or s.get("server_type") == server_type]
    if not rows:
        rows = schema.servers
    if not rows:
        raise MtxError("track_server_map exists but music_servers is empty",
                       hint="let AudioMuse-AI finish its server setup, then import again")
    rows.sort(key=lambda s: (not s.get("is_default"), str(s.get("server_id"))))
    return str(rows[0]["server_id"])


# --------------------------------------------------------------------------- parsing
def parse_scores(text: str | None) -> dict[str, float]:
    """``"rock:0.553,metal:0.532"`` -> {"rock": 0.553, "metal": 0.532}; malformed pairs are skipped.

    (The upstream student code kept the scores in the labels, ``"rock:0.553"``; here they are split.)
    """
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        label, sep, score = part.strip().rpartition(":")
        if not sep or not label.strip():
            continue
        try:
            value = float(score)
        except ValueError:
            continue
        if math.isfinite(value):
            out[label.strip()] = value
    return out


class VectorError(ValueError):
    """A stored vector that cannot be used (wrong size, not finite)."""


def decode_vector(blob: bytes | memoryview | None, dim: int | None, what: str) -> np.ndarray | None:
    """A ``float32.tobytes()`` BYTEA as float32 [dim]; None for NULL; VectorError when unusable."""
    if blob is None:
        return None
    raw = bytes(blob)
    if len(raw) % 4:
        raise VectorError(f"{what}: {len(raw)} bytes is not a whole number of float32 values")
    vec = np.frombuffer(raw, dtype="<f4")
    if dim is not None and vec.size != dim:
        raise VectorError(f"{what}: {vec.size} floats, expected {dim}")
    if vec.size == 0:
        raise VectorError(f"{what}: empty vector")
    if not np.isfinite(vec).all():
        raise VectorError(f"{what}: {int((~np.isfinite(vec)).sum())} non-finite value(s)")
    return vec.astype(np.float32)


# --------------------------------------------------------------------------- reading
def page_query(schema: Schema, teachers: list[str], server_id: str | None) -> str:
    """One keyset page: songs after ``%(after)s`` in item_id order, with their vectors and server ids."""
    score_cols = [c for c in (*SCORE_BASE, *SCORE_OPTIONAL) if c in schema.score_columns]
    select = [f"s.{c}" for c in score_cols]
    joins = []
    for i, name in enumerate(teachers):
        table = TEACHER_BY_NAME[name].table
        select.append(f't{i}."{schema.teachers[name]}" AS vec_{name}')
        joins.append(f"LEFT JOIN {table} t{i} ON t{i}.item_id = s.item_id")
    if server_id is not None:
        select.append("m.provider_track_id AS server_item_id")
        if "file_path" in schema.map_columns:
            select.append("m.file_path AS server_file_path")
        joins.append("LEFT JOIN track_server_map m ON m.item_id = s.item_id AND m.server_id = %(server)s")
    return (f"SELECT {', '.join(select)} FROM score s {' '.join(joins)} "
            "WHERE s.item_id > %(after)s ORDER BY s.item_id LIMIT %(limit)s")


def iter_pages(conn, schema: Schema, teachers: list[str], server_id: str | None, after: str,
               page_size: int) -> Iterator[list[dict[str, Any]]]:
    """Pages of row dicts, each read in its own read-only transaction (keyset: no OFFSET scans)."""
    sql = page_query(schema, teachers, server_id)
    while True:
        with conn.transaction():
            cur = conn.cursor()
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(sql, {"after": after, "limit": page_size, "server": server_id})
            names = [d.name for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        if not rows:
            return
        yield rows
        after = rows[-1]["item_id"]


def read_playlists(conn) -> dict[str, list[str]]:
    """AudioMuse-AI's ``playlist`` table (``playlist_name``, ``item_id``): name -> item ids, in table
    order; {} when the database has no such table."""
    with conn.transaction():
        cur = conn.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        cols = [c for c, _ in _columns(cur, "playlist")]
        if not {"playlist_name", "item_id"} <= set(cols):
            return {}
        order = "id" if "id" in cols else "item_id"
        cur.execute(f"SELECT playlist_name, item_id FROM playlist WHERE playlist_name IS NOT NULL "  # noqa: S608
                    f"AND item_id IS NOT NULL ORDER BY playlist_name, {order}")
        out: dict[str, list[str]] = {}
        for name, item in cur.fetchall():
            out.setdefault(str(name), []).append(str(item))
    return out


def count_songs(conn) -> int:
    with conn.transaction():
        cur = conn.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute("SELECT count(*) FROM score")
        return int(cur.fetchone()[0])


__all__ = ["PG_DEFAULTS", "TEACHERS", "TEACHER_BY_NAME", "Schema", "Teacher", "VectorError", "connect",
           "count_songs", "decode_vector", "describe", "detect_schema", "iter_pages", "page_query",
           "parse_scores", "pick_server", "read_playlists", "resolve_dsn"]
