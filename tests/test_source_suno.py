"""Suno: a zstd JSON Lines file (metadata as a string, tags as a list) + audio at each row's URL, on 127.0.0.1."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zstandard

from httpserver import serve
from musiccli.progress import NullProgress
from musiccli.sources import suno
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.verify import check_file

IDS = ["a1b2c3d4-0000-0000-0000-000000000001", "a1b2c3d4-0000-0000-0000-000000000002",
       "b1b2c3d4-0000-0000-0000-000000000003", "c1b2c3d4-0000-0000-0000-000000000004",
       "d1b2c3d4-0000-0000-0000-000000000005"]
GONE = IDS[3]


def _mp3(seconds: float) -> bytes:
    sr = 8000
    t = np.arange(int(sr * seconds)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr, format="MP3")
    return buf.getvalue()


def build_www(www: Path, base_url: str) -> None:
    (www / "audio").mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": IDS[0], "audio_url": f"{base_url}/audio/{IDS[0]}.mp3", "title": "Summer Drive",
         "metadata": {"tags": "upbeat synthwave, female vocals", "prompt": "a dreamy synthwave song about summer",
                      "duration": 2.0}},
        {"id": IDS[1], "audio_url": f"{base_url}/audio/{IDS[1]}.mp3", "title": "Rain",
         "metadata": json.dumps({"tags": "sad piano ballad", "prompt": "[Verse]\nRain on my window\n[Chorus]\n..."})},
        {"id": IDS[2], "audio_url": f"{base_url}/audio/{IDS[2]}.mp3", "title": "Lists",
         "metadata": {"tags": ["lofi", "hip hop", "chill"], "prompt": ""}},
        {"id": GONE, "audio_url": f"{base_url}/audio/{GONE}.mp3", "title": "Gone", "metadata": {"tags": "rock"}},
        {"id": "no-url", "audio_url": None, "title": "Broken", "metadata": {}},
        {"id": IDS[4], "audio_url": f"{base_url}/audio/{IDS[4]}.mp3", "title": "Fifth", "metadata": {"tags": "jazz"}},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + "{not json\n"
    (www / suno.DATA_NAME).write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    for i, sid in enumerate(IDS):
        if sid != GONE:
            (www / "audio" / f"{sid}.mp3").write_bytes(_mp3(2.0 + 0.5 * (i % 2)))


def _download(www: Path, root: Path, srv, **kw) -> Ledger:
    cfg = DownloadConfig(source="suno", mirror=srv.url, workers=2, **kw)
    suno.SunoSource().download(cfg, root, Ledger(root), NullProgress())
    return Ledger(root)


def test_download_verify_records(tmp_path: Path) -> None:
    www, root = tmp_path / "www", tmp_path / "suno"
    www.mkdir()
    with serve(www) as srv:
        build_www(www, srv.url)
        ledger = _download(www, root, srv, max_items=4, rate_limit=50.0)
        assert len(srv.requests_for(f"/audio/{IDS[4]}.mp3")) == 0  # beyond --max-items
    assert ledger.counts() == {"ok": 3, "failed": 1, "pending": 0}
    assert ledger.entries[f"suno-{GONE}"].reason == "HTTP 404"

    assert all(check_file(e)[0] is None for e in suno.SunoSource().expected_files(root))
    recs = {r.id: r for r in suno.SunoSource().records(root)}
    assert set(recs) == {f"suno-{i}" for i in IDS[:3]}
    r = recs[f"suno-{IDS[0]}"]
    assert r.caption == "upbeat synthwave, female vocals"
    assert r.alt_captions == ["a dreamy synthwave song about summer"]  # a description, so an alt caption
    assert (r.title, r.license, r.duration, r.tags) == ("Summer Drive", "cc0-1.0", 2.0,
                                                         ["upbeat synthwave", "female vocals"])
    lyrics = recs[f"suno-{IDS[1]}"]  # metadata arrived as a JSON string; lyrics are not a caption
    assert lyrics.caption == "sad piano ballad" and lyrics.alt_captions == []
    assert "[Verse]" in lyrics.extra["prompt"] and abs(lyrics.duration - 2.5) < 0.1  # from the header
    assert recs[f"suno-{IDS[2]}"].caption == "lofi, hip hop, chill"


def test_rerun_retries_only_failures(tmp_path: Path) -> None:
    www, root = tmp_path / "www", tmp_path / "suno"
    www.mkdir()
    with serve(www) as srv:
        build_www(www, srv.url)
        _download(www, root, srv, max_items=4)
        before = len(srv.requests)
        (www / "audio" / f"{GONE}.mp3").write_bytes(_mp3(1.0))  # back online
        ledger = _download(www, root, srv, max_items=4)
        audio_reqs = [p for p, _ in srv.requests[before:] if p.startswith("/audio/")]
    assert audio_reqs == [f"/audio/{GONE}.mp3"]
    assert ledger.counts() == {"ok": 4, "failed": 0, "pending": 0}


def test_row_parsing_and_heuristic() -> None:
    assert suno.parse_row({"id": "x", "audio_url": "u", "metadata": "not json"})["style"] is None
    assert suno.parse_row({"id": "x", "audio_url": None}) is None
    assert suno.is_description("an epic orchestral trailer cue")
    assert not suno.is_description("[Chorus] la la la")
    assert not suno.is_description("line one\nline two")
    assert not suno.is_description("word " * 100)
    assert suno.audio_relpath("ab/../x", "https://cdn/x.mp3?sig=1") == "audio/ab/ab_.._x.mp3"


def test_default_cap_and_cli(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from httpserver import mtx_runner

    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    monkeypatch.setattr(suno, "DEFAULT_MAX_ITEMS", 2)
    www = tmp_path / "www"
    www.mkdir()
    mtx = mtx_runner(state_dir)
    with serve(www) as srv:
        build_www(www, srv.url)
        result = mtx("download", "suno", "--mirror", srv.url)
    assert result.exit_code == 0, result.output
    root = state_dir / "datasets" / "suno"
    assert Ledger(root).counts()["ok"] == 2
    assert mtx("verify", "suno").exit_code == 0
    assert mtx("unify", "--datasets", "suno", "--name", "suno").exit_code == 0
    assert len(read_manifest(StateDir.resolve(state_dir).manifest_path("suno"))) == 2
