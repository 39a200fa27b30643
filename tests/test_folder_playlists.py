"""Playlists in a music folder are captions shared by their tracks (real FLAC/MP3/WAV files, real M3U files).

A playlist's name (its file name, cleaned) becomes each member's ``extra["playlists"]`` entry and an
alternative caption. Relative, absolute and ``file://`` entries are read; comments, ``#EXTM3U`` and
``#EXTINF`` are skipped; entries outside the folder or naming no library file are left out and
counted. A changed playlist is noticed by the next scan and flows through unify as metadata only:
the tracks keep their content hash, and embed runs the encoder on none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.easyid3 import EasyID3
from mutagen.flac import FLAC

from musiccli.download import DownloadRequest, run_download
from musiccli.manifest import read_manifest
from musiccli.sources import folder
from musiccli.sources.base import DownloadConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def music(tmp_path: Path) -> Path:
    lib = tmp_path / "Music"
    (lib / "Miles Davis" / "Kind of Blue").mkdir(parents=True)
    (lib / "misc").mkdir()
    (lib / "Playlists").mkdir()
    flac = lib / "Miles Davis" / "Kind of Blue" / "01 So What.flac"
    sf.write(flac, _tone(1.5, 440), 8000, format="FLAC")
    f = FLAC(flac)
    f["artist"], f["title"], f["genre"] = "Miles Davis", "So What", "Jazz"
    f.save()
    mp3 = lib / "misc" / "Café Song.mp3"
    sf.write(mp3, _tone(1.5, 330), 8000, format="MP3")
    tags = EasyID3()
    tags.update({"artist": "The Band", "title": "Loud Song", "genre": "Rock"})
    tags.save(mp3)
    sf.write(lib / "misc" / "sketch.wav", _tone(1.0, 550), 8000)
    outside = tmp_path / "elsewhere.wav"
    sf.write(outside, _tone(1.0, 660), 8000)
    # An extended M3U8 in a sub-folder: relative entries (one via ".."), EXTINF lines, a comment, an
    # absolute path outside the library, a stream URL, and a file that does not exist.
    (lib / "Playlists" / "Late_Night  Drive.m3u8").write_text(
        "\ufeff#EXTM3U\n"
        "#EXTINF:2,Miles Davis - So What\n"
        "../Miles Davis/Kind of Blue/01 So What.flac\n"
        "# a comment\n\n"
        "#EXTINF:2,The Band - Loud Song\n"
        "../misc/Café Song.mp3\n"
        f"{outside}\n"
        "http://radio.example/stream\n"
        "../misc/gone.mp3\n", encoding="utf-8")
    # A plain M3U at the top, Latin-1 encoded, with an absolute entry and a file:// URL.
    (lib / "Sunday Morning.m3u").write_bytes(
        (f"{lib / 'misc' / 'Café Song.mp3'}\n" + (lib / "misc" / "sketch.wav").as_uri() + "\n").encode("latin-1"))
    return lib


def _records(state) -> dict[str, object]:
    return {r.extra["relative_path"]: r for r in folder.FolderSource().records(state.dataset_dir("folder"))}


def test_playlists_become_shared_captions(music: Path, state) -> None:
    res = run_download(state, DownloadRequest(DownloadConfig(source="folder", path=music)))
    assert res.ok == 3
    recs = _records(state)
    so_what, cafe, sketch = (recs["Miles Davis/Kind of Blue/01 So What.flac"], recs["misc/Café Song.mp3"],
                             recs["misc/sketch.wav"])
    assert so_what.extra["playlists"] == ["Late Night Drive"]
    assert cafe.extra["playlists"] == ["Late Night Drive", "Sunday Morning"]
    assert sketch.extra["playlists"] == ["Sunday Morning"]
    assert "Late Night Drive" in so_what.alt_captions and "Sunday Morning" in cafe.alt_captions
    assert so_what.caption != "Late Night Drive"   # the track's own caption stays first
    saved = json.loads((state.dataset_dir("folder") / folder.PLAYLISTS_NAME).read_text())
    assert (saved["outside"], saved["missing"], saved["unreadable"]) == (2, 1, 0)
    scan = json.loads((state.dataset_dir("folder") / folder.SCAN_NAME).read_text())
    assert scan["playlists"] == 2 and scan["playlist_changes"] == 3


def test_changed_playlist_is_metadata_only(music: Path, state) -> None:
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.unify import UnifyConfig, run_unify

    run_download(state, DownloadRequest(DownloadConfig(source="folder", path=music)))
    run_unify(state, UnifyConfig(datasets=["folder"], name="lib", min_duration=0.0))
    first = run_embed(state, EmbedConfig(audio_encoder="dsp", manifest="lib", num_workers=0, device="cpu"))
    assert first.embedded == 3

    again = run_download(state, DownloadRequest(DownloadConfig(source="folder", path=music)))
    assert again.changes["playlist_changes"] == 0   # nothing changed: playlists.json is not rewritten
    ident = json.loads((state.dataset_dir("folder") / folder.PLAYLISTS_NAME).read_text())

    # The user adds the sketch to the drive playlist and deletes the Sunday one.
    pl = music / "Playlists" / "Late_Night  Drive.m3u8"
    pl.write_text(pl.read_text(encoding="utf-8") + "../misc/sketch.wav\n", encoding="utf-8")
    (music / "Sunday Morning.m3u").unlink()
    res = run_download(state, DownloadRequest(DownloadConfig(source="folder", path=music)))
    assert res.changes["added"] == res.changes["changed"] == res.changes["removed"] == 0
    assert res.changes["playlists"] == 1 and res.changes["playlist_changes"] == 2   # café and sketch
    assert json.loads((state.dataset_dir("folder") / folder.PLAYLISTS_NAME).read_text()) != ident

    unify = run_unify(state, UnifyConfig(datasets=["folder"], name="lib", min_duration=0.0))
    assert not unify.skipped and unify.changes["unchanged"] == 3   # same audio: metadata only
    recs = {r.extra["relative_path"]: r for r in read_manifest(state.manifest_path("lib"))}
    assert recs["misc/sketch.wav"].extra["playlists"] == ["Late Night Drive"]
    assert recs["misc/Café Song.mp3"].extra["playlists"] == ["Late Night Drive"]
    assert "Sunday Morning" not in recs["misc/Café Song.mp3"].alt_captions
    second = run_embed(state, EmbedConfig(audio_encoder="dsp", manifest="lib", num_workers=0, device="cpu"))
    assert second.embedded == 0   # keyed by (track id, content hash): nothing to embed


def test_playlist_entry_rules(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "a").mkdir(parents=True)
    pl = lib / "a" / "x.m3u"
    assert folder._entry_rel("song.mp3", pl, lib) == "a/song.mp3"
    assert folder._entry_rel("..\\b\\song.mp3", pl, lib) == "b/song.mp3"   # written on Windows
    assert folder._entry_rel("../../out.mp3", pl, lib) is None
    assert folder._entry_rel(str(lib / "a" / "s.flac"), pl, lib) == "a/s.flac"
    assert folder._entry_rel("file://" + str(lib / "a" / "s%20t.flac"), pl, lib) == "a/s t.flac"
    assert folder._entry_rel("https://x.example/a.mp3", pl, lib) is None
    assert folder.playlist_name(Path("My_Mix  2024.m3u8")) == "My Mix 2024"
