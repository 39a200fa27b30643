"""Benchmark: `mtx download audiomuse`'s import phase against a plain psycopg fetch loop into numpy.

Starts a throwaway PostgreSQL (initdb + pg_ctl on a free loopback port, as the tests do), bulk
loads N songs in AudioMuse-AI's current layout (score + embedding 200-d + clap_embedding 512-d,
vectors as float32.tobytes() BYTEA) with COPY, then times, in the same run:

- ours: ``sources.audiomuse._Importer`` (read-only keyset pages of 1000, vector checks, store parts,
  songs.jsonl, per-item ledger, cursor, final store assembly);
- a rescan of the unchanged database (what a second run does before fetching nothing);
- baseline: one server-side cursor over the same join, rows decoded straight into preallocated
  numpy arrays (no checks, no resume, nothing written).

    python benchmarks/audiomuse_import.py             # 100,000 songs
    python benchmarks/audiomuse_import.py --n 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pgserver import find_bin, start  # noqa: E402

from musiccli import audiomuse_db as db  # noqa: E402
from musiccli.progress import NullProgress  # noqa: E402
from musiccli.sources import audiomuse  # noqa: E402
from musiccli.sources.ledger import Ledger  # noqa: E402


def load(pg, dbname: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with pg.connect() as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    with pg.connect(dbname, autocommit=False) as conn:
        conn.execute("CREATE TABLE score (item_id TEXT PRIMARY KEY, title TEXT, author TEXT, album TEXT, "
                     "album_artist TEXT, tempo REAL, key TEXT, scale TEXT, mood_vector TEXT, energy REAL, "
                     "other_features TEXT, year INTEGER, rating INTEGER, file_path TEXT, duration DOUBLE PRECISION)")
        conn.execute("CREATE TABLE embedding (item_id TEXT PRIMARY KEY, embedding BYTEA)")
        conn.execute("CREATE TABLE clap_embedding (item_id TEXT PRIMARY KEY, embedding BYTEA)")
        cur = conn.cursor()
        ids = [f"fp_2{i:050x}" for i in range(n)]
        with cur.copy("COPY score FROM STDIN") as cp:
            for i, item in enumerate(ids):
                cp.write_row((item, f"Song {i}", f"Artist {i % 997}", "Album", "Artist", 60 + i % 120, "A",
                              "minor", "rock:0.553,metal:0.532,indie:0.401,pop:0.300,punk:0.210", 0.1,
                              "danceable:0.51,aggressive:0.20,happy:0.33,party:0.12,relaxed:0.44,sad:0.05",
                              2000, None, f"/music/{i}.flac", 200.0))
        for table, dim in (("embedding", 200), ("clap_embedding", 512)):
            with cur.copy(f"COPY {table} FROM STDIN") as cp:
                for start_ in range(0, n, 10000):
                    block = rng.standard_normal((min(10000, n - start_), dim)).astype(np.float32)
                    for k, row in enumerate(block):
                        cp.write_row((ids[start_ + k], row.tobytes()))
        conn.commit()
        conn.execute("ANALYZE")


def ours(dsn: str, out: Path) -> float:
    conn = db.connect(dsn)
    try:
        schema = db.detect_schema(conn)
        t0 = time.perf_counter()
        summary = audiomuse._Importer(out, conn, schema, None, Ledger(out), None).run(NullProgress())
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    assert summary["teachers"] == {"musicnn": summary["songs"], "clap": summary["songs"]}, summary
    return seconds


def rescan(dsn: str, out: Path) -> tuple[float, tuple[int, int, int, int]]:
    """A second `mtx download audiomuse`'s database part: read again beside the import, then compared."""
    conn = db.connect(dsn)
    try:
        schema = db.detect_schema(conn)
        t0 = time.perf_counter()
        audiomuse._Importer(out, conn, schema, None, None, None, rescan=True).run(NullProgress())
        added, changed, removed, unchanged = audiomuse.diff_songs(audiomuse.read_songs(out),
                                                                  audiomuse.read_songs(out, audiomuse.RESCAN_SONGS))
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    return seconds, (len(added), len(changed), len(removed), len(unchanged))


def baseline(dsn: str, n: int) -> float:
    import psycopg

    musicnn = np.empty((n, 200), np.float32)
    clap = np.empty((n, 512), np.float32)
    ids: list[str] = []
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor(name="plain") as cur:
        cur.itersize = 2000
        cur.execute("SELECT s.item_id, s.title, s.author, s.mood_vector, e.embedding, c.embedding FROM score s "
                    "LEFT JOIN embedding e USING (item_id) LEFT JOIN clap_embedding c USING (item_id) "
                    "ORDER BY s.item_id")
        for i, row in enumerate(cur):
            ids.append(row[0])
            musicnn[i] = np.frombuffer(row[4], dtype="<f4")
            clap[i] = np.frombuffer(row[5], dtype="<f4")
    seconds = time.perf_counter() - t0
    assert len(ids) == n
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="songs to load and import")
    args = ap.parse_args()
    if not find_bin("initdb"):
        sys.exit("PostgreSQL's initdb is not installed (Debian package postgresql)")
    pg, stop = start()
    try:
        t0 = time.perf_counter()
        load(pg, "bench", args.n)
        print(f"loaded {args.n:,} songs in {time.perf_counter() - t0:.1f}s")
        dsn = pg.dsn("bench")
        base = baseline(dsn, args.n)
        with tempfile.TemporaryDirectory() as tmp:
            mine = ours(dsn, Path(tmp))
            again, counts = rescan(dsn, Path(tmp))
        base2 = baseline(dsn, args.n)   # again, so cache warm-up does not favour either side
        base = min(base, base2)
        print(f"plain psycopg fetch loop into numpy: {args.n / base:,.0f} rows/s ({base:.2f}s)")
        print(f"mtx import (checked, resumable, stores written): {args.n / mine:,.0f} rows/s ({mine:.2f}s)")
        print(f"ratio mtx / plain: {base / mine:.2f}")
        print(f"rescan of the unchanged database (read again + compared): {again:.2f}s, "
              f"{counts[3]:,} unchanged, {sum(counts[:3])} added/changed/removed")
    finally:
        stop()


if __name__ == "__main__":
    main()
