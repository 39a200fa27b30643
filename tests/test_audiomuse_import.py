"""`mtx download audiomuse`: a real PostgreSQL in both AudioMuse-AI layouts, import, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pgserver import build_db, checksum
from progress_doubles import StopAfter
from musiccli import audiomuse_db as db
from musiccli.download import DownloadRequest, run_download
from musiccli.errors import Interrupted, MtxError
from musiccli.sources import audiomuse
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.state import Resume, StateDir, SystemicError
from musiccli.store import EmbeddingStore

N = 240


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("music")
    paths = []
    for k in range(4):
        p = out / f"song{k}.wav"
        t = np.arange(8000 * 2) / 8000
        sf.write(p, (0.2 * np.sin(2 * np.pi * (220 + 50 * k) * t)).astype(np.float32), 8000)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def current_db(pg, wavs) -> tuple[str, list]:
    songs = build_db(pg, "am_current", "current", N, seed=1, file_paths={i: wavs[i % 4] for i in range(N)})
    return pg.dsn("am_current"), songs


def config(dsn: str, **kw) -> DownloadConfig:
    return DownloadConfig(source="audiomuse", dsn=dsn, server=kw.pop("server", "local"), workers=2, **kw)


def db_vectors(pg, dbname: str, table: str) -> dict[str, np.ndarray]:
    with pg.connect(dbname) as conn:
        return {r[0]: np.frombuffer(bytes(r[1]), dtype="<f4")
                for r in conn.execute(f"SELECT item_id, embedding FROM {table}").fetchall()}


@pytest.mark.parametrize("version,teachers,id_kind", [
    ("legacy", {"musicnn": "embedding", "clap": "embedding"}, "server"),
    ("dec-2025", {"musicnn": "embedding", "clap": "embedding"}, "server"),
    ("current", {"musicnn": "embedding", "clap": "embedding", "lyrics": "embedding"}, "content"),
])
def test_schema_detection(pg, version, teachers, id_kind) -> None:
    build_db(pg, f"am_detect_{version.replace('-', '_')}", version, 3)
    conn = db.connect(pg.dsn(f"am_detect_{version.replace('-', '_')}"))
    try:
        schema = db.detect_schema(conn)
    finally:
        conn.close()
    assert schema.version == version and schema.teachers == teachers and schema.id_kind == id_kind
    if version == "current":
        assert db.pick_server(schema, "jellyfin") == "srv-jf" and db.pick_server(schema, "navidrome") == "srv-nd"
        assert all("creds" not in s for s in schema.servers)


def test_import_current_layout_local_audio(pg, current_db, state, wavs) -> None:
    dsn, songs = current_db
    before = checksum(pg, "am_current")
    res = run_download(state, DownloadRequest(config(dsn)))
    assert (res.ok, res.failed, res.pending) == (N, 0, 0)
    assert checksum(pg, "am_current") == before  # read-only: not one row changed

    root = state.dataset_dir("audiomuse")
    summary = json.loads((root / "import.json").read_text())
    assert summary["teachers"] == {"musicnn": N, "clap": N, "lyrics": N}
    assert summary["dims"] == {"musicnn": 200, "clap": 512, "lyrics": 768}
    for teacher, table in (("clap", "clap_embedding"), ("musicnn", "embedding"), ("lyrics", "lyrics_embedding")):
        want = db_vectors(pg, "am_current", table)
        with EmbeddingStore(audiomuse.teacher_store_path(root, teacher)) as st:
            assert st.attrs["encoder"] == f"audiomuse-{teacher}"
            ids = sorted(want)
            np.testing.assert_array_equal(st.get([audiomuse.record_id(i) for i in ids]), np.stack([want[i] for i in ids]))

    recs = {r.id: r for r in audiomuse.AudioMuseSource().records(root)}
    s0 = songs[0]
    r0 = recs[audiomuse.record_id(s0.item_id)]
    assert r0.audio_path == wavs[0] and r0.title == s0.title and r0.artist == s0.author
    assert r0.extra["server_item_id"] == s0.server_item_id and r0.extra["key"] == s0.key
    assert r0.extra["moods"] == s0.moods and r0.extra["features"] == s0.features
    assert r0.duration == 30.0 and r0.extra["year"] == 1990
    assert f"at {round(s0.tempo)} BPM" in r0.caption and f"in {s0.key} {s0.scale}" in r0.caption
    assert list(s0.moods)[0] in r0.tags or max(s0.moods, key=s0.moods.get) in r0.tags
    assert r0.extra["tag_scores"]["danceable"] == s0.features["danceable"]

    again = run_download(state, DownloadRequest(config(dsn)))   # a rescan that finds nothing to do
    assert again.changes == {"added": 0, "changed": 0, "removed": 0, "unchanged": N, "failed": 0, "fetched": 0}


@pytest.mark.slow
def test_resume_after_interrupt_equals_uninterrupted(pg, current_db, tmp_path, monkeypatch) -> None:
    dsn, songs = current_db
    monkeypatch.setattr(audiomuse, "PAGE_SIZE", 50)
    ref = StateDir.resolve(tmp_path / "ref")
    run_download(ref, DownloadRequest(config(dsn)))
    cut = StateDir.resolve(tmp_path / "cut")
    with pytest.raises(Interrupted):
        run_download(cut, DownloadRequest(config(dsn)), StopAfter(120))
    root = cut.dataset_dir("audiomuse")
    assert not (root / "import.json").exists() and json.loads((root / "cursor.json").read_text())["page"] == 3
    with pytest.raises(MtxError, match="--continue"):
        run_download(cut, DownloadRequest(config(dsn)))
    # A crash between committing a page's parts and its cursor: the page is read again.
    cursor = json.loads((root / "cursor.json").read_text())
    ordered = sorted(s.item_id for s in songs)
    (root / "cursor.json").write_text(json.dumps({**cursor, "page": 2, "after": ordered[99], "songs": 100}))
    with pytest.raises(MtxError, match="cannot continue"):
        run_download(cut, DownloadRequest(config(dsn, max_items=10), Resume.CONTINUE))
    res = run_download(cut, DownloadRequest(config(dsn), Resume.CONTINUE))
    assert (res.ok, res.failed) == (N, 0)
    for teacher in ("clap", "musicnn", "lyrics"):
        with EmbeddingStore(audiomuse.teacher_store_path(ref.dataset_dir("audiomuse"), teacher)) as a, \
                EmbeddingStore(audiomuse.teacher_store_path(root, teacher)) as b:
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.get(a.ids), b.get(b.ids))
    ra = [r.to_dict() for r in audiomuse.AudioMuseSource().records(ref.dataset_dir("audiomuse"))]
    rb = [r.to_dict() for r in audiomuse.AudioMuseSource().records(root)]
    assert ra == rb


@pytest.mark.slow
def test_bad_vectors_refused_per_item_and_systemically(pg, state, tmp_path, wavs) -> None:
    build_db(pg, "am_bad", "current", 20, bad={3: "short", 7: "nan"}, file_paths={i: wavs[0] for i in range(20)})
    res = run_download(state, DownloadRequest(config(pg.dsn("am_bad"), server="local")))
    assert (res.ok, res.failed, res.status) == (18, 2, "complete-with-failures")
    reasons = sorted(r for _, r in res.failures)
    assert reasons[0] == "clap_embedding: 1 non-finite value(s)"
    assert reasons[1] == "clap_embedding: 511 floats, expected 512"
    root = state.dataset_dir("audiomuse")
    with EmbeddingStore(audiomuse.teacher_store_path(root, "clap")) as st:
        assert len(st) == 18 and st.dim == 512
    with EmbeddingStore(audiomuse.teacher_store_path(root, "musicnn")) as st:
        assert len(st) == 18   # a refused song is left out of every store, so the stores stay aligned

    # A whole table of another width: nothing is imported.
    build_db(pg, "am_wrongdim", "legacy", 6, clap_dim=768)
    other = StateDir.resolve(tmp_path / "other")
    with pytest.raises(MtxError, match="768 floats, expected 512"):
        run_download(other, DownloadRequest(config(pg.dsn("am_wrongdim"))))
    # Older layouts have no file_path: --server local fails alike on every song, so the stage stops.
    build_db(pg, "am_nopath", "legacy", 8)
    third = StateDir.resolve(tmp_path / "third")
    with pytest.raises(SystemicError, match="no file_path in the database"):
        run_download(third, DownloadRequest(config(pg.dsn("am_nopath"))))


@pytest.mark.slow
def test_read_only_role_and_connection_errors(pg, cli, state_dir, current_db, monkeypatch) -> None:
    with pg.connect("am_current") as conn:
        conn.execute("DROP ROLE IF EXISTS am_reader")
        conn.execute("CREATE ROLE am_reader LOGIN PASSWORD 'reader-pw-123'")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO am_reader")
    conn = db.connect(pg.dsn("am_current", user="am_reader", password="reader-pw-123"))
    try:
        import psycopg

        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM playlist")
    finally:
        conn.close()
    # A wrong password: one clear line, no traceback, and the password is not echoed.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    r = cli("download", "audiomuse", "--dsn", pg.dsn("am_current", password="wrong-secret-pw"), "--server", "local")
    assert r.exit_code == 1 and "cannot connect to the AudioMuse-AI database" in r.output
    assert "wrong-secret-pw" not in r.output and "Traceback" not in r.output
    # POSTGRES_* variables with AudioMuse-AI's defaults (user audiomuse, password audiomusepassword).
    monkeypatch.setenv("POSTGRES_HOST", "127.0.0.1")
    monkeypatch.setenv("POSTGRES_PORT", str(pg.port))
    monkeypatch.setenv("POSTGRES_DB", "am_current")
    r = cli("download", "audiomuse", "--server", "local", "--max-items", "5", "--json", "--force")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["ok"] == 5
    for path in Path(state_dir).rglob("*"):
        if path.is_file():
            assert b"audiomusepassword" not in path.read_bytes(), path


@pytest.mark.parametrize("text,expected", [
    ("rock:0.553,metal:0.532", {"rock": 0.553, "metal": 0.532}),
    ("hip-hop:0.5, r&b:0.25", {"hip-hop": 0.5, "r&b": 0.25}),
    ("", {}), (None, {}), ("rock,jazz:x,:0.3,pop:nan,ok:1", {"ok": 1.0}),
])
def test_parse_scores(text, expected) -> None:
    assert db.parse_scores(text) == expected


@pytest.mark.parametrize("blob,dim,error", [
    (np.zeros(511, np.float32).tobytes(), 512, "511 floats, expected 512"),
    (b"\x00\x00\x00", 512, "not a whole number"),
    (np.array([1, np.inf], np.float32).tobytes(), 2, "non-finite"),
    (b"", None, "empty"),
])
def test_decode_vector_refusals(blob, dim, error) -> None:
    with pytest.raises(db.VectorError, match=error):
        db.decode_vector(blob, dim, "clap_embedding")


def test_resolve_dsn_precedence() -> None:
    assert db.resolve_dsn("host=x", {"DATABASE_URL": "postgresql://a@b/c"}) == "host=x"
    assert db.resolve_dsn(None, {"DATABASE_URL": "postgresql://a@b/c"}) == "postgresql://a@b/c"
    d = db.describe(db.resolve_dsn(None, {"POSTGRES_HOST": "pg.local"}))
    assert d == {"host": "pg.local", "port": "5432", "dbname": "audiomusedb", "user": "audiomuse"}


@pytest.mark.slow
def test_kill_9_mid_import_then_continue(pg, current_db, tmp_path) -> None:
    """A real `kill -9` of the CLI between pages: --continue finishes to the uninterrupted result."""
    import os
    import signal
    import subprocess
    import sys
    import time

    dsn, _ = current_db
    # Small pages, and a pause after each committed cursor so the kill lands between or inside pages.
    code = ("import sys, time; import musiccli.sources.audiomuse as a; a.PAGE_SIZE = 10; "
            "orig = a._Importer._commit\n"
            "def slow(self, rows):\n    orig(self, rows); time.sleep(0.05)\n"
            "a._Importer._commit = slow\n"
            "from musiccli.cli.app import main; sys.argv = ['mtx'] + sys.argv[1:]; main()")
    state = tmp_path / "killed"
    args = ["--state-dir", str(state), "download", "audiomuse", "--dsn", dsn, "--server", "local"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    cursor = state / "datasets" / "audiomuse" / "cursor.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if cursor.exists() and json.loads(cursor.read_text())["page"] >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    page = json.loads(cursor.read_text())["page"]
    assert 5 <= page < N // 10

    resumed = subprocess.run([sys.executable, "-c", code, *args, "--continue"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ref = StateDir.resolve(tmp_path / "ref")
    run_download(ref, DownloadRequest(config(dsn)))
    a_root, b_root = ref.dataset_dir("audiomuse"), state / "datasets" / "audiomuse"
    for teacher in ("clap", "musicnn", "lyrics"):
        with EmbeddingStore(audiomuse.teacher_store_path(a_root, teacher)) as a, \
                EmbeddingStore(audiomuse.teacher_store_path(b_root, teacher)) as b:
            assert a.ids == b.ids and len(a) == N
            np.testing.assert_array_equal(a.get(a.ids), b.get(b.ids))
    assert [r.to_dict() for r in audiomuse.AudioMuseSource().records(a_root)] == \
        [r.to_dict() for r in audiomuse.AudioMuseSource().records(b_root)]
    assert Ledger(b_root).counts() == {"ok": N, "failed": 0, "pending": 0}
