"""`mtx train --library`: a text tower adapted to a synced, tagged library, the lift `mtx eval` proves
over the zero-shot tower, what search and export do with it, and the refusal of thin supervision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musiccli.errors import MtxError
from musiccli.manifest import Record, assign_splits
from musiccli.training.library import MIN_LABEL_TRACKS, check_supervision, count_supervision, labels_of
from tests.sine_audio import SR, write_signal

GENRES = {"Metal": 110.0, "Ambient": 330.0, "Jazz": 660.0, "Techno": 1320.0}


def _signal(genre: str, mood: str, k: int, seconds: float = 1.5) -> np.ndarray:
    """A genre's pitch and timbre, a mood's loudness and pulse (so the tags are audible)."""
    rng = np.random.default_rng(k)
    t = np.arange(int(SR * seconds)) / SR
    f = GENRES[genre] * (1 + 0.02 * rng.standard_normal())
    tone = np.sin(2 * np.pi * f * t) + (0.5 * np.sign(np.sin(2 * np.pi * f * t)) if genre in ("Metal", "Techno") else 0)
    pulse = (np.sin(2 * np.pi * (8 if mood == "energetic" else 1) * t) > 0) if mood == "energetic" else 1.0
    gain = 0.6 if mood == "energetic" else 0.15
    return (gain * tone * pulse + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_library(root: Path, artists: int = 20, tracks: int = 5) -> Path:
    """``artists`` artists (one genre each) x ``tracks`` tracks (mood alternating, one compilation album
    shared by two artists), FLAC and MP3, with real tags; plus an .m3u playlist."""
    genres = list(GENRES)
    k = 0
    for a in range(artists):
        genre = genres[a % len(genres)]
        artist = f"Artist {a:02d}"
        for i in range(tracks):
            mood = "calm" if i % 2 == 0 else "energetic"
            album = "Shared Compilation" if a in (0, 1) else f"Album {a:02d}"
            folder = "Compilations/Shared" if a in (0, 1) else f"{artist}/{album}"
            suffix = ".mp3" if i == 4 else ".flac"
            write_signal(root / folder / f"{a:02d}-{i} {artist}{suffix}", _signal(genre, mood, k),
                         {"title": f"Song {a}-{i}", "artist": artist, "album": album, "genre": genre, "mood": mood})
            k += 1
    return root


def test_album_shared_by_two_artists_lands_in_one_split() -> None:
    recs = [Record(id=f"r{i}", audio_path=f"{i}.flac", caption="c", duration=1.0, artist=f"A{i}",
                   extra={"album_key": "Compilations/Now|now 1" if i < 2 else None}) for i in range(60)]
    assign_splits(recs, seed=3)
    assert recs[0].split == recs[1].split
    # without the album the two artists are independent components
    loose = [Record(id=r.id, audio_path=r.audio_path, caption="c", duration=1.0, artist=r.artist) for r in recs]
    for seed in range(40):
        assign_splits(loose, seed=seed)
        if loose[0].split != loose[1].split:
            break
    else:
        pytest.fail("no seed split the two artists apart")
    assign_splits(recs, seed=seed)
    assert recs[0].split == recs[1].split


def _rec(i: int, split: str, artist: str, tags: list[str], playlists: list[str] | None = None) -> Record:
    return Record(id=f"r{i}", audio_path=f"{i}.flac", caption="c", duration=1.0, artist=artist, tags=tags,
                  split=split, extra={"playlists": playlists} if playlists else {})


def _library(n_train: int = 30, n_test: int = 10, artists: int = 3, tags: tuple[str, ...] = ("rock", "jazz", "calm"),
             test_tags: tuple[str, ...] = ("rock",)) -> list[Record]:
    train = [_rec(i, "train", f"A{i % artists}", [tags[i % len(tags)]]) for i in range(n_train)]
    test = [_rec(1000 + i, "test", "Held Out", list(test_tags)) for i in range(n_test)]
    return train + test


def test_labels_are_tag_words_and_playlist_names() -> None:
    r = _rec(0, "train", "A", ["genre---hip_hop", "mood/theme---calm", "Calm"], playlists=["Sunday  Morning"])
    assert labels_of(r) == ["hip hop", "calm", "sunday morning"]
    sup = count_supervision(_library())
    assert sup.labelled == 30 and sup.artists == 3 and sup.labels == {"rock": 10, "jazz": 10, "calm": 10}
    assert sup.measurable == ["rock"]


@pytest.mark.parametrize("records, fragment", [
    (_library(artists=1), "by 1 artist(s)"),
    ([r for r in _library() if int(r.id[1:]) % 2 or r.split == "test"][:12] + _library()[30:], "training track(s)"),
    (_library(tags=("rock", "jazz")), "only 2 label(s)"),
    (_library(n_test=MIN_LABEL_TRACKS - 1), "no label has"),
    (_library(test_tags=("polka",)), "no label has"),
])
def test_thin_supervision_is_refused_with_counts_and_a_hint(records: list[Record], fragment: str) -> None:
    with pytest.raises(MtxError) as err:
        check_supervision(records, "library")
    assert fragment in err.value.message and err.value.hint and "\n" not in err.value.message


def test_cli_refuses_a_single_artist_library(tmp_path: Path, cli, state_dir: Path) -> None:
    music = tmp_path / "Music"
    for i in range(6):
        write_signal(music / f"Solo/{i}.flac", _signal("Jazz", "calm", i, 0.5),
                     {"title": f"t{i}", "artist": "Solo", "genre": "Jazz"})
    assert cli("sync", str(music), "--audio-encoder", "dsp", "--workers", "0").exit_code == 0
    res = cli("train", "--library", "--epochs", "1")
    assert res.exit_code == 1 and "by 1 artist(s)" in res.output and "Traceback" not in res.output
    assert not (state_dir / "runs").exists() or not any((state_dir / "runs").iterdir())
    none = cli("train", "--library", "--manifest", "nothing")
    assert none.exit_code == 1 and "mtx sync PATH" in none.output


def test_native_init_starts_exactly_at_the_native_tower(tiny_clap: Path) -> None:
    """An untrained native-init tower equals the CLAP text tower's own output (transformers'
    ClapModel.get_text_features), and its audio side is the stored vectors' own cosine space."""
    import torch
    from transformers import AutoTokenizer, ClapModel

    from musiccli.families.towers.objectives import AlignObjective, TowerSpec

    spec = TowerSpec(backbone=str(tiny_clap), store_dim=8, mean=np.zeros(8, np.float32), std=np.ones(8, np.float32),
                     head_hidden=16, pooling="native", audio_encoder="clap", aggregation="mean", native="clap")
    towers = AlignObjective().build(spec)
    texts = ["dark metal", "calm ambient piano", "a jazz trio"]
    ref_model = ClapModel.from_pretrained(tiny_clap).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clap)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = ref_model.get_text_features(**tok)
    ref = getattr(ref, "pooler_output", ref).numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(towers.encode(texts), ref, atol=1e-5)
    audio = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(towers.audio_for_retrieval(audio), audio / np.linalg.norm(audio, axis=1, keepdims=True),
                               atol=1e-6)


