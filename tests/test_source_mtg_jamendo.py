"""MTG-Jamendo: tiny tars, sha256 lists, CRLF tag TSVs and split files in the published layout over 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from httpserver import serve
from jamendo_fixtures import write_mtg_mirror
from sine_audio import mp3
from musiccli.progress import NullProgress
from musiccli.sources import mtg_jamendo as mj
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.verify import check_file

# Track id -> (seconds, tags). Tars: NN = id % 100 -> 00, 09, 46.
TRACKS = {
    3346: (3.0, ["mood/theme---calm", "instrument---piano"]),
    2046: (2.0, ["genre---rock", "instrument---guitar", "instrument---drums", "mood/theme---energetic"]),
    1009: (2.5, ["genre---electronic"]),
    7400: (2.0, ["genre---jazz", "instrument---saxophone"]),
}
NOT_IN_TAR = 5546  # listed in the TSV, missing from tar 46


def build_www(www: Path, corrupt_track: int | None = None, member_prefix: str = "") -> dict[int, bytes]:
    audio = {tid: mp3(sec, 200.0 + 40 * i) for i, (tid, (sec, _)) in enumerate(TRACKS.items())}
    rows = {tid: [f"track_{tid:07d}", f"artist_{tid:06d}", f"album_{tid:06d}", f"{tid % 100:02d}/{tid}.mp3",
                  f"{sec}", *tags] for tid, (sec, tags) in TRACKS.items()}
    rows[NOT_IN_TAR] = [f"track_{NOT_IN_TAR:07d}", "artist_1", "album_1", "46/5546.mp3", "2.0", "genre---pop"]
    meta = ['track_0003346\tartist_003346\talbum_003346\t"Quiet Night\tAnna "A" Berg\tNocturnes\t2010-01-01\t'
            "https://www.jamendo.com/track/3346",
            "track_0002046\tartist_002046\talbum_002046\tLoud Day\tThe Rockers\tDay\t2011-02-02\t"]
    splits = {"train": [3346, 1009], "validation": [2046], "test": [7400]}
    write_mtg_mirror(www, rows, meta, splits, audio, corrupt_track=corrupt_track, member_prefix=member_prefix)
    return audio


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mtg-www")
    build_www(root)
    return root


def _download(www: Path, root: Path, monkeypatch: pytest.MonkeyPatch, server: dict | None = None, **kw):
    with serve(www, **(server or {})) as srv:
        monkeypatch.setenv(mj.ENV_META_URL, srv.url)
        cfg = DownloadConfig(source="mtg-jamendo", mirror=srv.url, **kw)
        mj.MtgJamendoSource().download(cfg, root, Ledger(root), NullProgress())
        return Ledger(root), srv.requests


def test_download_verify_records(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "mtg"
    tar46 = "/raw_30s/audio-low/raw_30s_audio-low-46.tar"
    ledger, reqs = _download(www, root, monkeypatch, server={"truncate_first": {tar46: 3000}})
    cut = [h for p, h in reqs if p == tar46]
    assert len(cut) == 2 and cut[1]["Range"] == "bytes=3000-"  # the interrupted tar resumed
    ok = {e.id for e in ledger.entries.values() if e.status == "ok"}
    assert {f"mtg-jamendo-{t}" for t in TRACKS} <= ok
    assert {"tar/raw_30s_audio-low-00.tar", "tar/raw_30s_audio-low-09.tar", "tar/raw_30s_audio-low-46.tar"} <= ok
    assert ledger.entries[f"mtg-jamendo-{NOT_IN_TAR}"].status == "failed"
    # Removed after a clean extraction; tar 46 is kept because one of its tracks failed.
    assert [p.name for p in root.rglob("*.tar")] == ["raw_30s_audio-low-46.tar"]
    assert (root / "raw_30s/audio-low/46/3346.low.mp3").is_file()

    efs = {e.id: e for e in mj.MtgJamendoSource().expected_files(root)}
    assert {i: check_file(e)[0] for i, e in efs.items()} == {f"mtg-jamendo-{t}": None for t in TRACKS}
    assert efs["mtg-jamendo-3346"].checksum[0] == "sha256"

    recs = {r.id: r for r in mj.MtgJamendoSource().records(root)}
    assert set(recs) == {f"mtg-jamendo-{t}" for t in TRACKS}
    r = recs["mtg-jamendo-3346"]
    assert r.caption == "A calm piece featuring piano"
    assert r.alt_captions and r.caption not in r.alt_captions
    assert (r.title, r.artist, r.split, r.duration) == ('"Quiet Night', 'Anna "A" Berg', "train", 3.0)
    assert r.tags == ["mood/theme---calm", "instrument---piano"] and r.license == "CC (per track)"
    assert Path(r.audio_path).is_absolute()
    assert recs["mtg-jamendo-2046"].split == "val" and recs["mtg-jamendo-7400"].split == "test"
    assert r.group == "jamendo:3346"
    assert recs["mtg-jamendo-1009"].artist == "artist_001009"  # no raw.meta row: falls back to the id
    assert "guitar" in recs["mtg-jamendo-2046"].caption


def test_tsv_extra_tag_columns_and_crlf(www: Path) -> None:
    tracks = mj.read_tags_tsv(www / "data/raw_30s_cleantags_50artists.tsv")
    assert tracks[2046].tags == ("genre---rock", "instrument---guitar", "instrument---drums",
                                 "mood/theme---energetic")
    assert tracks[3346].duration == 3.0 and tracks[3346].path == "46/3346.mp3"
    meta = mj.read_meta(www / "data/raw.meta.tsv")
    assert meta[3346]["ALBUM_NAME"] == "Nocturnes"  # the stray quote did not swallow the tab


def test_rerun_skips_and_max_limits(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "a"
    ledger, _ = _download(www, root, monkeypatch, max_shards=1, keep_archives=True)
    assert sorted(e.id for e in ledger.entries.values()) == ["mtg-jamendo-7400", "tar/raw_30s_audio-low-00.tar"]
    # The tar on disk is re-hashed, not trusted; the track is ok, so nothing is fetched again.
    ledger, reqs = _download(www, root, monkeypatch, max_shards=1, keep_archives=True)
    assert not [p for p, _ in reqs if p.endswith(".tar")]
    ledger, _ = _download(www, tmp_path / "b", monkeypatch, max_items=2)
    assert sorted(e.id for e in ledger.entries.values() if not e.id.startswith("tar/")) == \
        ["mtg-jamendo-1009", "mtg-jamendo-7400"]


def test_tar_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    build_www(www)
    lst = www / "data/download/raw_30s_audio-low_sha256_tars.txt"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join(["f" * 64 + " " + lines[0].split(" ", 1)[1], *lines[1:]]) + "\n")
    ledger, reqs = _download(www, tmp_path / "mtg", monkeypatch)
    assert ledger.entries["tar/raw_30s_audio-low-00.tar"].status == "failed"
    assert ledger.entries["tar/raw_30s_audio-low-00.tar"].reason == "checksum mismatch"
    assert len([p for p, _ in reqs if p.endswith("-00.tar")]) == 2  # downloaded once more, then refused
    assert "mtg-jamendo-7400" not in ledger.entries
    assert ledger.is_ok("mtg-jamendo-1009")  # the other tars went on


def test_track_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    build_www(www, corrupt_track=1009)
    ledger, _ = _download(www, tmp_path / "mtg", monkeypatch)
    assert "sha256 mismatch" in ledger.entries["mtg-jamendo-1009"].reason
    assert not (tmp_path / "mtg/raw_30s/audio-low/09/1009.low.mp3").exists()
    assert (tmp_path / "mtg/raw_30s/audio-low/raw_30s_audio-low-09.tar").exists()  # kept for a retry


def test_tar_members_with_dot_slash_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `tar -cf x.tar ./00/...` stores "./00/7400.low.mp3": the same track, not a failed extraction.
    www = tmp_path / "www"
    build_www(www, member_prefix="./")
    ledger, _ = _download(www, tmp_path / "mtg", monkeypatch)
    assert ledger.is_ok("mtg-jamendo-7400")
    assert ledger.entries["mtg-jamendo-7400"].path == "raw_30s/audio-low/00/7400.low.mp3"
    assert ledger.counts()["failed"] == 1  # only the track that is not in its tar


def test_cli_download_verify_unify(www: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from httpserver import mtx_runner

    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    mtx = mtx_runner(state_dir)
    with serve(www) as srv:
        monkeypatch.setenv(mj.ENV_META_URL, srv.url)
        result = mtx("download", "mtg-jamendo", "--mirror", srv.url, "--max-shards", "2")
    assert result.exit_code == 0, result.output
    verified = mtx("verify", "mtg-jamendo")
    assert verified.exit_code == 0, verified.output
    unified = mtx("unify", "--datasets", "mtg-jamendo", "--name", "mtg", "--keep-official-splits")
    assert unified.exit_code == 0, unified.output
    state = StateDir.resolve(state_dir)
    recs = read_manifest(state.manifest_path("mtg"))
    assert sorted(r.id for r in recs) == ["mtg-jamendo-1009", "mtg-jamendo-7400"]
