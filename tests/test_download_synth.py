"""`mtx download synth`: determinism, resume after an interrupt, refusal, --force, failures."""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
from pathlib import Path

import pytest

from progress_doubles import StopAfter
from musiccli.download import DownloadRequest, dataset_stats, download_phase, run_download
from musiccli.errors import Interrupted, MtxError
from musiccli.progress import NullProgress
from musiccli.sources import get_source, synth
from musiccli.sources.base import SOURCES
from musiccli.sources.base import DownloadConfig
from musiccli.sources.ledger import Ledger
from musiccli.state import Resume, StateDir, file_sha256, load_stage

N, DURATION, SR = 12, 2.0, 16000
ARGS = ["--n", str(N), "--duration", str(DURATION), "--sample-rate", str(SR), "--workers", "2"]


def synth_config(seed: int = 0, **kw) -> DownloadConfig:
    kw.setdefault("workers", 2)
    return DownloadConfig(source="synth", n=N, duration=DURATION, sample_rate=SR, seed=seed, **kw)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every committed file except the ledger (its times differ)."""
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != Ledger.FILENAME}


def ledger_view(root: Path) -> dict[str, tuple]:
    return {i: (e.status, e.path, e.checksum, e.bytes) for i, e in Ledger(root).entries.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted download, generated once for the comparisons below."""
    state = StateDir.resolve(tmp_path_factory.mktemp("ref"))
    result = run_download(state, DownloadRequest(synth_config()), NullProgress())
    assert result.ok == N and result.failed == 0
    return state.dataset_dir("synth")


def test_layout_metadata_and_records(reference: Path):
    rows = list(csv.DictReader(open(reference / "metadata.csv", encoding="utf-8")))
    assert [r["id"] for r in rows] == [f"synth-{i:06d}" for i in range(N)]
    assert list(rows[0]) == list(synth.COLUMNS)
    for r in rows:
        index = int(r["id"].split("-")[1])
        assert r["path"] == f"audio/{index % 100:02d}/{r['id']}.flac"
        assert file_sha256(reference / r["path"]) == r["sha256"]
        assert json.loads(r["alt_captions"]) and r["caption"]
    import soundfile as sf

    info = sf.info(str(reference / rows[0]["path"]))
    assert (info.samplerate, info.frames, info.subtype, info.channels) == (SR, int(DURATION * SR), "PCM_16", 1)
    records = synth.SynthSource().records(reference)
    assert len(records) == N and all(Path(r.audio_path).is_absolute() and r.dataset == "synth" for r in records)
    assert all(r.artist and r.caption for r in records)
    expected = synth.SynthSource().expected_files(reference)
    assert [e.checksum[1] for e in expected] == [r["sha256"] for r in rows]


def test_same_seed_identical_files_other_seed_differs(reference: Path, tmp_path: Path):
    again = StateDir.resolve(tmp_path / "again")
    run_download(again, DownloadRequest(synth_config(workers=1)), NullProgress())
    assert snapshot(again.dataset_dir("synth")) == snapshot(reference)

    other = StateDir.resolve(tmp_path / "other")
    run_download(other, DownloadRequest(synth_config(seed=1, max_items=3)), NullProgress())
    theirs = {e.checksum for e in Ledger(other.dataset_dir("synth")).entries.values()}
    ours = {e.checksum for e in Ledger(reference).entries.values()}
    assert len(theirs) == 3 and not theirs & ours


@pytest.mark.parametrize("mode", ["flag", "kbd"])
def test_interrupt_then_continue_equals_uninterrupted(mode: str, reference: Path, state: StateDir, cli):
    with pytest.raises(Interrupted if mode == "flag" else KeyboardInterrupt):
        run_download(state, DownloadRequest(synth_config()), StopAfter(5, mode))
    root = state.dataset_dir("synth")
    done = Ledger(root).counts()["ok"]
    assert 5 <= done < N
    assert not (root / "metadata.csv").exists()  # the completion artifact only comes last
    assert not list(root.rglob(".tmp-*"))

    # A fresh start over the partial download is refused with the resume hint.
    res = cli("download", "synth", *ARGS)
    assert res.exit_code == 1
    assert "interrupted download found: rerun with --continue to resume, or --force to start over" in res.output

    res = cli("download", "synth", *ARGS, "--continue")
    assert res.exit_code == 0, res.output
    assert snapshot(root) == snapshot(reference)
    assert ledger_view(root) == ledger_view(reference)

    # Complete now: a plain rerun does nothing and says so.
    res = cli("download", "synth", *ARGS)
    assert res.exit_code == 0 and "already complete" in res.output


def test_continue_with_changed_options_is_refused(state: StateDir, cli):
    with pytest.raises(Interrupted):
        run_download(state, DownloadRequest(synth_config()), StopAfter(3))
    res = cli("download", "synth", *ARGS[:-2], "--seed", "9", "--continue")
    assert res.exit_code == 1
    assert "seed: 0 -> 9" in res.output


