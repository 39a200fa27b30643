"""MPD (Debian `mpd` + `mpc`) loads mtx's M3U files: a symlinked music folder, and titles with
spaces, unicode, commas, `#` and `;`, in every path mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from musiccli.errors import MtxError
from musiccli.playlists import m3u_entry, write_m3u
from servers.mpd import mpd
from servers.supysonic import TITLES, write_library


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Real FLAC files under real/, and music -> real, the folder both mtx and MPD are given."""
    t = tmp_path_factory.mktemp("mpdlib")
    write_library(t / "real")
    os.symlink(t / "real", t / "music")
    with mpd(t / "mpd", t / "music") as server:
        yield t, server


@pytest.fixture(scope="module")
def hits(library, tmp_path_factory):
    """The library as `mtx download folder --path <symlink>` records it, as search hits."""
    from typer.testing import CliRunner

    from musiccli.cli.app import app
    from musiccli.sources.folder import FolderSource

    t, _ = library
    state_dir = tmp_path_factory.mktemp("state")
    r = CliRunner().invoke(app, ["--state-dir", str(state_dir), "download", "folder", "--path", str(t / "music"),
                                 "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    records = FolderSource().records(Path(state_dir) / "datasets" / "folder")
    assert len(records) == len(TITLES)
    # Paths as given: under the symlink, never its target.
    assert all(rec.audio_path.startswith(str(t / "music") + os.sep) for rec in records)
    return [{"id": rec.id, "audio_path": rec.audio_path, "duration": rec.duration, "artist": rec.artist,
             "title": rec.title, "server_path": rec.extra["relative_path"]} for rec in records]


@pytest.mark.parametrize("mode, root", [("absolute", None), ("relative", "music"), ("server", None),
                                        ("server", "music")])
def test_mpd_queues_every_entry(library, hits, mode, root) -> None:
    t, server = library
    name = f"mtx-{mode}-{root or 'none'}"
    out = write_m3u(server.playlists / f"{name}.m3u", hits, paths=mode, root=t / root if root else None)
    text = out.read_text(encoding="utf-8")
    assert str(t / "real") not in text and len(text.splitlines()) == 1 + 2 * len(TITLES)
    queued = server.load(name)
    assert sorted(queued) == sorted(h["server_path"] for h in hits)
    assert sorted(server.titles()) == sorted(TITLES)


def test_resolved_paths_would_queue_nothing(library, hits) -> None:
    """Why paths are written as given: MPD matches entries against music_directory's own path."""
    t, server = library
    real = [{**h, "audio_path": os.path.realpath(h["audio_path"])} for h in hits]
    write_m3u(server.playlists / "resolved.m3u", real)
    assert server.load("resolved") == []


def test_relative_outside_the_root_is_left_out_and_counted(library, hits, tmp_path, caplog) -> None:
    t, _ = library
    elsewhere = [{**hits[0], "audio_path": str(tmp_path / "other.flac")}, *hits[1:3]]
    out = write_m3u(tmp_path / "p.m3u", elsewhere, paths="relative", root=t / "music")
    assert len(out.read_text().splitlines()) == 1 + 2 * 2
    assert "1 hit(s) left out" in caplog.text


def test_server_mode_without_server_paths(tmp_path, caplog) -> None:
    out = write_m3u(tmp_path / "p.m3u", [{"id": "a", "audio_path": "/x/a.flac", "title": "A"}], paths="server")
    assert out.read_text() == "#EXTM3U\n" and "no media-server path" in caplog.text
    assert m3u_entry({"server_path": "/srv/music/a.flac"}, "server", "/mnt") == "/srv/music/a.flac"
    assert m3u_entry({"server_path": "Artist/a.flac"}, "server", "/mnt/music/") == "/mnt/music/Artist/a.flac"
    with pytest.raises(MtxError, match="unknown M3U path mode"):
        write_m3u(tmp_path / "q.m3u", [], paths="real")


def test_cli_m3u_path_modes(make_run, cli, tmp_path) -> None:
    run = make_run(n=6)
    rel = tmp_path / "rel.m3u"
    r = cli("search", run["records"][0].caption, "-k", "3", "--m3u", str(rel), "--m3u-paths", "relative",
            "--m3u-root", "/music", "--json")
    assert r.exit_code == 0, r.output
    entries = [x for x in rel.read_text().splitlines() if not x.startswith("#")]
    hits = json.loads(r.stdout)["hits"]
    assert entries == [os.path.relpath(h["audio_path"], "/music") for h in hits] and entries[0].count("/") == 1
    r = cli("search", "x", "--m3u", str(tmp_path / "y.m3u"), "--m3u-paths", "real")
    assert r.exit_code == 2 and "--m3u-paths" in r.output
