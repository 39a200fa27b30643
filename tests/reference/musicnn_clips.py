"""Deterministic test clips for the MusiCNN reference fixture (numpy only, no RNG streams).

Both sides import this module: ``make_musicnn_reference.py`` in the TensorFlow venv
(numpy 1.23) and ``tests/test_musicnn_reference.py`` in the project venv (numpy 2.x).
NumPy does not promise the same random streams across versions, so the noise comes
from a counter-based hash (splitmix64 of the sample index) instead of ``default_rng``,
and every clip is quantised to int16, the samples a 16-bit WAV holds. The fixture
stores each clip's SHA-256, so a clip that ever came out differently fails loudly.
"""

from __future__ import annotations

import hashlib

import numpy as np

RATES = (16_000, 44_100)
SECONDS = (3, 12, 31)
KINDS = ("tones", "drums", "noise")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _hash_uniform(n: int, seed: int) -> np.ndarray:
    """n values in [-1, 1) from splitmix64 of (seed, index): identical on every numpy version."""
    with np.errstate(over="ignore"):
        x = (np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = x * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -52 - 1.0


def _tones(t: np.ndarray, sr: int) -> np.ndarray:
    """A chord whose notes change every 0.5 s, with harmonics up to (and, at 44.1 kHz, past) 8 kHz."""
    out = np.zeros_like(t)
    step = 0.5
    idx = np.floor(t / step).astype(np.int64)
    local = t - idx * step
    env = np.minimum(1.0, local / 0.02) * np.exp(-2.0 * local)
    for voice, base in enumerate((110.0, 220.0, 330.0)):
        # A pitch sequence from the note index: a fixed walk on the semitone grid.
        semis = (idx * (5 + 2 * voice) + 3 * voice) % 24
        f0 = base * 2.0 ** (semis / 12.0)
        for h in (1, 2, 3, 5, 9, 17, 31):
            f = f0 * h
            amp = 0.25 / h * (f < sr / 2 - 500)
            out += amp * env * np.sin(2 * np.pi * f * local + voice)
    return out


def _drums(t: np.ndarray, sr: int) -> np.ndarray:
    """Kick on every beat (0.5 s), hat-like noise bursts every 0.25 s, at 120 bpm."""
    noise = _hash_uniform(t.shape[0], seed=7)
    beat = np.mod(t, 0.5)
    kick = np.sin(2 * np.pi * (50 + 120 * np.exp(-beat / 0.03)) * beat) * np.exp(-beat / 0.12)
    half = np.mod(t, 0.25)
    hat = noise * np.exp(-half / 0.015)
    return 0.7 * kick + 0.35 * hat


def _noise(t: np.ndarray, sr: int) -> np.ndarray:
    """Full-band white noise with a slow amplitude swell (level changes across patches)."""
    return 0.3 * _hash_uniform(t.shape[0], seed=11) * (0.6 + 0.4 * np.sin(2 * np.pi * t / 7.0))


_MAKERS = {"tones": _tones, "drums": _drums, "noise": _noise}


def make_clip(kind: str, seconds: int, sr: int) -> np.ndarray:
    """The clip as int16 samples (mono), exactly what a 16-bit PCM WAV of it holds."""
    t = np.arange(int(seconds * sr), dtype=np.float64) / sr
    x = _MAKERS[kind](t, sr)
    x = 0.8 * x / np.max(np.abs(x))
    return np.round(x * 32767).astype(np.int16)


def clip_name(kind: str, seconds: int, sr: int) -> str:
    return f"{kind}_{seconds}s_{sr}"


def all_clips() -> list[tuple[str, str, int, int]]:
    """(name, kind, seconds, sample rate) of every fixture clip."""
    return [(clip_name(k, s, r), k, s, r) for r in RATES for s in SECONDS for k in KINDS]


def sha256(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype="<i2").tobytes()).hexdigest()
