"""What a run was trained on: run.json, the model card, and the one-line warning in search and eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musiccli.manifest import Record, manifest_hash, write_manifest
from musiccli.provenance import run_training_data, training_data, unseen_sources_warning

DEMO_LINE = ("run demo was trained only on synth (1000 synthetic clips); on other music expect near-chance results. "
             "Train on real captioned data (`mtx download musiccaps`, `mtx unify`, `mtx train`) or use "
             "`mtx search --text-model native` with clap or muq.")


def _rec(i: int, dataset: str | None, split: str = "train") -> Record:
    return Record(id=f"r{i}", audio_path=f"/m/{i}.wav", caption=f"clip {i}", duration=5.0, dataset=dataset,
                  split=split)


# --------------------------------------------------------------------------- the contract
def test_training_data_counts_sources_and_marks_synthetic() -> None:
    records = [_rec(i, "synth") for i in range(3)] + [_rec(9, "fma"), _rec(10, None)]
    assert training_data("mix", "abc", records) == {
        "manifest": "mix", "manifest_hash": "abc", "split": "train", "tracks": 5,
        "sources": {"fma": 1, "synth": 3, "unknown": 1}, "synthetic": ["synth"]}


@pytest.mark.parametrize(("sources", "synthetic", "used_on", "expected"), [
    ({"synth": 1000}, ["synth"], {"synth": 200}, None),                       # the demo on its own data
    ({"synth": 1000}, ["synth"], {"folder": 471}, DEMO_LINE),                 # the demo on a real library
    ({"synth": 1000}, ["synth"], {"synth": 5, "folder": 471}, DEMO_LINE),     # any unseen source counts
    ({"fma": 800, "synth": 10}, ["synth"], {"fma": 3}, None),
    ({"fma": 800}, [], {"folder": 12},
     "run demo was trained only on fma (800 tracks); it has not seen folder (12 tracks), so expect weaker results "
     "there. Train on a mix (`mtx unify --datasets fma,folder`, `mtx train`) or use `mtx search --text-model "
     "native` with clap or muq."),
    ({}, [], {"folder": 12}, None),                                            # nothing recorded: no claim
])
def test_unseen_sources_warning(sources, synthetic, used_on, expected) -> None:
    trained = {"sources": sources, "synthetic": synthetic}
    assert unseen_sources_warning("demo", trained, used_on) == expected


def test_run_training_data_recorded_rebuilt_or_unknown(tmp_path: Path) -> None:
    recorded = {"sources": {"synth": 4}, "synthetic": ["synth"], "tracks": 4}
    assert run_training_data({"training_data": recorded}) == recorded
    # A run from before training_data was recorded: rebuilt from its manifest's train split...
    mpath = tmp_path / "m.json"
    write_manifest(mpath, [_rec(0, "synth"), _rec(1, "synth"), _rec(2, "fma", split="test")])
    legacy = {"manifest": "m", "manifest_path": str(mpath), "manifest_hash": manifest_hash(mpath)}
    got = run_training_data(legacy)
    assert got is not None and got["sources"] == {"synth": 2} and got["synthetic"] == ["synth"]
    # ...but only while that manifest is the one it was trained on.
    write_manifest(mpath, [_rec(0, "fma")])
    assert run_training_data(legacy) is None
    assert run_training_data({}) is None


@pytest.mark.slow
def test_train_records_its_training_data(state, tiny_backbone) -> None:
    from test_train import make_data, tiny_cfg

    from musiccli.training import run_train

    records = make_data(state)
    run_train(state, tiny_cfg(tiny_backbone, epochs=1))
    info = json.loads((state.run_dir("fake-lib") / "run.json").read_text())
    train = [r for r in records if r.split == "train"]
    assert info["training_data"] == {
        "manifest": "lib", "manifest_hash": manifest_hash(state.manifest_path("lib")), "split": "train",
        "tracks": len(train), "sources": {"synth": len(train)}, "synthetic": ["synth"]}


# --------------------------------------------------------------------------- a run met elsewhere
def _train_only_on(state, run: str, sources: dict[str, int]) -> None:
    path = state.run_dir(run) / "run.json"
    meta = json.loads(path.read_text())
    meta["training_data"] = {**meta["training_data"], "sources": sources,
                             "synthetic": [s for s in sources if s == "synth"]}
    path.write_text(json.dumps(meta))


def _warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "was trained only on" in line]


def test_search_warns_once_on_stderr(make_run, cli, state) -> None:
    run = make_run()          # library sources: synth and other
    _train_only_on(state, "run1", {"synth": 1000})
    res = cli("search", run["records"][3].caption, "-k", "3")
    assert res.exit_code == 0, res.output
    lines = _warning_lines(res.stderr)
    assert lines == ["warning: run run1 was trained only on synth (1000 synthetic clips); on other music expect "
                     "near-chance results. Train on real captioned data (`mtx download musiccaps`, `mtx unify`, "
                     "`mtx train`) or use `mtx search --text-model native` with clap or muq."]
    assert not _warning_lines(res.stdout)

    quiet = cli("--quiet", "search", "rock", "-k", "3")
    assert quiet.exit_code == 0 and not _warning_lines(quiet.output)

    as_json = cli("search", "rock", "-k", "3", "--json")
    assert as_json.exit_code == 0 and not _warning_lines(as_json.stderr)
    data = json.loads(as_json.stdout)
    assert data["warnings"] == [lines[0].removeprefix("warning: ")] and len(data["hits"]) == 3


def test_search_is_silent_when_sources_match(make_run, cli) -> None:
    make_run()                # trained on the train split of synth + other: the library's own sources
    res = cli("search", "rock", "-k", "3")
    assert res.exit_code == 0 and not _warning_lines(res.output)
    assert json.loads(cli("search", "rock", "-k", "3", "--json").stdout)["warnings"] == []


def test_embed_then_search_a_new_library_warns(make_run, cli, state) -> None:
    """A run searched on a library embedded after training, from a source the run never saw."""
    from musiccli import store as store_mod

    run = make_run()
    library = [Record(id=f"folder-{i}", audio_path=f"/home/me/Music/{i}.ogg", caption=f"song {i}", duration=200.0,
                      dataset="folder", artist="Someone", title=f"Song {i}") for i in range(6)]
    write_manifest(state.manifest_path("library"), library)
    spath = state.embeddings_path(run["encoder"], "library")
    vectors = np.random.default_rng(0).standard_normal((6, run["dim"])).astype(np.float32)
    store_mod.write_part(spath, 0, [r.id for r in library], vectors)
    store_mod.assemble(spath, run["dim"], "float32", {"encoder": run["encoder"], "dim": run["dim"]}, 1)

    res = cli("search", "dark metal", "--manifest", "library", "-k", "2")
    assert res.exit_code == 0, res.output
    (line,) = _warning_lines(res.stderr)
    assert "run run1 was trained only on other (7 tracks), synth (13 synthetic clips)" in line
    assert "it has not seen folder (6 tracks)" in line and "--datasets folder,other,synth" in line


@pytest.mark.slow
def test_eval_warns_once_and_reports_it_in_json(make_run, cli, state) -> None:
    make_run()
    assert not _warning_lines(cli("eval", "--no-baselines").output)   # trained on these sources: silent
    _train_only_on(state, "run1", {"synth": 1000})
    res = cli("eval", "--no-baselines")
    assert res.exit_code == 0, res.output
    assert len(_warning_lines(res.stderr)) == 1 and not _warning_lines(res.stdout)
    assert not _warning_lines(cli("-q", "eval", "--no-baselines").output)
    data = json.loads(cli("eval", "--no-baselines", "--json").stdout)
    (warning,) = data["warnings"]
    assert warning.startswith("run run1 was trained only on synth (1000 synthetic clips)")


# --------------------------------------------------------------------------- exports keep it
def test_export_keeps_the_training_data(make_run, state) -> None:
    from musiccli.export import ExportConfig, run_export

    run = make_run()
    _train_only_on(state, "run1", {"synth": 1000})
    # The manifest changes after training: the card still says what the run was trained on.
    write_manifest(state.manifest_path("lib"), run["records"][:4])
    run_export(state, ExportConfig(formats=("hf",)))
    hf = state.export_dir("run1") / "best" / "hf"
    card = (hf / "README.md").read_text()
    assert "sources: synth (1000 synthetic clips)" in card
    assert "not a search model for real music" in card
    assert json.loads((hf / "training_data.json").read_text())["sources"] == {"synth": 1000}