@pytest.mark.slow
def test_library_train_eval_search_export_end_to_end(tmp_path: Path, tiny_clap: Path, cli, state_dir: Path) -> None:
    """sync (tiny CLAP) -> train --library (native init) -> eval with the lift -> search follows the
    verdict -> the export's model card states the lift; each in its own CLI call."""
    music = make_library(tmp_path / "Music")
    sync = cli("sync", str(music), "--model", str(tiny_clap), "--workers", "0", "--json")
    assert sync.exit_code == 0, sync.output
    from musiccli.manifest import read_manifest

    records = read_manifest(state_dir / "manifests" / "library.json")
    shared = {r.split for r in records if "Compilations/Shared" in r.audio_path}
    assert len(shared) == 1                                   # the compilation album was not split
    train = cli("train", "--library", "--epochs", "3", "--batch-size", "16", "--lr", "1e-4", "--json")
    assert train.exit_code == 0, train.output
    run = json.loads(train.stdout)
    meta = json.loads((Path(run["run_dir"]) / "run.json").read_text())
    assert meta["init_from"] == {"native": "clap", "model": str(tiny_clap)}
    assert meta["config"]["text_rep"] == "blend" and meta["loss"] == "infonce"

    ev = cli("eval", "--run", run["run"], "--no-plots", "--json")
    assert ev.exit_code == 0, ev.output
    rep = json.loads(ev.stdout)
    lifted = rep["lift"]
    assert lifted["baseline"] == "native"
    for key in ("tag_roc_auc", "tag_ap"):
        e = lifted["metrics"][key]
        assert e["lift"] == pytest.approx(e["model"] - e["baseline"])
    assert lifted["metrics"]["tag_roc_auc"]["model"] == rep["results"]["model"]["tags"]["roc_auc"]
    assert set(lifted["per_tag_ap"]) == set(rep["results"]["model"]["tags"]["per_tag_ap"])
    assert "metal" in rep["results"]["model"]["tag_music_p@10"]["per_tag"] or rep["results"]["model"][
        "tag_music_p@10"]["per_tag"]
    assert "lift over the native baseline" in cli("eval", "--run", run["run"], "--no-plots").output

    found = json.loads(cli("search", "metal music", "-k", "3", "--json").stdout)
    if lifted["beats_baseline"]:
        assert found["text_model"] == "run" and found["run"] == run["run"]
    else:
        assert found["text_model"] == "native" and "did not beat" in " ".join(found["notes"])
    # The verdict the other way round: search follows what the report says.
    report = Path(run["run_dir"]) / "eval-test-best.json"
    data = json.loads(report.read_text())
    data["lift"]["beats_baseline"] = not lifted["beats_baseline"]
    report.write_text(json.dumps(data))
    flipped = json.loads(cli("search", "metal music", "-k", "3", "--json").stdout)
    assert flipped["text_model"] == ("native" if lifted["beats_baseline"] else "run")
    explicit = json.loads(cli("search", "metal music", "-k", "3", "--run", run["run"], "--json").stdout)
    assert explicit["text_model"] == "run"
    report.write_text(json.dumps({**data, "lift": lifted}))

    out = tmp_path / "export"
    exp = cli("export", "--run", run["run"], "--format", "hf", "--out", str(out))
    assert exp.exit_code == 0, exp.output
    card = next(out.rglob("README.md")).read_text()
    assert "## Lift over zero-shot" in card and "tag ROC-AUC" in card


