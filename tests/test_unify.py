"""`mtx unify`: composition, missing audio, dry run, resume after an interrupt, config changes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from musiccli.download import DownloadRequest, run_download
from musiccli.errors import MtxError
from musiccli.manifest import Record, read_manifest
from musiccli.progress import NullProgress
from musiccli.sources.base import SOURCES, DownloadConfig, ExpectedFile, Source, SourceInfo
from musiccli.sources.ledger import Ledger
from musiccli.state import StateDir
from musiccli.unify import UnifyConfig, run_unify

TOY_N, TOY_MISSING = 30, 3


class ToySource(Source):
    """A second dataset in the registry: records from a JSON file, ids not prefixed, a few files missing."""

    info = SourceInfo(name="toy", description="test-only source", license="CC0-1.0", downloadable=False)
    parses = 0

    def download(self, cfg, root, ledger, progress):  # pragma: no cover - data is laid out by the test
        raise AssertionError("the toy source is laid out by the test, never downloaded")

    def records(self, root: Path) -> list[Record]:
        ToySource.parses += 1
        return [Record.from_dict(d) for d in json.loads((root / "records.json").read_text())]

    def expected_files(self, root: Path) -> list[ExpectedFile]:
        return []


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A state dir with the synth dataset (12 clips) and the toy dataset (30 records, 3 without audio)."""
    state = StateDir.resolve(tmp_path_factory.mktemp("unify-template"))
    cfg = DownloadConfig(source="synth", n=12, duration=2.0, sample_rate=16000, workers=2)
    assert run_download(state, DownloadRequest(cfg), NullProgress()).ok == 12
    root = state.dataset_dir("toy")
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(TOY_N):
        audio = root / "audio" / f"{i}.wav"
        if i >= TOY_MISSING:
            audio.write_bytes(b"unify never decodes audio")  # existence is all unify checks
        rows.append({"id": str(i), "audio_path": str(audio), "caption": f"toy clip {i}",
                     "duration": 5.0 + i, "artist": f"toy artist {i % 6}", "dataset": "toy"})
        Ledger(root).ok(str(i), path=audio.name)
    (root / "records.json").write_text(json.dumps(rows))
    return state.root


