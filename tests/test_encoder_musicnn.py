"""The ``musicnn`` audio encoder in the embed stage: dims, weight cache, framing parity, --tags.

Tests that need the trained weights skip when the ``musicnn`` wheel
(``pip install --no-deps musicnn``) is not installed. The reference values in
``fixtures/musicnn_tf_reference.npz`` come from musicnn 0.1.0's own TensorFlow extractor (see
tests/test_musicnn_reference.py, which compares the whole stage with them).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from musiccli import store
from musiccli.embed import EmbedConfig, _frame, run_embed
from musiccli.encoders import EncoderOptions, build_encoder, get_spec
from musiccli.encoders import musicnn_torch as mt
from musiccli.errors import Interrupted, MtxError
from musiccli.manifest import Record, write_manifest
from musiccli.runtime import select_runtime
from musiccli.state import Resume, StateDir
from musiccli.tagging import check_tagger, tagging_encoders
from progress_doubles import StopAfter

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import musicnn_clips  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "musicnn_tf_reference.npz"
FIXTURE_CLIP = "drums_3s_16000"
TOL = 1e-3
SR = 16000
WINDOW, HOP, CTX = 48000, 47872, 256
PATCH = 47616  # 186 x 256: a window needs its last frame's center inside the file


@pytest.fixture(scope="module")
def musicnn_installed() -> None:
    if importlib.util.find_spec("musicnn") is None:
        pytest.skip("musicnn wheel not installed (pip install --no-deps musicnn)")


@pytest.fixture(scope="module")
def encoder(musicnn_installed: None, tmp_path_factory: pytest.TempPathFactory):
    options = EncoderOptions(cache_dir=tmp_path_factory.mktemp("models"))
    return build_encoder("musicnn", options, select_runtime("cpu", "auto"))


def _write_wav(path: Path, wave: np.ndarray) -> Path:
    sf.write(path, wave, SR, subtype="PCM_16")
    return path


def _fixture_wave() -> np.ndarray:
    """The 3 s, 16 kHz drums clip of the TF fixture (one musicnn patch)."""
    return musicnn_clips.make_clip("drums", 3, SR).astype(np.float32) / 32768


# ----------------------------------------------------------------------------- declaration


def test_spec_dims_and_framing_constants() -> None:
    spec = get_spec("musicnn")
    assert spec.sample_rate == SR and spec.default_aggregation == "mean" and spec.default_model == "MSD_musicnn"
    assert spec.tagger and "ISC" in (spec.license or "") and "Pons" in (spec.citation or "")
    # Window 3 s; hop = musicnn's patch hop of 187 frames x 256 samples.
    assert round(spec.window_s * SR) == WINDOW and round(spec.hop_s * SR) == HOP
    enc = build_encoder("musicnn", EncoderOptions(), select_runtime("cpu", "auto"))  # loads nothing
    assert enc.window_dim == 200 and enc.dim("mean") == 200 and enc.dim("stats") == 600
    assert enc.context_samples == CTX and len(enc.tag_names) == 50
    assert build_encoder("dsp", EncoderOptions(), select_runtime("cpu", "auto")).context_samples == 0
    assert "musicnn" in tagging_encoders() and "dsp" not in tagging_encoders()


def test_stage_framing_prepends_left_context() -> None:
    wave = np.arange(3 * HOP + 5000, dtype=np.float32)
    framed = _frame(wave, WINDOW, HOP, None, CTX)
    bare = _frame(wave, WINDOW, HOP, None, 0)
    assert framed.shape == (len(bare), CTX + WINDOW)
    np.testing.assert_array_equal(framed[:, CTX:], bare)            # same windows as without context
    np.testing.assert_array_equal(framed[0, :CTX], np.zeros(CTX))   # zeros before the file start
    np.testing.assert_array_equal(framed[1, :CTX], wave[HOP - CTX:HOP])


# ----------------------------------------------------------------------------- with the weights


@pytest.mark.slow
def test_batch_of_one_equals_batch_of_many(encoder) -> None:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, CTX + WINDOW)).astype(np.float32) * 0.1)
    with torch.inference_mode():
        emb, probs = encoder.embed_windows_with_tags(x)
        single = [encoder.embed_windows_with_tags(x[i:i + 1]) for i in range(2)]
    assert emb.shape == (2, 200) and probs.shape == (2, 50)
    torch.testing.assert_close(torch.cat([e for e, _ in single]), emb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([p for _, p in single]), probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encoder.embed_windows(x), emb)


@pytest.fixture(scope="module")
def tagged(musicnn_installed: None, tmp_path_factory: pytest.TempPathFactory):
    """run_embed --tags on 3 short WAVs (3, 3.5 and 5 s: one musicnn patch each)."""
    root = tmp_path_factory.mktemp("tagged")
    rng = np.random.default_rng(2)
    t = np.arange(int(5.0 * SR)) / SR
    waves = {
        "tone": 0.3 * np.sin(2 * np.pi * 220 * t[: 3 * SR]),
        "noise": 0.1 * rng.standard_normal(int(3.5 * SR)),
        "fixture": np.concatenate([_fixture_wave(), 0.2 * np.sin(2 * np.pi * 440 * t[: 2 * SR])]),
    }
    records = [Record(id=k, audio_path=str(_write_wav(root / f"{k}.wav", w.astype(np.float32))), caption=k,
                      duration=len(w) / SR) for k, w in waves.items()]
    state = StateDir.resolve(root / "state")
    write_manifest(state.manifest_path("tiny"), records)
    cfg = EmbedConfig(audio_encoder="musicnn", tags=True, num_workers=0, device="cpu", chunk_tracks=2)
    return state, records, run_embed(state, cfg)


def test_run_embed_with_tags(tagged) -> None:
    state, records, result = tagged
    # The converted weights are cached inside the state dir.
    assert (state.root / "models" / "musicnn" / "MSD_musicnn.safetensors").is_file()
    assert result.dim == 200 and result.n_ok == 3 and result.n_failed == 0
    with h5py.File(result.path) as f:
        assert [s.decode() for s in f["ids"][()]] == [r.id for r in records]
        assert f["embeddings"].shape == (3, 200)
        assert f.attrs["window"] == 3.0 and f.attrs["hop"] == pytest.approx(2.992)
        probs = f["tag_probs"][()]
        names = [s.decode() if isinstance(s, bytes) else s for s in f["tag_probs"].attrs["tag_names"]]
    assert probs.shape == (3, 50) and names == list(mt.MSD_LABELS)
    assert ((probs >= 0) & (probs <= 1)).all() and (probs.sum(1) > 0).all() and (probs.sum(1) < 50).all()
    # Per-track tags = mean of the window probabilities; the first window of "fixture" is the TF clip.
    ref = np.load(FIXTURE)
    fixture_wave = sf.read(records[2].audio_path, dtype="float32")[0]
    framed = torch.from_numpy(_frame(fixture_wave, WINDOW, HOP, None, CTX, PATCH, "flush", "reflect"))
    assert len(framed) == 1  # 5 s: one full patch, the tail dropped as musicnn does
    with torch.inference_mode():
        model = mt.load_musicnn("MSD_musicnn", state.root / "models" / "musicnn")
        _, win_probs = model.embed_audio(framed[:, CTX:], framed[:, :CTX])
    assert np.abs(win_probs[0].numpy() - ref[f"{FIXTURE_CLIP}/MSD_musicnn/taggram"][0]).max() <= TOL
    np.testing.assert_allclose(probs[2], win_probs.mean(0).numpy(), atol=1e-5)
    summary = result.tag_summary
    assert [t.id for t in summary.tracks] == ["tone", "noise", "fixture"] and summary.n_tracks == 3
    assert all(len(t.top) == 3 and t.top[0][1] >= t.top[1][1] for t in summary.tracks)
    assert sum(c for _, c in summary.top1_counts) == 3
    assert summary.tracks[2].top[0][0] == mt.MSD_LABELS[int(probs[2].argmax())]


@pytest.mark.slow
def test_like_file_embeds_as_the_stage_did(tagged) -> None:
    """`search --like FILE` frames a file on musicnn's patch grid, as the stage framed the store."""
    from musiccli.encoders.single import embed_file
    from musiccli.store import EmbeddingStore

    state, records, result = tagged
    with EmbeddingStore(result.path) as st:
        for r in records:
            np.testing.assert_allclose(embed_file(Path(r.audio_path), st.attrs), st.get([r.id])[0], atol=1e-5)


