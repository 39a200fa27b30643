"""Stage outcomes: complete / complete-with-failures / partial / failed, one process per output,
per-checkpoint eval reports and exports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musiccli.errors import MtxError
from musiccli.manifest import Record, write_manifest
from musiccli.state import (FailurePolicy, FailureTracker, Resume, StateDir, SystemicError, begin_stage,
                            failure_signature, is_systemic, load_stage, lock_holder, stage_function)

QUERIES = ["dark metal", "calm piano", "jazz"]


def _tone(seconds: float, sr: int = 16000, f: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.2 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def _manifest(state: StateDir, name: str, paths: list[Path]) -> None:
    write_manifest(state.manifest_path(name), [
        Record(id=f"t{i}", audio_path=str(p), caption=f"track {i}", duration=1.0, split="train")
        for i, p in enumerate(paths)])


# --------------------------------------------------------------------------- the policy as data
@pytest.mark.parametrize("reasons, raises_at", [
    (["missing audio file: /a/1.wav"] * 5, 5),                                   # the same error, 5 times
    ([f"cannot decode /x/{i}.mp3: bad header at {i * 7}" for i in range(6)], 5),  # paths/numbers masked
    (["OSError: libtorchaudio.so: undefined symbol: torch_x"], 1),               # systemic: at once
    (["ImportError: cannot import name 'resample'"], 1),
    (["OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"], 1),
    (["missing audio file: /a.wav", "cannot decode /b.wav: junk"] * 4, None),      # different errors
])
def test_failure_tracker_same_error_and_systemic(reasons: list[str], raises_at: int | None) -> None:
    tracker = FailureTracker("embed", FailurePolicy(max_failure_rate=1.0, same_error_items=5))
    seen = 0
    with pytest.raises(SystemicError) if raises_at else _nothing():
        for i, reason in enumerate(reasons):
            seen = i + 1
            tracker.failure(f"item{i}", reason)
    assert seen == (raises_at or len(reasons))


def test_same_error_after_a_success_is_not_systemic() -> None:
    tracker = FailureTracker("download")
    tracker.success()
    for i in range(20):
        tracker.failure(f"v{i}", "Video unavailable")
    assert tracker.failed == 20


@pytest.mark.parametrize("ok, failed, rate, fails", [
    (0, 5, 0.5, True), (5, 5, 0.5, False), (4, 6, 0.5, True), (99, 1, 0.0, True), (100, 0, 0.0, False),
    (3, 1, 0.25, False),
])
def test_failure_rate(ok: int, failed: int, rate: float, fails: bool) -> None:
    tracker = FailureTracker("verify", FailurePolicy(max_failure_rate=rate))
    tracker.ok, tracker.failed = ok, failed
    with pytest.raises(SystemicError, match="max-failure-rate") if fails else _nothing():
        tracker.check_rate()


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_bad_failure_rate_is_refused(rate: float) -> None:
    with pytest.raises(MtxError, match="between 0 and 1"):
        FailurePolicy(max_failure_rate=rate)


def test_signature_and_systemic_helpers() -> None:
    assert failure_signature("missing audio file: /a/b/1.wav") == failure_signature("missing audio file: /c/2.wav")
    assert failure_signature("HTTP 404 for 'x'") == failure_signature("HTTP 500 for 'y'")
    assert is_systemic("OSError: undefined symbol: foo") and not is_systemic("missing audio file: /x.wav")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> bool:
        return False


# --------------------------------------------------------------------------- embed
def test_embed_over_missing_files_exits_1_and_stays_incomplete(state: StateDir, cli, tmp_path: Path) -> None:
    _manifest(state, "gone", [tmp_path / f"missing{i}.wav" for i in range(5)])
    res = cli("embed", "--audio-encoder", "dsp", "--manifest", "gone", "--num-workers", "0")
    assert res.exit_code == 1, res.output
    assert "embed (dsp) stopped" in res.output and "missing audio file" in res.output
    record = load_stage(state, "embed:dsp:gone")
    assert record.status == "failed" and record.error
    assert not state.embeddings_path("dsp", "gone").exists()
    # The next attempt is not refused as "interrupted": it tries again and fails the same way.
    again = cli("embed", "--audio-encoder", "dsp", "--manifest", "gone", "--num-workers", "0")
    assert again.exit_code == 1 and "interrupted" not in again.output


def test_embed_failure_rate(state: StateDir, cli, tmp_path: Path) -> None:
    good = []
    for i in range(3):
        good.append(tmp_path / f"ok{i}.wav")
        sf.write(good[-1], _tone(1.0, f=200.0 + 100 * i), 16000)
    # ok, missing, ok, missing, ok: 2 of 5 failed (no streak of the same error from the first item)
    paths = [good[0], tmp_path / "x1.wav", good[1], tmp_path / "x2.wav", good[2]]
    _manifest(state, "mixed", paths)
    strict = cli("embed", "--audio-encoder", "dsp", "--manifest", "mixed", "--num-workers", "0",
                 "--max-failure-rate", "0.2")
    assert strict.exit_code == 1 and "2 of 5 items failed" in strict.output, strict.output
    assert load_stage(state, "embed:dsp:mixed").status == "failed"
    assert not state.embeddings_path("dsp", "mixed").exists()
    # The same committed chunks, judged with a laxer policy: complete with the failures listed.
    ok = cli("embed", "--audio-encoder", "dsp", "--manifest", "mixed", "--num-workers", "0")
    assert ok.exit_code == 0, ok.output
    assert "2 track(s) failed" in ok.output
    record = load_stage(state, "embed:dsp:mixed")
    assert record.status == "complete-with-failures" and record.failed_items == 2


def test_library_load_error_aborts_after_the_first_items(state: StateDir, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from musiccli import embed

    paths = []
    for i in range(40):
        paths.append(tmp_path / f"t{i}.wav")
        sf.write(paths[-1], _tone(0.5), 16000)
    _manifest(state, "lib", paths)
    calls = []

    def broken_decode(path, *args, **kwargs):
        calls.append(path)
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    monkeypatch.setattr(embed, "decode_windows", broken_decode)  # what the loader workers call per track
    cfg = embed.EmbedConfig(audio_encoder="dsp", manifest="lib", num_workers=0, batch_size=4, chunk_tracks=8)
    with pytest.raises(SystemicError, match="undefined symbol"):
        embed.run_embed(state, cfg)
    assert 0 < len(calls) <= 8          # the first loader batch, not all 40 tracks
    assert load_stage(state, "embed:dsp:lib").status == "failed"


# --------------------------------------------------------------------------- download -> unify
def test_source_with_a_failed_item_is_unified_with_the_count(state: StateDir, cli, tmp_path: Path) -> None:
    music = tmp_path / "Music"
    music.mkdir()
    for i in range(4):
        sf.write(music / f"song{i}.wav", _tone(1.0, sr=8000), 8000)
    (music / "broken.mp3").write_bytes(b"\x00" * 400)
    res = cli("download", "folder", "--path", str(music))
    assert res.exit_code == 0, res.output
    assert "broken.mp3" in res.output and "--retry-failed" in res.output
    record = load_stage(state, "download:folder")
    assert record.status == "complete-with-failures" and record.failed_items == 1
    # Picked automatically (no --datasets): included, and the missing item is counted.
    res = cli("unify", "--name", "lib", "--json")
    assert res.exit_code == 0, res.output
    import json

    result = json.loads(res.stdout)
    assert result["records"] == 4 and result["download_failures"] == {"folder": 1}
    assert "folder: 1 item(s) failed to download" in res.stderr


def test_failed_stage_is_recorded_failed_and_the_next_run_is_not_refused(state: StateDir, cli,
                                                                        tmp_path: Path) -> None:
    bad = cli("download", "folder", "--path", str(tmp_path / "nope"))
    assert bad.exit_code == 1 and "no such folder" in bad.output
    # A bad option is refused before the stage begins (Source.check); a stage that raises once it has
    # begun is recorded failed (test_interrupted_stage_is_partial_and_raising_stage_is_failed).
    record = load_stage(state, "download:folder")
    assert record is None or record.status == "failed"
    again = cli("download", "folder", "--path", str(tmp_path / "nope"))
    assert again.exit_code == 1 and "interrupted" not in again.output and "no such folder" in again.output
    music = tmp_path / "Music"
    music.mkdir()
    sf.write(music / "a.wav", _tone(1.0, sr=8000), 8000)
    good = cli("download", "folder", "--path", str(music))
    assert good.exit_code == 0, good.output
    assert load_stage(state, "download:folder").status == "complete"


def test_interrupted_stage_is_partial_and_raising_stage_is_failed(state: StateDir) -> None:
    from musiccli.errors import Interrupted

    @stage_function
    def work(key: str, exc: BaseException) -> None:
        run = begin_stage(state, "demo", key, {"a": 1}, Resume.FRESH)
        run.update(done=1)
        raise exc

    with pytest.raises(Interrupted):
        work("demo:i", Interrupted("stop"))
    assert load_stage(state, "demo:i").status == "partial"
    with pytest.raises(MtxError, match="interrupted demo found"):
        work("demo:i", RuntimeError("unreached"))
    with pytest.raises(RuntimeError):
        work("demo:f", RuntimeError("boom"))
    record = load_stage(state, "demo:f")
    assert record.status == "failed" and record.error == "RuntimeError: boom"
    # A failed record with the same config is tried again (its committed units kept).
    run = begin_stage(state, "demo", "demo:f", {"a": 1}, Resume.FRESH)
    assert run.resumed and not run.already_complete and run.record.counters == {"done": 1}
    run.close()


def test_out_of_memory_inside_a_stage_is_systemic_and_recorded_failed(state: StateDir) -> None:
    class OutOfMemoryError(RuntimeError):   # the name torch.cuda.OutOfMemoryError carries
        pass

    @stage_function
    def work() -> None:
        begin_stage(state, "embed", "embed:mert:lib", {}, Resume.FRESH)
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(SystemicError, match="embed stopped: OutOfMemoryError: CUDA out of memory") as err:
        work()
    assert "--batch-size" in err.value.hint
    assert load_stage(state, "embed:mert:lib").status == "failed"


# --------------------------------------------------------------------------- one process per output
HOLDER = textwrap.dedent("""
    import sys, time
    from musiccli.state import Resume, StateDir, begin_stage
    run = begin_stage(StateDir.resolve(sys.argv[1]), "embed", "embed:dsp:lib", {"x": 1}, Resume.FRESH)
    print("locked", flush=True)
    time.sleep(60)
