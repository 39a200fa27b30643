"""The offline ``dsp`` encoder: dimensions, determinism, batch independence, musical sense."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musiccli.encoders import EncoderOptions, aggregate, build_encoder, encoder_names, get_spec
from musiccli.encoders import dsp
from musiccli.runtime import select_runtime

SR = 16000
N = 48000  # one 3 s window


@pytest.fixture(scope="module")
def enc():
    return build_encoder("dsp", EncoderOptions(), select_runtime("cpu"))


def _clicks(bpm: float, rng: np.random.Generator, n: int = N) -> np.ndarray:
    x = np.zeros(n + 400)
    for s in np.arange(0, n, 60.0 / bpm * SR).astype(int):
        x[s:s + 200] += np.exp(-np.arange(200) / 30.0) * rng.standard_normal(200)
    return 0.5 * x[:n]


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(N) / SR
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63))  # A minor
    return {
        "distorted_noise": 0.3 * np.tanh(1.5 * rng.standard_normal(N)),
        "sine_pad": 0.1 * chord * (0.6 + 0.4 * np.sin(2 * np.pi * 0.2 * t)),
        "clicks_120": _clicks(120, rng),
    }


def test_registered_and_dimension_arithmetic(enc):
    assert "dsp" in encoder_names()
    spec = get_spec("dsp")
    assert (spec.sample_rate, spec.window_s, spec.hop_s, spec.default_aggregation) == (16000, 3.0, 1.5, "stats")
    assert dsp.WINDOW_DIM == 128 + 12 + 38 + 16 == 194
    assert enc.window_dim == 194
    assert enc.dim("mean") == 194 and enc.dim("none") == 194 and enc.dim("stats") == 582
    out = enc.embed_windows(torch.randn(5, N) * 0.1)
    assert out.shape == (5, 194) and out.dtype == torch.float32
    assert aggregate(out.numpy(), "stats").shape == (582,)
    assert aggregate(out.numpy(), "mean").shape == (194,)


@pytest.mark.slow
def test_deterministic_and_batch_independent(enc):
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((7, N)) * 0.1, dtype=torch.float32)
    x[3] = torch.tensor(_signals()["sine_pad"], dtype=torch.float32)
    many = enc.embed_windows(x)
    again = enc.embed_windows(x)
    assert torch.equal(many, again)
    for i in (0, 3, 6):
        one = enc.embed_windows(x[i:i + 1])
        torch.testing.assert_close(one[0], many[i], atol=1e-5, rtol=1e-5)
    # A new encoder instance gives the same numbers (no state carried between batches).
    other = build_encoder("dsp", EncoderOptions(), select_runtime("cpu"))
    assert torch.equal(other.embed_windows(x), many)


def test_features_are_standardised_and_finite(enc):
    x = torch.tensor(np.stack(list(_signals().values())), dtype=torch.float32)
    silence = torch.zeros(1, N)
    out = enc.embed_windows(torch.cat([x, silence]))
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 8.0
    # Rough unit scale on the musical (non-degenerate) signals.
    assert 0.2 < out[:3].std().item() < 3.0


def test_features_tell_timbre_and_rhythm_apart(enc):
    sig = _signals()
    x = torch.tensor(np.stack(list(sig.values())), dtype=torch.float32)
    f = enc.embed_windows(x).numpy()
    names = list(sig)
    # Pairwise distances are large compared to the jitter of one signal with different noise.
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.linalg.norm(f[i] - f[j]) > 5.0, (names[i], names[j])
    spectral = slice(128, 140)
    flatness_mean = spectral.start + 6
    assert f[0, flatness_mean] > f[1, flatness_mean] + 1.0  # noise is flat, the pad is tonal
    rhythm = f[:, 128 + 12 + 38:]
    onset_mean, bands, clarity, tempo = rhythm[:, 0], rhythm[:, 4:14], rhythm[:, 14], rhythm[:, 15]
    assert clarity[2] > clarity[1] + 1.0 and clarity[2] > clarity[0] + 1.0
    assert onset_mean[2] > onset_mean[1]
    # The click train's tempo band and tempo estimate sit at 120 BPM.
    centres = dsp.tempo_band_centres()
    assert abs(centres[int(bands[2].argmax())] - 120.0) < 1e-6
    assert abs(2.0 ** (tempo[2] / 2.0) * 120.0 - 120.0) < 6.0


def test_tempo_tracks_click_rate(enc):
    rng = np.random.default_rng(3)
    x = torch.tensor(np.stack([_clicks(bpm, rng) for bpm in (90, 120, 170)]), dtype=torch.float32)
    tempo = enc.embed_windows(x).numpy()[:, -1]
    est = 120.0 * 2.0 ** (tempo / 2.0)
    np.testing.assert_allclose(est, [90, 120, 170], rtol=0.07)


def test_chroma_sees_mode(enc):
    t = np.arange(N) / SR

    def chord(freqs):
        return 0.1 * sum(np.sin(2 * np.pi * f * t) for f in freqs)

    c_major = chord((261.63, 329.63, 392.00, 523.25))
    c_minor = chord((261.63, 311.13, 392.00, 523.25))
    f = enc.embed_windows(torch.tensor(np.stack([c_major, c_minor]), dtype=torch.float32)).numpy()
    chroma_mean = f[:, 140:152]
    assert set(np.argsort(chroma_mean[0])[-3:]) == {0, 4, 7}  # C, E, G
    assert set(np.argsort(chroma_mean[1])[-3:]) == {0, 3, 7}  # C, Eb, G
    major_score, minor_score = f[:, 176], f[:, 177]
    assert major_score[0] - minor_score[0] > major_score[1] - minor_score[1]
