"""The milvus backend across processes: Milvus Lite (embedded) and a real Milvus 2.3.5 server.

Every new process finds the collection released ("call load() before search"); the searcher
must load it. The older test ran both searches in one process, so it could not see that. Here
the index is built by `search` in this process and searched by the backend in a fresh Python
process (which imports neither torch nor the text model), against `--backend exact`'s top 10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from servers.milvus import SEARCH_IN_A_NEW_PROCESS
from musiccli.search import SearchConfig, load_index, search

def queries(n: int, dim: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def top10_elsewhere(index_dir, q: np.ndarray, tmp_path) -> list[list[str]]:
    np.save(tmp_path / "q.npy", q)
    r = subprocess.run([sys.executable, "-c", SEARCH_IN_A_NEW_PROCESS, str(index_dir), str(tmp_path / "q.npy")],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def exact_top10(state, q: np.ndarray) -> list[list[str]]:
    search(state, SearchConfig(query="warm up", k=1, backend="exact"))   # builds the exact index
    index = load_index(state, "run1--lib")
    return [[index.ids[r] for r in index.searcher.search(x, 10)[0].tolist()] for x in q]


def test_milvus_lite_index_in_one_process_search_in_another(make_run, state, tmp_path) -> None:
    pytest.importorskip("milvus_lite")
    run = make_run(n=40)
    uri = str(tmp_path / "lib.db")
    hit = search(state, SearchConfig(query=run["records"][4].caption, k=10, backend="milvus", uri=uri))
    assert hit.index == "run1--lib--milvus"
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_all()   # as when this process exits: Lite serves one process at a time
    q = queries(4, 16)
    assert top10_elsewhere(state.index_dir(hit.index), q, tmp_path) == exact_top10(state, q)


@pytest.mark.slow
def test_milvus_server_index_search_upsert_delete(make_run, state, tmp_path) -> None:
    pytest.importorskip("pymilvus")
    from servers.milvus import milvus_server

    from musiccli.index_backends import milvus

    run = make_run(n=60)
    with milvus_server(tmp_path / "milvus") as uri:
        res = search(state, SearchConfig(query=run["records"][3].caption, k=10, backend="milvus", uri=uri))
        exact = search(state, SearchConfig(query=run["records"][3].caption, k=10, backend="exact"))
        assert [h["id"] for h in res.hits] == [h["id"] for h in exact.hits]
        d = state.index_dir(res.index)
        q = queries(4, 16, seed=1)
        assert top10_elsewhere(d, q, tmp_path) == exact_top10(state, q)
        # What the resumable upload and an update rely on, seen by a fresh searcher after the server released
        # the collection: a delete by track id removes a row, an upsert of that track puts it back.
        client = milvus.connect(uri)
        name = milvus.collection_name(res.index)
        assert client.get_collection_stats(name)["row_count"] == 60
        vec = np.load(d / "vectors.npy")[5]
        client.release_collection(name)
        client.delete(name, ids=["t005"])
        searcher = milvus.open(d, json.loads((d / "meta.json").read_text()), np.load(d / "vectors.npy", mmap_mode="r"))
        assert 5 not in searcher.search(vec, 5)[0].tolist()
        client.upsert(name, [{"track_id": "t005", "title": "Title 5", "artist": "Artist 2", "vector": vec.tolist()}])
        client.flush(name)
        assert searcher.search(vec, 5)[0][0] == 5
        assert client.query(name, filter='track_id == "t005"', output_fields=["title"])[0]["title"] == "Title 5"
