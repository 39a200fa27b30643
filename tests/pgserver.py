"""A real PostgreSQL server for the AudioMuse-AI tests, plus both AudioMuse-AI schema layouts.

``start()`` runs Debian's ``initdb`` into a temporary directory and ``pg_ctl`` on a free
loopback port (as the ``postgres`` user when the tests run as root, since PostgreSQL refuses
to run as root). ``build_db`` creates one database in the layout of an AudioMuse-AI version,
with vectors stored the way AudioMuse-AI stores them: ``numpy.float32.tobytes()`` in BYTEA.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MSD_LABELS = ["rock", "pop", "alternative", "indie", "electronic", "dance", "jazz", "metal", "chillout",
              "ambient", "soul", "folk", "hip-hop", "punk", "blues", "classical", "country", "funk", "happy", "sad"]
KEYS = ["C", "D", "E", "F", "G", "A", "B", "F#"]


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    base: Path
    port: int
    user: str = "audiomuse"
    password: str = "audiomusepassword"

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        return (f"host=127.0.0.1 port={self.port} user={user or self.user} "
                f"password={password or self.password} dbname={dbname}")

    def connect(self, dbname: str = "postgres", autocommit: bool = True):
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=autocommit)


def _as_pg(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def start() -> tuple[PgServer, callable]:
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("initdb / pg_ctl not found (install Debian's postgresql package)")
    base = Path(tempfile.mkdtemp(prefix="mtx-pg-"))
    os.chmod(base, 0o777)
    data = base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    pwfile = base / "pw"
    pwfile.write_text("audiomusepassword\n")
    os.chmod(pwfile, 0o644)
    subprocess.run(_as_pg([initdb, "-D", str(data), "-U", "audiomuse", "-A", "scram-sha-256",
                           f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8"]),
                   check=True, capture_output=True)
    port = _free_port()
    subprocess.run(_as_pg([pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "30", "-o",
                           f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True)

    def stop() -> None:
        subprocess.run(_as_pg([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)

    return PgServer(base=base, port=port), stop


def vector(rng: np.random.Generator, dim: int) -> bytes:
    v = rng.standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32).tobytes()


def fp_id(i: int) -> str:
    return "fp_2" + hashlib.sha256(f"song-{i}".encode()).hexdigest()[:50]


def server_id(i: int) -> str:
    return hashlib.md5(f"jf-{i}".encode()).hexdigest()  # noqa: S324 - a Jellyfin-looking id


@dataclass
class Song:
    item_id: str
    server_item_id: str
    title: str
    author: str
    moods: dict[str, float]
    tempo: float
    key: str
    scale: str
    features: dict[str, float]


def build_db(pg: PgServer, dbname: str, version: str, n: int, seed: int = 0, file_paths: dict[int, str] | None = None,
             bad: dict[int, str] | None = None, clap_dim: int = 512) -> list[Song]:
    """Create ``dbname`` in the layout of ``version`` (legacy | dec-2025 | current) with ``n`` songs.

    ``bad`` maps a song index to a defect in its CLAP vector: "short" (511 floats) or "nan".
    """
    rng = np.random.default_rng(seed)
    with pg.connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
        admin.execute(f'CREATE DATABASE "{dbname}"')
    cols = "item_id TEXT PRIMARY KEY, title TEXT, author TEXT, album TEXT, album_artist TEXT, tempo REAL, " \
           "key TEXT, scale TEXT, mood_vector TEXT"
    if version in ("dec-2025", "current"):
        cols += ", energy REAL, other_features TEXT"
    if version == "current":
        cols += (", year INTEGER, rating INTEGER, file_path TEXT, duration DOUBLE PRECISION, created_at TIMESTAMP,"
                 " search_u TEXT")
    songs: list[Song] = []
    with pg.connect(dbname, autocommit=False) as conn:
        conn.execute(f"CREATE TABLE score ({cols})")
        emb_extra = ", poincare_embedding BYTEA, hyperbolic_radius DOUBLE PRECISION" if version == "current" else ""
        conn.execute("CREATE TABLE embedding (item_id TEXT PRIMARY KEY REFERENCES score(item_id) ON DELETE CASCADE,"
                     f" embedding BYTEA{emb_extra})")
        conn.execute("CREATE TABLE clap_embedding (item_id TEXT PRIMARY KEY REFERENCES score(item_id) "
                     "ON DELETE CASCADE, embedding BYTEA)")
        if version == "current":
            conn.execute("CREATE TABLE lyrics_embedding (item_id TEXT PRIMARY KEY REFERENCES score(item_id) "
                         "ON DELETE CASCADE, embedding BYTEA, axis_vector BYTEA)")
            conn.execute("CREATE TABLE music_servers (server_id TEXT PRIMARY KEY, name TEXT, server_type TEXT, "
                         "creds JSONB, music_libraries TEXT, is_default BOOLEAN, track_count INTEGER)")
            conn.execute("CREATE TABLE track_server_map (item_id TEXT NOT NULL REFERENCES score(item_id), "
                         "server_id TEXT NOT NULL REFERENCES music_servers(server_id), provider_track_id TEXT NOT NULL,"
                         " match_tier TEXT, file_path TEXT, PRIMARY KEY (item_id, server_id))")
            conn.execute("INSERT INTO music_servers VALUES ('srv-jf', 'Home', 'jellyfin', "
                         "'{\"token\": \"db-stored-secret\"}', '', true, %s), "
                         "('srv-nd', 'Other', 'navidrome', '{}', '', false, 0)", (n,))
        conn.execute("CREATE TABLE playlist (id SERIAL PRIMARY KEY, playlist_name TEXT, item_id TEXT, title TEXT, "
                     "author TEXT, UNIQUE (playlist_name, item_id))")
        for i in range(n):
            labels = rng.choice(len(MSD_LABELS), size=5, replace=False)
            scores = np.sort(rng.uniform(0.2, 0.7, 5))[::-1]
            moods = {MSD_LABELS[j]: round(float(s), 3) for j, s in zip(labels, scores)}
            feats = {f: round(float(rng.uniform(0, 1)), 2)
                     for f in ("danceable", "aggressive", "happy", "party", "relaxed", "sad")}
            sid = server_id(i)
            item = fp_id(i) if version == "current" else sid
            song = Song(item, sid, f"Song {i}", f"Artist {i % 17}", moods, round(float(rng.uniform(60, 180)), 1),
                        KEYS[i % len(KEYS)], "minor" if i % 2 else "major", feats)
            songs.append(song)
            row = {"item_id": item, "title": song.title, "author": song.author, "album": f"Album {i % 9}",
                   "album_artist": song.author, "tempo": song.tempo, "key": song.key, "scale": song.scale,
                   "mood_vector": ",".join(f"{k}:{v:.3f}" for k, v in moods.items())}
            if version in ("dec-2025", "current"):
                row["energy"] = round(float(rng.uniform(0.01, 0.3)), 4)
                row["other_features"] = ",".join(f"{k}:{v:.2f}" for k, v in feats.items())
            if version == "current":
                row.update(year=1990 + i % 30, rating=None, file_path=(file_paths or {}).get(i),
                           duration=30.0 + i % 5, created_at=None, search_u=None)
            names = ", ".join(row)
            conn.execute(f"INSERT INTO score ({names}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))
            conn.execute("INSERT INTO embedding (item_id, embedding) VALUES (%s, %s)", (item, vector(rng, 200)))
            clap = vector(rng, clap_dim)
            defect = (bad or {}).get(i)
            if defect == "short":
                clap = clap[:-4]
            elif defect == "nan":
                arr = np.frombuffer(clap, dtype=np.float32).copy()
                arr[3] = np.nan
                clap = arr.tobytes()
            conn.execute("INSERT INTO clap_embedding VALUES (%s, %s)", (item, clap))
            if version == "current":
                conn.execute("INSERT INTO lyrics_embedding (item_id, embedding) VALUES (%s, %s)",
                             (item, vector(rng, 768)))
                conn.execute("INSERT INTO track_server_map VALUES (%s, 'srv-jf', %s, 'exact', %s)",
                             (item, sid, (file_paths or {}).get(i)))
        conn.commit()
    return songs


def checksum(pg: PgServer, dbname: str) -> str:
    """md5 over every row of every table: equal before and after means nothing was written."""
    with pg.connect(dbname) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1").fetchall()]
        parts = []
        for t in tables:
            row = conn.execute(f'SELECT md5(coalesce(string_agg(x::text, \'|\' ORDER BY x::text), \'\')) '
                               f'FROM "{t}" x').fetchone()
            parts.append(f"{t}:{row[0]}")
        return ";".join(parts)
