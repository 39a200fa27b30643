"""JamendoMaxCaps: Parquet shards with an audio struct, segment captions, dated metadata dumps and a
Hub tree listing, all served over 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from httpserver import serve
from sine_audio import mp3
from musiccli.progress import NullProgress
from musiccli.sources import jamendo_maxcaps as jm
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.verify import check_file

SHARDS = {"data/train-00000-of-00002.parquet": ["101", "202", "303"], "data/train-00001-of-00002.parquet": ["404"]}


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def build_www(www: Path) -> dict[str, bytes]:
    (www / "data").mkdir(parents=True, exist_ok=True)
    (www / "api").mkdir(exist_ok=True)
    audio = {}
    for name, ids in SHARDS.items():
        for i, tid in enumerate(ids):
            audio[tid] = mp3(2.0 + i * 0.5, 200 + 50 * int(tid[0]))
        table = pa.table({"audio": [{"bytes": audio[t], "path": f"{t}.mp3"} for t in ids]})
        pq.write_table(table, www / name, row_group_size=2)
    (www / jm.CAPTIONS).write_text(_jsonl([
        {"id": "101", "caption": "Second segment: strings swell.", "start_time": 30, "end_time": 60},
        {"id": 101, "caption": "First segment: soft piano opening.", "start_time": 0, "end_time": 30},
        {"id": "202", "caption": "An energetic rock instrumental."},   # times missing
        {"id": "404", "caption": "Ambient pads."},
    ]) + "not json\n")
    (www / "2024-01-15.jsonl").write_text(_jsonl([
        {"id": "101", "name": "Opening", "artist_name": "Anna", "duration": 2,
         "license_ccurl": "http://creativecommons.org/licenses/by-nc-sa/3.0/",
         "musicinfo": {"tags": {"genres": ["classical"], "instruments": ["piano", "strings"], "vartags": ["calm"]}}},
    ]))
    (www / "2024-02-01.jsonl").write_text(_jsonl([
        {"id": 101, "name": "Duplicate", "artist_name": "Someone else", "duration": 99},  # dedup: first wins
        {"id": 202, "name": "Rocker", "artist_name": "Bob", "duration": 2.5,
         "musicinfo": {"tags": {"genres": ["rock"], "vartags": [], "instruments": []}}},
    ]))

    def item(path: str, lfs: bool = True) -> dict:
        data = (www / path).read_bytes()
        d = {"type": "file", "oid": "x", "size": len(data), "path": path}
        if lfs:
            d["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
        return d

    (www / ".gitattributes").write_text("*.parquet filter=lfs\n")
    (www / "README.md").write_text("card\n")
    top = [{"type": "directory", "oid": "y", "size": 0, "path": "data"}, item(".gitattributes", False),
           item("README.md", False), item(jm.CAPTIONS), item("2024-01-15.jsonl"), item("2024-02-01.jsonl")]
    (www / "api/tree.json").write_text(json.dumps(top))
    (www / "api/tree_data.json").write_text(json.dumps([item(n) for n in SHARDS]))
    return audio


def _routes(path: str, query: dict) -> str | None:
    return {"/api/tree": "api/tree.json", "/api/tree/data": "api/tree_data.json"}.get(path, path.lstrip("/"))


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jmc-www")
    build_www(root)
    return root


def _download(www: Path, root: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> tuple[Ledger, list]:
    with serve(www, routes=_routes, **kw.pop("server", {})) as srv:
        monkeypatch.setenv(jm.ENV_API, srv.url + "/api/tree")
        cfg = DownloadConfig(source="jamendo-maxcaps", mirror=srv.url, **kw)
        jm.JamendoMaxCapsSource().download(cfg, root, Ledger(root), NullProgress())
        return Ledger(root), srv.requests


def test_download_verify_records(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    root = tmp_path / "jmc"
    shard0 = "/data/train-00000-of-00002.parquet"
    ledger, reqs = _download(www, root, monkeypatch, server={"truncate_first": {shard0: 1000}})
    assert [h.get("Range") for p, h in reqs if p == shard0] == [None, "bytes=1000-"]
    # Discovery through the tree listing found both dated metadata files.
    assert (root / "2024-01-15.jsonl").is_file() and (root / "2024-02-01.jsonl").is_file()
    assert all("Authorization" not in h for _, h in reqs)  # the token only ever goes to the Hub
    assert ledger.counts() == {"ok": 6, "failed": 0, "pending": 0}
    assert not list(root.glob("data/*.parquet"))
    assert (root / "audio/01/101.mp3").is_file() and (root / "audio/04/404.mp3").is_file()

    efs = {e.id: e for e in jm.JamendoMaxCapsSource().expected_files(root)}
    assert set(efs) == {f"jamendo-maxcaps-{t}" for t in ("101", "202", "303", "404")}
    assert {i: check_file(e)[0] for i, e in efs.items()} == {i: None for i in efs}
    assert efs["jamendo-maxcaps-101"].duration == 2.0

    recs = {r.id: r for r in jm.JamendoMaxCapsSource().records(root)}
    assert set(recs) == {"jamendo-maxcaps-101", "jamendo-maxcaps-202", "jamendo-maxcaps-404"}  # 303: no caption
    r = recs["jamendo-maxcaps-101"]
    assert r.caption == "First segment: soft piano opening."
    # The other segment captions first; captions synthesised from the metadata tags after them.
    assert r.alt_captions[0] == "Second segment: strings swell."
    assert "A calm classical track featuring piano and strings" in r.alt_captions[1:]
    assert (r.title, r.artist, r.duration) == ("Opening", "Anna", 2.0)
    assert r.tags == ["classical", "piano", "strings", "calm"]
    assert r.license.endswith("by-nc-sa/3.0/") and r.extra["segments"] == [[0.0, 30.0], [30.0, 60.0]]
    assert recs["jamendo-maxcaps-202"].license == "cc-by-sa-3.0" and recs["jamendo-maxcaps-202"].tags == ["rock"]
    assert abs(recs["jamendo-maxcaps-404"].duration - 2.0) < 0.1  # no metadata: read from the header


def test_max_items_resume_and_shards(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "jmc"
    ledger, _ = _download(www, root, monkeypatch, max_items=2, keep_archives=True)
    assert sorted(e.id for e in ledger.entries.values()) == ["jamendo-maxcaps-101", "jamendo-maxcaps-202"]
    ledger, _ = _download(www, root, monkeypatch, max_items=3)
    assert "jamendo-maxcaps-303" in ledger.entries and "jamendo-maxcaps-404" not in ledger.entries
    assert ledger.is_ok("shard/train-00000-of-00002.parquet")
    ledger, reqs = _download(www, root, monkeypatch, max_shards=1)
    assert not [p for p, _ in reqs if p.endswith(".parquet")]  # the shard is done
    ledger, _ = _download(www, tmp_path / "b", monkeypatch, max_shards=1)
    assert "jamendo-maxcaps-404" not in ledger.entries and ledger.is_ok("jamendo-maxcaps-303")


def test_metadata_names_without_listing(www: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jm.ENV_METADATA, "2024-02-01.jsonl")
    with serve(www, routes=lambda p, q: None if p.startswith("/api/") else p.lstrip("/")) as srv:
        monkeypatch.setenv(jm.ENV_API, srv.url + "/api/tree")
        cfg = DownloadConfig(source="jamendo-maxcaps", mirror=srv.url, max_shards=1)
        jm.JamendoMaxCapsSource().download(cfg, tmp_path / "j", Ledger(tmp_path / "j"), NullProgress())
    assert (tmp_path / "j/2024-02-01.jsonl").is_file() and not (tmp_path / "j/2024-01-15.jsonl").exists()
    # Without a listing the shard names are the published ones (train-00000-of-01256 ...), absent here.
    assert Ledger(tmp_path / "j").entries["shard/train-00000-of-01256.parquet"].reason == "HTTP 404"
    assert jm.is_metadata_name("2024-01-15.jsonl") and not jm.is_metadata_name(jm.CAPTIONS)


def test_corrupt_shard_is_recorded_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    build_www(www)
    bad = "data/train-00000-of-00002.parquet"
    (www / bad).write_bytes(b"not a parquet file")
    # No LFS hashes (and a path outside data/ that must be ignored): the bad shard is not caught by fetch.
    listing = [{"type": "file", "path": n} for n in SHARDS]
    listing.append({"type": "file", "path": "../train-00009-of-00002.parquet"})
    (www / "api/tree_data.json").write_text(json.dumps(listing))
    ledger, reqs = _download(www, tmp_path / "jmc", monkeypatch)
    assert ledger.entries["shard/train-00000-of-00002.parquet"].status == "failed"
    assert "cannot read" in ledger.entries["shard/train-00000-of-00002.parquet"].reason
    assert ledger.is_ok("shard/train-00001-of-00002.parquet") and ledger.is_ok("jamendo-maxcaps-404")
    assert not (tmp_path / "jmc" / bad).exists()  # unverified and unreadable: fetched again on --continue
    assert not [p for p, _ in reqs if "00009" in p]


def test_cli_download_unify(www: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from httpserver import mtx_runner

    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    mtx = mtx_runner(state_dir)
    with serve(www, routes=_routes) as srv:
        monkeypatch.setenv(jm.ENV_API, srv.url + "/api/tree")
        result = mtx("download", "jamendo-maxcaps", "--mirror", srv.url, "--max-shards", "1")
    assert result.exit_code == 0, result.output
    assert mtx("verify", "jamendo-maxcaps").exit_code == 0
    assert mtx("unify", "--datasets", "jamendo-maxcaps", "--name", "jmc").exit_code == 0
    assert len(read_manifest(StateDir.resolve(state_dir).manifest_path("jmc"))) == 2
