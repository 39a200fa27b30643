"""A search index follows a changed library in place: kept rows are copied, only new ones are mapped.

The library changes (rows added, changed, removed, reordered) and the next search updates the
index instead of rebuilding it: the text model's audio side runs only on the new rows, the vectors
equal a fresh build, the ANN index is not retrained, and a crash during the update leaves the old
index working.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from library_store import write_library
from musiccli import store as store_mod
from musiccli.errors import Interrupted
from musiccli.manifest import CONTENT_HASH, Record
from musiccli.search import SearchConfig, search

pytestmark = pytest.mark.usefixtures("one_thread")


def _hashed(records: list[Record]) -> list[Record]:
    for r in records:
        r.extra[CONTENT_HASH] = f"h-{r.id}"
    return records


def _changed(run: dict, vectors: np.ndarray) -> tuple[list[Record], np.ndarray]:
    """Drop t001 and t005, change t010's audio, add two tracks, reverse the order."""
    records, rng = run["records"], np.random.default_rng(7)
    keep = [k for k, r in enumerate(records) if r.id not in ("t001", "t005")]
    new_records = [records[k] for k in keep]
    new_vectors = vectors[keep].copy()
    j = next(i for i, r in enumerate(new_records) if r.id == "t010")
    new_records[j] = Record(**{**new_records[j].__dict__, "extra": {CONTENT_HASH: "h-t010-v2"}})
    new_vectors[j] = rng.standard_normal(run["dim"])
    for name in ("n900", "n901"):
        new_records.append(Record(id=name, audio_path=f"/music/new/{name}.wav", caption=f"new song {name}",
                                  duration=30.0, artist=f"New {name}", extra={CONTENT_HASH: f"h-{name}"}))
    new_vectors = np.concatenate([new_vectors, rng.standard_normal((2, run["dim"])).astype(np.float32)])
    return new_records[::-1], new_vectors[::-1].copy()


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows the run's audio side maps (the only model work an index does)."""
    from musiccli import search as search_mod

    calls: list[int] = []
    real = search_mod.QueryModel.audio_side

    class Counting:
        def __init__(self, inner) -> None:
            self.inner = inner

        def audio_for_retrieval(self, rows):
            calls.append(len(rows))
            return self.inner.audio_for_retrieval(rows)

    monkeypatch.setattr(search_mod.QueryModel, "audio_side", property(lambda self: Counting(real.fget(self))))
    return calls


@pytest.mark.parametrize("backend", ["exact", "ann"])
def test_index_updates_in_place(make_run, state, counted: list[int], backend: str) -> None:
    if backend == "ann":
        pytest.importorskip("faiss")
    run = make_run(n=40)
    records = _hashed(run["records"])
    with store_mod.EmbeddingStore(run["store"]) as st:
        vectors = st.get([r.id for r in records])
    write_library(state, run, records, vectors)
    first = search(state, SearchConfig(query="dark rock", backend=backend, query_runtime="torch"))
    assert first.rebuilt and not first.index_updated and sum(counted) == 40
    name = first.index

    new_records, new_vectors = _changed(run, vectors)
    write_library(state, run, new_records, new_vectors)
    counted.clear()
    second = search(state, SearchConfig(query=new_records[0].caption, backend=backend, query_runtime="torch"))
    assert second.index_updated and sum(counted) == 3          # t010 changed, n900 and n901 new: nothing else mapped
    assert {h["id"] for h in second.hits} <= {r.id for r in new_records}      # removed tracks are gone
    d = state.index_dir(name)
    ids = json.loads((d / "ids.json").read_text())
    assert ids == [r.id for r in new_records]
    expected = run["model"].audio_for_retrieval(new_vectors)
    np.testing.assert_allclose(np.load(d / "vectors.npy"), expected, atol=1e-6)
    meta = json.loads((d / "meta.json").read_text())
    assert not os.path.isabs(meta["store"]) and meta["count"] == len(new_records)
    if backend == "ann":
        import faiss

        from musiccli.index_backends import faiss_ann

        index = faiss.read_index(str(d / faiss_ann.INDEX_FILE))
        assert index.ntotal == len(new_records) and (d / faiss_ann.LABELS_FILE).exists()
        # every row is reachable, by its own vector
        for k in (0, 5, len(new_records) - 1):
            q = np.asarray(expected[k], np.float32)
            rows, _ = faiss_ann.AnnSearcher(d, meta, np.load(d / "vectors.npy", mmap_mode="r")).search(q, 1)
            assert rows[0] == k
    assert not any(p.name.startswith(f".{name}.") for p in d.parent.iterdir())

    counted.clear()
    third = search(state, SearchConfig(query="calm", backend=backend, query_runtime="torch"))
    assert not third.rebuilt and counted == []


def test_interrupted_update_keeps_the_working_index(make_run, state) -> None:
    from progress_doubles import StopAfter

    run = make_run(n=40)
    records = _hashed(run["records"])
    with store_mod.EmbeddingStore(run["store"]) as st:
        vectors = st.get([r.id for r in records])
    write_library(state, run, records, vectors)
    name = search(state, SearchConfig(query="rock", query_runtime="torch")).index
    before = np.load(state.index_dir(name) / "vectors.npy")
    new_records, new_vectors = _changed(run, vectors)
    write_library(state, run, new_records, new_vectors)
    with pytest.raises((Interrupted, KeyboardInterrupt)):
        search(state, SearchConfig(query="rock", query_runtime="torch"), StopAfter(1, mode="kbd"))
    np.testing.assert_array_equal(np.load(state.index_dir(name) / "vectors.npy"), before)   # still working
    res = search(state, SearchConfig(query="rock", query_runtime="torch"))
    assert res.rebuilt and json.loads((state.index_dir(name) / "ids.json").read_text()) == [r.id for r in new_records]


