"""Tests for the procedural music + caption generator behind the ``synth`` demo dataset."""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from musiccli.sources.synth_gen import (
    HEADROOM,
    KEYS,
    LOUDNESS,
    LOUDNESS_GAIN,
    MODES,
    MOODS,
    STYLES,
    ClipSpec,
    mood_for,
    plan_dataset,
    render_clip,
    tempo_word,
)

SR = 24000
SEED = 7


@pytest.fixture(scope="module")
def plan() -> list[ClipSpec]:
    return plan_dataset(400, SEED)


@pytest.fixture(scope="module")
def rendered(plan: list[ClipSpec]) -> dict[str, list[tuple[ClipSpec, np.ndarray]]]:
    """Three 8 s clips per style at 24 kHz, shared by the feature tests."""
    out: dict[str, list[tuple[ClipSpec, np.ndarray]]] = defaultdict(list)
    for spec in plan:
        if len(out[spec.style]) < 3:
            out[spec.style].append((spec, render_clip(spec, 8.0, SR, SEED)))
    return out


# -- simple audio features (numpy only) ---------------------------------------------------


def _stft_power(y: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 256) -> tuple[np.ndarray, np.ndarray]:
    y = y.astype(np.float64)
    frames = 1 + (len(y) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(y[idx] * np.hanning(n_fft)[None, :], axis=1)) ** 2
    return spec, np.fft.rfftfreq(n_fft, 1.0 / sr)


def _active(power: np.ndarray) -> np.ndarray:
    energy = power.sum(1)
    return energy > 1e-8 * energy.max()


def spectral_flatness(y: np.ndarray, sr: int) -> float:
    p, _ = _stft_power(y, sr)
    flat = np.exp(np.mean(np.log(p + 1e-10), 1)) / (p.mean(1) + 1e-10)
    return float(flat[_active(p)].mean())


def spectral_centroid(y: np.ndarray, sr: int) -> float:
    p, f = _stft_power(y, sr)
    mag = np.sqrt(p)
    return float(((mag * f).sum(1) / (mag.sum(1) + 1e-12))[_active(p)].mean())


def kick_strength(y: np.ndarray, sr: int) -> float:
    """Energy of sudden (x3 within ~20 ms) rises in the 30-90 Hz band, per second, relative to the
    mean frame energy: large for kick drums, ~0 for pads, plucked strings and piano."""
    p, f = _stft_power(y, sr)
    low = p[:, (f >= 30) & (f <= 90)].sum(1)
    rise = low[2:] - low[:-2]
    sharp = low[2:] > 3.0 * low[:-2] + 1e-12
    return float((rise * sharp).sum() / p.sum(1).mean() / (len(y) / sr))


def onset_rate(y: np.ndarray, sr: int) -> float:
    """Peaks of broadband log-spectral flux per second."""
    p, _ = _stft_power(y, sr)
    flux = np.maximum(0.0, np.diff(np.log(p + 1e-10), axis=0)).mean(1)
    thr = np.median(flux) + 2.0 * flux.std()
    mid = flux[1:-1]
    peaks = (mid > thr) & (mid >= flux[:-2]) & (mid >= flux[2:])
    return float(peaks.sum() / (len(y) / sr))


def beat_period(y: np.ndarray, sr: int, hop: int = 256) -> float:
    """Strongest periodicity (s) of low-band onsets between 0.3 and 0.75 s."""
    p, f = _stft_power(y, sr, hop=hop)
    onset = np.maximum(0.0, np.diff(p[:, (f >= 30) & (f <= 90)].sum(1)))
    onset -= onset.mean()
    ac = np.correlate(onset, onset, "full")[len(onset) - 1:]
    lo, hi = int(0.3 * sr / hop), int(0.75 * sr / hop)
    return (lo + int(np.argmax(ac[lo:hi]))) * hop / sr


def chroma(y: np.ndarray, sr: int) -> np.ndarray:
    p, f = _stft_power(y, sr, n_fft=4096, hop=1024)
    band = (f >= 60) & (f <= 2000)
    pc = np.round(12 * np.log2(f[band] / 440.0) + 69).astype(int) % 12
    c = np.bincount(pc, weights=p.sum(0)[band], minlength=12)
    return c / c.sum()


# -- planning ---------------------------------------------------------------------------------


def test_style_names() -> None:
    assert STYLES == ("metal", "techno", "ambient", "jazz", "baroque", "hip hop", "folk", "reggae",
                      "latin", "classical piano")


def test_plan_deterministic_and_prefix_stable(plan: list[ClipSpec]) -> None:
    assert plan_dataset(400, SEED) == plan
    assert plan_dataset(23, SEED) == plan[:23]
    other = plan_dataset(400, SEED + 1)
    assert [s.caption for s in other] != [s.caption for s in plan]
    assert plan_dataset(0, SEED) == []
    with pytest.raises(ValueError):
        plan_dataset(-1, SEED)