def test_tags_result_survives_skip(tagged) -> None:
    state, _, first = tagged
    again = run_embed(state, EmbedConfig(audio_encoder="musicnn", tags=True, num_workers=0, device="cpu",
                                         chunk_tracks=2))
    assert again.skipped and again.tag_summary == first.tag_summary
    # A store with tags also is the store a run without --tags asks for: nothing is redone.
    plain = run_embed(state, EmbedConfig(audio_encoder="musicnn", num_workers=0, device="cpu", chunk_tracks=2))
    assert plain.skipped and plain.tag_summary is None and plain.n_ok == 3 and plain.path == first.path


def test_tags_refused_without_a_tagger(tmp_path: Path) -> None:
    with pytest.raises(MtxError) as err:
        check_tagger("dsp")
    assert "no tagger" in err.value.message and "musicnn" in (err.value.hint or "")
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("tiny"), [Record(id="a", audio_path=str(tmp_path / "a.wav"), caption="a",
                                                        duration=1.0)])
    with pytest.raises(MtxError, match="no tagger"):
        run_embed(state, EmbedConfig(audio_encoder="dsp", tags=True, num_workers=0, device="cpu"))
    assert not list(state.root.rglob("*.json"))[1:]  # only the manifest: refused before any stage record


@pytest.mark.slow
def test_cli_tags_table_and_refusal(musicnn_installed: None, cli, state_dir: Path, tmp_path: Path) -> None:
    state = StateDir.resolve(state_dir)
    t = np.arange(int(3.2 * SR)) / SR
    records = [Record(id=f"c{i}", audio_path=str(_write_wav(tmp_path / f"c{i}.wav",
                                                            (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32))),
                      caption="tone", duration=3.2) for i, f in enumerate((220, 660))]
    write_manifest(state.manifest_path("tiny"), records)
    out = cli("embed", "--audio-encoder", "dsp", "--tags", "--num-workers", "0")
    assert out.exit_code == 1 and "no tagger" in out.output and "musicnn" in out.output
    out = cli("embed", "--audio-encoder", "musicnn", "--tags", "--num-workers", "0")
    assert out.exit_code == 0, out.output
    assert "top tags" in out.output and "most frequent top-1 tags" in out.output and "c1" in out.output