@pytest.fixture()
def toy_state(template: Path, state: StateDir, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setitem(SOURCES, "toy", ToySource)
    shutil.copytree(template, state.root)
    # The toy records point at the template's files; repoint them at this copy.
    rec = state.dataset_dir("toy") / "records.json"
    rec.write_text(rec.read_text().replace(str(template), str(state.root)))
    ToySource.parses = 0
    return state


def manifest_view(path: Path, root: Path) -> list[dict]:
    """The manifest with the state dir's location factored out, for comparing two state dirs."""
    return [{**r.to_dict(), "audio_path": str(Path(r.audio_path).relative_to(root))} for r in read_manifest(path)]


def test_cli_stratified_composition_and_missing_audio(toy_state: StateDir, cli):
    res = cli("unify", "--stratify-by", "dataset", "--max-samples", "20")
    assert res.exit_code == 0, res.output
    assert "synth" in res.output and "toy" in res.output and "total" in res.output
    assert "3 record(s) without an audio file were left out" in res.output
    assert "toy:0" in res.output
    records = read_manifest(toy_state.manifest_path("default"))
    by_ds = {ds: [r for r in records if r.dataset == ds] for ds in ("synth", "toy")}
    assert len(records) == 20 and len(by_ds["synth"]) == 10 and len(by_ds["toy"]) == 10
    # Unprefixed ids get the source name; already-prefixed synth ids stay as they are.
    assert all(r.id.startswith("toy:") for r in by_ds["toy"])
    assert all(r.id.startswith("synth-") for r in by_ds["synth"])
    assert not {"toy:0", "toy:1", "toy:2"} & {r.id for r in records}
    assert all(r.split in ("train", "val", "test") for r in records)
    assert str(toy_state.manifest_path("default")) in res.output.replace("\n", "")


def test_small_dataset_quota_is_redistributed(toy_state: StateDir):
    result = run_unify(toy_state, UnifyConfig(max_samples=30, name="big"))
    counts = {c.dataset: c.count for c in result.composition}
    assert counts == {"synth": 12, "toy": 18}
    assert result.missing_audio == TOY_MISSING and len(result.missing_examples) == TOY_MISSING
    row = next(c for c in result.composition if c.dataset == "synth")
    assert row.train + row.val + row.test == 12 and row.hours == pytest.approx(24 / 3600, abs=1e-4)


def test_duration_filter_and_dataset_selection(toy_state: StateDir, cli):
    result = run_unify(toy_state, UnifyConfig(datasets=["toy"], min_duration=10.0, max_duration=20.0,
                                              name="mid"))
    # toy durations are 5 + i for i in 3..29 (0..2 have no audio): 10..20 keeps i = 5..15.
    assert result.records == 11 and result.dropped_duration == TOY_N - TOY_MISSING - 11
    assert {c.dataset for c in result.composition} == {"toy"}
    res = cli("unify", "--datasets", "synth,nosuch", "--name", "x")
    assert res.exit_code == 1 and "nosuch" in res.output


def test_dry_run_writes_nothing(toy_state: StateDir, cli):
    before = sorted(p for p in toy_state.root.rglob("*"))
    res = cli("unify", "--max-samples", "10", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "dry run: nothing was written" in res.output
    assert sorted(p for p in toy_state.root.rglob("*")) == before
    assert not toy_state.manifest_path("default").exists()


class StopAfterFirstSource:
    """A Progress whose task raises KeyboardInterrupt at the first unit: after source 1 is committed."""

    @contextmanager
    def task(self, description, total=None, unit="items", completed=0):
        class _Task:
            def advance(self, n: int = 1) -> None:
                raise KeyboardInterrupt

            def update(self, **kw) -> None:
                pass

        yield _Task()

    def check_interrupt(self) -> None:
        pass


def test_interrupt_then_continue_gives_the_same_manifest(toy_state: StateDir, cli, tmp_path: Path,
                                                         template: Path, monkeypatch: pytest.MonkeyPatch):
    args = ("unify", "--stratify-by", "dataset", "--max-samples", "16", "--seed", "3")
    with pytest.raises(KeyboardInterrupt):
        run_unify(toy_state, UnifyConfig(max_samples=16, seed=3), StopAfterFirstSource())
    assert not toy_state.manifest_path("default").exists()
    assert len(list((toy_state.manifests_dir / ".cache").glob("*.arrow"))) == 1

    res = cli(*args)
    assert res.exit_code == 1 and "interrupted unify found" in res.output
    res = cli(*args[:-2], "--seed", "4", "--continue")
    assert res.exit_code == 1 and "seed: 3 -> 4" in res.output

    synth_parses = []
    from musiccli.sources import synth

    real = synth.SynthSource.table
    monkeypatch.setattr(synth.SynthSource, "table",
                        lambda self, root: synth_parses.append(root) or real(self, root))
    res = cli(*args, "--continue")
    assert res.exit_code == 0, res.output
    assert synth_parses == [] and ToySource.parses == 1  # synth came from the committed cache
    resumed = manifest_view(toy_state.manifest_path("default"), toy_state.root)

    # An uninterrupted run in a second state dir gives the identical manifest.
    other = StateDir.resolve(tmp_path / "other")
    shutil.copytree(toy_state.root / "datasets", other.root / "datasets")
    rec = other.dataset_dir("toy") / "records.json"
    rec.write_text(rec.read_text().replace(str(toy_state.root), str(other.root)))
    run_unify(other, UnifyConfig(max_samples=16, seed=3))
    assert manifest_view(other.manifest_path("default"), other.root) == resumed

    res = cli(*args)
    assert res.exit_code == 0 and "already up to date" in res.output


def test_a_damaged_parse_cache_is_parsed_again_to_the_same_manifest(toy_state: StateDir, cli, tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        run_unify(toy_state, UnifyConfig(max_samples=16, seed=3), StopAfterFirstSource())
    (cache,) = (toy_state.manifests_dir / ".cache").glob("*.arrow")
    cache.write_bytes(cache.read_bytes()[:100])          # torn by a crash of something else
    res = cli("unify", "--stratify-by", "dataset", "--max-samples", "16", "--seed", "3", "--continue")
    assert res.exit_code == 0, res.output
    other = StateDir.resolve(tmp_path / "other")
    shutil.copytree(toy_state.root / "datasets", other.root / "datasets")
    rec = other.dataset_dir("toy") / "records.json"
    rec.write_text(rec.read_text().replace(str(toy_state.root), str(other.root)))
    run_unify(other, UnifyConfig(max_samples=16, seed=3))
    assert manifest_view(other.manifest_path("default"), other.root) == \
        manifest_view(toy_state.manifest_path("default"), toy_state.root)


def test_changed_config_on_complete_manifest_needs_force(toy_state: StateDir, cli):
    assert cli("unify", "--max-samples", "10").exit_code == 0
    res = cli("unify", "--max-samples", "12")
    assert res.exit_code == 1 and "max_samples: 10 -> 12" in res.output
    assert "--force" in res.output and "another manifest name with --name" in res.output  # both exist
    res = cli("unify", "--max-samples", "12", "--force", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["records"] == 12
    assert len(read_manifest(toy_state.manifest_path("default"))) == 12


def test_incomplete_download_is_skipped_unless_named(toy_state: StateDir, cli):
    from musiccli.state import load_stage, stage_record_path, atomic_write_json

    record = load_stage(toy_state, "download:synth")
    record.status = "running"  # as if the synth download had been interrupted
    atomic_write_json(stage_record_path(toy_state, "download:synth"), record)
    (toy_state.dataset_dir("synth") / "metadata.csv").unlink()
    result = run_unify(toy_state, UnifyConfig(name="only-toy"))
    assert {c.dataset for c in result.composition} == {"toy"}
    res = cli("unify", "--datasets", "synth", "--name", "s")
    assert res.exit_code == 1 and "incomplete" in res.output and "--continue" in res.output


def test_no_datasets_and_bad_options(state: StateDir, cli):
    res = cli("unify")
    assert res.exit_code == 1 and "no downloaded datasets" in res.output
    assert cli("unify", "--stratify-by", "genre").exit_code == 2
    with pytest.raises(MtxError, match="min-duration"):
        run_unify(state, dataclasses.replace(UnifyConfig(), min_duration=5.0, max_duration=1.0))


def test_files_verify_rejected_are_left_out_with_a_count(tmp_path, state_dir) -> None:
    import numpy as np
    import soundfile as sf

    from httpserver import mtx_runner
    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    lib = tmp_path / "Music"
    lib.mkdir()
    tone = (0.2 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    for name in ("good.wav", "cut.wav", "liar.wav"):
        sf.write(lib / name, tone, 16000)
    # A header whose data size says 0xFFFFFFFF: mutagen (the scan) believes 134,217 s, libsndfile decodes 3 s.
    liar = bytearray((lib / "liar.wav").read_bytes())
    liar[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    (lib / "liar.wav").write_bytes(bytes(liar))
    mtx = mtx_runner(state_dir)
    assert mtx("download", "folder", "--path", str(lib)).exit_code == 0
    # After the scan the file is cut short (a copy interrupted half-way).
    data = (lib / "cut.wav").read_bytes()
    (lib / "cut.wav").write_bytes(data[: len(data) // 2])
    r = mtx("verify", "folder")
    assert r.exit_code == 1, r.output
    r = mtx("unify", "--datasets", "folder", "--name", "lib")
    assert r.exit_code == 0, r.output
    assert "2 record(s) whose file `mtx verify` rejected were left out" in r.output
    records = read_manifest(StateDir.resolve(state_dir).manifest_path("lib"))
    assert [p.split("/")[-1] for p in (x.audio_path for x in records)] == ["good.wav"]
