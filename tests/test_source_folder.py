"""folder: a user's music directory with ID3 / Vorbis-tagged files, an untagged one and a broken one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.easyid3 import EasyID3
from mutagen.flac import FLAC

from musiccli.errors import MtxError
from musiccli.progress import NullProgress
from musiccli.sources import folder
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.verify import check_file


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def music(tmp_path: Path) -> Path:
    lib = tmp_path / "Music"
    (lib / "Miles Davis" / "Kind of Blue").mkdir(parents=True)
    (lib / "Unknown Artist" / "Demos").mkdir(parents=True)
    (lib / "misc").mkdir()
    flac = lib / "Miles Davis" / "Kind of Blue" / "01 So What.flac"
    sf.write(flac, _tone(2.0), 8000, format="FLAC")
    f = FLAC(flac)
    f["artist"], f["title"], f["album"], f["genre"], f["date"] = "Miles Davis", "So What", "Kind of Blue", \
        "Jazz", "1959-08-17"
    f["mood"] = "calm"
    f.save()
    mp3 = lib / "misc" / "track.mp3"
    sf.write(mp3, _tone(2.5), 8000, format="MP3")
    tags = EasyID3()
    tags.update({"artist": "The Band", "title": "Loud Song", "genre": "Rock; Electronic"})
    tags.save(mp3)
    sf.write(lib / "Unknown Artist" / "Demos" / "03 - Sketch.wav", _tone(1.5), 8000)  # no tags at all
    (lib / "misc" / "broken.mp3").write_bytes(b"\x00" * 400)  # not audio
    (lib / "misc" / "cover.jpg").write_bytes(b"\xff\xd8")      # not an audio extension
    (lib / ".hidden").mkdir()
    sf.write(lib / ".hidden" / "x.wav", _tone(1.0), 8000)
    return lib


def _scan(root: Path, music: Path | None, **kw) -> Ledger:
    folder.FolderSource().download(DownloadConfig(source="folder", path=music, **kw), root, Ledger(root),
                                   NullProgress())
    return Ledger(root)


def test_scan_verify_records(music: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    ledger = _scan(root, music)
    assert ledger.counts() == {"ok": 3, "failed": 1, "pending": 0}
    assert ledger.entries[folder.file_id("misc/broken.mp3")].status == "failed"
    assert (root / "folder.json").is_file()

    assert all(check_file(e)[0] is None for e in folder.FolderSource().expected_files(root))
    recs = {r.extra["relative_path"]: r for r in folder.FolderSource().records(root)}
    assert set(recs) == {"Miles Davis/Kind of Blue/01 So What.flac", "misc/track.mp3",
                         "Unknown Artist/Demos/03 - Sketch.wav"}
    jazz = recs["Miles Davis/Kind of Blue/01 So What.flac"]
    assert jazz.caption == "A calm Jazz track"
    assert "So What by Miles Davis" in jazz.alt_captions
    assert (jazz.artist, jazz.title, jazz.extra["album"], jazz.extra["year"]) == ("Miles Davis", "So What",
                                                                                 "Kind of Blue", 1959)
    assert jazz.tags == ["Jazz", "calm"] and jazz.license is None and abs(jazz.duration - 2.0) < 0.05
    assert jazz.id == folder.file_id("Miles Davis/Kind of Blue/01 So What.flac")
    rock = recs["misc/track.mp3"]
    assert rock.tags == ["Rock", "Electronic"] and "Rock" in rock.caption
    sketch = recs["Unknown Artist/Demos/03 - Sketch.wav"]  # untagged: names from the path
    assert (sketch.caption, sketch.artist, sketch.extra["album"]) == ("Sketch by Unknown Artist",
                                                                      "Unknown Artist", "Demos")
    assert Path(sketch.audio_path) == music / "Unknown Artist/Demos/03 - Sketch.wav"


def test_rescan_resumes_and_refuses_other_folder(music: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _scan(root, music, max_items=2)
    assert len(folder.FolderSource().records(root)) == 2
    _scan(root, None)  # the folder is remembered in folder.json
    lines = (root / "index.jsonl").read_text().splitlines()
    assert len(lines) == 3  # files already indexed were not read again
    other = tmp_path / "Other"
    other.mkdir()
    with pytest.raises(MtxError, match="already indexes"):
        _scan(root, other)
    with pytest.raises(MtxError, match="not a directory"):
        _scan(tmp_path / "x", tmp_path / "nope")
    with pytest.raises(MtxError, match="no music folder"):
        _scan(tmp_path / "y", None)


def test_torn_last_lines_do_not_swallow_the_next_entry(music: Path, tmp_path: Path) -> None:
    # A crash mid-append leaves a line without its newline; the next append must not be glued to it.
    root = tmp_path / "ds"
    _scan(root, music, max_items=1)
    for name in ("index.jsonl", "ledger.jsonl"):
        with open(root / name, "a", encoding="utf-8") as f:
            f.write('{"id": "torn')
    ledger = _scan(root, None)
    assert ledger.counts() == {"ok": 3, "failed": 1, "pending": 0}
    assert len(folder.FolderSource().records(root)) == 3


def test_cli_download_unify(music: Path, state_dir: Path) -> None:
    from httpserver import mtx_runner

    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    mtx = mtx_runner(state_dir)
    result = mtx("download", "folder", "--path", str(music))
    # The unreadable file is reported; the rest is usable: complete with failures, exit 0.
    assert result.exit_code == 0 and "broken.mp3" in result.output
    assert "later stages use folder without them" in result.output
    assert mtx("verify", "folder").exit_code == 0
    unified = mtx("unify", "--datasets", "folder", "--name", "library")
    assert unified.exit_code == 0, unified.output
    assert "folder: 1 item(s) failed to download" in unified.output
    state = StateDir.resolve(state_dir)
    assert all(r.dataset == "folder" for r in read_manifest(state.manifest_path("library")))


def test_symlinks_followed_once_loops_and_duplicates_skipped(music: Path, tmp_path: Path) -> None:
    (music / "loop").symlink_to(music, target_is_directory=True)          # loop -> .
    (music / "misc" / "again").symlink_to(music / "misc", target_is_directory=True)
    (music / "Jazz link").symlink_to(music / "Miles Davis", target_is_directory=True)
    (music / "misc" / "same.wav").symlink_to(music / "Unknown Artist" / "Demos" / "03 - Sketch.wav")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    sf.write(outside / "linked.wav", _tone(1.0), 8000)
    (music / "external").symlink_to(outside, target_is_directory=True)
    (music / "misc" / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    warnings: list[str] = []
    files = folder.scan(music, warnings)
    assert files == sorted(["Miles Davis/Kind of Blue/01 So What.flac", "Unknown Artist/Demos/03 - Sketch.wav",
                            "external/linked.wav", "misc/broken.mp3", "misc/track.mp3"])
    assert any("dangling.wav" in w for w in warnings)
    root = tmp_path / "ds"
    ledger = _scan(root, music)
    assert ledger.counts() == {"ok": 4, "failed": 1, "pending": 0}
    assert all(check_file(e)[0] is None for e in folder.FolderSource().expected_files(root)
               if not e.path.name.startswith("broken"))


def test_unreadable_subfolder_is_a_warning(music: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # Tests may run as root, for whom chmod 000 changes nothing: make the OS refuse the listing instead.
    import os

    real = os.scandir
    locked = music / "misc"

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(folder.os, "scandir", scandir)
    with caplog.at_level("WARNING"):
        files = folder.scan(music)
    assert not any(f.startswith("misc/") for f in files) and len(files) == 2
    assert "cannot read folder misc: Permission denied" in caplog.text


def test_nonexistent_path_says_so_and_leaves_no_record(tmp_path: Path, state_dir: Path, music: Path) -> None:
    from httpserver import mtx_runner

    mtx = mtx_runner(state_dir)
    r = mtx("download", "folder", "--path", str(tmp_path / "nope"))
    assert r.exit_code == 1 and "no such folder" in r.output and "interrupted" not in r.output
    r = mtx("download", "folder", "--path", str(tmp_path / "nope"))
    assert "no such folder" in r.output and "interrupted" not in r.output
    r = mtx("download", "folder", "--path", str(music))
    assert "interrupted" not in r.output and "broken.mp3" in r.output


def test_stats_measure_the_music_not_the_index(music: Path, state_dir: Path) -> None:
    """`download --stats` for a folder: GB and hours from the audio files, which live outside the state dir."""
    import json

    from httpserver import mtx_runner

    from musiccli.audio import audio_info

    mtx = mtx_runner(state_dir)
    mtx("download", "folder", "--path", str(music))
    good = [music / "Miles Davis" / "Kind of Blue" / "01 So What.flac", music / "misc" / "track.mp3",
            music / "Unknown Artist" / "Demos" / "03 - Sketch.wav"]
    # After the scan, one file is re-rendered longer: the index still says 1.5 s, the file says 6 s.
    sf.write(good[2], _tone(6.0), 8000)
    res = mtx("download", "--stats", "--json")
    assert res.exit_code == 0, res.output
    row = {r["source"]: r for r in json.loads(res.stdout)}["folder"]
    dataset_dir = state_dir / "datasets" / "folder"
    index_bytes = sum(p.stat().st_size for p in dataset_dir.rglob("*") if p.is_file())
    assert row["gb"] == pytest.approx((sum(p.stat().st_size for p in good) + index_bytes) / 1e9, abs=2e-6)
    assert row["gb"] > 10 * index_bytes / 1e9  # the music, not just the ledger and index
    hours = sum(audio_info(p).duration for p in good) / 3600
    assert row["hours"] == pytest.approx(hours, abs=1e-6) and row["audio_files"] == 3
    assert row["hours"] > (2.0 + 2.5 + 1.5) / 3600 * 1.5  # the 6 s on disk, not the 1.5 s in the index
    table = mtx("download", "--stats")
    assert "audio files" in table.output and "folder" in table.output


# --------------------------------------------------------------------------- artists (issue 24)
def _corpus(root: Path, sources: tuple[str, ...] = ("mma", "field", "synth"), collections: int = 3,
            pieces: int = 20) -> Path:
    """corpus/<source>/<collection>/<piece>.wav, untagged: a sample library, not Artist/Album/track."""
    for i, s in enumerate(sources):
        for c in range(collections):
            d = root / s / f"{s}-lib{c}"
            d.mkdir(parents=True)
            for p in range(pieces):   # every file its own audio (byte-identical copies are one recording)
                sf.write(d / f"piece_{p:02d}.wav", _tone(0.2, 100 + 10 * p + 250 * c + 1000 * i), 8000)
    return root


@pytest.mark.slow
def test_untagged_source_collection_layout_invents_no_artist_and_splits_every_folder(tmp_path: Path,
                                                                                      state_dir: Path) -> None:
    from httpserver import mtx_runner

    from musiccli.manifest import read_manifest, recording_components
    from musiccli.state import StateDir

    corpus = _corpus(tmp_path / "corpus")
    mtx = mtx_runner(state_dir)
    assert mtx("download", "folder", "--path", str(corpus)).exit_code == 0
    out = mtx("unify", "--datasets", "folder", "--name", "lib")
    assert out.exit_code == 0, out.output
    assert "folder artists: 180 without an artist" in out.output      # the rule each record used
    assert "holds" not in out.output                                  # no artist dominates: nothing to warn
    records = read_manifest(StateDir.resolve(state_dir).manifest_path("lib"))
    assert len(records) == 180
    assert len(recording_components(records)) == 180                  # no folder lumps records together
    assert all(r.artist is None and r.extra["artist_source"] == "none" for r in records)
    assert not any(" by " in c for r in records for c in r.captions)  # no "piece_01 by mma"
    by_top: dict[str, set[str]] = {}
    for r in records:
        by_top.setdefault(r.extra["relative_path"].split("/")[0], set()).add(r.split)
    assert by_top == {s: {"train", "val", "test"} for s in ("mma", "field", "synth")}
    # Split sizes per top-level folder, in the output and in the JSON result.
    assert "split by top-level folder" in out.output and "folder/mma" in out.output
    import json

    res = json.loads(mtx("unify", "--datasets", "folder", "--name", "lib2", "--json").stdout)
    rows = {c["dataset"]: c for c in res["folders"]}
    assert set(rows) == {"folder/mma", "folder/field", "folder/synth"}
    assert all(c["test"] > 0 and c["count"] == 60 for c in rows.values())
    assert res["artist_sources"] == {"folder": {"none": 180}}


def _info(rel: str, tag: str | None = None, **kw) -> dict:
    return {"rel": rel, "tag_artist": tag, **kw}


def test_folder_artist_rule() -> None:
    # Many small artist folders: read as Artist/Album/track even without tags.
    lib = [_info(f"Artist {a}/Album/0{t} Song.mp3") for a in range(6) for t in range(2)]
    assert {r for _, r in folder.folder_artists(lib)} == {"folder"}
    assert folder.folder_artists(lib)[0] == ("Artist 0", "folder")
    # A few big top-level folders: not artists.
    corpus = [_info(f"{s}/lib{c}/p{p}.wav") for s in ("mma", "x", "y") for c in range(2) for p in range(5)]
    assert set(folder.folder_artists(corpus)) == {(None, "none")}
    # Five folders, but one holds most of the files: not an artist layout either.
    lopsided = [_info(f"A{a}/B/t{t}.wav") for a in range(5) for t in range(1 if a else 20)]
    assert set(folder.folder_artists(lopsided)) == {(None, "none")}
    # Tags confirm the layout: a tagged file sits in a folder named after its artist.
    confirmed = [_info("Miles Davis/Kind of Blue/01.flac", "miles  DAVIS"), _info("Demo Guy/Demos/01.wav")]
    assert folder.folder_artists(confirmed) == [("miles  DAVIS", "tag"), ("Demo Guy", "folder")]
    # Tags contradict it: the top folder is not the artist.
    contradicted = [_info("mma/lib/01.wav", "Someone"), _info("mma/lib/02.wav")]
    assert folder.folder_artists(contradicted) == [("Someone", "tag"), (None, "none")]
    # Too shallow for a folder artist; an index line from before tag_artist: an untagged file's artist was
    # its folder (not a tag), a tagged file's artist is kept.
    assert folder.folder_artists([_info("Album/01.wav")]) == [(None, "none")]
    legacy = [{"rel": "mma/lib/01.wav", "artist": "mma", "tagged": False},
              {"rel": "mma/lib/02.wav", "artist": "Tagged One", "tagged": True}]
    assert folder.folder_artists(legacy) == [(None, "none"), ("Tagged One", "tag")]


def test_one_artist_holding_most_records_is_warned(tmp_path: Path, state_dir: Path) -> None:
    from httpserver import mtx_runner

    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(24):
        path = lib / f"{i:02d}.mp3"
        sf.write(path, _tone(0.3, 300 + 20 * i), 8000, format="MP3")
        tags = EasyID3()
        tags.update({"artist": "Big Band" if i < 12 else f"Solo {i}", "title": f"Song {i}"})
        tags.save(path)
    mtx = mtx_runner(state_dir)
    assert mtx("download", "folder", "--path", str(lib)).exit_code == 0
    out = mtx("unify", "--datasets", "folder")
    assert out.exit_code == 0, out.output
    assert "artist 'Big Band' holds 12 of 24 records" in out.output and "cannot be balanced" in out.output
    assert "folder artists: 24 from tags" in out.output


def test_cli_rerun_rescans_and_reports_changes(music: Path, state_dir: Path) -> None:
    """Re-running `mtx download folder --path LIB` after the library changed rescans it (no --force)."""
    import shutil

    from httpserver import mtx_runner

    mtx = mtx_runner(state_dir)
    assert mtx("download", "folder", "--path", str(music)).exit_code == 0
    sf.write(music / "misc" / "new.wav", _tone(1.0), 8000)
    shutil.move(music / "misc" / "track.mp3", music / "misc" / "renamed.mp3")
    (music / "Unknown Artist" / "Demos" / "03 - Sketch.wav").unlink()
    res = mtx("download", "folder", "--path", str(music))
    assert res.exit_code == 0, res.output
    assert "1 added, 0 changed, 1 moved, 1 removed, 1 unchanged" in res.output
    recs = {r.extra["relative_path"]: r for r in folder.FolderSource().records(state_dir / "datasets" / "folder")}
    assert set(recs) == {"Miles Davis/Kind of Blue/01 So What.flac", "misc/renamed.mp3", "misc/new.wav"}
    assert recs["misc/renamed.mp3"].id == folder.file_id("misc/track.mp3")   # a moved file keeps its id
