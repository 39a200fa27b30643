"""Fast search: ONNX query encoder without torch, memory-mapped fp16 index with fp32 re-rank,
--like / --mix / --max-per-artist, the FAISS ANN backend and the Milvus Lite backend."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from musiccli.errors import MtxError
from musiccli.index_backends._topk import rerank, scan
from musiccli.search import SearchConfig, search
from musiccli.state import Resume
from tests.progress_doubles import StopAfter

QUERIES = ["dark metal", "a calm piano piece for a rainy afternoon with soft strings and rain " * 6, "jazz"]


def _export(state, run: str = "run1") -> Path:
    from musiccli.runs import weights_identity
    from musiccli.families.towers.onnx import export_checkpoint_onnx
    from musiccli.runs import export_dir

    ckpt = state.run_dir(run) / "best"
    path, diff = export_checkpoint_onnx(ckpt, export_dir(state, run, "best"))
    assert diff <= 1e-4 and weights_identity(ckpt)
    return path.parent


# --------------------------------------------------------------------------- pure ranking
@pytest.mark.parametrize("n,k,block", [(1000, 10, 128), (257, 300, 64), (50, 1, 1000)])
def test_scan_and_rerank_match_a_full_sort(n, k, block) -> None:
    rng = np.random.default_rng(n)
    m = rng.standard_normal((n, 12)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    q = rng.standard_normal(12).astype(np.float32)
    full = np.argsort(-(m @ q), kind="stable")[:k]
    rows, scores = scan(m, q, k, block=block)
    assert rows.tolist() == full.tolist()
    np.testing.assert_allclose(scores, (m @ q)[full], rtol=1e-6)
    # fp16 candidates re-ranked against fp32 give the exact answer.
    cand, _ = scan(m.astype(np.float16), q, max(10 * k, 100), block=block)
    rows, scores = rerank(m, q, cand, k)
    assert rows.tolist() == full.tolist()
    np.testing.assert_allclose(scores, (m @ q)[full], rtol=1e-6)


def test_row_reader_reads_the_same_rows_as_numpy(tmp_path) -> None:
    from musiccli.index_backends._topk import RowReader

    m = np.random.default_rng(0).standard_normal((300, 7)).astype(np.float32)
    np.save(tmp_path / "v.npy", m)
    rows = RowReader(tmp_path / "v.npy")
    assert rows.shape == (300, 7) and len(rows) == 300
    np.testing.assert_array_equal(rows[np.array([299, 0, 17, 17])], m[[299, 0, 17, 17]])
    np.testing.assert_array_equal(rows[5], m[[5]])


# --------------------------------------------------------------------------- ONNX query encoder
@pytest.mark.slow
def test_onnx_text_model_matches_pytorch(make_run, state) -> None:
    from musiccli.families.towers.onnx import OnnxTextModel

    run = make_run()
    model = OnnxTextModel(_export(state))
    assert model.dim == 16
    np.testing.assert_allclose(model.encode(QUERIES), run["model"].encode(QUERIES), atol=1e-4)
    np.testing.assert_allclose(model.encode(QUERIES, space="audio"), run["model"].encode(QUERIES, space="audio"),
                               atol=1e-4)
    raw = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(model.audio_for_retrieval(raw), run["model"].audio_for_retrieval(raw), atol=1e-6)


@pytest.mark.slow
def test_search_uses_onnx_when_it_matches_and_falls_back_otherwise(make_run, state) -> None:
    run = make_run()
    recs = run["records"]
    res = search(state, SearchConfig(query=recs[3].caption, k=3))
    assert res.query_runtime == "torch" and "no ONNX export" in res.notes[0] and "mtx export" in res.notes[0]
    assert res.hits[0]["id"] == recs[3].id and res.backend == "exact"
    with pytest.raises(MtxError, match="cannot encode queries with ONNX"):
        search(state, SearchConfig(query="rock", query_runtime="onnx"))

    _export(state)
    res = search(state, SearchConfig(query=recs[3].caption, k=3))
    assert res.query_runtime == "onnx" and not res.notes and not res.rebuilt   # same index for both runtimes
    assert res.hits[0]["id"] == recs[3].id
    assert search(state, SearchConfig(query=recs[3].caption, query_runtime="torch")).query_runtime == "torch"

    # New weights: the export is of other weights -> PyTorch again, and the index is rebuilt.
    run["model"].save_pretrained(state.run_dir("run1") / "best")
    res = search(state, SearchConfig(query=recs[3].caption, k=3))
    assert res.query_runtime == "torch" and "other weights" in res.notes[0] and res.rebuilt


def test_index_is_memory_mapped_fp16_with_exact_scores(make_run, state) -> None:
    run = make_run()
    res = search(state, SearchConfig(query=run["records"][7].caption, k=40))
    d = state.index_dir("run1--lib")
    f16 = np.load(d / "vectors.f16.npy", mmap_mode="r")
    f32 = np.load(d / "vectors.npy", mmap_mode="r")
    assert f16.dtype == np.float16 and f32.dtype == np.float32 and f16.shape == f32.shape == (40, 16)
    q = run["model"].encode([run["records"][7].caption])[0]
    full = np.argsort(-(f32 @ q), kind="stable")
    assert [h["id"] for h in res.hits] == [run["records"][i].id for i in full]
    np.testing.assert_allclose([h["score"] for h in res.hits], (f32 @ q)[full], rtol=1e-5)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["backend"] == "exact" and meta["backend_meta"] == {"dtype": "float16"} and meta["format"] == 2


@pytest.mark.slow
def test_cold_search_imports_neither_torch_nor_transformers(make_run, state, state_dir) -> None:
    run = make_run()
    _export(state)
    rec = run["records"][11]
    search(state, SearchConfig(query="warm up the index", k=1))   # the index exists; the cold process reuses it
    code = textwrap.dedent(f"""
        import json, sys
        from typer.testing import CliRunner
        from musiccli.cli.app import app
        r = CliRunner().invoke(app, ["--state-dir", {str(state_dir)!r}, "search", {rec.caption!r}, "-k", "2",
                                     "--json"], catch_exceptions=False)
        out = json.loads(r.stdout)
        print(json.dumps({{"code": r.exit_code, "top": out["hits"][0]["id"], "runtime": out["query_runtime"],
                          "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}}))
    """)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"code": 0, "top": rec.id, "runtime": "onnx", "torch": False, "transformers": False}


# --------------------------------------------------------------------------- like / mix / artist cap
def test_like_a_library_track_returns_it_first_and_mixes_with_text(make_run, state) -> None:
    run = make_run()
    recs = run["records"]
    res = search(state, SearchConfig(like=recs[9].id, k=5))
    assert res.hits[0]["id"] == recs[9].id and res.hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert res.like == recs[9].id and res.query == ""
    # mix=1 is the text query alone; mix=0 is --like alone.
    text_only = search(state, SearchConfig(query=recs[20].caption, k=5))
    assert [h["id"] for h in search(state, SearchConfig(query=recs[20].caption, like=recs[9].id, mix=1.0,
                                                        k=5)).hits] == [h["id"] for h in text_only.hits]
    assert search(state, SearchConfig(query=recs[20].caption, like=recs[9].id, mix=0.0, k=1)).hits[0]["id"] \
        == recs[9].id
    mixed = search(state, SearchConfig(query=recs[20].caption, like=recs[9].id, mix=0.3, k=5))
    f32 = np.load(state.index_dir("run1--lib") / "vectors.npy")
    qt = run["model"].encode([recs[20].caption])[0]
    q = 0.3 * qt / np.linalg.norm(qt) + 0.7 * f32[9]
    q /= np.linalg.norm(q)
    want = np.argsort(-(f32 @ q), kind="stable")[:5]
    assert [h["id"] for h in mixed.hits] == [recs[i].id for i in want]
    np.testing.assert_allclose([h["score"] for h in mixed.hits], (f32 @ q)[want], rtol=1e-5)


def test_max_per_artist_caps_each_artist(make_run, state) -> None:
    run = make_run()   # artists: "Artist i//2", two tracks each
    res = search(state, SearchConfig(query=run["records"][4].caption, k=10, max_per_artist=1))
    artists = [h["artist"] for h in res.hits]
    assert len(res.hits) == 10 and len(set(artists)) == 10
    uncapped = search(state, SearchConfig(query=run["records"][4].caption, k=10))
    assert res.hits[0]["id"] == uncapped.hits[0]["id"]


def test_where_exclude_artist_and_not_equal_a_brute_force_ranking(make_run, state) -> None:
    run = make_run()   # artists: "Artist i//2", two tracks each
    recs = run["records"]
    query = recs[4].caption
    res = search(state, SearchConfig(query=query, k=5, where="duration >= 0", exclude_artists=["artist 2"]))
    f32 = np.load(state.index_dir("run1--lib") / "vectors.npy")
    qt = run["model"].encode([query])[0]
    q = qt / np.linalg.norm(qt)
    keep = [i for i, r in enumerate(recs) if r.artist != "Artist 2"]
    want = sorted(keep, key=lambda i: -float(f32[i] @ q))[:5]
    assert [h["id"] for h in res.hits] == [recs[i].id for i in want]
    assert all(h["artist"] != "Artist 2" for h in res.hits)
    only = search(state, SearchConfig(query=query, k=3, where="artist == 'Artist 3'"))
    assert {h["artist"] for h in only.hits} == {"Artist 3"} and len(only.hits) == 2
    # --not: the query moved away from the negative text, ranked exactly.
    neg = run["model"].encode([recs[7].caption])[0]
    qn = q - 0.5 * neg / np.linalg.norm(neg)
    qn /= np.linalg.norm(qn)
    moved = search(state, SearchConfig(query=query, k=5, negative=recs[7].caption))
    assert [h["id"] for h in moved.hits] == [recs[i].id for i in np.argsort(-(f32 @ qn), kind="stable")[:5]]


@pytest.mark.parametrize("cfg,message", [
    (dict(query="  "), "empty query"),
    (dict(like="no-such-track"), "neither a track id"),
    (dict(query="rock", mix=1.5), "--mix must be between 0 and 1"),
    (dict(query="rock", max_per_artist=0), "--max-per-artist must be at least 1"),
    (dict(query="rock", backend="annoy"), "unknown search backend"),
    (dict(query="rock", where="bpm > 120"), "unknown field 'bpm'"),
    (dict(query="rock", where="artist == 'nobody'"), "no track of the library passes the filters"),
    (dict(query="rock", negative="drums", not_weight=2.0), "--not-weight must be between 0 and 1"),
    (dict(query="rock", query_runtime="tflite"), "unknown query runtime"),
    (dict(query="rock", backend="milvus", uri="/tmp/x.sqlite"), "neither a Milvus Lite file"),
])
def test_bad_search_options(make_run, state, cfg, message) -> None:
    make_run()
    with pytest.raises(MtxError, match=message):
        search(state, SearchConfig(**cfg))


def test_cli_like_and_fallback_note(make_run, cli, state, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    run = make_run()
    r = cli("search", "--like", run["records"][2].id, "-k", "2")
    assert r.exit_code == 0, r.output
    assert "like t002" in r.output and "query encoded with torch" in r.output and "no ONNX export" in r.output
    r = cli("search", "--like", run["records"][2].id, "--mix", "2")
    assert r.exit_code == 2


# --------------------------------------------------------------------------- ANN (FAISS)
def _library(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (embeddings of real music are clustered, not uniform on the sphere)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 100), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ann_recall_against_exact_at_20k(tmp_path) -> None:
    pytest.importorskip("faiss")
    from musiccli.index_backends import faiss_ann
    from musiccli.progress import NullProgress

    vectors = _library(20_000, 32)
    np.save(tmp_path / "vectors.npy", vectors)
    mm = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    meta = {"backend_meta": faiss_ann.build(tmp_path, mm, {}, NullProgress(), lambda **_: None, {}, [], {})}
    searcher = faiss_ann.open(tmp_path, meta, mm)
    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(20_000, 100, replace=False)] + 0.3 * rng.standard_normal((100, 32))
    recalls = []
    for q in queries.astype(np.float32):
        q /= np.linalg.norm(q)
        exact = set(np.argsort(-(vectors @ q))[:10].tolist())
        rows, scores = searcher.search(q, 10)
        recalls.append(len(exact & set(rows.tolist())) / 10)
        np.testing.assert_allclose(scores, vectors[rows] @ q, rtol=1e-5)   # scores are the exact ones
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


def test_ann_backend_search_and_resumed_build(make_run, state) -> None:
    pytest.importorskip("faiss")
    from musiccli.index_backends import faiss_ann

    run = make_run(n=40)
    monkey_block = faiss_ann.ADD_BLOCK
    faiss_ann.ADD_BLOCK = 8   # several units on a tiny library
    try:
        with pytest.raises(KeyboardInterrupt):
            search(state, SearchConfig(query="rock", backend="ann"), StopAfter(60, mode="kbd"))
        d = state.index_dir("run1--lib--ann")
        assert (d / faiss_ann.PARTIAL_FILE).exists() and not (d / "meta.json").exists()
        with pytest.raises(MtxError, match="interrupted search found"):
            search(state, SearchConfig(query="rock", backend="ann"))
        res = search(state, SearchConfig(query=run["records"][6].caption, backend="ann", resume=Resume.CONTINUE))
    finally:
        faiss_ann.ADD_BLOCK = monkey_block
    assert res.backend == "ann" and res.index == "run1--lib--ann" and res.hits[0]["id"] == run["records"][6].id
    import faiss

    assert faiss.read_index(str(d / faiss_ann.INDEX_FILE)).ntotal == 40 and not (d / faiss_ann.PARTIAL_FILE).exists()
    # auto picks the existing exact index first, else the ANN one.
    assert search(state, SearchConfig(query="rock")).backend == "ann"


# --------------------------------------------------------------------------- Milvus Lite
@pytest.mark.slow
def test_milvus_lite_gives_the_same_top10_as_the_local_index(make_run, state, tmp_path) -> None:
    pytest.importorskip("milvus_lite")
    run = make_run(n=40)
    uri = str(tmp_path / "lib.db")
    for rec in run["records"][:6:2]:
        local = search(state, SearchConfig(query=rec.caption, k=10, backend="exact"))
        remote = search(state, SearchConfig(query=rec.caption, k=10, backend="milvus", uri=uri))
        assert remote.backend == "milvus" and remote.index == "run1--lib--milvus"
        assert [h["id"] for h in remote.hits] == [h["id"] for h in local.hits]
        np.testing.assert_allclose([h["score"] for h in remote.hits], [h["score"] for h in local.hits], rtol=1e-5)
    from musiccli.index_backends.milvus import collection_name, connect

    client = connect(uri)
    assert client.get_collection_stats(collection_name("run1--lib--milvus"))["row_count"] == 40
    got = client.query(collection_name("run1--lib--milvus"), filter='track_id == "t005"',
                       output_fields=["track_id", "artist"])
    assert got[0]["track_id"] == run["records"][5].id and got[0]["artist"] == "Artist 2"


def test_like_an_audio_file_embeds_it_with_the_store_encoder(state, tiny_backbone, tmp_path) -> None:
    """A file is embedded as `mtx embed` embedded the library (dsp here): a library file finds itself."""
    import soundfile as sf
    import torch

    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.encoders.text import TextEmbedder
    from musiccli.manifest import Record, write_manifest
    from musiccli.store import EmbeddingStore

    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        t = np.arange(16000 * 4) / 16000
        wave = 0.2 * np.sin(2 * np.pi * 110 * 2 ** (i / 3) * t) + (0.05 * i) * rng.standard_normal(len(t))
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, wave.astype(np.float32), 16000)
        records.append(Record(id=f"clip{i}", audio_path=str(path), caption=f"clip {i}", duration=4.0,
                              artist=f"a{i}", title=f"c{i}"))
    write_manifest(state.manifest_path("lib"), records)
    store = run_embed(state, EmbedConfig(audio_encoder="dsp", manifest="lib", num_workers=0, device="cpu")).path
    with EmbeddingStore(store) as st:
        dim, raw = st.dim, st.get([r.id for r in records])
    torch.manual_seed(0)
    model = TextEmbedder.from_backbone(str(tiny_backbone), out_dim=dim, hidden_dim=16, audio_encoder="dsp")
    model.set_audio_stats(raw.mean(0), raw.std(0))
    rdir = state.run_dir("run1")
    model.save_pretrained(rdir / "best")
    (rdir / "run.json").write_text(json.dumps({"run": "run1", "audio_encoder": "dsp", "manifest": "lib",
                                               "manifest_path": str(state.manifest_path("lib")),
                                               "embeddings": str(store), "status": "complete"}))
    copy = tmp_path / "elsewhere.wav"
    copy.write_bytes(Path(records[4].audio_path).read_bytes())
    res = search(state, SearchConfig(like=str(copy), k=3))
    assert res.hits[0]["id"] == "clip4" and res.hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_milvus_upload_resumes_after_an_interruption(make_run, state, tmp_path, monkeypatch) -> None:
    pytest.importorskip("milvus_lite")
    from musiccli.index_backends import milvus

    run = make_run(n=40)
    monkeypatch.setattr(milvus, "BATCH", 8)
    uri = str(tmp_path / "lib.db")
    with pytest.raises(KeyboardInterrupt):   # 40 rows indexed, then 2 of 5 batches uploaded
        search(state, SearchConfig(query="rock", backend="milvus", uri=uri), StopAfter(56, mode="kbd"))
    from musiccli.state import load_stage

    assert load_stage(state, "index:run1--lib--milvus").counters["milvus_upserted"] == 16
    res = search(state, SearchConfig(query=run["records"][8].caption, backend="milvus", uri=uri, k=10,
                                     resume=Resume.CONTINUE))
    assert res.hits[0]["id"] == run["records"][8].id
    client = milvus.connect(uri)
    assert client.get_collection_stats(milvus.collection_name("run1--lib--milvus"))["row_count"] == 40
    local = search(state, SearchConfig(query=run["records"][8].caption, backend="exact", k=10))
    assert [h["id"] for h in res.hits] == [h["id"] for h in local.hits]
