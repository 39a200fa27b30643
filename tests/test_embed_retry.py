"""`mtx embed --retry-failed`: embed only the tracks that failed, merge them into the finished store.

A store made with broken files is complete with failures; once the files are fixed, a retry decodes
only those tracks, and the store then equals one embedded from the fixed files in one go (same ids in
manifest order, same vectors, same extra datasets).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from progress_doubles import StopAfter
from musiccli import store
from musiccli.embed import EmbedConfig, run_embed
from musiccli.errors import Interrupted, MtxError
from musiccli.manifest import Record, write_manifest
from musiccli.state import Resume, StateDir, load_stage

SR = 16000
N = 8
BROKEN = (2, 5)          # indices of the files written broken at first
TOL = 1e-6


def _wave(i: int) -> np.ndarray:
    t = np.arange(int(SR * (2.0 + 0.5 * (i % 3)))) / SR
    rng = np.random.default_rng(i)
    return (0.2 * np.sin(2 * np.pi * (150 + 60 * i) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def _write_good(path: Path, i: int) -> None:
    sf.write(path, _wave(i), SR)


def _write_broken(path: Path) -> None:
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)


def _library(root: Path, broken: tuple[int, ...] = BROKEN) -> list[Record]:
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(N):
        path = root / f"track{i}.wav"
        _write_broken(path) if i in broken else _write_good(path, i)
        records.append(Record(id=f"track{i}", audio_path=str(path), caption=f"track {i}",
                              duration=len(_wave(i)) / SR))
    return records


def _state(root: Path, records: list[Record], name: str = "lib") -> StateDir:
    state = StateDir.resolve(root)
    write_manifest(state.manifest_path(name), records)
    return state


def _cfg(**kw) -> EmbedConfig:
    base = dict(manifest="lib", chunk_tracks=3, num_workers=0, device="cpu")
    base.update(kw)
    return EmbedConfig(**base)


def _read(path: Path) -> dict[str, np.ndarray | list[str] | dict]:
    with h5py.File(path) as f:
        out = {name: f[name][()] for name in f if name != "ids"}
        out["ids"] = [s.decode() for s in f["ids"][()]]
        out["attrs"] = {k: v for k, v in f.attrs.items() if k not in ("created", "update_token")}  # bookkeeping
        if "tag_probs" in f:
            out["tag_names"] = list(f["tag_probs"].attrs["tag_names"])
    return out


def _assert_same_store(got: dict, want: dict) -> None:
    assert got["ids"] == want["ids"]
    assert set(got) == set(want)
    for name in set(want) - {"ids", "attrs", "tag_names"}:
        assert got[name].shape == want[name].shape, name
        if got[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], atol=TOL, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert got["attrs"] == want["attrs"]
    assert got.get("tag_names") == want.get("tag_names")


def _clean_store(tmp_path: Path, records: list[Record], **kw) -> dict:
    """The reference: the same (fixed) files and manifest, embedded in one run in another state dir."""
    state = _state(tmp_path / "clean-state", records)
    result = run_embed(state, _cfg(**kw))
    assert result.n_failed == 0
    return _read(result.path)


def _fix(records: list[Record], which: tuple[int, ...] = BROKEN) -> None:
    for i in which:
        _write_good(Path(records[i].audio_path), i)


# --------------------------------------------------------------------------- the core function
@pytest.mark.parametrize("aggregation", ["stats", "none"])
@pytest.mark.slow
def test_retry_embeds_only_the_failed_tracks_and_equals_a_clean_run(tmp_path: Path, decoded: list[str],
                                                                    aggregation: str) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    first = run_embed(state, _cfg(aggregation=aggregation))
    assert first.n_ok == N - len(BROKEN) and first.n_failed == len(BROKEN)
    assert load_stage(state, "embed:dsp:lib").status == "complete-with-failures"
    _fix(records)
    decoded.clear()
    result = run_embed(state, _cfg(aggregation=aggregation, resume=Resume.CONTINUE))
    assert sorted(decoded) == sorted(f"track{i}.wav" for i in BROKEN)   # only the failed tracks
    assert result.retried == len(BROKEN) and result.n_ok == N and result.n_failed == 0 and not result.failures
    record = load_stage(state, "embed:dsp:lib")
    assert record.status == "complete" and record.failed_items == 0 and record.result["n_ok"] == N
    assert not store.parts_dir(result.path).exists()
    _assert_same_store(_read(result.path), _clean_store(tmp_path, records, aggregation=aggregation))
    # Complete now: a further retry decodes nothing.
    decoded.clear()
    again = run_embed(state, _cfg(aggregation=aggregation, resume=Resume.CONTINUE))
    assert again.skipped and again.n_failed == 0 and decoded == []


def test_tracks_that_still_fail_stay_listed(tmp_path: Path, decoded: list[str]) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg())
    _fix(records, (BROKEN[0],))
    decoded.clear()
    result = run_embed(state, _cfg(resume=Resume.CONTINUE))
    assert sorted(decoded) == sorted(f"track{i}.wav" for i in BROKEN)
    assert result.retried == 2 and result.n_ok == N - 1 and result.n_failed == 1
    assert [i for i, _ in result.failures] == [f"track{BROKEN[1]}"]
    record = load_stage(state, "embed:dsp:lib")
    assert record.status == "complete-with-failures" and record.failed_items == 1
    with store.EmbeddingStore(result.path) as st:
        assert st.ids == [r.id for i, r in enumerate(records) if i != BROKEN[1]]   # manifest order
    # The one left fails again the same way: still usable, still complete with failures (never "failed").
    decoded.clear()
    again = run_embed(state, _cfg(resume=Resume.CONTINUE))
    assert decoded == [f"track{BROKEN[1]}.wav"] and again.n_failed == 1
    assert load_stage(state, "embed:dsp:lib").status == "complete-with-failures"
    # A fresh run over it is a no-op that keeps the count.
    decoded.clear()
    fresh = run_embed(state, _cfg())
    assert fresh.skipped and fresh.n_failed == 1 and decoded == []


@pytest.mark.slow
def test_interrupted_retry_resumes_to_the_same_store(tmp_path: Path, decoded: list[str]) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg(chunk_tracks=1))
    _fix(records)
    decoded.clear()
    with pytest.raises(Interrupted):
        run_embed(state, _cfg(chunk_tracks=1, resume=Resume.CONTINUE), StopAfter(1))
    assert load_stage(state, "embed:dsp:lib").status == "partial"
    with pytest.raises(MtxError, match="interrupted embed found"):
        run_embed(state, _cfg(chunk_tracks=1))
    with pytest.raises(MtxError, match="chunk_tracks: 1 -> 2"):
        run_embed(state, _cfg(chunk_tracks=2, resume=Resume.CONTINUE))
    decoded.clear()
    result = run_embed(state, _cfg(chunk_tracks=1, resume=Resume.CONTINUE))
    assert decoded == [f"track{BROKEN[1]}.wav"]        # the first retried chunk was committed
    assert result.retried == 2 and result.n_ok == N and result.n_failed == 0
    _assert_same_store(_read(result.path), _clean_store(tmp_path, records, chunk_tracks=1))


@pytest.mark.slow
def test_retry_stopped_after_the_merge_only_records_it(tmp_path: Path, decoded: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg())
    _fix(records)
    real_merge = store.compose

    def merge_then_stop(*args, **kwargs):
        real_merge(*args, **kwargs)
        raise Interrupted("stopped")

    monkeypatch.setattr(store, "compose", merge_then_stop)
    with pytest.raises(Interrupted):
        run_embed(state, _cfg(resume=Resume.CONTINUE))
    monkeypatch.setattr(store, "compose", real_merge)
    decoded.clear()
    result = run_embed(state, _cfg(resume=Resume.CONTINUE))
    assert decoded == [] and result.retried == 2 and result.n_ok == N and result.n_failed == 0
    assert load_stage(state, "embed:dsp:lib").status == "complete"
    _assert_same_store(_read(result.path), _clean_store(tmp_path, records))


@pytest.mark.slow
def test_sharded_store_is_retried_by_one_process(tmp_path: Path, decoded: list[str]) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg(shard="0/2"))
    assert run_embed(state, _cfg(shard="1/2")).assembled
    _fix(records)
    with pytest.raises(MtxError, match="retried by one process") as err:
        run_embed(state, _cfg(shard="0/2", resume=Resume.CONTINUE))
    assert "--retry-failed` without --shard" in err.value.hint
    decoded.clear()
    result = run_embed(state, _cfg(resume=Resume.CONTINUE))
    assert sorted(decoded) == sorted(f"track{i}.wav" for i in BROKEN) and result.n_failed == 0
    _assert_same_store(_read(result.path), _clean_store(tmp_path, records))


def test_retry_with_another_config_is_refused(tmp_path: Path) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg())
    with pytest.raises(MtxError, match="different config: aggregation"):
        run_embed(state, _cfg(aggregation="mean", resume=Resume.CONTINUE))


def test_force_discards_a_retry_in_flight(tmp_path: Path) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg(chunk_tracks=1))
    _fix(records)
    with pytest.raises(Interrupted):
        run_embed(state, _cfg(chunk_tracks=1, resume=Resume.CONTINUE), StopAfter(1))
    result = run_embed(state, _cfg(chunk_tracks=1, resume=Resume.FORCE))
    assert result.retried == 0 and result.n_ok == N and not store.parts_dir(result.path).exists()


# --------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_retry_failed(cli, state_dir: Path, tmp_path: Path, decoded: list[str]) -> None:
    records = _library(tmp_path / "audio")
    _state(state_dir, records)
    args = ("embed", "--audio-encoder", "dsp", "--manifest", "lib", "--workers", "0", "--chunk-tracks", "3")
    first = cli(*args)
    assert first.exit_code == 0 and "2 track(s) failed" in first.output
    fresh = cli(*args)
    assert fresh.exit_code == 0 and "complete with 2 failed track(s)" in fresh.output
    assert "--retry-failed" in fresh.output
    _fix(records)
    decoded.clear()
    res = cli(*args, "--retry-failed")
    assert res.exit_code == 0, res.output
    assert "retried 2 failed track(s): 2 embedded" in res.output and sorted(decoded) == ["track2.wav", "track5.wav"]
    decoded.clear()
    noop = cli(*args, "--retry-failed")
    assert noop.exit_code == 0 and "nothing to retry" in noop.output and decoded == []


def test_cli_continue_on_a_store_with_failures_retries_them(cli, state_dir: Path, tmp_path: Path,
                                                            decoded: list[str]) -> None:
    """As for `download`: --continue on a store that is complete with failures retries only them."""
    records = _library(tmp_path / "audio")
    _state(state_dir, records)
    args = ("embed", "--audio-encoder", "dsp", "--manifest", "lib", "--workers", "0")
    assert cli(*args).exit_code == 0
    _fix(records)
    decoded.clear()
    res = cli(*args, "--continue", "--json")
    assert res.exit_code == 0, res.output
    assert sorted(decoded) == ["track2.wav", "track5.wav"]
    assert '"retried": 2' in res.output and '"n_failed": 0' in res.output


# --------------------------------------------------------------------------- stores with tags
@pytest.fixture(scope="module")
def musicnn_installed() -> None:
    if importlib.util.find_spec("musicnn") is None:
        pytest.skip("musicnn wheel not installed (pip install --no-deps musicnn)")


@pytest.mark.slow
def test_retry_on_a_store_with_tags_merges_them(musicnn_installed: None, tmp_path: Path,
                                                decoded: list[str]) -> None:
    records = _library(tmp_path / "audio", broken=(1,))[:3]
    state = _state(tmp_path / "state", records)
    models = tmp_path / "models"
    # One window per encoder batch in both runs: musicnn's float32 convolutions round differently
    # (by about 3e-6) with the batch size, which is not what this test is about.
    cfg = dict(audio_encoder="musicnn", tags=True, chunk_tracks=2, batch_size=1)
    first = run_embed(state, _cfg(**cfg))
    assert first.n_failed == 1
    shutil.copytree(state.root / "models", models)   # the converted weights, for the clean run below
    _fix(records, (1,))
    decoded.clear()
    # Without --tags: the store has them, so the retried track gets them too.
    result = run_embed(state, _cfg(audio_encoder="musicnn", chunk_tracks=2, batch_size=1, resume=Resume.CONTINUE))
    assert decoded == ["track1.wav"] and result.n_ok == 3 and result.n_failed == 0
    assert result.tag_summary is not None and result.tag_summary.n_tracks == 3
    clean_state = _state(tmp_path / "clean", records)
    shutil.copytree(models, clean_state.root / "models")
    clean = run_embed(clean_state, _cfg(**cfg))
    _assert_same_store(_read(result.path), _read(clean.path))


@pytest.mark.slow
def test_retry_removes_the_tag_side_file_of_the_previous_store(musicnn_installed: None, tmp_path: Path) -> None:
    records = _library(tmp_path / "audio", broken=(1,))[:3]
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg(audio_encoder="musicnn", batch_size=1))
    tagged = run_embed(state, _cfg(audio_encoder="musicnn", batch_size=1, tags=True))
    side = store.tags_path(tagged.path)
    assert tagged.tags_only and side.is_file()
    _fix(records, (1,))
    result = run_embed(state, _cfg(audio_encoder="musicnn", batch_size=1, resume=Resume.CONTINUE))
    assert result.retried == 1 and result.n_failed == 0 and not side.exists()
    again = run_embed(state, _cfg(audio_encoder="musicnn", batch_size=1, tags=True))
    assert again.tags_only and again.n_ok == 3 and side.is_file()
    with h5py.File(side) as f:
        assert [i.decode() for i in f["ids"][()]] == [r.id for r in records]


@pytest.mark.slow
def test_tags_asked_on_an_untagged_store_with_failures(musicnn_installed: None, tmp_path: Path) -> None:
    records = _library(tmp_path / "audio")
    state = _state(tmp_path / "state", records)
    run_embed(state, _cfg(audio_encoder="musicnn"))
    with pytest.raises(MtxError, match="retry its failed tracks without --tags first"):
        run_embed(state, _cfg(audio_encoder="musicnn", tags=True, resume=Resume.CONTINUE))


# --------------------------------------------------------------------------- store.merge
def _write_store(path: Path, ids: list[str], dim: int = 3, windows: list[int] | None = None,
                 tags: bool = False) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=store.STR_DTYPE)
        f.create_dataset("embeddings", data=np.array([[float(i[1:])] * dim for i in ids], np.float32).reshape(-1, dim))
        if tags:
            ds = f.create_dataset("tag_probs", data=np.array([[float(i[1:]) / 10] * 2 for i in ids], np.float32))
            ds.attrs.create("tag_names", data=["a", "b"], dtype=store.STR_DTYPE)
        if windows is not None:
            rows = [np.full((n, 2), float(i[1:]), np.float32) for i, n in zip(ids, windows)]
            f.create_dataset("windows", data=np.concatenate(rows))
            f.create_dataset("window_offsets", data=np.concatenate([[0], np.cumsum(windows)]).astype(np.int64))
        f.attrs["encoder"] = "x"
        f.attrs["created"] = "old"


def test_merge_follows_the_given_order(tmp_path: Path) -> None:
    base, extra = tmp_path / "base.h5", tmp_path / "extra.h5"
    _write_store(base, ["t1", "t2", "t4", "t7"], windows=[1, 2, 1, 3], tags=True)
    _write_store(extra, ["t6", "t0", "t3"], windows=[2, 1, 1], tags=True)
    order = [f"t{i}" for i in range(9)]
    n = store.merge(base, extra, order, {"created": "new"})
    assert n == 7
    got = _read(base)
    want = ["t0", "t1", "t2", "t3", "t4", "t6", "t7"]
    assert got["ids"] == want
    np.testing.assert_array_equal(got["embeddings"][:, 0], [float(i[1:]) for i in want])
    np.testing.assert_array_equal(got["tag_probs"][:, 1], np.float32([float(i[1:]) / 10 for i in want]))
    counts = {"t1": 1, "t2": 2, "t4": 1, "t7": 3, "t6": 2, "t0": 1, "t3": 1}
    np.testing.assert_array_equal(np.diff(got["window_offsets"]), [counts[i] for i in want])
    np.testing.assert_array_equal(got["windows"][:, 0], [float(i[1:]) for i in want for _ in range(counts[i])])
    assert got["tag_names"] == [b"a", b"b"] or got["tag_names"] == ["a", "b"]
    assert got["attrs"]["count"] == 7 and got["attrs"]["encoder"] == "x"
    with h5py.File(base) as f:
        assert f.attrs["created"] == "new"
    with store.EmbeddingStore(base) as st:   # a valid store
        assert len(st) == 7


def test_merge_into_a_store_without_rows(tmp_path: Path) -> None:
    """A store whose tracks all failed has no windows at all; the retried ones bring them."""
    base, extra = tmp_path / "base.h5", tmp_path / "extra.h5"
    with h5py.File(base, "w") as f:
        f.create_dataset("ids", data=np.array([], dtype=object), dtype=store.STR_DTYPE)
        f.create_dataset("embeddings", data=np.zeros((0, 3), np.float32))
    _write_store(extra, ["t2", "t1"], windows=[2, 1])
    assert store.merge(base, extra, ["t1", "t2"]) == 2
    got = _read(base)
    assert got["ids"] == ["t1", "t2"] and got["windows"].shape == (3, 2)
    np.testing.assert_array_equal(got["window_offsets"], [0, 1, 3])
    np.testing.assert_array_equal(got["windows"][:, 0], [1.0, 2.0, 2.0])


@pytest.mark.parametrize("extra_kw, order, match", [
    ({"tags": False}, None, "only one of the stores has `tag_probs`"),
    ({"tags": True}, ["t1", "t2"], "not in the manifest"),
])
def test_merge_refuses_mismatched_stores(tmp_path: Path, extra_kw: dict, order: list[str] | None,
                                         match: str) -> None:
    base, extra = tmp_path / "base.h5", tmp_path / "extra.h5"
    _write_store(base, ["t1", "t2"], tags=True)
    _write_store(extra, ["t3"], **extra_kw)
    with pytest.raises(MtxError, match=match):
        store.merge(base, extra, order or ["t1", "t2", "t3"])
    assert _read(base)["ids"] == ["t1", "t2"]   # untouched
