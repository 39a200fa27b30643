"""Song Describer: the Zenodo CSV and audio.zip (audio/NN/<id>.2min.mp3) served over 127.0.0.1."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from httpserver import serve
from musiccli.errors import Interrupted
from musiccli.progress import NullProgress
from musiccli.sources import song_describer as sd
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.state import file_sha256
from musiccli.verify import check_file

CSV = """\
caption_id,track_id,caption,is_valid_subset,familiarity,artist_id,album_id,path,duration
12,226,"A calm piano piece, played slowly.",True,0,517,521,26/226.mp3,195.0
3,226,Slow solo piano with a melancholic mood.,False,1,517,521,26/226.mp3,195.0
7,1319,An energetic rock song with distorted guitars and shouting vocals.,,2,88,90,19/1319.mp3,241.5
8,42,Lo-fi hip hop beat with vinyl crackle.,True,,4,5,42/42.mp3,100.0
9,999,"Listed in the CSV, missing from the zip.",True,0,1,1,99/999.mp3,60.0
"""
DURATIONS = {226: 3.0, 1319: 2.0, 42: 1.0}


def _mp3(seconds: float) -> bytes:
    sr = 8000
    buf = io.BytesIO()
    t = np.arange(int(sr * seconds)) / sr
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="MP3")
    return buf.getvalue()


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sdd-www")
    (root / "song_describer.csv").write_text(CSV, encoding="utf-8")
    with zipfile.ZipFile(root / "audio.zip", "w") as zf:
        for tid, seconds in DURATIONS.items():
            zf.writestr(f"audio/{tid % 100:02d}/{tid}.2min.mp3", _mp3(seconds))
    return root


class _StopAfter(NullProgress):
    """Asks to stop after the first unit boundary, like a Ctrl-C during extraction."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def check_interrupt(self) -> None:
        self.calls += 1
        if self.calls == 2:  # 1: after the zip download; 2: after the first extracted batch
            self.stop.request()
        super().check_interrupt()


def test_download_verify_records(www: Path, tmp_path: Path) -> None:
    root = tmp_path / "sdd"
    with serve(www) as srv:
        cfg = DownloadConfig(source="song-describer", mirror=srv.url)
        sd.SongDescriberSource().download(cfg, root, Ledger(root), NullProgress())
    ledger = Ledger(root)
    assert ledger.counts() == {"ok": 3, "failed": 1, "pending": 0}
    assert "not in audio.zip" in ledger.entries["song-describer-999"].reason
    assert (root / "audio.zip").exists()  # kept: not every track was extracted
    e = ledger.entries["song-describer-226"]
    assert e.path == "audio/26/226.2min.mp3" and e.checksum == file_sha256(root / e.path)

    expected = sd.SongDescriberSource().expected_files(root)
    assert sorted(ef.id for ef in expected) == ["song-describer-1319", "song-describer-226", "song-describer-42"]
    assert all(check_file(ef) == (None, "") for ef in expected)
    (root / "audio/42/42.2min.mp3").write_bytes(b"tampered")
    assert {ef.id: check_file(ef)[0] for ef in expected}["song-describer-42"] == "corrupt"
    (root / "audio/42/42.2min.mp3").write_bytes(_mp3(2.0))  # valid audio, but not the downloaded bytes
    assert {ef.id: check_file(ef)[0] for ef in expected}["song-describer-42"] == "checksum_mismatch"

    recs = {r.id: r for r in sd.SongDescriberSource().records(root)}
    r = recs["song-describer-226"]
    assert r.group == "jamendo:226"   # the same key MTG-Jamendo and JamendoMaxCaps give this track
    assert r.caption == "Slow solo piano with a melancholic mood."   # caption_id 3 comes before 12
    assert r.alt_captions == ["A calm piano piece, played slowly."]
    assert r.duration == pytest.approx(3.0, abs=0.1)                   # the excerpt, not the CSV's 195 s
    assert (r.split, r.license, r.artist, r.dataset) == ("test", "CC-BY-SA-4.0", "artist_000517", "song-describer")
    assert r.extra["is_valid_subset"] == [False, True] and r.extra["original_duration"] == 195.0
    assert recs["song-describer-1319"].extra["is_valid_subset"] == [None]  # empty flag tolerated
    assert "song-describer-999" not in recs


def test_max_items_extracts_only_needed_and_drops_zip(www: Path, tmp_path: Path) -> None:
    root = tmp_path / "sdd"
    with serve(www) as srv:
        cfg = DownloadConfig(source="song-describer", mirror=srv.url, max_items=2)
        sd.SongDescriberSource().download(cfg, root, Ledger(root), NullProgress())
    assert sorted(Ledger(root).entries) == ["song-describer-226", "song-describer-42"]  # the 2 lowest track ids
    assert not (root / "audio/19").exists()
    assert not (root / "audio.zip").exists()  # every selected track verified: the archive goes


def test_interrupted_extraction_resumes(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd, "EXTRACT_BATCH", 1)
    root = tmp_path / "sdd"
    with serve(www, truncate_first={"/audio.zip": 500}) as srv:
        cfg = DownloadConfig(source="song-describer", mirror=srv.url, max_items=2, keep_archives=True)
        with pytest.raises(Interrupted):
            sd.SongDescriberSource().download(cfg, root, Ledger(root), _StopAfter())
        assert Ledger(root).counts()["ok"] == 1
        sd.SongDescriberSource().download(cfg, root, Ledger(root), NullProgress())
        zip_requests = srv.requests_for("/audio.zip")
    assert [h.get("Range") for h in zip_requests] == [None, "bytes=500-"]  # cut transfer resumed, then reused
    assert Ledger(root).counts() == {"ok": 2, "failed": 0, "pending": 0}
    fresh = tmp_path / "fresh"
    with serve(www) as srv:
        cfg = DownloadConfig(source="song-describer", mirror=srv.url, max_items=2)
        sd.SongDescriberSource().download(cfg, fresh, Ledger(fresh), NullProgress())
    for rel in ("audio/26/226.2min.mp3", "audio/42/42.2min.mp3"):
        assert (root / rel).read_bytes() == (fresh / rel).read_bytes()
    assert (root / "audio.zip").exists() and not (fresh / "audio.zip").exists()


def test_cli_download_song_describer(www: Path, state_dir: Path) -> None:
    from httpserver import mtx_runner

    mtx = mtx_runner(state_dir)
    with serve(www) as srv:
        result = mtx("download", "song-describer", "--mirror", srv.url)
    # One track of the CSV is not in the zip: recorded as failed and listed; the others are on disk, so the
    # download is complete with failures (exit 0) and later stages use it.
    assert result.exit_code == 0, result.output
    assert "song-describer-999" in result.output and "--retry-failed" in result.output
    root = state_dir / "datasets" / "song-describer"
    assert Ledger(root).counts() == {"ok": 3, "failed": 1, "pending": 0}
    assert len(sd.SongDescriberSource().records(root)) == 3
