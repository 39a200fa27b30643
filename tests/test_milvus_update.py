"""A Milvus collection follows a changed library in place: upserts and deletes by track id, nothing else.

Against the real Milvus 2.3.5 server the tests start (tests/servers/milvus.py): a 200-track library
is indexed, 1% of it changes (one track removed, one track's audio changed, one added, one retitled),
and the next search updates the collection. The test counts the rows the client sends (only the
four changed tracks are written), compares the collection with one built from scratch on the final
library (same entities, same top 10), searches it from a second process, and checks that a search
running mid-update through the old index folder still answers with tracks it knows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from library_store import write_library
from servers.milvus import SEARCH_IN_A_NEW_PROCESS
from musiccli import store as store_mod
from musiccli.manifest import CONTENT_HASH, Record
from musiccli.search import SearchConfig, search

pytestmark = pytest.mark.usefixtures("one_thread")

def _library(run: dict) -> tuple[list[Record], np.ndarray]:
    records = run["records"]
    for r in records:
        r.extra[CONTENT_HASH] = f"h-{r.id}"
    with store_mod.EmbeddingStore(run["store"]) as st:
        return records, st.get([r.id for r in records])


def _one_percent_changed(records: list[Record], vectors: np.ndarray) -> tuple[list[Record], np.ndarray]:
    """t007 removed, t020's audio changed, t025 retitled (same audio), n900 added."""
    rng = np.random.default_rng(3)
    keep = [k for k, r in enumerate(records) if r.id != "t007"]
    recs = [Record(**{**records[k].__dict__, "extra": dict(records[k].extra)}) for k in keep]
    vecs = vectors[keep].copy()
    j = next(i for i, r in enumerate(recs) if r.id == "t020")
    recs[j].extra[CONTENT_HASH] = "h-t020-v2"
    vecs[j] = rng.standard_normal(vecs.shape[1])
    j = next(i for i, r in enumerate(recs) if r.id == "t025")
    recs[j].title = "A New Title"
    recs.append(Record(id="n900", audio_path="/music/new/n900.wav", caption="new song", duration=30.0,
                       artist="New Artist", title="New", extra={CONTENT_HASH: "h-n900"}))
    vecs = np.concatenate([vecs, rng.standard_normal((1, vecs.shape[1])).astype(np.float32)])
    return recs, vecs


