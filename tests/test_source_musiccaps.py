"""MusicCaps through the real yt-dlp, against "videos" served as WAV files on 127.0.0.1."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from httpserver import serve
from musiccli.progress import NullProgress
from musiccli.sources import musiccaps as mc
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.verify import check_file

SR = 8000
COLUMNS = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
           "is_balanced_subset", "is_audioset_eval"]
ROWS = [
    ["-0Gj8-vB1q4", 2, 12, "/m/0140xf,/m/02cjck,/m/04rlf", "['low quality', 'sustained strings melody', 'soft']",
     "The low quality recording features a ballad song with sustained strings.", 4, "False", "True"],
    ["-0SdAVK79lg", 0, 10, "/m/0155w,/m/01lyv", "['guitar song', 'piano backing', 'simple percussion']",
     "This song features an electric guitar as the main instrument.", 0, "True", "False"],
    ["-0vPFx-wRRI", 5, 15, "/m/025_jnm", "['amateur recording', malformed",
     "A male vocalist sings over an acoustic guitar.", 6, "False", "True"],
    ["gone0000000", 0, 10, "/m/04rlf", "['rock']", "This video is no longer available.", 1, "True", "False"],
]
AVAILABLE = [r[0] for r in ROWS[:3]]


def _wave(i: int) -> np.ndarray:
    t = np.arange(SR * 16) / SR
    return (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) * (t / 16)).astype(np.float32)


@pytest.fixture()
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "videos").mkdir(parents=True)
    with open(root / "musiccaps-public.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(ROWS)
    for i, ytid in enumerate(AVAILABLE):
        sf.write(root / "videos" / f"{ytid}.wav", _wave(i), SR, subtype="PCM_16")
    return root


def _routes(www: Path):
    def route(path: str, query: dict[str, list[str]]) -> str | None:
        if path == "/watch":  # /watch?v=<ytid> -> videos/<ytid>.wav, 404 when the "video" is gone
            ytid = (query.get("v") or [""])[0]
            return f"videos/{ytid}.wav" if (www / "videos" / f"{ytid}.wav").is_file() else None
        return path.lstrip("/")
    return route


def _download(www: Path, root: Path, monkeypatch: pytest.MonkeyPatch, **kw):
    with serve(www, routes=_routes(www)) as srv:
        monkeypatch.setenv(mc.ENV_VIDEO_URL, srv.url + "/watch?v={ytid}")
        cfg = DownloadConfig(source="musiccaps", mirror=srv.url, workers=2, **kw)
        mc.MusicCapsSource().download(cfg, root, Ledger(root), NullProgress())
        return Ledger(root), list(srv.requests)


@pytest.mark.slow
def test_download_with_unavailable_video(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mc.shutil, "which", lambda name: None)  # the no-ffmpeg path, wherever the test runs
    root = tmp_path / "musiccaps"
    ledger, _ = _download(www, root, monkeypatch)
    assert ledger.counts() == {"ok": 3, "failed": 1, "pending": 0}
    reason = ledger.entries["musiccaps-gone0000000"].reason
    assert "404" in reason and not reason.startswith("ERROR")
    assert not list(root.glob(".tmp-*/**/*.*"))

    for i, ytid in enumerate(AVAILABLE):
        data, sr = sf.read(root / "audio" / f"{ytid}.flac", dtype="float32")
        start, end = ROWS[i][1], ROWS[i][2]
        assert sr == SR and len(data) == (end - start) * SR
        np.testing.assert_allclose(data, _wave(i)[start * SR:end * SR], atol=1e-4)  # the right 10 s, cut locally

    expected = mc.MusicCapsSource().expected_files(root)
    assert sorted(ef.id for ef in expected) == sorted(f"musiccaps-{y}" for y in AVAILABLE)
    assert all(ef.duration == 10 and ef.checksum is None and check_file(ef) == (None, "") for ef in expected)

    recs = {r.id: r for r in mc.MusicCapsSource().records(root)}
    assert set(recs) == {f"musiccaps-{y}" for y in AVAILABLE}
    r = recs["musiccaps--0Gj8-vB1q4"]
    assert r.caption.startswith("The low quality recording") and r.duration == 10.0
    assert r.tags == ["low quality", "sustained strings melody", "soft"]
    assert (r.split, r.license, r.dataset) == ("test", "CC-BY-SA-4.0", "musiccaps")
    assert r.extra["author_id"] == 4 and r.extra["audioset_labels"] == ["/m/0140xf", "/m/02cjck", "/m/04rlf"]
    assert recs["musiccaps--0SdAVK79lg"].split == "train"
    assert recs["musiccaps--0SdAVK79lg"].group == "youtube:-0SdAVK79lg"   # MusicBench's copies share it
    assert recs["musiccaps--0vPFx-wRRI"].tags == ["amateur recording", "malformed"]  # malformed literal tolerated


@pytest.mark.slow
def test_continue_retries_only_failed(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mc.shutil, "which", lambda name: None)
    root = tmp_path / "musiccaps"
    _download(www, root, monkeypatch)
    first = (root / "audio" / f"{AVAILABLE[0]}.flac").read_bytes()
    sf.write(www / "videos" / "gone0000000.wav", _wave(5), SR, subtype="PCM_16")  # the video came back
    ledger, requests = _download(www, root, monkeypatch)
    watched = [p for p, _ in requests if p.startswith("/watch")]
    assert watched and all(p.endswith("v=gone0000000") for p in watched)
    assert ledger.counts() == {"ok": 4, "failed": 0, "pending": 0}
    assert (root / "audio" / f"{AVAILABLE[0]}.flac").read_bytes() == first


def test_subset_and_max_items(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mc.shutil, "which", lambda name: None)
    ledger, _ = _download(www, tmp_path / "a", monkeypatch, subset="eval", max_items=1, rate_limit=20.0)
    assert list(ledger.entries) == ["musiccaps--0Gj8-vB1q4"]
    clips = mc.select_clips(mc.read_clips(tmp_path / "a" / mc.CSV_NAME), "balanced", None)
    assert [c.ytid for c in clips] == ["-0SdAVK79lg", "gone0000000"]


def test_csv_url_from_env_and_hf_token(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mc.shutil, "which", lambda name: None)
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret")
    monkeypatch.delenv("MTX_HF_TOKEN_ALL_HOSTS", raising=False)
    root = tmp_path / "m"
    with serve(www, routes=_routes(www)) as srv:
        monkeypatch.setenv(mc.ENV_CSV_URL, f"{srv.url}/musiccaps-public.csv?download=true")
        monkeypatch.setenv(mc.ENV_VIDEO_URL, srv.url + "/watch?v={ytid}")
        cfg = DownloadConfig(source="musiccaps", max_items=1)
        mc.MusicCapsSource().download(cfg, root, Ledger(root), NullProgress())
        csv_req = srv.requests_for("/musiccaps-public.csv")
    assert len(csv_req) == 1 and "Authorization" not in csv_req[0]  # the token goes to huggingface.co only
    assert Ledger(root).counts()["ok"] == 1


@pytest.mark.slow
def test_cli_download_musiccaps(www: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from httpserver import mtx_runner

    monkeypatch.setattr(mc.shutil, "which", lambda name: None)
    mtx = mtx_runner(state_dir)
    with serve(www, routes=_routes(www)) as srv:
        monkeypatch.setenv(mc.ENV_VIDEO_URL, srv.url + "/watch?v={ytid}")
        result = mtx("download", "musiccaps", "--mirror", srv.url, "--workers", "2")
        # The unavailable video is listed; nothing is pending, so the dataset is usable: exit 0.
        assert result.exit_code == 0 and "gone0000000" in result.output, result.output
        assert "later stages use musiccaps without them" in result.output
        # unify picks the source up (it used to skip it as "incomplete") and says what is missing.
        unified = mtx("unify", "--name", "mc")
        assert unified.exit_code == 0, unified.output
        assert "musiccaps: 1 item(s) failed to download" in unified.output
        assert "wrote 3 records" in unified.output
        sf.write(www / "videos" / "gone0000000.wav", _wave(5), SR, subtype="PCM_16")
        result = mtx("download", "musiccaps", "--mirror", srv.url, "--workers", "2", "--continue")
    assert result.exit_code == 0, result.output
    root = state_dir / "datasets" / "musiccaps"
    assert Ledger(root).counts() == {"ok": 4, "failed": 0, "pending": 0}
    assert len(mc.MusicCapsSource().records(root)) == 4
