"""Incremental embed: rows keyed by (track id, content hash), not by the whole manifest.

A changed manifest re-embeds only new and changed tracks, drops removed ones, keeps every other row
bit for bit, and the store equals one built from scratch on the final manifest. An interrupted
update resumes with --continue to the same store; a caption-only change embeds nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from progress_doubles import StopAfter
from musiccli import embed, store
from musiccli.embed import EmbedConfig, run_embed
from musiccli.errors import Interrupted, MtxError
from musiccli.manifest import CONTENT_HASH, Record, file_content_hash, write_manifest
from musiccli.state import Resume, StateDir, load_stage

SR = 16000


def _wave(seed: int, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    rng = np.random.default_rng(seed)
    return (0.2 * np.sin(2 * np.pi * (120 + 37 * seed) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def _record(root: Path, name: str, seed: int, caption: str | None = None, hashed: bool = True) -> Record:
    path = root / f"{name}.wav"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        sf.write(path, _wave(seed), SR)
    extra = {CONTENT_HASH: file_content_hash(path)} if hashed else {}
    return Record(id=name, audio_path=str(path), caption=caption or f"song {name}", duration=1.5, extra=extra)


def _cfg(manifest: str = "lib", **kw) -> EmbedConfig:
    base = dict(manifest=manifest, chunk_tracks=2, num_workers=0, device="cpu")
    base.update(kw)
    return EmbedConfig(**base)


def _read(path: Path) -> dict:
    with h5py.File(path) as f:
        out = {name: f[name][()] for name in f}
        out["attrs"] = {k: v for k, v in f.attrs.items()
                        if k not in ("created", "update_token", "manifest", "manifest_hash")}
    return out


def _assert_equal_stores(got: dict, want: dict, atol: float = 1e-6) -> None:
    """Same datasets, ids, hashes and attributes; vectors equal to float tolerance: the encoder sees
    new tracks in other batches than a from-scratch run does (rows kept are compared bit for bit
    separately)."""
    assert set(got) == set(want)
    for name in set(want) - {"attrs"}:
        if got[name].dtype.kind == "f":
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert got["attrs"] == want["attrs"]


@pytest.fixture()
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The audio files the stage decodes: the encoder's input, counted per track (--workers 0)."""
    calls: list[str] = []
    real = embed.decode_windows

    def counting(path, *args, **kwargs):
        calls.append(Path(path).stem)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(embed, "decode_windows", counting)
    return calls


def _scratch(tmp_path: Path, records: list[Record], **kw) -> dict:
    state = StateDir.resolve(tmp_path / "scratch")
    write_manifest(state.manifest_path("lib"), records)
    return _read(run_embed(state, _cfg(**kw)).path)


def _library(audio: Path) -> list[Record]:
    return [_record(audio, f"t{i}", i) for i in range(7)]


def _changed(audio: Path, records: list[Record]) -> list[Record]:
    """Every kind of change: t1 removed, t3 replaced by other audio, t2 re-captioned, t7/t8 added, order moved."""
    sf.write(audio / "t3.wav", _wave(33), SR)
    keep = [r for r in records if r.id not in ("t1", "t3")]
    keep[1] = Record(**{**keep[1].__dict__, "caption": "a brand new caption"})
    return [_record(audio, "t8", 8), *keep[:3], _record(audio, "t3", 33), _record(audio, "t7", 7), *keep[3:]]


@pytest.mark.parametrize("aggregation", ["stats", "none"])
@pytest.mark.slow
def test_update_embeds_only_new_and_changed_tracks(tmp_path: Path, decoded: list[str], aggregation: str) -> None:
    audio = tmp_path / "audio"
    records = _library(audio)
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    first = run_embed(state, _cfg(aggregation=aggregation))
    assert first.embedded == 7 and sorted(decoded) == [f"t{i}" for i in range(7)]
    before = _read(first.path)
    rows_before = {i.decode(): k for k, i in enumerate(before["ids"])}

    final = _changed(audio, records)
    write_manifest(state.manifest_path("lib"), final)
    decoded.clear()
    result = run_embed(state, _cfg(aggregation=aggregation))   # no --force, no --continue
    assert sorted(decoded) == ["t3", "t7", "t8"]                # the encoder saw only these
    assert result.embedded == 3 and result.updated and not result.skipped and result.n_ok == len(final)
    got = _read(result.path)
    assert [i.decode() for i in got["ids"]] == [r.id for r in final]
    for k, i in enumerate(got["ids"]):
        if i.decode() in ("t0", "t2", "t4", "t5", "t6"):     # unchanged: the very same row
            np.testing.assert_array_equal(got["embeddings"][k], before["embeddings"][rows_before[i.decode()]])
    decoded.clear()
    _assert_equal_stores(got, _scratch(tmp_path, final, aggregation=aggregation))
    assert load_stage(state, "embed:dsp:lib").status == "complete"

    # Nothing changed: no encoder work, and it says so.
    decoded.clear()
    again = run_embed(state, _cfg(aggregation=aggregation))
    assert again.skipped and again.embedded == 0 and decoded == []


def test_caption_only_change_embeds_nothing(tmp_path: Path, decoded: list[str]) -> None:
    audio = tmp_path / "audio"
    records = _library(audio)
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    path = run_embed(state, _cfg()).path
    before = _read(path)
    recaptioned = [Record(**{**r.__dict__, "caption": f"new words for {r.id}", "tags": ["x"]}) for r in records]
    write_manifest(state.manifest_path("lib"), recaptioned)
    decoded.clear()
    result = run_embed(state, _cfg())
    assert decoded == [] and result.embedded == 0
    _assert_equal_stores(_read(path), before, atol=0)