def test_styles_balanced(plan: list[ClipSpec]) -> None:
    assert Counter(s.style for s in plan) == {style: 40 for style in STYLES}
    # not a fixed round-robin: the order inside blocks is shuffled
    assert [s.style for s in plan[:10]] != [s.style for s in plan[10:20]]


def test_spec_attributes(plan: list[ClipSpec]) -> None:
    for i, s in enumerate(plan):
        assert s.index == i and s.id == f"synth-{i:06d}"
        assert s.style in STYLES and s.key in KEYS and s.mode in MODES
        assert s.mood in MOODS and s.loudness in LOUDNESS
        assert s.mood == mood_for(s.style, s.bpm, s.mode)
        assert s.instruments and s.artist and s.title
        assert len(s.tags) >= 5 and len(set(s.tags)) == len(s.tags)
        for tag in (s.style, s.mood, tempo_word(s.bpm), f"{s.mode} key", "instrumental", *s.instruments):
            assert tag in s.tags, (tag, s.tags)
        captions = (s.caption, *s.alt_captions)
        assert len(s.alt_captions) >= 2 and len(set(captions)) == len(captions)
        assert s.style in s.caption and str(s.bpm) in s.caption and f"{s.key} {s.mode}" in s.caption
        for c in captions:
            assert (c[0].isupper() or c[0].isdigit()) and c.endswith(".") and "  " not in c
    # style-typical tempo ranges (the synth generator's spec)
    ranges = {"techno": (120, 135), "ambient": (60, 80), "hip hop": (80, 95), "metal": (150, 220)}
    for s in plan:
        if s.style in ranges:
            lo, hi = ranges[s.style]
            assert lo <= s.bpm <= hi, (s.style, s.bpm)
    # the style name shows up in most captions
    with_style = [s.style in c for s in plan for c in (s.caption, *s.alt_captions)]
    assert np.mean(with_style) > 0.8
    # every mood and loudness occurs, and the optional instruments really vary
    assert set(MOODS) == {s.mood for s in plan} and set(LOUDNESS) == {s.loudness for s in plan}
    assert len({s.instruments for s in plan if s.style == "techno"}) > 1


def test_mood_rule() -> None:
    assert mood_for("metal", 180, "minor") == "dark"
    assert mood_for("metal", 160, "major") == "energetic"  # distorted but major
    assert mood_for("techno", 128, "major") == "energetic"
    assert mood_for("techno", 128, "minor") == "dark"
    assert mood_for("ambient", 70, "minor") == "calm"
    assert mood_for("classical piano", 72, "major") == "calm"
    assert mood_for("folk", 100, "major") == "bright"
    assert mood_for("folk", 100, "minor") == "dark"
    assert [tempo_word(b) for b in (70, 89, 90, 119, 120)] == ["slow", "slow", "mid-tempo", "mid-tempo", "fast"]


def test_short_queries_have_clear_answers(plan: list[ClipSpec]) -> None:
    def text(s: ClipSpec) -> str:
        return " ".join((s.caption, *s.alt_captions)).lower()

    dark_metal = [s for s in plan if s.style == "metal" and s.mood == "dark"]
    assert dark_metal and all("dark metal" in s.caption for s in dark_metal)
    assert all("dance" in s.caption for s in plan if s.style == "techno")
    assert not any("dance" in text(s) for s in plan if s.style in ("ambient", "classical piano", "metal"))
    assert all(re.search(r"calm|relaxing|peaceful|soothing", text(s)) for s in plan if s.style == "ambient")
    calm_piano = [s for s in plan if s.style == "classical piano" and s.mood == "calm"]
    assert calm_piano and all("calm classical piano" in s.caption for s in calm_piano)
    energetic_techno = [s for s in plan if s.style == "techno" and s.mood == "energetic"]
    assert any("upbeat" in text(s) for s in energetic_techno)


def test_artists_have_fixed_style_and_several_clips() -> None:
    specs = plan_dataset(1000, SEED)
    per_artist = Counter(s.artist for s in specs)
    styles: dict[str, set[str]] = defaultdict(set)
    for s in specs:
        styles[s.artist].add(s.style)
    assert all(len(v) == 1 for v in styles.values())
    counts = np.array(list(per_artist.values()))
    assert 7.0 <= counts.mean() <= 13.0
    assert (counts >= 3).mean() >= 0.85  # only each style's newest artist may be short
    assert len(per_artist) >= 70


# -- rendering --------------------------------------------------------------------------------


