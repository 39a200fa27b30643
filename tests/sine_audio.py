"""Small encoded audio for source fixtures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050
FORMATS = {".flac": ("flac", "flac", "s16"), ".mp3": ("mp3", "libmp3lame", "fltp"),
           ".ogg": ("ogg", "vorbis", "fltp"), ".m4a": ("ipod", "aac", "fltp")}


def mp3(seconds: float, freq: float) -> bytes:
    """A sine of ``freq`` Hz as MP3 bytes (8 kHz mono)."""
    sr = 8000
    t = np.arange(int(sr * seconds)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="MP3")
    return buf.getvalue()


def write_audio(path: Path, freq: float, tags: dict[str, str], seconds: float = 1.2) -> None:
    """A tagged mono tone in the container the suffix names, encoded by FFmpeg (PyAV)."""
    t = np.arange(int(SR * seconds)) / SR
    write_signal(path, (0.3 * np.sin(2 * np.pi * freq * t) * np.linspace(0.3, 1.0, t.size)).astype(np.float32), tags)


def write_signal(path: Path, mono: np.ndarray, tags: dict[str, str]) -> None:
    """A tagged mono signal at ``SR`` in the container the suffix names, encoded by FFmpeg (PyAV)."""
    container, codec, fmt = FORMATS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    # stereo: FFmpeg's own Vorbis encoder takes nothing else
    encode_pyav(path, np.stack([mono, 0.5 * mono]), SR, container, codec, fmt, tags)


def encode_pyav(path: Path, data: np.ndarray, sr: int, container: str, codec: str, fmt: str,
                tags: dict[str, str]) -> None:
    """Stereo float ``data`` [2, T] encoded by FFmpeg (PyAV) into ``container`` with ``codec`` and real tags."""
    import av

    with av.open(str(path), "w", format=container) as out:
        out.metadata.update(tags)
        # FFmpeg's native Vorbis encoder (the wheel has no libvorbis) is marked experimental.
        stream = out.add_stream(codec, rate=sr, options={"strict": "experimental"})
        stream.layout = "stereo"
        stream.format = fmt
        size = stream.codec_context.frame_size or 1024
        pcm = (np.clip(data, -1, 1) * 32767).astype(np.int16) if fmt.startswith("s16") else data
        for i in range(0, pcm.shape[1], size):
            block = pcm[:, i:i + size]
            arr = block if fmt.endswith("p") else block.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout="stereo")
            frame.sample_rate, frame.pts = sr, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
