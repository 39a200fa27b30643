"""Native text towers as a text model: `mtx search --text-model native` and the eval "native" baseline.

A tiny CLAP (tests/conftest.py ``tiny_clap``) embeds a few WAVs through the real embed stage;
its text tower then answers queries against that store with no trained run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musiccli.errors import MtxError
from musiccli.evaluate import EvalConfig, build_eval_data, run_eval, score_system
from musiccli.search import SearchConfig, search
from musiccli.store import EmbeddingStore

QUERY = "calm piano with soft strings"


def _embed_library(state, tmp_path: Path, model: Path, n: int = 6) -> list:
    """Write ``n`` short tones as a manifest "lib" and embed them with `mtx embed --audio-encoder clap --model`."""
    from musiccli.audio import write_audio
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.manifest import Record, write_manifest

    recs = []
    for i in range(n):
        sr, secs = 16_000, 1.0 + 0.25 * i
        t = np.arange(int(sr * secs)) / sr
        wave = (0.3 * np.sin(2 * np.pi * 110 * (i + 1) * t)).astype(np.float32)
        path = tmp_path / f"clip{i}.wav"
        write_audio(path, wave, sr)
        recs.append(Record(id=f"c{i}", audio_path=str(path), caption=f"tone {i}", duration=secs,
                           title=f"Tone {i}", artist="Osc", tags=["tone"]))
    path = state.manifest_path("lib")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(path, recs)
    res = run_embed(state, EmbedConfig(audio_encoder="clap", manifest="lib", model=str(model), window=1.0, hop=1.0,
                                       num_workers=0, device="cpu", precision="fp32"))
    assert res.n_ok == n and res.dim == 8
    return recs


def _manual_ranking(state, model: Path, query: str) -> tuple[list[str], np.ndarray]:
    """native.encode(query) @ native.audio_for_retrieval(store rows), best first."""
    from musiccli.encoders.native_text import load_native_text_model

    native = load_native_text_model("clap", str(model))
    with EmbeddingStore(state.embeddings_path("clap", "lib")) as store:
        ids, rows = list(store.ids), store.get(list(store.ids))
    scores = native.audio_for_retrieval(rows) @ native.encode([query])[0]
    order = np.argsort(-scores, kind="stable")
    return [ids[i] for i in order], scores[order]


@pytest.mark.slow
def test_native_search_matches_manual_scores_and_reuses_its_index(state, tmp_path, tiny_clap, cli,
                                                                   monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    _embed_library(state, tmp_path, tiny_clap)
    ids, scores = _manual_ranking(state, tiny_clap, QUERY)

    res = search(state, SearchConfig(query=QUERY, text_model="native", audio_encoder="clap",
                                     model=str(tiny_clap), k=4))
    assert res.index == "native-clap--lib" and res.rebuilt and res.run is None
    assert res.text_model == "native" and res.model_id == str(tiny_clap)
    assert [h["id"] for h in res.hits] == ids[:4] and [h["rank"] for h in res.hits] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["score"] for h in res.hits], scores[:4], atol=1e-5)
    assert res.hits[0]["title"].startswith("Tone ") and res.hits[0]["audio_path"].endswith(".wav")
    meta = json.loads((state.index_dir("native-clap--lib") / "meta.json").read_text())
    assert meta["text_model"] == "native" and meta["run"] is None and meta["encoder"] == "clap"
    assert meta["model_id"] == str(tiny_clap) and meta["dim"] == 8 and meta["count"] == 6

    # Through the CLI, with no --model: the tower is the checkpoint recorded in the store; index reused.
    out = cli("search", QUERY, "--text-model", "native", "--audio-encoder", "clap", "-k", "3", "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["index"] == "native-clap--lib" and not data["rebuilt"] and data["run"] is None
    assert [h["id"] for h in data["hits"]] == ids[:3]
    np.testing.assert_allclose([h["score"] for h in data["hits"]], scores[:3], atol=1e-5)
    human = cli("search", QUERY, "--text-model", "native", "-e", "clap", "--manifest", "lib", "-k", "2")
    assert human.exit_code == 0, human.output
    assert "the native clap text tower" in human.output and "native-clap--lib" in human.output

    # A re-embedded store makes the native index stale like a run's; --index finds it again.
    from musiccli import store as store_mod

    with EmbeddingStore(state.embeddings_path("clap", "lib")) as store:
        attrs, n = dict(store.attrs), len(store)
    store_mod.write_part(state.embeddings_path("clap", "lib"), 0, ids, np.ones((n, 8), np.float32))
    store_mod.assemble(state.embeddings_path("clap", "lib"), 8, "float32", attrs, 1)
    res = search(state, SearchConfig(query=QUERY, text_model="native", audio_encoder="clap", k=2))
    assert res.rebuilt
    res = search(state, SearchConfig(query=QUERY, text_model="native", index="native-clap--lib", k=2))
    assert not res.rebuilt and res.index == "native-clap--lib"


def test_native_search_errors(state, tmp_path, tiny_clap, cli) -> None:
    _embed_library(state, tmp_path, tiny_clap, n=2)
    bad = cli("search", "x", "--text-model", "native", "--audio-encoder", "mert")
    assert bad.exit_code == 1 and "no native text tower" in bad.output
    assert "clap, muq" in bad.output
    bad = cli("search", "x", "--text-model", "native")
    assert bad.exit_code == 1 and "--audio-encoder" in bad.output
    bad = cli("search", "x", "--text-model", "bogus")
    assert bad.exit_code == 1 and "unknown text model 'bogus'" in bad.output
    with pytest.raises(MtxError, match="--model chooses a native"):
        search(state, SearchConfig(query="x", model=str(tiny_clap)))
    # A native index searched as a run's: told which flags it needs.
    search(state, SearchConfig(query="x", text_model="native", audio_encoder="clap", k=1))
    with pytest.raises(MtxError) as e:
        search(state, SearchConfig(query="x", index="native-clap--lib"))
    assert "native clap text tower" in e.value.message and "--text-model native" in e.value.hint


@pytest.mark.slow
def test_eval_scores_the_native_tower_next_to_the_baselines(make_run, state, tiny_clap, cli, tmp_path) -> None:
    run = make_run(encoder="clap", dim=8, model_id=str(tiny_clap))
    rep = run_eval(state, EvalConfig(device="cpu", precision="fp32")).report
    assert set(rep["results"]) == {"model", "untrained", "random", "native"}
    assert rep["native_model"] == str(tiny_clap) and not rep["baseline_notes"]
    native = rep["results"]["native"]
    assert native["tags"]["n_tags"] == rep["results"]["model"]["tags"]["n_tags"] == 4

    # Same tracks, same metrics: the tower's own text vectors against the mean part of the stored rows.
    from musiccli.encoders.native_text import load_native_text_model

    tower = load_native_text_model("clap", str(tiny_clap))
    records = [r for r in run["records"] if r.split == "test"]
    with EmbeddingStore(run["store"]) as store:
        data = build_eval_data(records, store.get([r.id for r in records]))
    expected = score_system(data, tower.audio_for_retrieval(data.audio_raw), tower.encode(data.texts),
                            tower.encode(data.tags))
    for direction in ("text_to_music", "music_to_text"):
        for metric, value in expected[direction].items():
            assert native[direction][metric] == pytest.approx(value, abs=1e-6), (direction, metric)
    assert native["tags"]["roc_auc"] == pytest.approx(expected["tags"]["roc_auc"], abs=1e-6)

    table = cli("eval", "--force")
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "metric" in line)
    assert header.index("model") < header.index("native") < header.index("untrained") < header.index("random")

    assert set(run_eval(state, EvalConfig(baselines=False)).report["results"]) == {"model"}


@pytest.mark.slow
def test_eval_skips_an_unloadable_native_tower_with_a_note(make_run, state, tmp_path) -> None:
    make_run(encoder="clap", dim=8, model_id=str(tmp_path / "no-weights-here"))
    rep = run_eval(state, EvalConfig()).report
    assert set(rep["results"]) == {"model", "untrained", "random"}
    assert rep["baseline_notes"]["native"].startswith("skipped: ")
    assert "no-weights-here" in rep["baseline_notes"]["native"]
