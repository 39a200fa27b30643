"""Audio decoding, resampling and windowing.

Two decoding backends behind one interface:

* libsndfile through ``soundfile``, the fast path: WAV, FLAC, OGG/Vorbis, MP3 (libsndfile >= 1.1),
  AIFF. Frame-exact seeking.
* FFmpeg through PyAV (the ``av`` wheel ships its own FFmpeg) for everything libsndfile cannot
  open: AAC and ALAC in ``.m4a``, Opus (Ogg or WebM), WMA, ... Seeking lands on the packet
  before the requested time; decoding then skips forward to the exact sample, using each
  frame's presentation time.

Both backends read *spans*: :func:`read_span` decodes ``n`` frames from a start frame without
touching the rest of the file, and :func:`decode_windows` uses it so that an embed with
``--max-windows`` decodes only the windows it encodes (plus a small resampler margin), not a
whole one-hour file. Resampling uses ``torchaudio.functional.resample`` (the polyphase sinc
resampler the reference encoder implementations use); spans start on the resampler's period so
their samples equal those of a whole-file resample away from the span edges. An encoder whose
reference loads audio with librosa <= 0.9 (musicnn) asks for ``resampler="kaiser_best"``
(:mod:`musiccli.kaiser_resample`, resampy's filter) and ``edge_pad="reflect"`` (librosa's
centred STFT then reflects the signal at both ends; see :func:`frame_with_context`).

torch is imported only when resampling is needed, so listing extensions stays cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import MtxError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".m4a", ".mp4",
                    ".aac", ".alac", ".webm", ".weba", ".mka", ".wma", ".wv", ".ape")
BLOCK_FRAMES = 1 << 16
# Native-rate samples decoded on each side of a span before resampling, so the resampler's
# zero padding at the span edges never reaches the samples that are kept.
_RESAMPLE_MARGIN = 2048
_AV_PREROLL_S = 0.25


class AudioError(MtxError):
    """A file that is missing, empty, corrupt or not audio."""


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int
    frames: int
    backend: str = "soundfile"   # soundfile | av
    exact: bool = True            # frames is exact (libsndfile header), not an estimate (container duration)


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"missing audio file: {path}", hint="download it again or fix the manifest path")
    if path.is_file() and path.stat().st_size == 0:
        raise AudioError(f"empty audio file: {path}", hint="delete it and download it again")


# --------------------------------------------------------------------------- PyAV backend
def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is a core dependency
        return None
    av.logging.set_level(av.logging.ERROR)  # FFmpeg's own warnings would go to stderr unfiltered
    return av


class _AvReader:
    """One audio stream of a container, decoded to float32 [C, n] blocks with exact sample positions."""

    def __init__(self, path: Path) -> None:
        av = _av()
        if av is None:
            raise AudioError(f"cannot decode {path}: PyAV is not installed", hint="pip install av")
        try:
            self.container = av.open(str(path), mode="r")
        except Exception as e:  # noqa: BLE001 - FFmpeg raises many error types for non-audio input
            raise AudioError(f"cannot read audio header of {path}: {_short(e)}",
                             hint="the file is corrupt or not a supported audio format") from None
        if not self.container.streams.audio:
            self.container.close()
            raise AudioError(f"no audio stream in {path}", hint="the file holds no audio")
        self.stream = self.container.streams.audio[0]
        self.stream.thread_type = "AUTO"
        self.path = path
        self.sample_rate = int(self.stream.codec_context.sample_rate or self.stream.rate or 0)
        self.channels = int(self.stream.codec_context.channels or 0)
        self.resampler = av.AudioResampler(format="fltp")  # planar float32 at the native rate and layout

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "_AvReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def estimated_frames(self) -> int:
        tb = self.stream.time_base
        if self.stream.duration and tb:
            return int(round(float(self.stream.duration * tb) * self.sample_rate))
        if self.container.duration:
            return int(round(self.container.duration / 1_000_000 * self.sample_rate))
        return 0

    def blocks(self, start: int = 0) -> Iterator[np.ndarray]:
        """[C, n] float32 blocks from native frame ``start`` to the end of the stream."""
        pos = 0
        if start > 0:
            # Seek a little early: lossy decoders (AAC's overlapped MDCT, Opus) need pre-roll
            # packets before their output equals a decode from the start.
            tb = self.stream.time_base
            at = max(0.0, start / self.sample_rate - _AV_PREROLL_S)
            self.container.seek(int(at / tb), stream=self.stream)
            pos = None  # known from the first frame's pts
        try:
            for frame in self.container.decode(self.stream):
                if pos is None:
                    pts = frame.pts
                    pos = int(round(float(pts * frame.time_base) * self.sample_rate)) if pts is not None else 0
                for out in self.resampler.resample(frame):
                    block = out.to_ndarray().astype(np.float32, copy=False)
                    n = block.shape[1]
                    if pos + n <= start:
                        pos += n
                        continue
                    if pos < start:
                        block, pos = block[:, start - pos:], start
                    pos += block.shape[1]
                    yield block
        except Exception as e:  # noqa: BLE001
            if isinstance(e, AudioError):
                raise
            where = (pos or 0) / max(self.sample_rate, 1)
            raise AudioError(f"cannot decode {self.path} after {where:.2f} s: {_short(e)}",
                             hint="the file is corrupt, truncated or not audio") from None


# --------------------------------------------------------------------------- info
def backend_for(path: Path | str) -> str:
    """``soundfile`` when libsndfile opens the file, else ``av``."""
    try:
        sf.info(str(path))
        return "soundfile"
    except Exception:  # noqa: BLE001 - libsndfile raises RuntimeError/LibsndfileError/TypeError
        return "av"


def _open(path: Path) -> sf.SoundFile | _AvReader:
    """The file opened by libsndfile (the fast path), else by FFmpeg; the caller closes it.

    Raises :class:`AudioError` for a missing or empty file, or one neither backend can open.
    """
    _check_exists(path)
    try:
        return sf.SoundFile(str(path))
    except Exception:  # noqa: BLE001 - libsndfile raises RuntimeError/LibsndfileError/TypeError
        return _AvReader(path)


def audio_info(path: Path | str) -> AudioInfo:
    """Fast header read (no full decode); libsndfile first, then FFmpeg."""
    path = Path(path)
    opened = _open(path)
    if isinstance(opened, sf.SoundFile):
        with opened as info:
            if info.samplerate <= 0 or info.frames <= 0:
                raise AudioError(f"no audio in {path}", hint="the file holds no samples")
            return AudioInfo(duration=info.frames / info.samplerate, sample_rate=int(info.samplerate),
                             channels=int(info.channels), frames=int(info.frames))
    with opened as r:
        frames = r.estimated_frames()
        if r.sample_rate <= 0 or frames <= 0:
            raise AudioError(f"no audio in {path}", hint="the file holds no samples")
        return AudioInfo(duration=frames / r.sample_rate, sample_rate=r.sample_rate, channels=r.channels,
                         frames=frames, backend="av", exact=False)


def container_tags(path: Path | str) -> dict[str, list[str]]:
    """Tags FFmpeg reads from the container (RIFF INFO in WAV, which mutagen does not read, and the rest).

    Keys are lower-cased FFmpeg names (title, artist, album, genre, date, ...); empty if unreadable.
    """
    av = _av()
    if av is None:
        return {}
    try:
        with av.open(str(path), mode="r") as c:
            meta = dict(c.metadata)
            if c.streams.audio:
                meta = {**dict(c.streams.audio[0].metadata), **meta}
    except Exception:  # noqa: BLE001 - tags are optional; the decode path reports broken files
        return {}
    return {str(k).lower(): [str(v)] for k, v in meta.items() if str(v).strip()}


# --------------------------------------------------------------------------- reading
def stream_blocks(path: Path | str, block_frames: int = BLOCK_FRAMES) -> tuple[int, int, str, Iterator[np.ndarray]]:
    """(sample rate, declared frames or 0 if unknown, libsndfile subtype or "", iterator of [n, C] float32
    blocks) over the whole file.

    For checking a file end to end without holding it in memory. Decoding errors surface
    from the iterator as :class:`AudioError`.
    """
    path = Path(path)
    f = _open(path)
    if isinstance(f, sf.SoundFile):
        def sf_blocks() -> Iterator[np.ndarray]:
            with f:
                # read() in a loop, not blocks(): blocks() pads past the end of a cut MP3 up to the
                # frame count its (Xing) header promises, which would hide the truncation.
                while len(block := f.read(block_frames, dtype="float32", always_2d=True)):
                    yield block
        return int(f.samplerate), int(f.frames), str(f.subtype or ""), sf_blocks()
    reader = f

    def av_blocks() -> Iterator[np.ndarray]:
        with reader:
            for block in reader.blocks():
                yield block.T
    # A container's duration is an estimate, not a frame count to hold the stream to.
    return reader.sample_rate, 0, "", av_blocks()


def read_span(path: Path | str, start: int = 0, frames: int | None = None) -> tuple[np.ndarray, int]:
    """([C, n] float32, native rate): ``frames`` frames (None = to the end) from native frame ``start``.

    Only the span is decoded: libsndfile seeks exactly; FFmpeg seeks to the packet before and
    decodes forward. ``n`` is shorter than ``frames`` at the end of the file.
    """
    path = Path(path)
    f = _open(path)
    if isinstance(f, sf.SoundFile):
        try:
            with f:
                sr = int(f.samplerate)
                if start:
                    f.seek(min(start, max(0, f.frames)))
                data = f.read(frames=-1 if frames is None else frames, dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001
            raise AudioError(f"cannot decode {path}: {_short(e)}",
                             hint="the file is corrupt, truncated or not audio") from None
        return np.ascontiguousarray(data.T), sr
    with f as r:
        parts, have = [], 0
        for block in r.blocks(start):
            if frames is not None and have + block.shape[1] >= frames:
                parts.append(block[:, :frames - have])
                have = frames
                break
            parts.append(block)
            have += block.shape[1]
        channels = max(1, r.channels)
        data = np.concatenate(parts, axis=1) if parts else np.zeros((channels, 0), dtype=np.float32)
        return data, r.sample_rate


def _to_mono(data: np.ndarray, mono: bool) -> np.ndarray:
    return data.mean(axis=0) if mono else data


def decode(path: Path | str, target_sr: int | None = None, mono: bool = True,
           max_seconds: float | None = None, resampler: str = "sinc") -> tuple[np.ndarray, int]:
    """Decode to float32; mono [T] (or [C, T]) at ``target_sr`` (native rate if None)."""
    path = Path(path)
    _check_exists(path)
    frames = None
    if max_seconds is not None:
        frames = max(0, int(max_seconds * audio_info(path).sample_rate))
    data, sr = read_span(path, 0, frames)
    if data.size == 0:
        raise AudioError(f"no audio samples in {path}", hint="the file is empty or truncated")
    wave = _to_mono(data, mono)
    if not np.isfinite(wave).all():
        raise AudioError(f"non-finite samples in {path}", hint="the file is corrupt")
    if target_sr and target_sr != sr:
        wave = resample(wave, sr, target_sr, resampler)
        sr = target_sr
    return np.ascontiguousarray(wave, dtype=np.float32), sr


RESAMPLERS = ("sinc", "kaiser_best")
EDGE_PADS = ("zeros", "reflect")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int, method: str = "sinc",
             first_out: int = 0) -> np.ndarray:
    """``sinc``: torchaudio's resampler; ``kaiser_best``: resampy's (librosa <= 0.9's ``load``).

    ``first_out``: the output index of ``wave``'s first sample in the whole track (a span read);
    only ``kaiser_best`` depends on it (it reproduces resampy's accumulated time register).
    """
    if orig_sr == target_sr:
        return wave
    if method == "kaiser_best":
        from .kaiser_resample import resample_kaiser_best

        return resample_kaiser_best(wave, orig_sr, target_sr, first_out)
    if method != "sinc":
        raise MtxError(f"unknown resampler {method!r}", hint=f"one of: {', '.join(RESAMPLERS)}")
    import torch
    import torchaudio.functional as AF

    t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return AF.resample(t, orig_sr, target_sr).numpy()


def resampled_length(n: int, orig_sr: int, target_sr: int) -> int:
    """Length of ``resample`` output for ``n`` input samples (torchaudio's rule)."""
    if orig_sr == target_sr:
        return n
    g = math.gcd(orig_sr, target_sr)
    return int(math.ceil(target_sr // g * n / (orig_sr // g)))


# --------------------------------------------------------------------------- windowing
TAILS = ("flush", "wrap")


def _check_tail(tail: str, context: int = 0, patch: int = 0) -> None:
    if tail not in TAILS:
        raise MtxError(f"unknown window tail policy {tail!r}", hint=f"one of: {', '.join(TAILS)}")
    if tail == "wrap" and (context or patch):
        raise MtxError("the wrap tail policy takes no context or patch samples",
                       hint="an encoder declares either tail='wrap' or context/patch framing")


def window_starts(n_samples: int, window: int, hop: int, max_windows: int | None = None,
                  patch: int = 0, tail: str = "flush") -> list[int]:
    """Start offsets of windows over a signal of ``n_samples`` (after padding to >= window).

    With ``max_windows`` the windows are spread evenly over the whole signal, so a
    full song is summarised from beginning to end at bounded cost.

    ``patch > 0`` is a drop-the-tail grid (musicnn's): a window at every hop start ``s``
    with ``s + patch <= n_samples`` (``patch``: the samples a window needs to be complete),
    the incomplete remainder dropped, no window flush with the end; ``[0]`` for a signal
    shorter than one patch.

    ``tail="wrap"`` (MuQ-MuLan's clips): a window at every hop start that fits whole, then one
    more at the next hop start if any audio is left; that window runs past the end and
    continues from the signal's start (see :func:`frame_with_context`). ``[0]`` for a signal
    shorter than one window.
    """
    _check_tail(tail, patch=patch)
    if tail == "wrap":
        starts = list(range(0, n_samples - window + 1, hop))
        after = starts[-1] + hop if starts else 0
        if after < n_samples:
            starts.append(after)
    elif patch:
        starts = list(range(0, n_samples - patch + 1, hop)) or [0]
    else:
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


def wrap_windows(wave: np.ndarray, starts: list[int], window: int) -> np.ndarray:
    """[W, window] windows read circularly: a window that runs past the end continues from the start.

    For a signal of at least half a window this is MuQ-MuLan's last clip, ``wave[s:]`` followed by
    ``wave[:window - (n - s)]``. A shorter signal is repeated until the window is full (the package
    stops after one repetition and embeds a shorter clip, which cannot share a batch).
    """
    n = wave.shape[-1]
    return np.stack([wave[(s + np.arange(window)) % n] for s in starts]).astype(np.float32, copy=False)


def frame_with_context(wave: np.ndarray, window: int, hop: int, max_windows: int | None,
                       context: int = 0, patch: int = 0, tail: str = "flush",
                       edge_pad: str = "zeros") -> np.ndarray:
    """``frame_windows``, each window preceded by its ``context`` samples (zeros before the start).

    With ``patch > 0`` the starts follow :func:`window_starts`' drop-the-tail grid and the
    signal is zero-padded (not repeat-padded) wherever a window runs past its end. With
    ``tail="wrap"`` the last window continues from the start of the signal (:func:`wrap_windows`).
    ``edge_pad="reflect"`` instead pads ``context`` samples at *both* ends by reflection
    (``np.pad(mode="reflect")``, what librosa < 0.10's centred STFT does to the whole signal),
    then zeros; the encoder's frames that straddle an end then see what the reference sees.
    """
    if tail != "flush":
        _check_tail(tail, context, patch)
        return wrap_windows(wave, window_starts(wave.shape[-1], window, hop, max_windows, tail=tail), window)
    if not context and not patch:
        return frame_windows(wave, window, hop, max_windows)
    if patch:
        starts = window_starts(wave.shape[-1], window, hop, max_windows, patch)
        right = np.zeros(max(0, starts[-1] + window - wave.shape[-1]), dtype=np.float32)
    else:
        wave = repeat_pad(wave, window)
        starts = window_starts(wave.shape[-1], window, hop, max_windows)
        right = np.zeros(0, dtype=np.float32)
    wave = wave.astype(np.float32, copy=False)
    if edge_pad == "reflect" and context:
        left, end = _reflect_edges(wave, context)
        padded = np.concatenate([left, wave, end, right[:max(0, len(right) - context)]])
    else:
        padded = np.concatenate([np.zeros(context, dtype=np.float32), wave, right])
    # Window s spans padded[s + context : s + context + window]; its context the `context` samples before.
    return np.stack([padded[s:s + context + window] for s in starts])


def decode_windows(path: Path | str, target_sr: int, window: int, hop: int, max_windows: int | None = None,
                   context: int = 0, patch: int = 0, tail: str = "flush", resampler: str = "sinc",
                   edge_pad: str = "zeros") -> np.ndarray:
    """[W, context + window] mono float32 windows at ``target_sr``, as :func:`frame_with_context` would
    cut them from the whole decoded track.

    With ``max_windows`` and a long file, only the chosen windows are decoded (span reads), so
    memory is bounded by the windows, not the track: a 60-minute file with 8 windows never
    exists in memory whole. Otherwise the whole file is decoded once. ``resampler`` and
    ``edge_pad`` are the encoder's front-end choices (:func:`resample`, :func:`frame_with_context`).
    """
    _check_tail(tail, context, patch)
    path = Path(path)
    info = audio_info(path) if max_windows else None
    if info is not None and info.frames > 0:
        n = resampled_length(info.frames, info.sample_rate, target_sr)
        starts = window_starts(n, window, hop, max_windows, patch, tail)
        needed = len(starts) * (context + window + 2 * _RESAMPLE_MARGIN)
        if n >= (patch or window) and needed < n // 2:
            try:
                return _windows_from_spans(path, info, target_sr, starts, window, context,
                                           wrap_at=n if tail == "wrap" else None, resampler=resampler,
                                           edge_pad=edge_pad, n_target=n)
            except _ShorterThanHeader:
                # The header (or a container's duration estimate) promised more audio than there is:
                # the window grid must come from the real length, so decode the whole file once.
                log.debug("%s is shorter than its header says; decoding it whole", path)
    wave, _ = decode(path, target_sr, resampler=resampler)
    return frame_with_context(wave, window, hop, max_windows, context, patch, tail, edge_pad)


def _reflect_edges(wave: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` samples ``np.pad(wave, n, mode="reflect")`` puts before and after ``wave``."""
    padded = np.pad(wave, n, mode="reflect") if len(wave) > 1 else np.zeros(len(wave) + 2 * n, np.float32)
    return padded[:n].astype(np.float32), padded[-n:].astype(np.float32)


class _ShorterThanHeader(Exception):
    pass


def _windows_from_spans(path: Path, info: AudioInfo, target_sr: int, starts: list[int], window: int,
                        context: int, wrap_at: int | None = None, resampler: str = "sinc",
                        edge_pad: str = "zeros", n_target: int | None = None) -> np.ndarray:
    """Windows read as spans; with ``wrap_at`` (the track's length at ``target_sr``) a window that runs
    past it continues from the start, as :func:`wrap_windows` cuts it. ``edge_pad="reflect"`` fills the
    ``context`` samples beyond either end of the track (``n_target`` samples) by reflection."""
    out = np.zeros((len(starts), context + window), dtype=np.float32)
    for i, s in enumerate(starts):
        lo_t, hi_t = s - context, s + window     # target samples wanted (lo_t < 0: zeros)
        if wrap_at is not None and hi_t > wrap_at:
            head = _target_span(path, info, target_sr, s, wrap_at, resampler)   # wrap windows have no context
            out[i, :head.shape[-1]] = head
            rest = _target_span(path, info, target_sr, 0, hi_t - wrap_at, resampler)
            out[i, head.shape[-1]:head.shape[-1] + rest.shape[-1]] = rest
            continue
        if edge_pad == "reflect" and context and n_target is not None and (lo_t < 0 or hi_t > n_target):
            out[i] = _reflected_window(path, info, target_sr, lo_t, hi_t, context, n_target, resampler)
            continue
        piece = _target_span(path, info, target_sr, max(lo_t, 0), hi_t, resampler)
        dst = max(lo_t, 0) - lo_t
        out[i, dst:dst + piece.shape[-1]] = piece
    return out


def _reflected_window(path: Path, info: AudioInfo, target_sr: int, lo_t: int, hi_t: int, context: int,
                      n: int, resampler: str) -> np.ndarray:
    """Target samples ``lo_t:hi_t`` of the track reflected ``context`` samples past both ends, then zeros."""
    ra, rb = max(lo_t, 0), min(hi_t, n)
    if lo_t < 0:
        rb = max(rb, min(n, context + 1))      # the start's reflection reads samples 1..context
    if hi_t > n:
        ra = min(ra, max(0, n - context - 1))  # the end's reflection reads the last context + 1 samples
    piece = _target_span(path, info, target_sr, ra, rb, resampler)
    left, right = _reflect_edges(piece, context)
    ext = np.concatenate([left if ra == 0 else np.zeros(0, np.float32), piece,
                          right if rb == n else np.zeros(0, np.float32)])
    base = ra - (context if ra == 0 else 0)     # track index of ext[0]
    out = np.zeros(hi_t - lo_t, dtype=np.float32)
    seg = ext[max(0, lo_t - base):max(0, hi_t - base)]
    dst = max(0, base - lo_t)
    out[dst:dst + seg.shape[-1]] = seg[:len(out) - dst]
    return out


def _target_span(path: Path, info: AudioInfo, target_sr: int, a: int, b: int, resampler: str = "sinc") -> np.ndarray:
    """Mono samples ``a:b`` (``a >= 0``) of the track resampled to ``target_sr``, as a whole-file resample
    gives them, from a span read (shorter at the end of the file)."""
    sr = info.sample_rate
    g = math.gcd(sr, target_sr)
    period_in, period_out = sr // g, target_sr // g  # resampler phases repeat every period_in input samples
    lo_n = max(0, (a * sr) // target_sr - _RESAMPLE_MARGIN)
    lo_n -= lo_n % period_in                         # on the resampler's phase grid
    hi_n = -(-b * sr // target_sr) + _RESAMPLE_MARGIN
    data, _ = read_span(path, lo_n, hi_n - lo_n)
    if data.shape[-1] < min(hi_n, info.frames) - lo_n:
        raise _ShorterThanHeader
    wave = _to_mono(data, True)
    if not np.isfinite(wave).all():
        raise AudioError(f"non-finite samples in {path}", hint="the file is corrupt")
    offset = lo_n // period_in * period_out          # target index of wave[0]
    if sr != target_sr:
        wave = resample(wave, sr, target_sr, resampler, first_out=offset)
    return wave[a - offset:b - offset]


# --------------------------------------------------------------------------- writing
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