def test_native_start_refusals_are_one_line_with_a_hint(tmp_path: Path, cli) -> None:
    music = make_library(tmp_path / "Music", artists=8, tracks=1)
    assert cli("sync", str(music), "--audio-encoder", "dsp", "--workers", "0").exit_code == 0
    cases = [(("train", "--audio-encoder", "dsp", "--manifest", "library", "--init-from", "native"),
              "has no native text tower"),
             (("train", "--library", "--objective", "joint"), "--library trains an align run"),
             (("train", "--library"), "training track(s) carry a tag")]
    for args, fragment in cases:
        res = cli(*args, "--epochs", "1")
        assert res.exit_code == 1 and fragment in res.output and "Traceback" not in res.output, res.output


@pytest.mark.slow
def test_library_of_audiomuse_mood_rows_trains_evaluates_and_searches(pg, cli, state_dir: Path, tiny_backbone: Path,
                                                                      tmp_path: Path, monkeypatch) -> None:
    """AudioMuse-AI's own rows (mood_vector, other_features in a real PostgreSQL) as the supervision:
    import -> unify -> embed (copied space) -> train --library -> eval lift (untrained baseline) -> search."""
    import soundfile as sf

    from pgserver import build_db

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MEDIASERVER_TYPE", raising=False)
    wav = tmp_path / "song.wav"
    sf.write(wav, np.zeros(8000, np.float32), 8000)
    build_db(pg, "am_lib", "current", 120, seed=5, file_paths={i: str(wav) for i in range(120)})
    assert cli("download", "audiomuse", "--dsn", pg.dsn("am_lib"), "--server", "local").exit_code == 0
    assert cli("unify", "--name", "library").exit_code == 0
    assert cli("embed", "--audio-encoder", "audiomuse-clap").exit_code == 0
    train = cli("train", "--library", "--text-backbone", str(tiny_backbone), "--epochs", "2", "--batch-size", "16",
                "--head-hidden", "32", "--json")
    assert train.exit_code == 0, train.output
    run = json.loads(train.stdout)["run"]
    meta = json.loads((state_dir / "runs" / run / "run.json").read_text())
    assert meta["config"]["text_rep"] == "blend" and meta["audio_encoder"] == "audiomuse-clap"
    rep = json.loads(cli("eval", "--run", run, "--no-plots", "--json").stdout)
    assert rep["lift"]["baseline"] == "untrained" and rep["lift"]["metrics"]["tag_roc_auc"]["lift"] is not None
    found = json.loads(cli("search", "happy music", "-k", "5", "--json").stdout)
    assert found["text_model"] == "run" and found["run"] == run and len(found["hits"]) == 5


@pytest.mark.slow
def test_native_start_resumes_to_the_uninterrupted_run(tmp_path: Path, tiny_clap: Path, cli, state) -> None:
    """kill-free interruption after two steps, then --continue: the step losses equal an uninterrupted run's."""
    from progress_doubles import StopAfter

    from musiccli.errors import Interrupted
    from musiccli.state import Resume
    from musiccli.training import TrainConfig, run_train

    assert cli("sync", str(make_library(tmp_path / "Music")), "--model", str(tiny_clap), "--workers", "0").exit_code == 0

    def cfg(run: str, resume: Resume = Resume.FRESH) -> TrainConfig:
        return TrainConfig(library=True, run=run, epochs=2, batch_size=16, export=False, resume=resume)

    full = run_train(state, cfg("full"))
    with pytest.raises(Interrupted):
        run_train(state, cfg("part"), StopAfter(2))
    resumed = run_train(state, cfg("part", Resume.CONTINUE))
    assert resumed.steps == full.steps

    def losses(run: str) -> list[float]:
        events = [json.loads(line) for line in (state.run_dir(run) / "metrics.jsonl").read_text().splitlines()]
        return [e["train_loss"] for e in events if "train_loss" in e]

    assert len(losses("full")) == full.steps
    np.testing.assert_allclose(losses("part"), losses("full"), atol=1e-6, rtol=0)
    assert not list(state.run_dir("part").rglob("*.tmp*"))
