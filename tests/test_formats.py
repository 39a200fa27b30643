"""Every common audio format, written here with PyAV: header reads, span reads, and the whole
download folder -> verify -> unify -> embed path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from musiccli import audio
from tests.sine_audio import encode_pyav

SR = 44100
SECONDS = 3.0

# (file name, container format, codec, sample rate, sample format fed to the encoder)
FORMATS = [
    ("tone.wav", "wav", "pcm_s16le", SR, "s16"),
    ("tone.flac", "flac", "flac", SR, "s16"),
    ("tone.ogg", "ogg", "vorbis", SR, "fltp"),
    ("tone.mp3", "mp3", "libmp3lame", SR, "fltp"),
    ("aac.m4a", "ipod", "aac", SR, "fltp"),
    ("alac.m4a", "ipod", "alac", SR, "s16p"),
    ("tone.opus", "ogg", "libopus", 48000, "flt"),
    ("clip.webm", "webm", "libopus", 48000, "flt"),   # YouTube audio (MusicCaps without ffmpeg)
]


def _signal(sr: int, seconds: float = SECONDS, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    left = 0.3 * np.sin(2 * np.pi * freq * t) * np.linspace(0.2, 1.0, t.size)
    right = 0.2 * np.sin(2 * np.pi * 1.5 * freq * t)
    return np.stack([left, right]).astype(np.float32)


def write_with_pyav(path: Path, container: str, codec: str, sr: int, fmt: str, tags: dict[str, str],
                    seconds: float = SECONDS) -> None:
    encode_pyav(path, _signal(sr, seconds), sr, container, codec, fmt, tags)


def _tags(name: str) -> dict[str, str]:
    return {"title": f"Song {name}", "artist": "Test Band", "album": "Formats", "genre": "Jazz"}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("Music")
    for name, container, codec, sr, fmt in FORMATS:
        write_with_pyav(lib / name, container, codec, sr, fmt, _tags(name))
    return lib


@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_header_and_full_decode(library: Path, name: str) -> None:
    path = library / name
    info = audio.audio_info(path)
    assert abs(info.duration - SECONDS) < 0.1, info
    assert info.channels == 2
    wave, sr = audio.decode(path, 16000)
    assert sr == 16000 and abs(wave.shape[0] / sr - SECONDS) < 0.1
    assert 0.05 < float(np.abs(wave).max()) < 1.0  # real signal, not silence or garbage


def test_libsndfile_stays_the_fast_path(library: Path) -> None:
    assert audio.backend_for(library / "tone.wav") == "soundfile"
    assert audio.backend_for(library / "tone.flac") == "soundfile"
    assert audio.backend_for(library / "aac.m4a") == "av"
    assert audio.backend_for(library / "alac.m4a") == "av"
    assert audio.backend_for(library / "clip.webm") == "av"


@pytest.mark.parametrize("name", ["tone.flac", "alac.m4a", "aac.m4a", "tone.opus"])
def test_span_read_matches_whole_decode(library: Path, name: str) -> None:
    path = library / name
    whole, sr = audio.read_span(path)
    start, n = int(1.3 * sr), int(0.5 * sr)
    span, sr2 = audio.read_span(path, start, n)
    assert sr2 == sr and span.shape == (2, n)
    # Lossless formats decode to the same samples; lossy ones are sample-aligned after a seek too,
    # and equal up to the decoder's float rounding once its pre-roll has run.
    lossless = name in ("tone.flac", "alac.m4a")
    np.testing.assert_allclose(span, whole[:, start:start + n], atol=0 if lossless else 2e-5)


@pytest.mark.parametrize("name", ["tone.wav", "alac.m4a"])
@pytest.mark.parametrize("context", [0, 256])
def test_windows_from_spans_equal_windows_of_whole_track(tmp_path: Path, name: str, context: int) -> None:
    # Long enough that 4 windows cover well under half the track: the span path is taken.
    container, codec, sr, fmt = next((c, k, r, f) for n, c, k, r, f in FORMATS if n == name)
    path = tmp_path / name
    write_with_pyav(path, container, codec, sr, fmt, {}, seconds=40.0)
    target, window, hop = 16000, 16000, 8000
    info = audio.audio_info(path)
    whole, _ = audio.decode(path, target)
    n = audio.resampled_length(info.frames, info.sample_rate, target)
    assert abs(n - whole.shape[0]) <= 1
    expected = audio.frame_with_context(whole, window, hop, 4, context)
    got = audio.decode_windows(path, target, window, hop, 4, context)
    assert got.shape == expected.shape == (4, context + window)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_broken_m4a_is_an_audio_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 300)
    with pytest.raises(audio.AudioError):
        audio.audio_info(bad)
    from musiccli.sources.base import ExpectedFile
    from musiccli.verify import check_file

    assert check_file(ExpectedFile(id="x", path=bad))[0] == "corrupt"


@pytest.mark.slow
def test_every_format_through_download_verify_unify_embed(library: Path, state_dir: Path) -> None:
    from httpserver import mtx_runner

    from musiccli import store
    from musiccli.manifest import read_manifest
    from musiccli.state import StateDir

    mtx = mtx_runner(state_dir)
    r = mtx("download", "folder", "--path", str(library))
    assert r.exit_code == 0, r.output
    r = mtx("verify", "folder")
    assert r.exit_code == 0, r.output
    r = mtx("unify", "--datasets", "folder", "--name", "lib")
    assert r.exit_code == 0, r.output
    state = StateDir.resolve(state_dir)
    records = {Path(x.audio_path).name: x for x in read_manifest(state.manifest_path("lib"))}
    assert set(records) == {f[0] for f in FORMATS}
    for name, rec in records.items():
        assert rec.title == f"Song {name}" and rec.artist == "Test Band", (name, rec)
        assert "Jazz" in rec.tags
    r = mtx("embed", "--audio-encoder", "dsp", "--manifest", "lib", "--num-workers", "0")
    assert r.exit_code == 0, r.output
    with store.EmbeddingStore(state.embeddings_path("dsp", "lib")) as s:
        assert len(s.ids) == len(FORMATS)
        assert np.isfinite(s.rows(range(len(s)))).all()


@pytest.mark.slow
def test_windows_when_the_container_overstates_the_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A container duration is an estimate: when it promises more than the stream holds, the windows
    # still come from the real audio (the whole file is decoded instead of spans).
    path = tmp_path / "long.m4a"
    write_with_pyav(path, "ipod", "alac", SR, "s16p", {}, seconds=40.0)
    real = audio.audio_info(path)
    monkeypatch.setattr(audio, "audio_info", lambda p: audio.AudioInfo(
        duration=real.duration * 2, sample_rate=real.sample_rate, channels=2, frames=real.frames * 2,
        backend="av", exact=False))
    whole, _ = audio.decode(path, 16000)
    got = audio.decode_windows(path, 16000, 16000, 8000, 4)
    np.testing.assert_allclose(got, audio.frame_windows(whole, 16000, 8000, 4), atol=1e-6)
