"""`mtx download audiomuse` again rescans: added, changed, removed songs; audio fetched only where needed.

Against the real PostgreSQL the AudioMuse-AI tests use (pgserver) and, for audio, the files themselves
(``--server local``) and a real Subsonic server (supysonic 0.7.9, tests/servers/supysonic.py): rows are
added, edited and deleted and a file is re-encoded between two runs; the second run reports exactly
that, fetches only the new and re-encoded songs, leaves every other file and ledger entry alone, and
the incremental unify + embed that follow run the encoder on those songs only.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pgserver import build_db, vector
from musiccli.download import DownloadRequest, run_download
from musiccli.sources import audiomuse
from musiccli.sources.base import DownloadConfig

N = 12


def tone(path: Path, freq: float, seconds: float = 1.5, sr: int = 8000) -> Path:
    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def ledger_lines(root: Path) -> Counter:
    return Counter(json.loads(line)["id"] for line in (root / "ledger.jsonl").read_text().splitlines() if line.strip())


def add_song(conn, item: str, title: str, rng, file_path: str | None = None, server: bool = False) -> None:
    """A score row and its vectors, as AudioMuse-AI writes them after analysing a new song."""
    if file_path is not None:
        conn.execute("INSERT INTO score (item_id, title, author, album, album_artist, tempo, key, scale, mood_vector, "
                     "energy, other_features, year, file_path, duration) VALUES (%s, %s, 'New Artist', 'New', "
                     "'New Artist', 120, 'C', 'major', 'rock:0.600,pop:0.400', 0.1, 'danceable:0.70', 2020, %s, 1.5)",
                     (item, title, file_path))
    else:
        conn.execute("INSERT INTO score (item_id, title, author, album, album_artist, tempo, key, scale, mood_vector) "
                     "VALUES (%s, %s, 'New Artist', 'New', 'New Artist', 120, 'C', 'major', 'rock:0.600,pop:0.400')",
                     (item, title))
    conn.execute("INSERT INTO embedding (item_id, embedding) VALUES (%s, %s)", (item, vector(rng, 200)))
    conn.execute("INSERT INTO clap_embedding VALUES (%s, %s)", (item, vector(rng, 512)))
    if file_path is not None:
        conn.execute("INSERT INTO lyrics_embedding (item_id, embedding) VALUES (%s, %s)", (item, vector(rng, 768)))
        conn.execute("INSERT INTO track_server_map VALUES (%s, 'srv-jf', %s, 'exact', %s)", (item, item, file_path))


def delete_song(conn, item: str) -> None:
    if server_map(conn):
        conn.execute("DELETE FROM track_server_map WHERE item_id = %s", (item,))
    conn.execute("DELETE FROM score WHERE item_id = %s", (item,))   # vectors go with it (ON DELETE CASCADE)


def server_map(conn) -> bool:
    return bool(conn.execute("SELECT to_regclass('track_server_map')").fetchone()[0])


def test_rescan_local_files_counts_fetches_and_embeds_only_what_changed(pg, state, tmp_path) -> None:
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.unify import UnifyConfig, run_unify

    music = tmp_path / "music"
    music.mkdir()
    files = {i: str(tone(music / f"song{i}.wav", 200 + 30 * i)) for i in range(N)}
    songs = build_db(pg, "am_rescan", "current", N, seed=5, file_paths=files)
    cfg = DownloadConfig(source="audiomuse", dsn=pg.dsn("am_rescan"), server="local", workers=2)
    first = run_download(state, DownloadRequest(cfg))
    assert (first.ok, first.failed) == (N, 0) and first.changes is None
    root = state.dataset_dir("audiomuse")
    unify = run_unify(state, UnifyConfig(datasets=["audiomuse"], name="am", min_duration=0.0))
    assert unify.records == N
    emb = run_embed(state, EmbedConfig(audio_encoder="dsp", manifest="am", num_workers=0, device="cpu"))
    assert emb.embedded == N
    lines_before = ledger_lines(root)

    # Between the runs: one song added, one retagged, one file re-encoded, one deleted.
    rng = np.random.default_rng(9)
    new_file = str(tone(music / "new.wav", 1234))
    with pg.connect("am_rescan") as conn:
        add_song(conn, "fp_new_song", "Brand New", rng, file_path=new_file)
        conn.execute("UPDATE score SET title = 'Renamed', mood_vector = 'jazz:0.700' WHERE item_id = %s",
                     (songs[1].item_id,))
        delete_song(conn, songs[3].item_id)
    tone(Path(files[2]), 3000, seconds=2.0)   # the same path, other audio (AudioMuse-AI's row is unchanged)

    second = run_download(state, DownloadRequest(cfg))
    assert not second.skipped
    assert second.changes == {"added": 1, "changed": 2, "removed": 1, "unchanged": N - 3, "failed": 0, "fetched": 2}
    assert (second.ok, second.failed, second.pending) == (N, 0, 0)
    lines = ledger_lines(root)
    touched = {i for i in lines if lines[i] != lines_before.get(i, 0)}
    assert touched == {"fp_new_song", songs[2].item_id, songs[3].item_id}   # the retagged song's entry untouched
    recs = {r.id: r for r in audiomuse.AudioMuseSource().records(root)}
    assert audiomuse.record_id(songs[3].item_id) not in recs and recs["audiomuse:fp_new_song"].title == "Brand New"
    assert recs[audiomuse.record_id(songs[1].item_id)].title == "Renamed"

    unify2 = run_unify(state, UnifyConfig(datasets=["audiomuse"], name="am", min_duration=0.0))
    assert unify2.changes == {"added": 1, "changed": 1, "moved": 0, "removed": 1, "unchanged": N - 2}
    emb2 = run_embed(state, EmbedConfig(audio_encoder="dsp", manifest="am", num_workers=0, device="cpu"))
    assert emb2.updated and emb2.embedded == 2   # the new song and the re-encoded one; not the retagged one

    third = run_download(state, DownloadRequest(cfg))   # nothing changed: nothing fetched, no ledger line
    assert third.changes == {"added": 0, "changed": 0, "removed": 0, "unchanged": N, "failed": 0, "fetched": 0}
    assert ledger_lines(root) == lines


# --------------------------------------------------------------------------- a real Subsonic server
SETUP = r"""
import json, sys
from supysonic.config import IniConfig
from supysonic.db import init_database, release_database
from supysonic.cli import cli
config = IniConfig(["supysonic.conf"])
init_database(config.BASE["database_uri"])
try:
    cli.main(args=["folder", "scan", "--foreground", "music"], obj=config, standalone_mode=False)