""")


def test_lock_refuses_a_second_process(state: StateDir, cli) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state.root)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(state, "embed:dsp:lib") == holder.pid
        with pytest.raises(MtxError, match=rf"embed embed:dsp:lib is running \(pid {holder.pid}\)"):
            begin_stage(state, "embed", "embed:dsp:lib", {"x": 1}, Resume.CONTINUE)
        # The record stays "running" (not "interrupted") for as long as the holder lives.
        assert load_stage(state, "embed:dsp:lib").status == "running"
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone (even by kill -9) the lock is free and the stage reads as interrupted.
    deadline = time.time() + 5
    while lock_holder(state, "embed:dsp:lib") is not None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(MtxError, match="interrupted embed found"):
        begin_stage(state, "embed", "embed:dsp:lib", {"x": 1}, Resume.FRESH)
    run = begin_stage(state, "embed", "embed:dsp:lib", {"x": 1}, Resume.CONTINUE)
    assert run.resumed
    run.close()


# --------------------------------------------------------------------------- per-checkpoint outputs
def _latest_from(run: dict, state: StateDir) -> None:
    """A `latest/` checkpoint whose head differs from `best/` (so its numbers differ too)."""
    import torch

    from musiccli.encoders.text import TextEmbedder

    model = TextEmbedder.from_pretrained(state.run_dir(run["run"]) / "best")
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(state.run_dir(run["run"]) / "latest")


@pytest.mark.slow
def test_eval_best_latest_best_returns_each_checkpoints_numbers(make_run, state: StateDir) -> None:
    from musiccli.evaluate import EvalConfig, run_eval

    run = make_run()
    _latest_from(run, state)
    best = run_eval(state, EvalConfig(checkpoint="best", baselines=False))
    latest = run_eval(state, EvalConfig(checkpoint="latest", baselines=False))
    again = run_eval(state, EvalConfig(checkpoint="best", baselines=False))
    assert best.path.name == "eval-test-best.json" and latest.path.name == "eval-test-latest.json"
    assert again.skipped and again.path == best.path
    assert latest.report["checkpoint"] == "latest" and again.report["checkpoint"] == "best"
    m_best = best.report["results"]["model"]["text_to_music"]
    m_latest = latest.report["results"]["model"]["text_to_music"]
    assert m_best != m_latest
    assert again.report["results"]["model"]["text_to_music"] == m_best
    assert again.report["inputs"]["weights"] == best.report["inputs"]["weights"]


@pytest.mark.slow
def test_export_best_latest_best_exports_each_checkpoint(make_run, state: StateDir) -> None:
    from musiccli.encoders.text import TextEmbedder
    from musiccli.export import ExportConfig, run_export

    run = make_run()
    _latest_from(run, state)
    best = run_export(state, ExportConfig(checkpoint="best", formats=("hf",)))
    latest = run_export(state, ExportConfig(checkpoint="latest", formats=("hf",)))
    again = run_export(state, ExportConfig(checkpoint="best", formats=("hf",)))
    assert best.out == state.export_dir("run1") / "best" and latest.out == state.export_dir("run1") / "latest"
    assert again.skipped and again.out == best.out
    rdir = state.run_dir("run1")
    for res, ckpt in ((again, "best"), (latest, "latest")):
        exported = TextEmbedder.from_pretrained(res.out / "hf").encode(QUERIES)
        original = TextEmbedder.from_pretrained(rdir / ckpt).encode(QUERIES)
        np.testing.assert_allclose(exported, original, atol=1e-6)
        assert f"checkpoint: `{ckpt}`" in (res.out / "hf" / "README.md").read_text()
    assert not np.allclose(TextEmbedder.from_pretrained(best.out / "hf").encode(QUERIES),
                           TextEmbedder.from_pretrained(latest.out / "hf").encode(QUERIES))


def _always_fails(spec, root, duration, sample_rate, seed):
    raise RuntimeError(f"renderer library broken (clip {spec.index})")


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="the patched worker only reaches forked children")
def test_download_stops_when_the_first_items_fail_alike(state: StateDir, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from musiccli.sources import synth
    from musiccli.sources.ledger import Ledger

    monkeypatch.setattr(synth, "_render_one", _always_fails)
    res = cli("download", "synth", "--n", "40", "--duration", "0.5", "--sample-rate", "8000", "--workers", "1")
    assert res.exit_code == 1, res.output
    assert "the first 5 items all failed with the same error" in res.output
    assert load_stage(state, "download:synth").status == "failed"
    assert Ledger(state.dataset_dir("synth")).counts()["failed"] < 40   # stopped early, not after every clip


# --------------------------------------------------------------------------- a full disk is systemic
def _disk_full_writer(path, *args, **kwargs):
    # What libsndfile says when the disk fills under it: nothing about space.
    raise sf.LibsndfileError(2, "Error writing: ")


def _enospc_writer(path, *args, **kwargs):
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="the patched writer only reaches forked children")
@pytest.mark.parametrize("writer, free", [(_disk_full_writer, 0), (_enospc_writer, None)])
def test_download_synth_on_a_full_disk_exits_1_with_the_no_space_line(state: StateDir, cli, writer, free,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from musiccli import audio
    from musiccli import state as state_mod
    from musiccli.sources.ledger import Ledger

    monkeypatch.setattr(audio, "write_audio", writer)
    if free is not None:   # the file system reports no space left for this user
        monkeypatch.setattr(state_mod, "_free_bytes", lambda path: free)
    args = ("download", "synth", "--n", "30", "--duration", "0.5", "--sample-rate", "8000", "--workers", "1")
    res = cli(*args)
    assert res.exit_code == 1, res.output
    flat = " ".join(res.output.split())
    assert f"no space left on device at {state.dataset_dir('synth')}" in flat and "--continue" in flat, flat
    assert "complete" not in load_stage(state, "download:synth").status
    assert Ledger(state.dataset_dir("synth")).counts()["ok"] == 0
    # Space is back: --continue finishes the same download, failed clips included.
    monkeypatch.undo()
    res = cli(*args, "--continue")
    assert res.exit_code == 0, res.output
    assert load_stage(state, "download:synth").status == "complete"
    assert Ledger(state.dataset_dir("synth")).counts()["ok"] == 30


@pytest.mark.parametrize(("error", "no_space"), [
    (OSError(28, "No space left on device", "/s/x.h5"), True),
    (OSError(122, "Disk quota exceeded", "/s/x.h5"), True),
    (RuntimeError("Can't write data (file write failed: time = x, errno = 28, error message = 'No space')"), True),
    (Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'), True),
    (OSError(13, "Permission denied", "/s/x.h5"), False),
    (sf.LibsndfileError(2, "Error writing: "), False),          # only the free-space check can tell
])
def test_no_space_is_recognised_in_every_wording(error: BaseException, no_space: bool) -> None:
    from musiccli.state import exception_is_no_space, is_no_space

    assert exception_is_no_space(error) is no_space
    assert is_systemic(f"{type(error).__name__}: {error}") is no_space
    assert is_no_space(str(error)) is (no_space and not isinstance(error, OSError) or
                                       "No space" in str(error) or "quota" in str(error))
    wrapped = RuntimeError("flush failed")
    wrapped.__cause__ = error
    assert exception_is_no_space(wrapped) is no_space


def test_a_stage_that_hits_a_full_disk_is_recorded_failed_with_the_no_space_line(state: StateDir) -> None:
    import errno

    out = state.root / "out.json"

    @stage_function
    def run_thing(state: StateDir) -> None:
        begin_stage(state, "thing", "thing:x", {"a": 1}, Resume.FRESH, outputs={"out": out})
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    with pytest.raises(SystemicError) as e:
        run_thing(state)
    assert e.value.message == f"no space left on device at {out} (thing stopped)" and "--continue" in e.value.hint
    record = load_stage(state, "thing:x")
    assert record.status == "failed" and record.error.startswith("no space left on device")


def test_a_failure_on_a_disk_without_free_space_is_systemic(state: StateDir, monkeypatch) -> None:
    from musiccli import state as state_mod

    tracker = FailureTracker("embed", where=state.root)
    tracker.failure("a", "LibsndfileError: System error.")    # space left: an item's problem
    monkeypatch.setattr(state_mod, "_free_bytes", lambda path: 4096)
    with pytest.raises(SystemicError, match=f"no space left on device at {state.root}"):
        tracker.failure("b", "LibsndfileError: System error.")


# --------------------------------------------------------------------------- too many failures are listed
def _every_other_fails(spec, root, duration, sample_rate, seed):
    from musiccli.sources.synth import _Rendered, relative_path

    if spec.index % 2:
        raise RuntimeError(f"clip {spec.index} cannot be rendered")
    path = Path(root) / relative_path(spec.index, spec.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _tone(0.5, 8000), 8000)
    return _Rendered(id=spec.id, path=relative_path(spec.index, spec.id), sha256="0", nbytes=path.stat().st_size)


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="the patched worker only reaches forked children")
def test_a_download_over_the_failure_rate_lists_its_failures(state: StateDir, cli, monkeypatch) -> None:
    from musiccli.sources import synth

    monkeypatch.setattr(synth, "_render_one", _every_other_fails)
    res = cli("download", "synth", "--n", "16", "--duration", "0.5", "--sample-rate", "8000", "--workers", "1",
              "--max-failure-rate", "0.2")
    assert res.exit_code == 1, res.output
    flat = " ".join(res.output.split())
    assert "8 of 16 items failed (50% > --max-failure-rate 20%)" in flat, flat
    assert "clip 1 cannot be rendered" in flat and "and 3 more" in flat and "ledger.jsonl" in flat, flat
    assert "fix the failures listed" in flat, flat


# --------------------------------------------------------------------------- stale temps, through the contract
def test_every_stage_cleans_the_temps_of_dead_writers_in_its_outputs(state: StateDir) -> None:
    import os

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dataset = state.dataset_dir("audiomuse")
    store_file = state.root / "embeddings" / "dsp" / "lib.h5"
    (dataset / "teachers").mkdir(parents=True)
    (store_file.parent / ".lib.parts").mkdir(parents=True)
    stale = [dataset / "teachers" / f".tmp-musicnn.h5.{dead}.a1b2c3d4",        # a teacher store being assembled
             store_file.parent / f".tmp-lib.h5.{dead}.zz__9988",
             store_file.parent / ".lib.parts" / f".tmp-part-000003.h5.{dead}.q1w2e3r4",
             state.stages_dir / f".tmp-thing_y.json.{dead}.abcdefgh"]
    kept = [dataset / "teachers" / f".tmp-clap.h5.{os.getpid()}.live0000",    # a live writer's
            dataset / ".tmp-audio.tar.part",                                  # a resumable download
            dataset / "teachers" / "musicnn.h5"]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")

    @stage_function
    def run_thing(state: StateDir, key: str, outputs: dict) -> None:
        run = begin_stage(state, "thing", key, {}, Resume.FRESH, outputs=outputs)
        run.complete()

    run_thing(state, "thing:x", {"dataset": dataset})
    run_thing(state, "thing:y", {"store": store_file})
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)
