"""``mtx embed --audio-encoder musicnn`` against musicnn 0.1.0's own TensorFlow output.

``fixtures/musicnn_tf_reference.npz`` holds what musicnn's ``extractor`` (TensorFlow 2.15.1,
librosa 0.8.1, resampy 0.2.2) returns for the clips of ``reference/musicnn_clips.py``:
per-patch penultimate features and taggrams of MSD_musicnn and MTT_musicnn, for 16 kHz and
44.1 kHz WAVs of 3 s, 12 s and 31 s (tones, drums, noise). ``reference/make_musicnn_reference.py``
regenerates it (its docstring has the venv commands); nothing here needs TensorFlow.

The clips are written as 16-bit WAVs and go through the real stage (``run_embed``: decode,
resample, window, encode, aggregate, store). Gates: every patch within 1e-3 (abs) of
TensorFlow, the track mean at cosine >= 0.9999, the same number of patches, and tag
probabilities within 1e-3 (track mean from the store; per patch from the encoder on the
stage's own windows). Skips when the ``musicnn`` wheel (the weights) is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from musiccli.audio import decode_windows
from musiccli.embed import EmbedConfig, run_embed
from musiccli.encoders import EncoderOptions, build_encoder, get_spec
from musiccli.manifest import Record, write_manifest
from musiccli.runtime import select_runtime
from musiccli.state import StateDir

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import musicnn_clips  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "musicnn_tf_reference.npz"
MODELS = ("MSD_musicnn", "MTT_musicnn")
PATCH_TOL = 1e-3
MEAN_COS = 0.9999
CLIPS = musicnn_clips.all_clips()


@pytest.fixture(scope="module")
def ref() -> np.lib.npyio.NpzFile:
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def wavs(ref, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("musicnn_ref_wavs")
    out = {}
    for name, kind, seconds, sr in CLIPS:
        samples = musicnn_clips.make_clip(kind, seconds, sr)
        # The same audio TensorFlow saw (the fixture records its hash).
        assert musicnn_clips.sha256(samples) == str(ref[f"{name}/sha256"]), name
        out[name] = root / f"{name}.wav"
        sf.write(out[name], samples, sr, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def stores(ref, wavs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """model -> {per-window vectors, offsets, track vectors, tag means} from run_embed."""
    if importlib.util.find_spec("musicnn") is None:
        pytest.skip("musicnn wheel not installed (pip install --no-deps musicnn)")
    state = StateDir.resolve(tmp_path_factory.mktemp("musicnn_ref_state"))
    records = [Record(id=name, audio_path=str(wavs[name]), caption=name, duration=float(seconds))
               for name, _, seconds, _ in CLIPS]
    out = {}
    for model in MODELS:
        write_manifest(state.manifest_path(model.lower()), records)
        result = run_embed(state, EmbedConfig(manifest=model.lower(), audio_encoder="musicnn", model=model,
                                              aggregation="none", tags=True, num_workers=0, device="cpu"))
        with h5py.File(result.path) as f:
            assert [s.decode() for s in f["ids"][()]] == [r.id for r in records]
            out[model] = {k: f[k][()] for k in ("windows", "window_offsets", "embeddings", "tag_probs")}
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fixture_is_small_and_names_its_versions(ref) -> None:
    assert FIXTURE.stat().st_size < 2_000_000
    assert str(ref["meta/tensorflow"]) == "2.15.1" and str(ref["meta/librosa"]) == "0.8.1"
    assert {n for n, *_ in CLIPS} == {k.split("/")[0] for k in ref.files if not k.startswith("meta/")}


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_embed_equals_tensorflow_per_patch_and_track_mean(ref, stores, model: str) -> None:
    got = stores[model]
    offsets = got["window_offsets"]
    for i, (name, _, _, sr) in enumerate(CLIPS):
        tf_patches = ref[f"{name}/{model}/penultimate"]
        ours = got["windows"][offsets[i]:offsets[i + 1]]
        assert ours.shape == tf_patches.shape, name                     # musicnn's patch grid
        assert np.abs(ours - tf_patches).max() <= PATCH_TOL, name
        assert _cos(got["embeddings"][i], tf_patches.mean(0)) >= MEAN_COS, name
        tf_tags = ref[f"{name}/{model}/taggram"]
        assert np.abs(got["tag_probs"][i] - tf_tags.mean(0)).max() <= PATCH_TOL, name


@pytest.mark.slow
def test_per_patch_tags_on_the_stage_windows(ref, wavs, stores, tmp_path: Path) -> None:
    """The taggram per patch, from the encoder on windows cut exactly as the stage cuts them."""
    spec = get_spec("musicnn")
    cache = tmp_path / "models"
    for model in MODELS:
        encoder = build_encoder("musicnn", EncoderOptions(model=model, cache_dir=cache), select_runtime("cpu", "fp32"))
        for name, _, _, _ in CLIPS:
            windows = decode_windows(wavs[name], spec.sample_rate, 48_000, 47_872, None, encoder.context_samples,
                                     encoder.patch_samples, spec.tail, spec.resampler, spec.edge_pad)
            _, probs = encoder.embed_windows_with_tags(torch.from_numpy(windows))
            assert np.abs(probs.numpy() - ref[f"{name}/{model}/taggram"]).max() <= PATCH_TOL, (model, name)


def test_the_shipped_extractor_repeats_the_first_patch(ref) -> None:
    """Why the fixture's features come from one batch: musicnn 0.1.0's extractor, at its shipped
    BATCH_SIZE of 1, returns the first patch's penultimate for every patch (a stale variable in
    its batch loop). Its track mean is therefore not the mean over patches; the fixture keeps it
    (``shipped_mean``) to show the size of that difference."""
    for model in MODELS:
        shipped = ref[f"tones_12s_16000/{model}/shipped_mean"]
        patches = ref[f"tones_12s_16000/{model}/penultimate"]
        np.testing.assert_allclose(shipped, patches[0], atol=1e-4)
        assert _cos(shipped, patches.mean(0)) < 0.999


# ----------------------------------------------------------------------------- the front end, fast


def test_reflect_edges_and_span_reads_equal_the_whole_decode(tmp_path: Path) -> None:
    """librosa < 0.10 reflects the signal at both ends; span reads (--max-windows) cut the same windows."""
    from musiccli.audio import frame_with_context

    wave = (np.arange(1000, dtype=np.float32) % 97) / 97
    framed = frame_with_context(wave, 600, 300, None, context=8, patch=400, edge_pad="reflect")
    padded = np.pad(wave, 8, mode="reflect")                # padded[k] is sample k - 8
    assert framed.shape == (3, 608)
    np.testing.assert_array_equal(framed[0], padded[:608])  # reflected before the start
    np.testing.assert_array_equal(framed[2, :416], padded[600:1016])  # samples 592..999, reflected past the end ...
    assert not framed[2, 416:].any()                        # ... then zeros
    for sr in (44_100, 16_000):
        path = tmp_path / f"noise_{sr}.wav"
        sf.write(path, musicnn_clips.make_clip("noise", 31, sr), sr, subtype="PCM_16")
        full = decode_windows(path, 16_000, 48_000, 47_872, None, 256, 47_616, "flush", "kaiser_best", "reflect")
        some = decode_windows(path, 16_000, 48_000, 47_872, 3, 256, 47_616, "flush", "kaiser_best", "reflect")
        np.testing.assert_array_equal(some, full[[0, 4, 9]])
