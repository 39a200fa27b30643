"""The student's mel front end, twice: the PyTorch one training and ``mtx embed`` use (:class:`LogMel`), and
its NumPy twin (:class:`ClientLogMel`), what a client without PyTorch computes from ``preprocessing.json``
alone. ``mtx export`` checks the twin against :class:`LogMel` on a seeded signal (``onnx.client_check``),
and the tests check both against a naive reading of ``preprocessing.json``.

The rule (what ``preprocessing.json`` describes): mono audio at ``sample_rate``; STFT with a periodic Hann
window of ``n_fft``, hop ``hop``, centred (reflect padding); power spectrum; HTK-mel triangles
(:func:`htk_mel_filters`, peak 1, no area normalisation) from ``fmin`` to ``fmax``;
``10 log10(max(mel, amin))``; minus the clip's maximum (ref = max); floored at ``-top_db``; then per-clip
min-max to [0, 1] (a constant clip gives zeros).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...audio import repeat_pad

# --------------------------------------------------------------------------- front end
def htk_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def htk_mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """The one mel filterbank of the student front end: HTK-mel triangles [n_fft // 2 + 1, n_mels], peak 1,
    no area normalisation (float64). Both front ends below use it."""
    freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    mels = np.linspace(htk_mel(fmin), htk_mel(fmax), n_mels + 2)
    pts = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    lo, mid, hi = pts[:-2], pts[1:-1], pts[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    return np.clip(np.minimum(up, down), 0.0, None)


def mel_filters(cfg: Any) -> torch.Tensor:
    """:func:`htk_mel_filters` of a ``StudentConfig``'s front end, as a tensor."""
    return torch.from_numpy(htk_mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax))


class LogMel:
    """Waveforms [B, S] -> normalised log-mel [B, 1, n_mels, T] (float32), per the module docstring."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.fb = mel_filters(cfg).float()
        self.window = torch.hann_window(cfg.n_fft, periodic=True)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return scale_db(self.db(wave), self.cfg.top_db).unsqueeze(1)

    def db(self, wave: torch.Tensor, center: bool = True) -> torch.Tensor:
        """Waveforms [B, S] -> ``10 log10(max(mel, amin))`` [B, n_mels, T], before the per-clip scaling.

        ``center=False`` frames without padding (frame t starts at sample t * hop): the mel cache
        computes a long track block by block on the reflect-padded track this way.
        """
        c = self.cfg
        wave = wave.float()
        if center and wave.shape[-1] <= c.n_fft // 2:   # reflect padding needs more samples than the pad
            wave = F.pad(wave, (0, c.n_fft // 2 + 1 - wave.shape[-1]))
        spec = torch.stft(wave, c.n_fft, hop_length=c.hop, win_length=c.n_fft,
                          window=self.window.to(wave.device), center=center, pad_mode="reflect",
                          return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2                          # [B, F, T]
        mel = torch.einsum("bft,fm->bmt", power, self.fb.to(wave.device))
        return power_to_db(mel, c.amin)


def power_to_db(mel: torch.Tensor, amin: float) -> torch.Tensor:
    return 10.0 * torch.log10(mel.clamp_min(amin))


def normalise_db(mel: torch.Tensor, amin: float, top_db: float) -> torch.Tensor:
    """[B, M, T] power mel -> dB re the clip max, floored at -top_db, min-max scaled to [0, 1] per clip."""
    return scale_db(power_to_db(mel, amin), top_db)


def scale_db(db: torch.Tensor, top_db: float) -> torch.Tensor:
    """[B, M, T] dB -> re the clip max (ref = max), floored at -top_db, min-max scaled to [0, 1] per clip."""
    db = db - db.amax(dim=(1, 2), keepdim=True)
    db = db.clamp_min(-top_db)
    lo = db.amin(dim=(1, 2), keepdim=True)
    span = -lo   # the max is 0 after ref = max
    return torch.where(span > 0, (db - lo) / span.clamp_min(1e-12), torch.zeros_like(db))


def crop_offset(n_samples: int, crop: int, key: int | None) -> int:
    """Start of a crop: uniform over the valid range from ``key`` (a hash), the centre when ``key`` is None."""
    room = n_samples - crop
    if room <= 0:
        return 0
    return room // 2 if key is None else int(key % (room + 1))


def take_crop(wave: np.ndarray, crop: int, key: int | None) -> np.ndarray:
    """A ``crop``-sample window of ``wave`` (repeated when the clip is shorter)."""
    if wave.shape[-1] < crop:
        return repeat_pad(wave, crop)
    s = crop_offset(wave.shape[-1], crop, key)
    return wave[s:s + crop]


# --------------------------------------------------------------------------- the NumPy twin (a client's front end)
def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ClientLogMel:
    """Mono audio at ``pre['sample_rate']`` -> [1, 1, n_mels, T] float32, from preprocessing.json alone.

    What a client without PyTorch does, written independently of the training front end (the export checks
    the two against each other). The filterbank is built once; only the bins some band touches are squared
    and multiplied. The FFT is SciPy's multi-threaded pocketfft when SciPy is installed, NumPy's otherwise
    (about 2x slower per 30 s clip on 2 cores; same numbers to float32 precision).
    """

    def __init__(self, pre: dict[str, Any], fft_workers: int | None = None) -> None:
        self.n_fft, self.hop, self.n_mels = int(pre["n_fft"]), int(pre["hop_length"]), int(pre["n_mels"])
        sr, n = int(pre["sample_rate"]), self.n_fft
        self.window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic Hann
        fb = htk_mel_filters(sr, n, self.n_mels, float(pre["fmin"]), float(pre["fmax"])).T   # [n_mels, bins]
        used = np.flatnonzero(fb.any(axis=0))
        self.lo, self.hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        self.fb_t = np.ascontiguousarray(fb[:, self.lo:self.hi].T, dtype=np.float32)   # [bins used, n_mels]
        self.amin, self.top_db = float(pre["log"]["amin"]), float(pre["log"]["top_db"])
        self.fft_workers = fft_workers or _usable_cpus()
        try:
            import scipy.fft as sfft
            self._rfft = lambda a: sfft.rfft(a, axis=1, workers=self.fft_workers, overwrite_x=True)
        except ImportError:   # pragma: no cover - scipy comes with scikit-learn
            self._rfft = lambda a: np.fft.rfft(a, axis=1)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        n = self.n_fft
        x = np.asarray(wave, dtype=np.float32)
        if len(x) <= n // 2:   # reflect padding needs more samples than the pad
            x = np.concatenate([x, np.zeros(n // 2 + 1 - len(x), np.float32)])
        x = np.pad(x, n // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(x, n)[::self.hop] * self.window   # [T, n_fft]
        mag = np.abs(self._rfft(frames)[:, self.lo:self.hi])
        mel = np.square(mag, out=mag) @ self.fb_t                                         # [T, M] power mel
        db = np.log10(np.maximum(mel, self.amin, out=mel), out=mel)
        db *= 10.0
        top = db.max()
        np.maximum(db, top - self.top_db, out=db)                # ref = max, floored at -top_db
        lo = db.min()
        if top <= lo:
            return np.zeros((1, 1, self.n_mels, len(db)), np.float32)
        db -= lo
        db *= 1.0 / (top - lo)                                   # per-clip min-max to [0, 1]
        return np.ascontiguousarray(db.T)[None, None]


def numpy_log_mel(wave: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """One-off :class:`ClientLogMel` (build the class once when computing many clips)."""
    return ClientLogMel(pre)(wave)
