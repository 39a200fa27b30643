"""`mtx search`: ranking, index reuse and rebuild, M3U, JSON output and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musiccli.errors import MtxError
from musiccli.playlists import write_m3u
from musiccli.search import SearchConfig, rank_top_k, search


def test_rank_top_k_matches_full_sort() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((500, 8)).astype(np.float32)
    q = rng.standard_normal(8).astype(np.float32)
    rows, scores = rank_top_k(m, q, 7)
    full = np.argsort(-(m @ q))[:7]
    assert rows.tolist() == full.tolist()
    np.testing.assert_allclose(scores, (m @ q)[full])
    assert rank_top_k(m, q, 1000)[0].tolist() == np.argsort(-(m @ q)).tolist()


@pytest.mark.slow
def test_top_hit_index_reuse_and_rebuild(make_run, state) -> None:
    run = make_run()
    recs = run["records"]
    first = search(state, SearchConfig(query=recs[5].caption, k=5))
    assert first.run == "run1" and first.index == "run1--lib" and first.rebuilt
    assert first.hits[0]["id"] == recs[5].id and first.hits[0]["rank"] == 1
    assert first.hits[0]["title"] == "Title 5" and first.hits[0]["artist"] == "Artist 2"
    assert first.hits[0]["tags"] == recs[5].tags and first.hits[0]["audio_path"] == recs[5].audio_path
    assert [h["rank"] for h in first.hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(first.hits, first.hits[1:]))
    meta = json.loads((state.index_dir("run1--lib") / "meta.json").read_text())
    assert meta["count"] == 40 and meta["dim"] == 16 and meta["encoder"] == "fake"
    vecs = np.load(state.index_dir("run1--lib") / "vectors.npy")
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)

    # Reused while nothing changed; every track is found by its own caption.
    for i in (0, 17, 33):
        res = search(state, SearchConfig(query=recs[i].caption, k=3))
        assert not res.rebuilt and res.hits[0]["id"] == recs[i].id

    # New weights (more training) -> rebuilt automatically.
    run["model"].save_pretrained(state.run_dir("run1") / "best")
    assert search(state, SearchConfig(query="rock", k=1)).rebuilt
    assert not search(state, SearchConfig(query="rock", k=1)).rebuilt
    # A changed store -> rebuilt.
    from musiccli import store as store_mod

    store_mod.assemble(run["store"], 16, "float32", {"encoder": "fake", "dim": 16, "note": "re-embedded"}, 1)
    assert search(state, SearchConfig(query="rock", k=1)).rebuilt
    # Edited display metadata (the library manifest) -> rebuilt, and the new titles are shown.
    from musiccli.manifest import write_manifest

    recs[9].title = "Renamed"
    write_manifest(state.manifest_path("lib"), recs)
    res = search(state, SearchConfig(query=recs[9].caption, k=1))
    assert res.rebuilt and res.hits[0]["title"] == "Renamed"
    # --force (rebuild) forces it; --index picks an existing one (and its run).
    assert search(state, SearchConfig(query="rock", k=1, rebuild=True)).rebuilt
    res = search(state, SearchConfig(query=recs[9].caption, k=1, index="run1--lib"))
    assert res.index == "run1--lib" and not res.rebuilt and res.hits[0]["id"] == recs[9].id


def test_write_m3u(tmp_path) -> None:
    hits = [{"id": "a", "artist": "Art", "title": "Song", "audio_path": "/m/a.wav", "duration": 61.6},
            {"id": "b", "artist": None, "title": None, "audio_path": "/m/b.flac", "duration": None},
            {"id": "c", "artist": "X", "title": "Y", "audio_path": None, "duration": 3}]
    text = write_m3u(tmp_path / "p.m3u", hits).read_text()
    assert text == "#EXTM3U\n#EXTINF:62,Art - Song\n/m/a.wav\n#EXTINF:-1,b\n/m/b.flac\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_cli_json_m3u_and_errors(make_run, cli, state, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal, so table cells are not wrapped
    run = make_run()
    rec = run["records"][12]
    human = cli("search", rec.caption, "-k", "3", "--m3u", str(tmp_path / "out.m3u"))
    assert human.exit_code == 0, human.output
    assert "using run run1, index run1--lib" in human.output
    assert "Artist 6 - Title 12" in human.stdout and rec.audio_path in human.stdout
    m3u = (tmp_path / "out.m3u").read_text().splitlines()
    assert m3u[:3] == ["#EXTM3U", "#EXTINF:42,Artist 6 - Title 12", rec.audio_path] and len(m3u) == 7

    as_json = cli("search", rec.caption, "-k", "2", "--json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["run"] == "run1" and data["index"] == "run1--lib"
    assert [h["rank"] for h in data["hits"]] == [1, 2] and data["hits"][0]["id"] == rec.id

    bad = cli("search", "x", "--index", "nope")
    assert bad.exit_code == 1 and "unknown index 'nope'" in bad.output and "run1--lib" in bad.output
    bad = cli("search", "x", "--run", "nope")
    assert bad.exit_code == 1 and "unknown run 'nope'" in bad.output and "run1" in bad.output
    with pytest.raises(MtxError, match="empty query"):
        search(state, SearchConfig(query="  "))
