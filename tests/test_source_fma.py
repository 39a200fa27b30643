"""FMA: tiny archives in the published layout (bzip2 zips, 3-line-header tracks.csv, checksums) over 127.0.0.1."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from httpserver import serve
from sine_audio import mp3
from musiccli.progress import NullProgress
from musiccli.sources import fma
from musiccli.sources._http import DownloadError
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.verify import check_file

GOOD = (2, 5, 10)
# Known bad files of the real archive: a short clip, a clip cut mid-stream, an empty file.
SHORT, TRUNCATED, EMPTY, MEDIUM_ONLY = 98565, 98567, 99134, 140

TRACKS_CSV = """\
,album,album,artist,artist,set,set,track,track,track,track,track,track,track
,id,title,id,name,split,subset,duration,genre_top,genres,genres_all,license,tags,title
track_id,,,,,,,,,,,,,
2,1,AWOL - A Way Of Life,1,AWOL,training,small,168,Hip-Hop,[21],[21],Attribution-NonCommercial-ShareAlike 3.0 International,[],Food
5,1,AWOL - A Way Of Life,1,AWOL,validation,small,206,Hip-Hop,[21],[21],Attribution-NonCommercial-ShareAlike 3.0 International,"['rap', 'dark']",This World
10,6,Constant Hitmaker,6,Kurt Vile,test,small,161,Electronic,[15],"[15, 236]",Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International,"['synthesizer', 'upbeat']",Freeway
140,60,Look Through,54,Alec K. Redfearn,training,medium,253,,"[17, 21]","[17, 21]",Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International,[],Queen Of The Wires
98565,1,Bad Album,900,Broken Artist,training,small,240,Electronic,[15],[15],Attribution 4.0 International,[],Short
98567,1,Bad Album,900,Broken Artist,training,small,240,Electronic,[15],[15],Attribution 4.0 International,[],Truncated
99134,1,Bad Album,900,Broken Artist,test,small,180,Electronic,[15],[15],,malformed[,Empty
"""
GENRES_CSV = """\
genre_id,#tracks,parent,title,top_level
15,34413,0,Electronic,15
17,12706,0,Folk,17
21,8389,0,Hip-Hop,21
236,1391,15,Ambient Electronic,15
"""


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def build_fma(www: Path, corrupt_checksum_for: int | None = None) -> dict[str, bytes]:
    """fma_metadata.zip + fma_small.zip under ``www``; returns the audio bytes by relative path."""
    www.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(www / "fma_metadata.zip", "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("fma_metadata/tracks.csv", TRACKS_CSV)
        zf.writestr("fma_metadata/genres.csv", GENRES_CSV)
        zf.writestr("fma_metadata/README.txt", "fixture")
    audio = {f"000/{tid:06d}.mp3": mp3(30.0, 220.0 * (i + 1)) for i, tid in enumerate(GOOD)}
    audio[f"098/{SHORT:06d}.mp3"] = mp3(1.5, 330.0)
    audio[f"098/{TRUNCATED:06d}.mp3"] = mp3(30.0, 330.0)[:3000]
    audio[f"099/{EMPTY:06d}.mp3"] = b""
    sums = "".join(f"{'0' * 40 if corrupt_checksum_for and rel.endswith(f'{corrupt_checksum_for:06d}.mp3') else _sha1(d)}"
                   f"  {rel}\n" for rel, d in audio.items())
    with zipfile.ZipFile(www / "fma_small.zip", "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("fma_small/README.txt", "fixture")
        zf.writestr("fma_small/checksums", sums)
        for rel, data in audio.items():
            zf.writestr(f"fma_small/{rel}", data)
    return audio


@pytest.fixture(scope="module")
def fixture_www(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    www = tmp_path_factory.mktemp("fma-www")
    return www, build_fma(www)


@pytest.fixture()
def published(fixture_www, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the declared checksum table at the fixture archives (the real ones are 7 GB)."""
    www, _ = fixture_www
    for name in ("fma_metadata.zip", "fma_small.zip"):
        monkeypatch.setitem(fma.INFO.checksums, name, _sha1((www / name).read_bytes()))
    return www


def _download(www: Path, root: Path, **kw) -> tuple[Ledger, list]:
    with serve(www, **kw.pop("server", {})) as srv:
        cfg = DownloadConfig(source="fma", mirror=srv.url, size="small", **kw)
        ledger = Ledger(root)
        fma.FmaSource().download(cfg, root, ledger, NullProgress())
        return Ledger(root), srv.requests


def test_download_verify_records(published: Path, tmp_path: Path) -> None:
    root = tmp_path / "fma"
    ledger, reqs = _download(published, root, server={"truncate_first": {"/fma_small.zip": 4000}})
    # The cut transfer was resumed with a Range request.
    small = [h for p, h in reqs if p == "/fma_small.zip"]
    assert len(small) == 2 and small[1]["Range"] == "bytes=4000-"
    ids = {f"fma-{t}" for t in (*GOOD, SHORT, TRUNCATED, EMPTY)}
    assert {e.id for e in ledger.entries.values() if e.status == "ok"} == ids  # medium-only track 140 not selected
    assert not (root / "fma_small.zip").exists() and not (root / "fma_metadata.zip").exists()
    assert (root / "fma_metadata/tracks.csv").is_file() and (root / "fma_small/checksums").is_file()

    problems = {ef.id: check_file(ef)[0] for ef in fma.FmaSource().expected_files(root)}
    assert problems.pop(f"fma-{TRUNCATED}") in ("corrupt", "wrong_duration")  # a cut MP3
    assert problems == {"fma-2": None, "fma-5": None, "fma-10": None,
                        f"fma-{SHORT}": "wrong_duration", f"fma-{EMPTY}": "corrupt"}
    ef = {e.id: e for e in fma.FmaSource().expected_files(root)}["fma-10"]
    assert ef.checksum == ("sha1", _sha1((root / "fma_small/000/000010.mp3").read_bytes()))
    assert ef.duration == 30.0 and ef.duration_tolerance == 1.5

    recs = {r.id: r for r in fma.FmaSource().records(root)}
    assert set(recs) == ids
    r = recs["fma-10"]
    assert r.caption == "An upbeat Electronic track featuring synthesizer"
    assert r.alt_captions and all(c != r.caption for c in r.alt_captions)
    assert (r.artist, r.title, r.split, r.duration) == ("Kurt Vile", "Freeway", "test", 30.0)
    assert r.tags == ["Electronic", "Ambient Electronic", "synthesizer", "upbeat"]
    assert r.license.startswith("Attribution-NonCommercial-NoDerivatives")
    assert Path(r.audio_path).is_absolute() and Path(r.audio_path).is_file()
    assert recs["fma-2"].split == "train" and recs["fma-5"].split == "val"
    assert "rap" in recs["fma-5"].tags
    assert recs[f"fma-{EMPTY}"].license is None  # malformed tag list tolerated, empty licence -> None


def test_max_items_and_split_subset(published: Path, tmp_path: Path) -> None:
    ledger, _ = _download(published, tmp_path / "a", max_items=2)
    assert sorted(e.id for e in ledger.entries.values()) == ["fma-2", "fma-5"]
    assert not (tmp_path / "a/fma_small/099").exists()
    ledger, _ = _download(published, tmp_path / "b", subset="test")
    assert sorted(e.id for e in ledger.entries.values()) == ["fma-10", f"fma-{EMPTY}"]


def test_rerun_skips_ok_tracks(published: Path, tmp_path: Path) -> None:
    root = tmp_path / "fma"
    _download(published, root, keep_archives=True)
    assert (root / "fma_small.zip").exists()
    ledger, reqs = _download(published, root, keep_archives=True)
    assert reqs == []  # metadata present, every track ok: nothing fetched again
    assert ledger.counts()["ok"] == 6


def test_archive_checksum_mismatch(published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fma.INFO.checksums, "fma_small.zip", "1" * 40)
    with serve(published) as srv:
        cfg = DownloadConfig(source="fma", mirror=srv.url, size="small")
        with pytest.raises(DownloadError) as e:
            fma.FmaSource().download(cfg, tmp_path / "fma", Ledger(tmp_path / "fma"), NullProgress())
        assert len(srv.requests_for("/fma_small.zip")) == 2  # deleted, downloaded once more, then refused
    assert e.value.reason == "checksum mismatch"
    assert not (tmp_path / "fma/fma_small.zip").exists()
    assert not list((tmp_path / "fma").glob("fma_small/**/*.mp3"))


def test_track_checksum_mismatch_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    build_fma(www, corrupt_checksum_for=5)
    for name in ("fma_metadata.zip", "fma_small.zip"):
        monkeypatch.setitem(fma.INFO.checksums, name, _sha1((www / name).read_bytes()))
    ledger, _ = _download(www, tmp_path / "fma")
    assert ledger.entries["fma-5"].status == "failed" and "sha1 mismatch" in ledger.entries["fma-5"].reason
    assert ledger.counts() == {"ok": 5, "failed": 1, "pending": 0}
    assert (tmp_path / "fma/fma_small.zip").exists()  # kept: the failed track may be retried from it


def test_cut_mp3_is_flagged_by_verify(published: Path, tmp_path: Path) -> None:
    root = tmp_path / "fma"
    _download(published, root, subset="train")
    ef = {e.id: e for e in fma.FmaSource().expected_files(root)}[f"fma-{TRUNCATED}"]
    assert check_file(ef)[0] in ("corrupt", "wrong_duration")


def test_read_tracks_multilevel_header(tmp_path: Path) -> None:
    (tmp_path / "tracks.csv").write_text(TRACKS_CSV)
    tracks = {t.id: t for t in fma.read_tracks(tmp_path / "tracks.csv")}
    assert tracks[10].genres_all == (15, 236) and tracks[10].tags == ("synthesizer", "upbeat")
    assert tracks[140].genre_top is None and tracks[EMPTY].tags == ()
    assert fma.parse_checksums("a" * 40 + "  000/000002.mp3\nbad line\n") == {"000/000002.mp3": "a" * 40}


def test_cli_download_fma(published: Path, state_dir: Path) -> None:
    from httpserver import mtx_runner

    mtx = mtx_runner(state_dir)
    with serve(published) as srv:
        result = mtx("download", "fma", "--mirror", srv.url, "--size", "small", "--max-items", "3")
        assert result.exit_code == 0, result.output
        again = mtx("download", "fma", "--mirror", srv.url, "--size", "small", "--max-items", "3")
    assert again.exit_code == 0
    root = state_dir / "datasets" / "fma"
    assert Ledger(root).counts() == {"ok": 3, "failed": 0, "pending": 0}
    assert [r.id for r in fma.FmaSource().records(root)] == ["fma-2", "fma-5", "fma-10"]
