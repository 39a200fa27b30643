"""The embed stage end to end on tiny audio: failures, resume, kill -9, sharding, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
from musiccli.state import Resume, StateDir

N_GOOD = 16


@pytest.fixture(scope="module")
def audio_records(tmp_path_factory) -> list[Record]:
    """16 clips of 2-4 s at 16 kHz / 22.05 kHz (tones, noise, clicks), one corrupt file, one missing."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    records = []
    for i in range(N_GOOD):
        sr = 16000 if i % 2 else 22050
        dur = 2.0 + (i % 5) * 0.5
        t = np.arange(int(sr * dur)) / sr
        kind = i % 3
        if kind == 0:
            wave = 0.2 * np.sin(2 * np.pi * (110 * 2 ** (i / 12)) * t)
        elif kind == 1:
            wave = 0.1 * rng.standard_normal(len(t))
        else:
            wave = np.zeros(len(t))
            wave[:: int(sr * 0.5)] = 0.9
        path = root / f"clip{i:02d}.{'flac' if i % 4 == 0 else 'wav'}"
        sf.write(path, wave.astype(np.float32), sr)
        records.append(Record(id=f"clip{i:02d}", audio_path=str(path), caption=f"clip {i}", duration=dur))
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    records.insert(5, Record(id="corrupt", audio_path=str(corrupt), caption="bad", duration=3.0))
    records.insert(11, Record(id="missing", audio_path=str(root / "gone.wav"), caption="gone", duration=3.0))
    return records


def _state(root: Path, records: list[Record]) -> StateDir:
    state = StateDir.resolve(root)
    write_manifest(state.manifest_path("tiny"), records)
    return state


def _cfg(**kw) -> EmbedConfig:
    base = dict(chunk_tracks=4, num_workers=0, device="cpu")
    base.update(kw)
    return EmbedConfig(**base)


def _read(path: Path) -> tuple[list[str], np.ndarray, dict]:
    with h5py.File(path) as f:
        ids = [s.decode() for s in f["ids"][()]]
        return ids, f["embeddings"][()], {k: v for k, v in f.attrs.items() if k != "created"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, audio_records):
    """One uninterrupted run (2 DataLoader workers) that the other tests compare with."""
    state = _state(tmp_path_factory.mktemp("ref"), audio_records)
    result = run_embed(state, _cfg(num_workers=2))
    return result, _read(result.path)


def test_end_to_end_with_failures(reference, audio_records):
    result, (ids, emb, attrs) = reference
    assert result.assembled and not result.skipped
    assert result.n_ok == N_GOOD and result.n_failed == 2 and result.dim == 582
    assert dict(result.failures).keys() == {"corrupt", "missing"}
    assert "missing audio file" in dict(result.failures)["missing"]
    assert ids == [r.id for r in audio_records if r.id not in ("corrupt", "missing")]
    assert emb.shape == (N_GOOD, 582) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert attrs["encoder"] == "dsp" and attrs["dim"] == 582 and attrs["aggregation"] == "stats"
    assert attrs["sample_rate"] == 16000 and attrs["window"] == 3.0 and attrs["hop"] == 1.5
    assert attrs["manifest"] == "tiny" and len(attrs["manifest_hash"]) == 16
    assert not store.parts_dir(result.path).exists()
    # Sines, noise and clicks land far apart, identical kinds close together.
    d = lambda a, b: np.linalg.norm(emb[ids.index(a)] - emb[ids.index(b)])  # noqa: E731
    assert d("clip00", "clip03") < d("clip00", "clip01")