# ----------------------------------------------------------------------------- tags for a finished store
def _untagged_copy(tagged, tmp_path: Path) -> tuple[StateDir, EmbedConfig]:
    """A new state dir with the `tagged` fixture's manifest, embedded without --tags."""
    src_state, records, _ = tagged
    state = StateDir.resolve(tmp_path / "state")
    write_manifest(state.manifest_path("tiny"), records)
    (state.root / "models").symlink_to(src_state.root / "models")  # the converted weights, not converted again
    cfg = EmbedConfig(audio_encoder="musicnn", num_workers=0, device="cpu", chunk_tracks=2)
    run_embed(state, cfg)
    return state, cfg


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_tags_for_a_finished_store_keep_its_embeddings(tagged, tmp_path: Path) -> None:
    _, records, one_pass = tagged
    state, cfg = _untagged_copy(tagged, tmp_path)
    store_path = state.embeddings_path("musicnn", "tiny")
    before, mtime = _digest(store_path), store_path.stat().st_mtime_ns

    result = run_embed(state, replace(cfg, tags=True))
    assert result.tags_only and not result.skipped and result.n_ok == 3 and result.n_failed == 0
    assert result.tags_path == store_path.with_name("tiny.tags.h5") and result.tags_path.is_file()
    assert _digest(store_path) == before and store_path.stat().st_mtime_ns == mtime  # not re-embedded
    with h5py.File(result.tags_path) as side, h5py.File(one_pass.path) as whole:
        assert [s.decode() for s in side["ids"][()]] == [r.id for r in records]
        assert "embeddings" not in side
        np.testing.assert_allclose(side["tag_probs"][()], whole["tag_probs"][()], atol=1e-5)
        assert list(side["tag_probs"].attrs["tag_names"]) == list(whole["tag_probs"].attrs["tag_names"])
    assert [t.top for t in result.tag_summary.tracks] == [t.top for t in one_pass.tag_summary.tracks]
    assert not store.parts_dir(result.tags_path).exists()

    again = run_embed(state, replace(cfg, tags=True))  # complete: nothing computed, same summary
    assert again.skipped and again.tags_only and again.tag_summary == result.tag_summary
    plain = run_embed(state, cfg)
    assert plain.skipped and not plain.tags_only

    # --force redoes everything: one pass with tags inside the store; the side file goes with the old store.
    forced = run_embed(state, replace(cfg, tags=True, resume=Resume.FORCE))
    assert not forced.tags_only and not result.tags_path.exists()
    with h5py.File(store_path) as f:
        assert f["tag_probs"].shape == (3, 50)