def test_a_swap_cut_between_its_renames_is_finished(make_run, state, monkeypatch: pytest.MonkeyPatch) -> None:
    from musiccli import search as search_mod

    run = make_run(n=40)
    records = _hashed(run["records"])
    with store_mod.EmbeddingStore(run["store"]) as st:
        vectors = st.get([r.id for r in records])
    write_library(state, run, records, vectors)
    name = search(state, SearchConfig(query="rock", query_runtime="torch")).index
    new_records, new_vectors = _changed(run, vectors)
    write_library(state, run, new_records, new_vectors)
    real = os.replace
    calls = []

    def cut(a, b):
        real(a, b)
        if str(a) == str(state.index_dir(name)) and not calls:
            calls.append(a)
            raise Interrupted("killed between the renames")

    monkeypatch.setattr(search_mod.os, "replace", cut)
    with pytest.raises(Interrupted):
        search(state, SearchConfig(query="rock", query_runtime="torch"))
    monkeypatch.setattr(search_mod.os, "replace", real)
    assert not state.index_dir(name).exists()
    res = search(state, SearchConfig(query="rock", query_runtime="torch"))   # finishes the swap, no work
    assert not res.rebuilt and json.loads((state.index_dir(name) / "ids.json").read_text()) == \
        [r.id for r in new_records]


def test_moved_state_dir_search_returns_paths_under_the_new_location(make_run, state, state_dir: Path,
                                                                     tmp_path: Path) -> None:
    run = make_run(n=12)
    inside = state.root / "datasets" / "synth" / "audio"
    inside.mkdir(parents=True)
    records = _hashed(run["records"])
    for r in records:
        r.audio_path = str(inside / f"{r.id}.wav")
    with store_mod.EmbeddingStore(run["store"]) as st:
        vectors = st.get([r.id for r in records])
    write_library(state, run, records, vectors)
    search(state, SearchConfig(query="rock", query_runtime="torch"))
    moved = tmp_path / "moved-state"
    shutil.copytree(state.root, moved)
    shutil.rmtree(state.root)
    from musiccli.state import StateDir

    res = search(StateDir.resolve(moved), SearchConfig(query="rock", query_runtime="torch"))
    assert not res.rebuilt
    assert all(h["audio_path"].startswith(str(moved)) for h in res.hits)


_KILL = textwrap.dedent("""
    import os, signal, sys
    from musiccli import search as search_mod
    from musiccli.search import SearchConfig, search
    from musiccli.state import StateDir

    real = search_mod._swap_in
    def swap(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)     # the successor is written, the swap never happens
    search_mod._swap_in = swap
    search(StateDir.resolve(sys.argv[1]), SearchConfig(query="rock", query_runtime="torch", backend=sys.argv[2]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["exact", "ann"])
def test_kill_9_during_an_index_update(make_run, state, backend: str) -> None:
    if backend == "ann":
        pytest.importorskip("faiss")
    run = make_run(n=40)
    records = _hashed(run["records"])
    with store_mod.EmbeddingStore(run["store"]) as st:
        vectors = st.get([r.id for r in records])
    write_library(state, run, records, vectors)
    name = search(state, SearchConfig(query="rock", query_runtime="torch", backend=backend)).index
    new_records, new_vectors = _changed(run, vectors)
    write_library(state, run, new_records, new_vectors)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _KILL, str(state.root), backend], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    old_ids = json.loads((state.index_dir(name) / "ids.json").read_text())
    assert old_ids == [r.id for r in records]                        # the working index is untouched
    res = search(state, SearchConfig(query=new_records[3].caption, query_runtime="torch", backend=backend))
    assert res.rebuilt
    d = state.index_dir(name)
    assert json.loads((d / "ids.json").read_text()) == [r.id for r in new_records]
    np.testing.assert_allclose(np.load(d / "vectors.npy"), run["model"].audio_for_retrieval(new_vectors), atol=1e-6)


def test_search_manifest_by_absolute_path(make_run, state) -> None:
    run = make_run(n=12)
    path = state.manifest_path(run["manifest"]).resolve()
    res = search(state, SearchConfig(query="rock", manifest=str(path), query_runtime="torch"))
    assert res.index == "run1--lib" and res.hits
    again = search(state, SearchConfig(query="rock", manifest=str(path), query_runtime="torch"))
    assert not again.rebuilt


def test_a_rebuild_over_a_damaged_store_keeps_the_working_index(make_run, state) -> None:
    from musiccli.errors import MtxError

    run = make_run(n=12)
    name = search(state, SearchConfig(query="rock", query_runtime="torch")).index
    before = (state.index_dir(name) / "vectors.npy").read_bytes()
    data = run["store"].read_bytes()
    run["store"].write_bytes(data[: len(data) // 2])
    with pytest.raises(MtxError):
        search(state, SearchConfig(query="rock", rebuild=True, query_runtime="torch"))
    assert (state.index_dir(name) / "vectors.npy").read_bytes() == before       # not deleted
    assert (state.index_dir(name) / "meta.json").exists()