@pytest.mark.slow
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, audio_records, reference):
    state = _state(tmp_path, audio_records)
    with pytest.raises(Interrupted):
        run_embed(state, _cfg(), StopAfter(1))
    path = state.embeddings_path("dsp", "tiny")
    assert sorted(store.committed_parts(path)) == [0] and not path.exists()
    with pytest.raises(MtxError, match="interrupted embed found"):
        run_embed(state, _cfg())
    with pytest.raises(MtxError, match="aggregation: 'stats' -> 'mean'"):
        run_embed(state, _cfg(aggregation="mean", resume=Resume.CONTINUE))
    with pytest.raises(MtxError, match="chunk_tracks: 4 -> 3"):
        run_embed(state, _cfg(chunk_tracks=3, resume=Resume.CONTINUE))
    result = run_embed(state, _cfg(resume=Resume.CONTINUE))
    assert result.assembled and result.n_ok == N_GOOD and result.n_failed == 2
    ids, emb, attrs = _read(result.path)
    ref_ids, ref_emb, ref_attrs = reference[1]
    assert ids == ref_ids
    np.testing.assert_array_equal(emb, ref_emb)
    assert attrs == ref_attrs
    again = run_embed(state, _cfg())
    assert again.skipped and again.n_ok == N_GOOD and again.n_failed == 2
    forced = run_embed(state, _cfg(resume=Resume.FORCE, dtype="float16"))
    assert not forced.skipped and _read(forced.path)[1].dtype == np.float16


@pytest.mark.slow
def test_kill_9_then_continue(tmp_path, audio_records, reference):
    state = _state(tmp_path, audio_records)
    script = ("from musiccli.embed import EmbedConfig, run_embed\n"
              "from musiccli.state import StateDir\n"
              "import sys\n"
              "run_embed(StateDir.resolve(sys.argv[1]), EmbedConfig(chunk_tracks=2, num_workers=0, device='cpu'))\n")
    path = state.embeddings_path("dsp", "tiny")
    proc = subprocess.Popen([sys.executable, "-c", script, str(state.root)])
    try:
        deadline = time.time() + 60
        while not store.committed_parts(path) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    n_parts = len(store.committed_parts(path))
    assert n_parts >= 1
    run_embed(state, _cfg(chunk_tracks=2, resume=Resume.CONTINUE))
    ids, emb, _ = _read(path)
    # Bitwise equal to an uninterrupted run with the same chunking (encoder batches follow chunks)...
    clean = run_embed(_state(tmp_path / "clean", audio_records), _cfg(chunk_tracks=2))
    clean_ids, clean_emb, _ = _read(clean.path)
    assert ids == clean_ids == reference[1][0]
    np.testing.assert_array_equal(emb, clean_emb)
    # ...and equal up to float rounding to the reference, whose batches held 4 tracks.
    np.testing.assert_allclose(emb, reference[1][1], atol=1e-5)


@pytest.mark.slow
def test_sharded_equals_unsharded(tmp_path, audio_records, reference):
    state = _state(tmp_path, audio_records)
    first = run_embed(state, _cfg(shard="0/2"))
    assert not first.assembled and first.n_ok + first.n_failed == 10  # chunks 0, 2, 4 of 18 tracks
    second = run_embed(state, _cfg(shard="1/2"))
    assert second.assembled and second.n_ok == N_GOOD and second.n_failed == 2
    ids, emb, _ = _read(second.path)
    assert ids == reference[1][0]
    np.testing.assert_array_equal(emb, reference[1][1])
    assert run_embed(state, _cfg()).skipped  # the unsharded stage is complete too
    assert run_embed(state, _cfg(shard="0/2")).skipped


@pytest.mark.slow
def test_shards_then_continue_assembles(tmp_path, audio_records, reference):
    state = _state(tmp_path, audio_records)
    assert not run_embed(state, _cfg(shard="1/3")).assembled
    result = run_embed(state, _cfg(resume=Resume.CONTINUE))
    assert result.assembled
    np.testing.assert_array_equal(_read(result.path)[1], reference[1][1])


@pytest.mark.slow
def test_aggregation_none_keeps_windows(tmp_path, audio_records):
    state = _state(tmp_path, audio_records)
    result = run_embed(state, _cfg(aggregation="none", max_windows=2, window=1.0, hop=0.5))
    assert result.dim == 194
    with h5py.File(result.path) as f:
        offs = f["window_offsets"][()]
        counts = np.diff(offs)
        assert len(counts) == N_GOOD and counts.max() == 2 and counts.min() >= 1
        w, emb = f["windows"][()], f["embeddings"][()]
        np.testing.assert_allclose(emb[0], w[offs[0]:offs[1]].mean(0), rtol=1e-5, atol=1e-6)