def test_render_deterministic_and_independent(plan: list[ClipSpec]) -> None:
    a = render_clip(plan[3], 4.0, SR, SEED)
    render_clip(plan[4], 4.0, SR, SEED)  # rendering another clip in between changes nothing
    b = render_clip(plan[3], 4.0, SR, SEED)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, render_clip(plan[3], 4.0, SR, SEED + 1))
    # a clip planned in a bigger dataset renders the same (no dependence on other clips)
    big = plan_dataset(30, SEED)
    assert render_clip(big[3], 4.0, SR, SEED).tobytes() == a.tobytes()


@pytest.mark.parametrize("sr", [16000, 24000, 44100])
def test_every_style_renders(plan: list[ClipSpec], sr: int) -> None:
    seen: set[str] = set()
    for spec in plan:
        if spec.style in seen:
            continue
        seen.add(spec.style)
        y = render_clip(spec, 3.0, sr, SEED)
        assert y.dtype == np.float32 and y.shape == (3 * sr,)
        assert np.isfinite(y).all()
        peak = float(np.abs(y).max())
        assert peak <= 1.0
        # peak-normalised with headroom, then the loudness gain
        assert peak == pytest.approx(HEADROOM * LOUDNESS_GAIN[spec.loudness], rel=1e-3)
        assert float(np.sqrt(np.mean(y.astype(np.float64) ** 2))) > 0.003  # not silent
    assert seen == set(STYLES)
    # odd lengths are exact too
    assert render_clip(plan[0], 1.2345, sr, SEED).shape == (round(1.2345 * sr),)


def test_loudness_is_applied(plan: list[ClipSpec]) -> None:
    spec = plan[0]
    levels = {
        name: float(np.abs(render_clip(dataclasses.replace(spec, loudness=name), 2.0, SR, SEED)).max())
        for name in LOUDNESS
    }
    assert levels["quiet"] < levels["moderate"] < levels["loud"] <= 1.0


def test_invalid_render_arguments(plan: list[ClipSpec]) -> None:
    with pytest.raises(ValueError):
        render_clip(dataclasses.replace(plan[0], style="polka"), 1.0, SR, SEED)
    with pytest.raises(ValueError):
        render_clip(plan[0], 0.0, SR, SEED)


def test_styles_are_separable_by_simple_features(rendered: dict[str, list[tuple[ClipSpec, np.ndarray]]]) -> None:
    def feat(style: str, fn) -> list[float]:  # type: ignore[no-untyped-def]
        return [fn(y, SR) for _, y in rendered[style]]

    # distortion: metal is far noisier / brighter than soft pitched styles
    metal_flat = min(feat("metal", spectral_flatness))
    for soft in ("ambient", "classical piano"):
        assert metal_flat > 20 * max(feat(soft, spectral_flatness))
    assert min(feat("metal", spectral_centroid)) > 2 * max(feat("ambient", spectral_centroid))
    # drums: kick-like low-frequency onsets only where there is a drum kit
    for no_drums in ("ambient", "baroque", "classical piano"):
        assert max(feat(no_drums, kick_strength)) < 0.05, no_drums
    for drums in ("techno", "hip hop", "reggae", "latin"):
        assert min(feat(drums, kick_strength)) > 0.5, drums
    # onset density: 16th-note arpeggios vs slow pads
    baroque, ambient = feat("baroque", onset_rate), feat("ambient", onset_rate)
    assert min(baroque) > max(ambient) and np.mean(baroque) > 2 * np.mean(ambient)
    # techno: four-on-the-floor at the planned tempo
    for spec, y in rendered["techno"]:
        assert beat_period(y, SR) == pytest.approx(60.0 / spec.bpm, rel=0.03)


@pytest.mark.parametrize("style", ["ambient", "classical piano", "folk", "baroque"])
def test_key_and_mode_are_audible(rendered: dict[str, list[tuple[ClipSpec, np.ndarray]]], style: str) -> None:
    for spec, y in rendered[style]:
        c = chroma(y, SR)
        tonic = KEYS.index(spec.key)
        # natural minor plus the raised leading tone of harmonic minor
        steps = {0, 2, 4, 5, 7, 9, 11} if spec.mode == "major" else {0, 2, 3, 5, 7, 8, 10, 11}
        assert sum(c[(tonic + k) % 12] for k in steps) > 0.75
        if style != "folk":  # bright guitar overtones blur the third; sustained tones do not
            major_third, minor_third = c[(tonic + 4) % 12], c[(tonic + 3) % 12]
            assert (major_third > minor_third) == (spec.mode == "major")


def test_render_speed(plan: list[ClipSpec]) -> None:
    specs = plan[:20]  # two of every style
    start = time.perf_counter()
    for spec in specs:
        render_clip(spec, 10.0, SR, SEED)
    mean = (time.perf_counter() - start) / len(specs)
    assert mean < 0.2, f"{mean * 1000:.0f} ms per 10 s clip"