def test_force_starts_over(reference: Path, state: StateDir, cli):
    with pytest.raises(Interrupted):
        run_download(state, DownloadRequest(synth_config()), StopAfter(3))
    root = state.dataset_dir("synth")
    (root / "stray.txt").write_text("left from an earlier attempt")
    res = cli("download", "synth", *ARGS, "--force")
    assert res.exit_code == 0, res.output
    assert snapshot(root) == snapshot(reference)  # the stray file is gone too
    assert Ledger(root).counts() == {"ok": N, "failed": 0, "pending": 0}


def _fail_some(spec, root, duration, sample_rate, seed):
    if spec.index in (2, 7):
        raise RuntimeError(f"simulated render failure for {spec.id}")
    return ORIGINAL_RENDER(spec, root, duration, sample_rate, seed)


ORIGINAL_RENDER = synth._render_one


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="the patched worker only reaches forked children")
def test_failed_items_are_listed_complete_with_failures_then_retry_failed(state: StateDir, cli,
                                                                         monkeypatch: pytest.MonkeyPatch):
    # Workers are forked, so they see the patched worker function.
    monkeypatch.setattr(synth, "_render_one", _fail_some)
    res = cli("download", "synth", *ARGS)
    # Nothing pending, 2 of N failed (below --max-failure-rate): usable, so exit 0 with the list.
    assert res.exit_code == 0, res.output
    assert "2 item(s) failed" in res.output and "later stages use synth without them" in res.output
    assert "synth-000002" in res.output and "simulated render failure" in res.output
    root = state.dataset_dir("synth")
    assert Ledger(root).counts() == {"ok": N - 2, "failed": 2, "pending": 0}
    assert len(synth.SynthSource().records(root)) == N - 2
    record = load_stage(state, "download:synth")
    assert record.status == "complete-with-failures" and record.failed_items == 2
    # A plain rerun is a no-op that says how to retry.
    assert cli("download", "synth", *ARGS).exit_code == 0

    monkeypatch.setattr(synth, "_render_one", ORIGINAL_RENDER)
    res = cli("download", "synth", *ARGS, "--retry-failed")
    assert res.exit_code == 0, res.output
    assert Ledger(root).counts()["ok"] == N and len(synth.SynthSource().records(root)) == N
    assert load_stage(state, "download:synth").status == "complete"


def test_cli_errors_and_stats(state: StateDir, cli):
    res = cli("download", "nosuch")
    assert res.exit_code == 1
    assert "unknown source 'nosuch'; valid sources:" in res.output and "synth" in res.output
    assert cli("download").exit_code == 2
    assert cli("download", "synth", *ARGS, "--max-items", "4").exit_code == 0
    rows = [r for r in dataset_stats(state) if r.source == "synth"]
    assert [(r.source, r.items, r.ok, r.failed) for r in rows] == [("synth", 4, 4, 0)]
    assert rows[0].hours == pytest.approx(4 * DURATION / 3600, rel=1e-3)
    res = cli("download", "--stats", "--json")
    assert res.exit_code == 0
    data = {row["source"]: row for row in json.loads(res.stdout)}
    assert data["synth"]["ok"] == 4 and data["synth"]["gb"] > 0


class _PhaseTwoToy(synth.SynthSource):
    info = dataclasses.replace(synth.INFO, name="toy-songs", phase=2)


def test_download_phase_filters_the_registry(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(SOURCES, "toy-songs", _PhaseTwoToy)
    assert "toy-songs" in download_phase(2)
    assert all(get_source(n).info.phase == 2 for n in download_phase(2))
    assert "synth" not in download_phase(2)
    with pytest.raises(MtxError, match="unknown phase"):
        download_phase(3)


def test_library_errors(state: StateDir):
    with pytest.raises(MtxError, match="valid sources"):
        run_download(state, DownloadRequest(DownloadConfig(source="nosuch")))
    with pytest.raises(MtxError, match="--n"):
        run_download(state, DownloadRequest(DownloadConfig(source="synth", n=0), Resume.FRESH))


class _Unreachable(synth.SynthSource):
    info = dataclasses.replace(synth.INFO, name="unreachable", phase=2)

    def download(self, cfg, root, ledger, progress):  # noqa: ANN001
        raise MtxError("cannot reach the host", hint="check the network")


def test_a_phase_goes_on_past_a_source_that_cannot_start(monkeypatch: pytest.MonkeyPatch, state):
    from musiccli.download import run_downloads
    from musiccli.sources.base import DownloadConfig

    monkeypatch.setitem(SOURCES, "unreachable", _Unreachable)
    monkeypatch.setitem(SOURCES, "toy-songs", _PhaseTwoToy)
    cfg = DownloadConfig(source="", n=3, duration=1.0, sample_rate=SR, workers=1)
    results = {r.source: r for r in run_downloads(state, ["unreachable", "toy-songs"], cfg, Resume.FRESH)}
    assert results["unreachable"].failed == 1 and "cannot reach" in results["unreachable"].failures[0][1]
    assert results["toy-songs"].ok == 3 and results["toy-songs"].failed == 0
    with pytest.raises(MtxError, match="cannot reach"):  # a single source keeps its own error
        run_downloads(state, ["unreachable"], cfg, Resume.FORCE)