def test_invalid_options(tmp_path, audio_records):
    state = _state(tmp_path, audio_records)
    with pytest.raises(MtxError, match="unknown audio encoder 'nope'") as e:
        run_embed(state, _cfg(audio_encoder="nope"))
    assert "dsp" in e.value.hint
    with pytest.raises(MtxError, match="--shard"):
        run_embed(state, _cfg(shard="2/2"))
    with pytest.raises(MtxError, match="unknown aggregation"):
        run_embed(state, _cfg(aggregation="max"))


def test_existing_store_of_other_kind_refused(tmp_path, audio_records):
    state = _state(tmp_path, audio_records)
    path = state.embeddings_path("dsp", "tiny")
    store.write_part(path, 0, ["x"], np.zeros((1, 10), np.float32))
    store.assemble(path, 10, "float32", {"encoder": "other"}, 1)
    store.remove_parts(path)
    with pytest.raises(MtxError, match="dim 10"):
        run_embed(state, _cfg())


_RANK_SCRIPT = """
import sys
from musiccli.embed import EmbedConfig, run_embed
from musiccli.errors import MtxError
from musiccli.state import StateDir
try:
    run_embed(StateDir.resolve(sys.argv[1]), EmbedConfig(chunk_tracks=4, num_workers=0, device="cpu"))
except MtxError as e:
    print("MtxError:", e.message)
    sys.exit(3)
"""


@pytest.mark.slow
def test_torchrun_refusal_on_rank0_reaches_every_rank(tmp_path, audio_records):
    """Under torchrun only rank 0 applies the stage contract; when it refuses, every rank must raise
    the same MtxError instead of waiting forever in a collective rank 0 never reaches."""
    import socket

    state = _state(tmp_path, audio_records)
    path = state.embeddings_path("dsp", "tiny")
    store.write_part(path, 0, ["x"], np.zeros((1, 10), np.float32))
    store.assemble(path, 10, "float32", {"encoder": "other"}, 1)
    store.remove_parts(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        # GLOO_SOCKET_IFNAME keeps gloo's own connections on loopback too (by default it binds
        # to whatever the hostname resolves to): the test never leaves 127.0.0.1.
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, str(state.root)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 3, out
        assert "MtxError:" in out and "dim 10" in out


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def embed_cli(cli):
    return lambda *args: cli("embed", *args)


@pytest.mark.slow
def test_cli_embed(embed_cli, state_dir, audio_records):
    _state(state_dir, audio_records)
    res = embed_cli("--chunk-tracks", "8", "--num-workers", "0", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n_ok"] == N_GOOD and data["n_failed"] == 2 and data["dim"] == 582
    res = embed_cli("--chunk-tracks", "8", "--num-workers", "0")
    assert res.exit_code == 0 and "already complete" in res.output
    res = embed_cli("--aggregation", "mean", "--num-workers", "0", "--continue")
    assert res.exit_code == 1 and "aggregation" in res.output


def test_cli_unknown_encoder(embed_cli, state_dir, audio_records):
    _state(state_dir, audio_records)
    res = embed_cli("--audio-encoder", "nope")
    assert res.exit_code == 1
    assert "unknown audio encoder 'nope'" in res.output and "dsp" in res.output


def test_cli_help_lists_options(embed_cli):
    res = embed_cli("--help")
    assert res.exit_code == 0
    for flag in ("--audio-encoder", "--aggregation", "--max-windows", "--shard", "--continue", "--force"):
        assert flag in res.output


def _options_of(command: str) -> set[str]:
    import typer.main

    from musiccli.cli.app import app

    group = typer.main.get_command(app)
    return {opt for p in group.commands[command].params for opt in getattr(p, "opts", [])}


@pytest.mark.slow
def test_cli_refusal_hint_names_only_real_options(embed_cli, state_dir, audio_records):
    """A complete store with another config is refused; the hint offers only flags `mtx embed` has."""
    import re

    _state(state_dir, audio_records)
    assert embed_cli("--num-workers", "0").exit_code == 0
    res = embed_cli("--num-workers", "0", "--dtype", "float16")
    assert res.exit_code == 1 and "dtype: 'float32' -> 'float16'" in res.output
    assert "output name" not in res.output
    flags = set(re.findall(r"--[a-z][a-z-]*", res.output))
    assert "--force" in flags and flags <= _options_of("embed")
