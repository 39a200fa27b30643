"""Audio decoding, resampling and windowing.

Decoding uses libsndfile through ``soundfile`` (WAV, FLAC, OGG and MP3 with
libsndfile >= 1.1). Resampling uses ``torchaudio.functional.resample``, the
polyphase sinc resampler the reference encoder implementations use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .errors import MtxError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".m4a")


class AudioError(MtxError):
    """A file that is missing, empty, corrupt or not audio."""


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int
    frames: int


def audio_info(path: Path | str) -> AudioInfo:
    """Fast header read (no full decode)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"missing audio file: {path}", hint="download it again or fix the manifest path")
    if path.stat().st_size == 0:
        raise AudioError(f"empty audio file: {path}", hint="delete it and download it again")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError/TypeError
        raise AudioError(f"cannot read audio header of {path}: {_short(e)}",
                         hint="the file is corrupt or not a supported audio format") from None
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(f"no audio in {path}", hint="the file holds no samples")
    return AudioInfo(duration=info.frames / info.samplerate, sample_rate=int(info.samplerate),
                     channels=int(info.channels), frames=int(info.frames))


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def decode(path: Path | str, target_sr: int | None = None, mono: bool = True,
           max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode to float32; mono [T] (or [C, T]) at ``target_sr`` (native rate if None)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"missing audio file: {path}", hint="download it again or fix the manifest path")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = int(f.samplerate)
            frames = -1 if max_seconds is None else int(max_seconds * sr)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"cannot decode {path}: {_short(e)}",
                         hint="the file is corrupt, truncated or not audio") from None
    if data.size == 0:
        raise AudioError(f"no audio samples in {path}", hint="the file is empty or truncated")
    wave = data.mean(axis=1) if mono else data.T
    if not np.isfinite(wave).all():
        raise AudioError(f"non-finite samples in {path}", hint="the file is corrupt")
    if target_sr and target_sr != sr:
        wave = resample(wave, sr, target_sr)
        sr = target_sr
    return np.ascontiguousarray(wave, dtype=np.float32), sr


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return wave
    import torchaudio.functional as AF

    t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return AF.resample(t, orig_sr, target_sr).numpy()


def window_starts(n_samples: int, window: int, hop: int, max_windows: int | None = None) -> list[int]:
    """Start offsets of windows over a signal of ``n_samples`` (after padding to >= window).

    With ``max_windows`` the windows are spread evenly over the whole signal, so a
    full song is summarised from beginning to end at bounded cost.
    """
    n = max(n_samples, window)
    starts = list(range(0, n - window + 1, hop)) or [0]
    # Cover the tail: a last window flush with the end if the hop grid misses it.
    if starts[-1] + window < n:
        starts.append(n - window)
    if max_windows and len(starts) > max_windows:
        idx = np.linspace(0, len(starts) - 1, max_windows).round().astype(int)
        starts = [starts[i] for i in idx]
    return starts


def repeat_pad(wave: np.ndarray, length: int) -> np.ndarray:
    """Tile a short clip up to ``length`` samples (what reference encoders do for short inputs)."""
    if wave.shape[-1] >= length:
        return wave
    reps = int(np.ceil(length / max(1, wave.shape[-1])))
    return np.tile(wave, reps)[..., :length]


def frame_windows(wave: np.ndarray, window: int, hop: int, max_windows: int | None = None) -> np.ndarray:
    """Cut a mono signal into [W, window] windows (short signals are repeat-padded)."""
    wave = repeat_pad(wave, window)
    starts = window_starts(wave.shape[-1], window, hop, max_windows)
    return np.stack([wave[s:s + window] for s in starts]).astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def _writable_formats() -> dict[str, str]:
    return sf.available_formats()


def write_audio(path: Path, wave: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write audio atomically (temp name in the same directory, then rename)."""
    from .state import atomic_path

    fmt = {".flac": "FLAC", ".wav": "WAV", ".ogg": "OGG", ".mp3": "MP3"}.get(Path(path).suffix.lower())
    if fmt is None or fmt not in _writable_formats():
        raise MtxError(f"cannot write audio format of {path}", hint="use .wav or .flac")
    with atomic_path(Path(path)) as tmp:
        sf.write(str(tmp), wave, sample_rate, format=fmt, subtype=subtype)
