"""Small encoded audio for source fixtures."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def mp3(seconds: float, freq: float) -> bytes:
    """A sine of ``freq`` Hz as MP3 bytes (8 kHz mono)."""
    sr = 8000
    t = np.arange(int(sr * seconds)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="MP3")
    return buf.getvalue()