def test_records_without_a_content_hash_are_keyed_by_size_and_mtime(tmp_path: Path, decoded: list[str]) -> None:
    audio = tmp_path / "audio"
    records = [_record(audio, f"t{i}", i, hashed=False) for i in range(4)]
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    run_embed(state, _cfg())
    sf.write(audio / "t2.wav", _wave(22, 1.7), SR)   # rewritten: another size
    decoded.clear()
    result = run_embed(state, _cfg())
    assert decoded == ["t2"] and result.embedded == 1


def test_removed_tracks_drop_rows_and_failures_are_not_retried_by_an_update(tmp_path: Path,
                                                                             decoded: list[str]) -> None:
    audio = tmp_path / "audio"
    records = _library(audio)
    (audio / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    bad = Record(id="bad", audio_path=str(audio / "bad.wav"), caption="broken", duration=1.0,
                 extra={CONTENT_HASH: file_content_hash(audio / "bad.wav")})
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), [*records, bad])
    assert run_embed(state, _cfg()).n_failed == 1
    write_manifest(state.manifest_path("lib"), [bad, *records[2:]])
    decoded.clear()
    result = run_embed(state, _cfg())
    assert decoded == [] and result.n_ok == 5 and result.n_failed == 1   # the same broken file: not retried
    with store.EmbeddingStore(result.path) as st:
        assert st.ids == [r.id for r in records[2:]] and [f[0] for f in st.failures()] == ["bad"]
    _assert_equal_stores(_read(result.path), _scratch(tmp_path, [bad, *records[2:]]))
    decoded.clear()
    retried = run_embed(state, _cfg(resume=Resume.CONTINUE))          # --retry-failed tries it again
    assert decoded == ["bad"] and retried.retried == 1 and retried.n_failed == 1


def test_interrupted_update_resumes_to_the_same_store(tmp_path: Path, decoded: list[str]) -> None:
    audio = tmp_path / "audio"
    records = _library(audio)
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    run_embed(state, _cfg(chunk_tracks=1))
    final = _changed(audio, records)
    write_manifest(state.manifest_path("lib"), final)
    with pytest.raises(Interrupted):
        run_embed(state, _cfg(chunk_tracks=1), StopAfter(1))
    assert load_stage(state, "embed:dsp:lib").status == "partial"
    with pytest.raises(MtxError, match="interrupted embed found"):
        run_embed(state, _cfg(chunk_tracks=1))
    decoded.clear()
    result = run_embed(state, _cfg(chunk_tracks=1, resume=Resume.CONTINUE))
    assert len(decoded) == 2 and result.n_ok == len(final)     # the first new track was committed
    _assert_equal_stores(_read(result.path), _scratch(tmp_path, final, chunk_tracks=1))


def test_interrupted_first_embed_then_a_changed_manifest_starts_over_cleanly(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    records = _library(audio)
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    with pytest.raises(Interrupted):
        run_embed(state, _cfg(), StopAfter(3))
    final = _changed(audio, records)
    write_manifest(state.manifest_path("lib"), final)
    result = run_embed(state, _cfg(resume=Resume.CONTINUE))
    _assert_equal_stores(_read(result.path), _scratch(tmp_path, final))


def test_sharded_update_is_refused_with_a_hint(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    records = _library(audio)
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    run_embed(state, _cfg())
    write_manifest(state.manifest_path("lib"), records[:-1])
    with pytest.raises(MtxError, match="updated by one process"):
        run_embed(state, _cfg(shard="0/2"))


def test_truncated_store_is_noticed_when_read_as_complete(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), _library(audio))
    path = run_embed(state, _cfg()).path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MtxError, match="damaged") as err:
        run_embed(state, _cfg())
    assert "--force" in err.value.hint


def test_full_disk_is_one_line_before_hdf5_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    audio = tmp_path / "audio"
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), _library(audio))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(1 << 30, 1 << 30, 1 << 10))
    with pytest.raises(MtxError, match="no space left on device") as err:
        run_embed(state, _cfg())
    assert "--continue" in err.value.hint
    assert load_stage(state, "embed:dsp:lib").status == "failed"
    monkeypatch.undo()
    result = run_embed(state, _cfg(resume=Resume.CONTINUE))
    assert result.n_ok == 7


# --------------------------------------------------------------------------- kill -9 (subprocess)
_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from musiccli import embed, store
    from musiccli.embed import EmbedConfig, run_embed
    from musiccli.state import StateDir, Resume

    where, root = sys.argv[1], Path(sys.argv[2])
    if where == "encode":
        real = embed._commit
        def commit(*a, **k):
            out = real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)      # after the first committed chunk
            return out
        embed._commit = commit
    else:
        real = store._copy_runs
        def copy(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)      # while the composed store is half written
        store._copy_runs = copy
    run_embed(StateDir.resolve(root), EmbedConfig(manifest="lib", chunk_tracks=1, num_workers=0, device="cpu",
                                                  aggregation="none"))
""")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["encode", "compose"])
def test_kill_9_during_an_update_then_continue_equals_the_uninterrupted_store(tmp_path: Path, where: str) -> None:
    audio = tmp_path / "audio"
    records = _library(audio)
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("lib"), records)
    run_embed(state, _cfg(chunk_tracks=1, aggregation="none"))
    final = _changed(audio, records)
    write_manifest(state.manifest_path("lib"), final)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _KILLER, where, str(state.root)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    with pytest.raises(MtxError, match="interrupted embed found"):
        run_embed(state, _cfg(chunk_tracks=1, aggregation="none"))
    result = run_embed(state, _cfg(chunk_tracks=1, aggregation="none", resume=Resume.CONTINUE))
    _assert_equal_stores(_read(result.path), _scratch(tmp_path, final, chunk_tracks=1, aggregation="none"))
    assert not any(p.name.startswith(".tmp-") for p in result.path.parent.iterdir())