finally:
    release_database()
"""


@pytest.mark.slow
def test_rescan_against_supysonic_fetches_only_new_and_reencoded_songs(pg, state, tmp_path, monkeypatch) -> None:
    from servers import venv_tool
    from servers.supysonic import supysonic

    from musiccli import mediaserver
    from musiccli.sources import _http

    for k in ("JELLYFIN_URL", "NAVIDROME_API_KEY", "DATABASE_URL", "MTX_MEDIASERVER_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    with supysonic(tmp_path / "supy", {"alice": "alice-pw"}) as supy:
        env = {"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": supy.url, "NAVIDROME_USER": "alice",
               "NAVIDROME_PASSWORD": "alice-pw", "NAVIDROME_AUTH": "enc"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        tracks = sorted(mediaserver.make_server(None).tracks(), key=lambda t: t.path)
        assert len(tracks) == 12 and all(t.size for t in tracks)
        # An older AudioMuse-AI database (item_id = the server's own id) that knows 10 of the 12 tracks.
        build_db(pg, "am_supy", "legacy", 0)
        rng = np.random.default_rng(4)
        with pg.connect("am_supy") as conn:
            for t in tracks[:10]:
                add_song(conn, t.id, t.title, rng)
        fetched: list[str] = []
        real = _http.fetch

        def spy(url, dest, **kw):
            fetched.append(url.split("id=")[1].split("&")[0])
            return real(url, dest, **kw)

        monkeypatch.setattr(_http, "fetch", spy)
        cfg = DownloadConfig(source="audiomuse", dsn=pg.dsn("am_supy"), server="navidrome", workers=2)
        first = run_download(state, DownloadRequest(cfg))
        assert (first.ok, first.failed) == (10, 0) and sorted(fetched) == sorted(t.id for t in tracks[:10])
        root = state.dataset_dir("audiomuse")
        files = {t.id: root / audiomuse.audio_rel(t.id, t.suffix) for t in tracks[:10]}
        stats = {i: (p.stat().st_ino, p.stat().st_mtime_ns) for i, p in files.items()}
        lines_before = ledger_lines(root)

        # Between the runs: the 11th track analysed, one retitled in the database, one deleted from it,
        # and one file re-encoded on the server (same path and id, other bytes; the server rescans it).
        with pg.connect("am_supy") as conn:
            add_song(conn, tracks[10].id, tracks[10].title, rng)
            conn.execute("UPDATE score SET title = 'Retitled' WHERE item_id = %s", (tracks[1].id,))
            delete_song(conn, tracks[3].id)
        reencoded = supy.music / tracks[2].path
        with sf.SoundFile(reencoded, "w", samplerate=22050, channels=1, format="FLAC") as f:
            f.title, f.artist, f.album = tracks[2].title, tracks[2].artist, "Album"
            f.write(0.3 * np.random.default_rng(0).standard_normal(22050 * 2).astype(np.float32))
        python = venv_tool("supysonic", "supysonic-server").parent / "python"
        subprocess.run([str(python), "-c", SETUP], cwd=supy.root, check=True, capture_output=True, timeout=120)
        after = {t.id: t for t in mediaserver.make_server(None).tracks()}
        assert after[tracks[2].id].size != tracks[2].size   # the server kept the id and saw the new file

        fetched.clear()
        second = run_download(state, DownloadRequest(cfg))
        assert second.changes == {"added": 1, "changed": 2, "removed": 1, "unchanged": 7, "failed": 0, "fetched": 2}
        assert sorted(fetched) == sorted([tracks[10].id, tracks[2].id])
        assert files[tracks[2].id].read_bytes() == reencoded.read_bytes()
        assert not files[tracks[3].id].exists()   # a removed song's fetched file is deleted
        for i, p in files.items():
            if i not in (tracks[2].id, tracks[3].id):
                assert (p.stat().st_ino, p.stat().st_mtime_ns) == stats[i]   # untouched
        lines = ledger_lines(root)
        assert {i for i in lines if lines[i] != lines_before.get(i, 0)} == {tracks[10].id, tracks[2].id, tracks[3].id}
        recs = {r.id: r for r in audiomuse.AudioMuseSource().records(root)}
        assert len(recs) == 10 and recs[audiomuse.record_id(tracks[1].id)].title == "Retitled"
        assert recs[audiomuse.record_id(tracks[2].id)].extra["content_hash"] != \
            json.loads([line for line in (root / "audio.jsonl").read_text().splitlines()
                        if tracks[2].id in line][0])["content_hash"]   # the re-encoded file has a new hash


@pytest.mark.slow
def test_playlists_from_the_database_and_supysonic_are_captions(pg, state, tmp_path, monkeypatch) -> None:
    """AudioMuse-AI's ``playlist`` table and the Subsonic server's playlists name their songs; a changed
    server playlist is noticed by the next run as metadata only (nothing fetched, no ledger line)."""
    from servers.supysonic import supysonic

    from musiccli import mediaserver

    for k in ("JELLYFIN_URL", "NAVIDROME_API_KEY", "DATABASE_URL", "MTX_MEDIASERVER_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    with supysonic(tmp_path / "supy", {"alice": "alice-pw"}) as supy:
        for k, v in {"MEDIASERVER_TYPE": "navidrome", "NAVIDROME_URL": supy.url, "NAVIDROME_USER": "alice",
                     "NAVIDROME_PASSWORD": "alice-pw", "NAVIDROME_AUTH": "enc"}.items():
            monkeypatch.setenv(k, v)
        client = mediaserver.make_server(None)
        tracks = sorted(client.tracks(), key=lambda t: t.path)[:6]
        build_db(pg, "am_lists", "legacy", 0)
        rng = np.random.default_rng(6)
        with pg.connect("am_lists") as conn:
            for t in tracks:
                add_song(conn, t.id, t.title, rng)
            for t in tracks[4:6]:   # AudioMuse-AI's own clustering output
                conn.execute("INSERT INTO playlist (playlist_name, item_id, title, author) VALUES "
                             "('Rock_Fast_automatic', %s, %s, %s)", (t.id, t.title, t.artist))
            conn.execute("INSERT INTO playlist (playlist_name, item_id, title, author) VALUES "
                         "('Rock_Fast_automatic', 'not-a-song', 'x', 'y')")
        client.save_playlist("Rainy  Sunday", [t.id for t in tracks[:3]])
        cfg = DownloadConfig(source="audiomuse", dsn=pg.dsn("am_lists"), server="navidrome", workers=2)
        assert run_download(state, DownloadRequest(cfg)).ok == 6
        root = state.dataset_dir("audiomuse")
        recs = {r.extra["server_item_id"]: r for r in audiomuse.AudioMuseSource().records(root)}
        assert [recs[t.id].extra.get("playlists") for t in tracks] == \
            [["Rainy Sunday"]] * 3 + [None] + [["Rock Fast automatic"]] * 2
        assert "Rainy Sunday" in recs[tracks[0].id].alt_captions

        lines_before = ledger_lines(root)
        client.save_playlist("Rainy  Sunday", [tracks[0].id, tracks[3].id])   # the user edits it
        second = run_download(state, DownloadRequest(cfg))
        assert second.changes == {"added": 0, "changed": 0, "removed": 0, "unchanged": 6, "failed": 0, "fetched": 0,
                                  "playlists": 2, "playlist_changes": 3}   # tracks 1, 2 left it, 3 joined
        assert ledger_lines(root) == lines_before
        recs = {r.extra["server_item_id"]: r for r in audiomuse.AudioMuseSource().records(root)}
        assert recs[tracks[3].id].extra["playlists"] == ["Rainy Sunday"] and "playlists" not in recs[tracks[1].id].extra


def test_interrupted_rescan_continues_to_the_same_result(pg, state, tmp_path, monkeypatch) -> None:
    from progress_doubles import StopAfter

    from musiccli.state import Resume

    monkeypatch.setattr(audiomuse, "PAGE_SIZE", 3)
    music = tmp_path / "music"
    music.mkdir()
    files = {i: str(tone(music / f"song{i}.wav", 200 + 30 * i)) for i in range(N)}
    songs = build_db(pg, "am_rescan_cut", "current", N, seed=7, file_paths=files)
    cfg = DownloadConfig(source="audiomuse", dsn=pg.dsn("am_rescan_cut"), server="local", workers=2)
    run_download(state, DownloadRequest(cfg))
    root = state.dataset_dir("audiomuse")
    songs_before = (root / "songs.jsonl").read_text()
    with pg.connect("am_rescan_cut") as conn:
        add_song(conn, "fp_zz_new", "Late Addition", np.random.default_rng(1), file_path=str(tone(music / "z.wav", 900)))
        delete_song(conn, songs[0].item_id)
    with pytest.raises(KeyboardInterrupt):   # two of five pages read again
        run_download(state, DownloadRequest(cfg), StopAfter(6, mode="kbd"))
    assert (root / "songs.jsonl").read_text() == songs_before   # the current import is untouched meanwhile
    assert (root / audiomuse.RESCAN_CURSOR).exists()
    res = run_download(state, DownloadRequest(cfg, resume=Resume.CONTINUE))
    assert res.changes == {"added": 1, "changed": 0, "removed": 1, "unchanged": N - 1, "failed": 0, "fetched": 1}
    assert not any((root / n).exists() for n in (audiomuse.RESCAN_SONGS, audiomuse.RESCAN_CURSOR,
                                                  audiomuse.RESCAN_IMPORTED))
    assert set(audiomuse.read_songs(root)) == {s.item_id for s in songs[1:]} | {"fp_zz_new"}
    from musiccli.store import EmbeddingStore

    with EmbeddingStore(audiomuse.teacher_store_path(root, "clap")) as st:   # the teachers follow the database
        assert sorted(st.ids) == sorted(audiomuse.record_id(i) for i in audiomuse.read_songs(root))


def test_jellyfin_playlists_are_captions(pg, state, monkeypatch) -> None:
    """Jellyfin's playlists (the fixture answers what Jellyfin 10.11 answers) name their songs too."""
    import fakemedia
    from test_audiomuse_mediaserver import TOKEN, USER_ID, tracks_for

    from musiccli import mediaserver

    for k in ("NAVIDROME_URL", "DATABASE_URL", "MTX_MEDIASERVER_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    songs = build_db(pg, "am_jf_lists", "current", 5, seed=2)
    with fakemedia.jellyfin(tracks_for(songs), TOKEN, USER_ID) as jf:
        for k, v in {"MEDIASERVER_TYPE": "jellyfin", "JELLYFIN_URL": jf.url, "JELLYFIN_USER_ID": USER_ID,
                     "JELLYFIN_TOKEN": TOKEN}.items():
            monkeypatch.setenv(k, v)
        mediaserver.make_server(None).save_playlist("Workout_Mix", [songs[0].server_item_id, songs[2].server_item_id])
        cfg = DownloadConfig(source="audiomuse", dsn=pg.dsn("am_jf_lists"), server="jellyfin", workers=2)
        assert run_download(state, DownloadRequest(cfg)).ok == 5
    recs = {r.extra["server_item_id"]: r for r in audiomuse.AudioMuseSource().records(state.dataset_dir("audiomuse"))}
    assert [recs[s.server_item_id].extra.get("playlists") for s in songs] == \
        [["Workout Mix"], None, ["Workout Mix"], None, None]
    assert "Workout Mix" in recs[songs[2].server_item_id].alt_captions


def test_cli_second_download_prints_what_changed(pg, cli, tmp_path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    files = {i: str(tone(music / f"s{i}.wav", 300 + 40 * i)) for i in range(4)}
    songs = build_db(pg, "am_cli_rescan", "current", 4, seed=8, file_paths=files)
    args = ("download", "audiomuse", "--dsn", pg.dsn("am_cli_rescan"), "--server", "local")
    assert cli(*args).exit_code == 0
    with pg.connect("am_cli_rescan") as conn:
        delete_song(conn, songs[1].item_id)
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "audiomuse: 0 added, 0 changed, 1 removed, 3 unchanged, 0 failed, 0 fetched" in " ".join(r.output.split())