def _queries(n: int, dim: int) -> np.ndarray:
    q = np.random.default_rng(11).standard_normal((n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _top10(d, q: np.ndarray, tmp_path) -> list[list[str]]:
    """The top 10 of each query, searched by the milvus backend in a fresh Python process."""
    np.save(tmp_path / "q.npy", q)
    r = subprocess.run([sys.executable, "-c", SEARCH_IN_A_NEW_PROCESS, str(d), str(tmp_path / "q.npy")],
                       capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _entities(client, name: str) -> dict[str, tuple]:
    rows = client.query(name, filter='track_id != ""', output_fields=["track_id", "title", "artist", "vector"])
    return {r["track_id"]: (r["title"], r["artist"], np.round(np.asarray(r["vector"], np.float32), 5).tobytes())
            for r in rows}


@pytest.fixture()
def writes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Every row the Milvus client sends: upserted track ids and deleted ids (the real calls still run)."""
    from pymilvus import MilvusClient

    seen: dict[str, list] = {"upsert": [], "insert": [], "delete": []}
    real_upsert, real_insert, real_delete = MilvusClient.upsert, MilvusClient.insert, MilvusClient.delete

    def upsert(self, collection_name, data, *a, **kw):
        seen["upsert"] += [row["track_id"] for row in data]
        return real_upsert(self, collection_name, data, *a, **kw)

    def insert(self, collection_name, data, *a, **kw):
        seen["insert"] += [row["track_id"] for row in data]
        return real_insert(self, collection_name, data, *a, **kw)

    def delete(self, collection_name, ids=None, *a, **kw):
        seen["delete"] += list(ids or [])
        return real_delete(self, collection_name, ids, *a, **kw)

    monkeypatch.setattr(MilvusClient, "upsert", upsert)
    monkeypatch.setattr(MilvusClient, "insert", insert)
    monkeypatch.setattr(MilvusClient, "delete", delete)
    return seen


@pytest.mark.slow
def test_milvus_server_collection_is_updated_in_place(make_run, state, tmp_path, writes) -> None:
    pytest.importorskip("pymilvus")
    from servers.milvus import milvus_server

    from musiccli.index_backends import milvus

    run = make_run(n=200)
    records, vectors = _library(run)
    write_library(state, run, records, vectors)
    with milvus_server(tmp_path / "milvus") as uri:
        first = search(state, SearchConfig(query="dark rock", k=10, backend="milvus", uri=uri, query_runtime="torch"))
        assert first.rebuilt and len(writes["upsert"]) == 200
        name, d = milvus.collection_name(first.index), state.index_dir(first.index)
        client = milvus.connect(uri)
        old_meta, old_ids = json.loads((d / "meta.json").read_text()), json.loads((d / "ids.json").read_text())
        old_searcher = milvus.open(d, old_meta, np.load(d / "vectors.npy"))   # a search started before the update

        new_records, new_vectors = _one_percent_changed(records, vectors)
        write_library(state, run, new_records, new_vectors)
        writes["upsert"].clear()
        second = search(state, SearchConfig(query="dark rock", k=10, backend="milvus", uri=uri, query_runtime="torch"))
        # (b) only the changed rows were written: 3 upserts (changed audio, new, retitled), 1 delete
        assert second.rebuilt and second.index == first.index
        assert sorted(writes["upsert"]) == ["n900", "t020", "t025"] and writes["delete"] == ["t007"]
        assert writes["insert"] == []
        meta = json.loads((d / "meta.json").read_text())
        assert meta["backend_meta"]["upserted_rows"] == 3 and meta["backend_meta"]["deleted_rows"] == 1
        # (row_count in get_collection_stats still counts deleted rows until compaction; count(*) does not)
        assert client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 200
        # the searcher opened on the old folder keeps answering with ids it knows (t007 is gone, n900 unknown)
        rows, _ = old_searcher.search(np.asarray(vectors[7], np.float32), 5)
        assert all(0 <= r < len(old_ids) for r in rows.tolist()) and old_ids[rows[0]] != "t007"

        # (a) equal to a collection built from scratch on the final library
        q = _queries(6, run["dim"])
        updated_top = _top10(d, q, tmp_path)   # (c) searched from a second process
        got = _entities(client, name)
        fresh = search(state, SearchConfig(query="dark rock", k=10, backend="milvus", uri=uri, rebuild=True,
                                           query_runtime="torch"))
        assert fresh.index == first.index and len(writes["upsert"]) == 3 + 200
        assert _entities(client, name) == got
        assert _top10(d, q, tmp_path) == updated_top
        exact = search(state, SearchConfig(query="dark rock", k=10, backend="exact", query_runtime="torch"))
        assert [h["id"] for h in second.hits] == [h["id"] for h in exact.hits]
        assert got["t025"][0] == "A New Title" and "t007" not in got and "n900" in got

        # nothing changed: no write at all
        writes["upsert"].clear()
        writes["delete"].clear()
        third = search(state, SearchConfig(query="calm", k=10, backend="milvus", uri=uri, query_runtime="torch"))
        assert not third.rebuilt and writes["upsert"] == [] and writes["delete"] == []


def test_milvus_lite_default_file_is_updated_beside_the_index(make_run, state, tmp_path, writes) -> None:
    """The default Lite file lives in the index folder: updated as a copy, swapped in with the folder."""
    pytest.importorskip("milvus_lite")
    from musiccli.index_backends import milvus

    run = make_run(n=40)
    records, vectors = _library(run)
    write_library(state, run, records, vectors)
    first = search(state, SearchConfig(query="dark rock", k=10, backend="milvus", query_runtime="torch"))
    d = state.index_dir(first.index)
    assert (d / milvus.LITE_FILE).exists()
    new_records, new_vectors = _one_percent_changed(records, vectors)
    write_library(state, run, new_records, new_vectors)
    writes["upsert"].clear()
    second = search(state, SearchConfig(query="dark rock", k=10, backend="milvus", query_runtime="torch"))
    assert sorted(writes["upsert"]) == ["n900", "t020", "t025"] and writes["delete"] == ["t007"]
    exact = search(state, SearchConfig(query="dark rock", k=10, backend="exact", query_runtime="torch"))
    assert [h["id"] for h in second.hits] == [h["id"] for h in exact.hits]
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_all()   # as when this process exits: the next process opens the file
    q = _queries(4, run["dim"])
    exact_index = state.index_dir(exact.index)
    ids = json.loads((exact_index / "ids.json").read_text())
    from musiccli.search import load_index

    local = load_index(state, exact.index)
    assert _top10(d, q, tmp_path) == [[ids[r] for r in local.searcher.search(x, 10)[0].tolist()] for x in q]
    assert not any(p.name.startswith(f".{first.index}.") for p in d.parent.iterdir())


def test_milvus_index_built_by_row_is_rebuilt_once(make_run, state, tmp_path, monkeypatch) -> None:
    """A collection from before track-id keys (primary key ``row``) is built anew on the first update."""
    pytest.importorskip("milvus_lite")
    from musiccli.index_backends import milvus

    run = make_run(n=30)
    records, vectors = _library(run)
    write_library(state, run, records, vectors)
    uri = str(tmp_path / "lib.db")
    first = search(state, SearchConfig(query="rock", k=5, backend="milvus", uri=uri, query_runtime="torch"))
    d = state.index_dir(first.index)
    meta = json.loads((d / "meta.json").read_text())
    del meta["backend_meta"]["key"]          # as an older mtx recorded it
    (d / "meta.json").write_text(json.dumps(meta))
    new_records, new_vectors = _one_percent_changed(records, vectors)
    write_library(state, run, new_records, new_vectors)
    second = search(state, SearchConfig(query="rock", k=5, backend="milvus", uri=uri, query_runtime="torch"))
    meta = json.loads((d / "meta.json").read_text())
    assert meta["backend_meta"]["key"] == milvus.KEY and meta["backend_meta"]["upserted_rows"] == len(new_records)
    exact = search(state, SearchConfig(query="rock", k=5, backend="exact", query_runtime="torch"))
    assert [h["id"] for h in second.hits] == [h["id"] for h in exact.hits]


def test_interrupted_milvus_update_is_finished_by_the_next_one(make_run, state, tmp_path, monkeypatch, writes) -> None:
    """Stopped after three upserts, the shared collection holds n900, a track the working index does not
    know; the library then loses n900 again. The next update deletes it all the same (the interrupted
    update's pending ids), and the collection equals one built from scratch."""
    pytest.importorskip("milvus_lite")
    from progress_doubles import StopAfter

    from musiccli.index_backends import milvus

    monkeypatch.setattr(milvus, "BATCH", 1)
    run = make_run(n=40)
    records, vectors = _library(run)
    write_library(state, run, records, vectors)
    uri = str(tmp_path / "shared.db")
    first = search(state, SearchConfig(query="rock", k=10, backend="milvus", uri=uri, query_runtime="torch"))
    d, name = state.index_dir(first.index), milvus.collection_name(first.index)
    new_records, new_vectors = _one_percent_changed(records, vectors)
    new_records.append(Record(id="n901", audio_path="/music/new/n901.wav", caption="newer song", duration=30.0,
                              artist="New Artist", title="Newer", extra={CONTENT_HASH: "h-n901"}))
    new_vectors = np.concatenate([new_vectors, np.random.default_rng(5).standard_normal((1, run["dim"]),
                                                                                      ).astype(np.float32)])
    write_library(state, run, new_records, new_vectors)
    writes["upsert"].clear()
    with pytest.raises(KeyboardInterrupt):   # 3 rows mapped, then 3 of 4 upserts sent
        search(state, SearchConfig(query="rock", k=10, backend="milvus", uri=uri, query_runtime="torch"),
               StopAfter(6, mode="kbd"))
    assert writes["upsert"] == ["t020", "t025", "n900"] and writes["delete"] == []
    assert json.loads((d / "ids.json").read_text()) == [r.id for r in records]   # the old index still works
    assert json.loads((d / milvus.PENDING_FILE).read_text()) == sorted(["t020", "t025", "n900", "n901"])

    keep = [k for k, r in enumerate(new_records) if r.id != "n900"]
    final_records, final_vectors = [new_records[k] for k in keep], new_vectors[keep]
    write_library(state, run, final_records, final_vectors)
    writes["upsert"].clear()
    res = search(state, SearchConfig(query="rock", k=10, backend="milvus", uri=uri, query_runtime="torch"))
    assert sorted(writes["delete"]) == ["n900", "t007"] and sorted(writes["upsert"]) == ["n901", "t020", "t025"]
    assert not (d / milvus.PENDING_FILE).exists()
    client = milvus.connect(uri)
    got = _entities(client, name)
    assert set(got) == {r.id for r in final_records}
    search(state, SearchConfig(query="rock", k=10, backend="milvus", uri=uri, rebuild=True, query_runtime="torch"))
    assert _entities(milvus.connect(uri), name) == got
    exact = search(state, SearchConfig(query="rock", k=10, backend="exact", query_runtime="torch"))
    assert [h["id"] for h in res.hits] == [h["id"] for h in exact.hits]