@pytest.mark.slow
def test_tags_for_a_finished_store_resume(tagged, tmp_path: Path) -> None:
    state, cfg = _untagged_copy(tagged, tmp_path)
    tag_cfg = replace(cfg, tags=True)
    with pytest.raises(Interrupted):
        run_embed(state, tag_cfg, StopAfter(2))  # stops after the first chunk of 2 tracks is committed
    side = store.tags_path(state.embeddings_path("musicnn", "tiny"))
    assert not side.exists() and len(store.committed_parts(side)) == 1
    with pytest.raises(MtxError, match="interrupted embed found"):
        run_embed(state, tag_cfg)
    resumed = run_embed(state, replace(tag_cfg, resume=Resume.CONTINUE))
    assert resumed.tags_only and resumed.n_ok == 3
    with h5py.File(side) as f:
        resumed_probs = f["tag_probs"][()]

    fresh_state, _ = _untagged_copy(tagged, tmp_path / "fresh")
    whole = run_embed(fresh_state, tag_cfg)
    with h5py.File(whole.tags_path) as f:
        np.testing.assert_array_equal(resumed_probs, f["tag_probs"][()])
    assert resumed.tag_summary == whole.tag_summary


@pytest.mark.slow
def test_cli_tags_for_a_finished_store_names_tracks(musicnn_installed: None, cli, state_dir: Path,
                                                    tmp_path: Path) -> None:
    state = StateDir.resolve(state_dir)
    t = np.arange(int(3.2 * SR)) / SR
    records = [Record(id=f"lib-{i:04d}", audio_path=str(_write_wav(tmp_path / f"t{i}.wav",
                                                                   (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32))),
                      caption="tone", duration=3.2, artist=artist, title=title)
               for i, (f, artist, title) in enumerate([(220, "Koji Kondo", "Overworld"), (660, None, "Untitled"),
                                                       (440, None, None)])]
    write_manifest(state.manifest_path("lib"), records)
    assert cli("embed", "--audio-encoder", "musicnn", "--num-workers", "0").exit_code == 0
    out = cli("embed", "--audio-encoder", "musicnn", "--tags", "--num-workers", "0")
    assert out.exit_code == 0, out.output
    assert "computed the zero-shot tags only" in out.output and "lib.tags.h5" in out.output
    assert "Koji Kondo - Overworld" in out.output and "Untitled" in out.output
    assert "lib-0000" not in out.output and "lib-0002" in out.output  # the id only where nothing else is known
    data = cli("embed", "--audio-encoder", "musicnn", "--tags", "--num-workers", "0", "--json")
    payload = json.loads(data.stdout)
    first = payload["tag_summary"]["tracks"][0]
    assert (first["id"], first["artist"], first["title"]) == ("lib-0000", "Koji Kondo", "Overworld")


# ----------------------------------------------------------------------------- whole-file parity


def _musicnn_patch_count(n_samples: int) -> int:
    """musicnn's own rule: ``n_frames = 1 + n // 256``, patches at ``range(0, n_frames - 187 + 1, 187)``."""
    last_frame = 1 + n_samples // mt.FFT_HOP - mt.N_FRAMES + 1
    return len(range(0, last_frame, mt.N_FRAMES)) if last_frame > 0 else 1


def test_stage_tail_rule() -> None:
    patch = build_encoder("musicnn", EncoderOptions(), select_runtime("cpu", "auto")).patch_samples
    assert patch == (mt.N_FRAMES - 1) * mt.FFT_HOP == PATCH
    for n in (12 * SR, 3 * HOP + patch, 3 * HOP + patch - 1, 3 * HOP + WINDOW + 100, patch, 20 * SR + 7):
        framed = _frame(np.ones(n, dtype=np.float32), WINDOW, HOP, None, CTX, patch)
        assert len(framed) == _musicnn_patch_count(n), n
        # Zeros before the file start and past its end, never repeated audio.
        assert framed.sum() == sum(min(n, s + WINDOW) - max(0, s - CTX) for s in range(0, len(framed) * HOP, HOP))
    short = _frame(np.ones(SR, dtype=np.float32), WINDOW, HOP, None, CTX, patch)  # shorter than one patch
    assert short.shape == (1, CTX + WINDOW) and short[0, CTX:CTX + SR].all() and not short[0, CTX + SR:].any()
    # --max-windows: evenly spaced windows of the same grid.
    wave = np.arange(12 * SR, dtype=np.float32)
    full = _frame(wave, WINDOW, HOP, None, CTX, patch)
    np.testing.assert_array_equal(_frame(wave, WINDOW, HOP, 2, CTX, patch), full[[0, -1]])
