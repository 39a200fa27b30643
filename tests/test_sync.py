"""`mtx sync PATH`: a real tagged folder (FLAC, MP3, Ogg Vorbis, M4A/AAC) changed between syncs by
every kind of change; only new and changed files reach the encoder, and the library equals one
synced from scratch on the final folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from musiccli.manifest import CONTENT_HASH, read_manifest
from musiccli.state import StateDir
from musiccli.store import EmbeddingStore
from musiccli.sync import COUNTS, SyncConfig, run_sync
from tests.sine_audio import write_audio

def _tags(title: str, artist: str, genre: str) -> dict[str, str]:
    return {"title": title, "artist": artist, "album": "Tests", "genre": genre}


LIBRARY = {   # relative path -> (tone Hz, artist, genre)
    "Band A/One/01 a.flac": (220, "Band A", "Metal"),
    "Band A/One/02 b.mp3": (330, "Band A", "Metal"),
    "Band B/Two/01 c.ogg": (440, "Band B", "Ambient"),
    "Band B/Two/02 d.m4a": (550, "Band B", "Ambient"),
    "Band C/Three/01 e.flac": (660, "Band C", "Jazz"),
    "Band C/Three/02 f.mp3": (770, "Band C", "Jazz"),
}


def _make_library(root: Path) -> Path:
    for rel, (freq, artist, genre) in LIBRARY.items():
        write_audio(root / rel, freq, _tags(Path(rel).stem, artist, genre))
    return root


def _change(root: Path) -> None:
    """Every kind of change: added, replaced (other audio), re-tagged, touched, moved, removed."""
    write_audio(root / "Band D/Four/01 g.ogg", 880, _tags("g", "Band D", "Rock"))              # added
    write_audio(root / "Band A/One/02 b.mp3", 345, _tags("02 b", "Band A", "Metal"))          # other audio
    import mutagen

    f = mutagen.File(root / "Band C/Three/02 f.mp3", easy=True)                               # re-tagged
    f["genre"] = "Blues"
    f.save()
    c = root / "Band B/Two/01 c.ogg"                                                         # touched only
    os.utime(c, ns=(c.stat().st_atime_ns, c.stat().st_mtime_ns + 5_000_000_000))
    (root / "Band B/Moved").mkdir()
    shutil.move(root / "Band B/Two/02 d.m4a", root / "Band B/Moved/02 d.m4a")                 # moved
    (root / "Band C/Three/01 e.flac").unlink()                                               # removed


def _cfg(path: Path, **kw) -> SyncConfig:
    return SyncConfig(path=path, **{"audio_encoder": "dsp", "num_workers": 0, "device": "cpu", "chunk_tracks": 2,
                                    **kw})


def _library_rows(state: StateDir, name: str = "library") -> dict[str, tuple[str, np.ndarray]]:
    """relative path -> (content hash, stored vector): the library as a user sees it."""
    records = {r.id: r for r in read_manifest(state.manifest_path(name))}
    with EmbeddingStore(state.embeddings_path("dsp", name)) as st:
        vectors = st.get(st.ids)
        hashes = st.hashes
        return {records[i].extra["relative_path"]: (h, v) for i, h, v in zip(st.ids, hashes, vectors)}


def test_sync_follows_every_kind_of_change(tmp_path: Path, decoded: list[str]) -> None:
    music = _make_library(tmp_path / "Music")
    state = StateDir.resolve(tmp_path / "state")
    first = run_sync(state, _cfg(music))
    assert first.counts() == {"added": 6, "changed": 0, "moved": 0, "removed": 0, "unchanged": 0, "failed": 0,
                              "embedded": 6}
    assert first.index is None and "no text tower" in first.index_note
    assert state.list_manifests() == ["library"]     # sync's own bookkeeping is not mistaken for a manifest
    before = {r.extra["relative_path"]: r for r in read_manifest(state.manifest_path("library"))}

    _change(music)
    decoded.clear()
    second = run_sync(state, _cfg(music))
    assert second.counts() == {"added": 1, "changed": 2, "moved": 1, "removed": 1, "unchanged": 2, "failed": 0,
                               "embedded": 3}
    assert sorted(decoded) == ["01 g.ogg", "02 b.mp3", "02 f.mp3"]   # nothing else was decoded
    after = {r.extra["relative_path"]: r for r in read_manifest(state.manifest_path("library"))}
    # ids and splits of tracks still there are stable; the moved file kept its id
    for rel in ("Band A/One/01 a.flac", "Band B/Two/01 c.ogg", "Band A/One/02 b.mp3"):
        assert (after[rel].id, after[rel].split) == (before[rel].id, before[rel].split)
    assert after["Band B/Moved/02 d.m4a"].id == before["Band B/Two/02 d.m4a"].id
    assert after["Band B/Moved/02 d.m4a"].split == before["Band B/Two/02 d.m4a"].split
    assert "Band C/Three/01 e.flac" not in after and after["Band C/Three/02 f.mp3"].tags[0] == "Blues"

    # The incremental library equals one synced from scratch on the final folder.
    scratch = StateDir.resolve(tmp_path / "scratch")
    run_sync(scratch, _cfg(music))
    got, want = _library_rows(state), _library_rows(scratch)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel][0] == want[rel][0], rel
        np.testing.assert_allclose(got[rel][1], want[rel][1], atol=1e-6, err_msg=rel)

    decoded.clear()
    third = run_sync(state, _cfg(music))
    assert third.nothing_changed and third.embedded == 0 and decoded == []
    assert third.counts()["unchanged"] == 6


def test_cli_sync_json_and_a_second_sync_that_does_nothing(tmp_path: Path, cli) -> None:
    music = _make_library(tmp_path / "Music")
    (music / "junk.mp3").write_bytes(b"\x00" * 300)     # not audio: reported as failed, not fatal
    args = ("sync", str(music), "--audio-encoder", "dsp", "--workers", "0", "--device", "cpu")
    res = cli(*args, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert list(data) == list(COUNTS) and all(type(v) is int for v in data.values())
    assert data["added"] == 6 and data["embedded"] == 6 and data["failed"] == 1
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert "nothing changed" in again.output and "encoder did not run" in again.output
    assert cli(*args[:2], "--audio-encoder", "nope").exit_code != 0
    missing = cli("sync", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "no such folder" in missing.output


def test_sync_then_search_with_the_native_text_tower(tmp_path: Path, tiny_clap: Path, cli, state_dir: Path) -> None:
    """Two commands from a folder to a search: `mtx sync` (default encoder: CLAP, a tiny one here),
    then a plain `mtx search "dark metal"` (no run, no flags) answers with CLAP's text tower."""
    music = _make_library(tmp_path / "Music")
    sync = ("sync", str(music), "--model", str(tiny_clap), "--workers", "0", "--device", "cpu")
    res = cli(*sync, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["embedded"] == 6
    found = cli("search", "dark metal", "-k", "3", "--json")
    assert found.exit_code == 0, found.output
    data = json.loads(found.stdout)
    assert data["text_model"] == "native" and data["encoder"] == "clap" and len(data["hits"]) == 3
    assert data["index"] == "native-clap--library" and not data["rebuilt"]     # sync built it
    assert all(Path(h["audio_path"]).is_file() for h in data["hits"])
    _change(music)
    again = cli(*sync, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["embedded"] == 3
    found = json.loads(cli("search", "dark metal", "-k", "10", "--json").stdout)
    assert not found["rebuilt"] and len(found["hits"]) == 6      # the index followed the library in place
    assert not any("01 e.flac" in (h["audio_path"] or "") for h in found["hits"])


def test_rows_carry_the_scanned_content_hash(tmp_path: Path) -> None:
    music = _make_library(tmp_path / "Music")
    state = StateDir.resolve(tmp_path / "state")
    run_sync(state, _cfg(music))
    from musiccli.manifest import file_content_hash

    for r in read_manifest(state.manifest_path("library")):
        assert r.extra[CONTENT_HASH] == file_content_hash(r.audio_path)


_KILLED_SYNC = """
import os, signal, sys
from pathlib import Path
from musiccli import embed
from musiccli.state import StateDir
from musiccli.sync import SyncConfig, run_sync

real = embed._commit
def commit(*a, **k):
    out = real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)      # kill -9 after the first committed chunk of the update
    return out
embed._commit = commit
run_sync(StateDir.resolve(sys.argv[1]), SyncConfig(path=Path(sys.argv[2]), audio_encoder="dsp", num_workers=0,
                                                   device="cpu", chunk_tracks=1))
"""


@pytest.mark.slow
def test_kill_9_during_a_sync_then_sync_again_equals_the_uninterrupted_library(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    music = _make_library(tmp_path / "Music")
    state = StateDir.resolve(tmp_path / "state")
    run_sync(state, _cfg(music, chunk_tracks=1))
    _change(music)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _KILLED_SYNC, str(state.root), str(music)], env=env,
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    again = run_sync(state, _cfg(music, chunk_tracks=1))      # no flag: the interrupted embed is continued
    assert again.embedded == 2                                  # one of the three was committed before the kill
    assert again.counts()["added"] == 1 and again.counts()["changed"] == 2   # still counted since the last sync
    scratch = StateDir.resolve(tmp_path / "scratch")
    run_sync(scratch, _cfg(music, chunk_tracks=1))
    got, want = _library_rows(state), _library_rows(scratch)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel][0] == want[rel][0]
        np.testing.assert_allclose(got[rel][1], want[rel][1], atol=1e-6, err_msg=rel)
