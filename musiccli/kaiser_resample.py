"""resampy's ``kaiser_best`` band-limited resampler (what ``librosa.load`` used before 0.10).

MusiCNN was trained and is run by musicnn 0.1.0 on ``librosa.load(path, sr=16000)``, which
with the librosa its ``numpy<1.17`` pin allows (<= 0.8.1) resamples with
``resampy.resample(y, sr, 16000, filter="kaiser_best")``. torchaudio's sinc resampler
(:func:`musiccli.audio.resample`) keeps more of the band below Nyquist (rolloff 0.99 vs
0.9476), which moved MusiCNN's penultimate features of a 44.1 kHz noise clip by up to 1.8.

This is the same interpolator as resampy 0.2's ``resample_f``: a Kaiser-windowed sinc
table (64 zero crossings, 2**9 entries per crossing, beta 14.7697, rolloff 0.9476),
linearly interpolated at each output instant, with the table index step truncated to
``int(scale * 512)`` and zeros outside the signal. Because the instants repeat every
``orig_sr / gcd`` input samples, the weights are built once per phase and applied as one
strided matrix product, rather than per sample. resampy advances its time register by
repeated float additions; where that sum lands just below an integer (every
``target_sr / gcd``-th output), it interpolates from the previous input sample with the
same truncated table, which is reproduced as a second weight set for those outputs
(:func:`_drifted_rows`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: resampy's ``kaiser_best`` filter parameters.
NUM_ZEROS = 64
PRECISION = 9
BETA = 14.769656459379492
ROLLOFF = 0.9475937167399596
#: Output samples per block of the strided product (bounds memory on hour-long tracks).
_BLOCK = 1 << 16
#: Elements of one contiguous copy of overlapping frames (8 MB of float64).
_COPY_ELEMENTS = 1 << 20
#: Largest period (inputs x outputs) resampled by polyphase FFT convolution instead.
_POLYPHASE_MAX = 32
#: Outputs per phase in one FFT block of the polyphase path.
_POLYPHASE_BLOCK = 1 << 15


@lru_cache(maxsize=1)
def half_window() -> np.ndarray:
    """The right half of the Kaiser-windowed sinc, sampled 2**PRECISION times per zero crossing."""
    n = (1 << PRECISION) * NUM_ZEROS
    sinc = ROLLOFF * np.sinc(ROLLOFF * np.linspace(0, NUM_ZEROS, num=n + 1, endpoint=True))
    taper = np.kaiser(2 * n + 1, BETA)[n:]
    return taper * sinc


def _wing(win: np.ndarray, delta: np.ndarray, frac: float, step: int) -> np.ndarray:
    """Weights of one filter wing at fractional offset ``frac`` (resampy's table walk)."""
    index_frac = frac * (1 << PRECISION)
    offset = int(index_frac)
    eta = index_frac - offset
    idx = offset + step * np.arange((len(win) - offset) // step)
    return win[idx] + eta * delta[idx]


@lru_cache(maxsize=8)
def _phase_kernels(orig_sr: int, target_sr: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(kernels [period_out, L + period_in + R], drifted-phase-0 kernel [same width], L, R)."""
    ratio = float(target_sr) / orig_sr
    scale = min(1.0, ratio)
    win = half_window() * scale if ratio < 1 else half_window().copy()
    delta = np.zeros_like(win)
    delta[:-1] = np.diff(win)
    step = int(scale * (1 << PRECISION))
    g = math.gcd(orig_sr, target_sr)
    p_in, p_out = orig_sr // g, target_sr // g
    wings = []
    for p in range(p_out):
        n_p, rem = divmod(p * p_in, p_out)
        frac = scale * (rem / p_out)
        wings.append((n_p, _wing(win, delta, frac, step), _wing(win, delta, scale - frac, step)))
    # Phase 0 when the time register sits just below the integer: n - 1, frac -> scale.
    drift = (-1, _wing(win, delta, scale, step), _wing(win, delta, 0.0, step))
    left = max(len(w[1]) for w in [*wings, drift])
    right = max(len(w[2]) for w in [*wings, drift])
    width = left + p_in + right

    def kernel(n_p: int, wl: np.ndarray, wr: np.ndarray) -> np.ndarray:
        k = np.zeros(width)
        c = left + n_p                       # column of input sample n (relative to the block start)
        k[c - np.arange(len(wl))] += wl      # x[n - i]
        k[c + 1 + np.arange(len(wr))] += wr  # x[n + 1 + k]
        return k

    kernels = np.stack([kernel(*w) for w in wings])
    return kernels, kernel(*drift), left, right


def _drifted_rows(n_out: int, orig_sr: int, target_sr: int) -> np.ndarray:
    """Output indices (< ``n_out``) where resampy's accumulated time register is just below an integer."""
    g = math.gcd(orig_sr, target_sr)
    p_in, p_out = orig_sr // g, target_sr // g
    inc = 1.0 / (float(target_sr) / orig_sr)
    rows = []
    register = 0.0
    done = 0
    while done < n_out:  # block-wise np.add.accumulate == resampy's sequential float additions
        m = min(_BLOCK * 16, n_out - done)
        steps = np.full(m, inc)
        steps[0] = register if done else 0.0
        regs = np.add.accumulate(steps)
        idx = np.arange(done, done + m)
        on_grid = idx % p_out == 0
        exact = (idx // p_out) * p_in
        rows.append(idx[on_grid & (np.floor(regs) < exact)])
        register = regs[-1] + inc
        done += m
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def resample_kaiser_best(wave: np.ndarray, orig_sr: int, target_sr: int, first_out: int = 0) -> np.ndarray:
    """``librosa.load(..., sr=target_sr)``'s resampling (librosa <= 0.9, resampy ``kaiser_best``).

    1-D float input; returns float32 of length ``ceil(n * target_sr / orig_sr)`` (resampy's
    ``floor`` samples, then zero-padded as ``librosa.util.fix_length`` does). ``first_out``:
    for a span of a longer track that starts on the phase grid, the whole-track output
    index of the span's first output (the time register's drift depends on it).
    """
    x = np.asarray(wave, dtype=np.float64)
    if orig_sr == target_sr:
        return x.astype(np.float32)
    kernels, drift_kernel, left, right = _phase_kernels(orig_sr, target_sr)
    g = math.gcd(orig_sr, target_sr)
    p_in, p_out = orig_sr // g, target_sr // g
    n = x.shape[0]
    n_out = int(n * (float(target_sr) / orig_sr))
    n_fix = int(math.ceil(n * (float(target_sr) / orig_sr)))
    m_total = -(-n_out // p_out)                       # periods that cover the outputs
    width = kernels.shape[1]
    padded = np.zeros(left + m_total * p_in + right + width)
    padded[left:left + n] = x                          # zeros outside the signal
    if p_in * p_out <= _POLYPHASE_MAX and p_in < width:
        out = _polyphase(padded, kernels, p_in, p_out, m_total)
    else:
        out = _strided(padded, kernels, p_in, p_out, m_total)
    if first_out % p_out:
        raise ValueError(f"a span must start on the resampler's phase grid (a multiple of {p_out} outputs)")
    drifted = _drifted_rows(first_out + n_out, orig_sr, target_sr)
    for t in drifted[drifted >= first_out] - first_out:
        m = t // p_out
        out[t] = padded[m * p_in:m * p_in + width] @ drift_kernel
    y = np.zeros(n_fix, dtype=np.float32)
    y[:n_out] = out[:n_out]
    return y


def _strided(padded: np.ndarray, kernels: np.ndarray, p_in: int, p_out: int, m_total: int) -> np.ndarray:
    """``out[m * p_out + p] = padded[m * p_in : m * p_in + width] @ kernels[p]`` as one strided product."""
    width = kernels.shape[1]
    out = np.empty(m_total * p_out)
    # Rows of the strided view overlap when a period is shorter than the kernel (22.05 kHz -> 16 kHz:
    # 441 inputs, 617 taps). BLAS cannot take such a view; small contiguous copies of it keep the
    # product in BLAS instead of numpy's much slower fallback loop.
    overlapping = p_in < width
    block = max(1, _COPY_ELEMENTS // width) if overlapping else _BLOCK
    for m0 in range(0, m_total, block):
        m1 = min(m_total, m0 + block)
        frames = np.lib.stride_tricks.as_strided(
            padded[m0 * p_in:], shape=(m1 - m0, width), strides=(p_in * 8, 8), writeable=False)
        if overlapping:
            frames = np.ascontiguousarray(frames)
        out[m0 * p_out:m1 * p_out] = (frames @ kernels.T).reshape(-1)
    return out


def _polyphase(padded: np.ndarray, kernels: np.ndarray, p_in: int, p_out: int, m_total: int) -> np.ndarray:
    """The same sums for a short period (24 or 48 kHz -> 16 kHz: 3 inputs, 2 or 1 outputs), where the
    strided rows overlap almost entirely. Each phase's kernel splits into ``p_in`` sub-filters over
    every ``p_in``-th input, ``out_p[m] = sum_r sum_q x_r[m + q] h_pr[q]`` with
    ``x_r = padded[r::p_in]``, summed in the frequency domain block by block (overlap-save with
    numpy's FFT; memory bounded by the block on hour-long tracks). Equal to the direct sums up to
    float64 rounding (on 30 s of noise at 8, 12, 24, 32, 48 and 96 kHz the float32 results differed
    by at most 2e-12), and 3 to 10 times faster than the strided product on 30 s clips."""
    width = kernels.shape[1]
    taps = -(-width // p_in)
    split = np.zeros((p_out, taps * p_in))
    split[:, :width] = kernels
    block = min(_POLYPHASE_BLOCK, m_total)
    size = block + taps - 1                       # inputs per block of one sub-filter's outputs
    nfft = 1 << (size - 1).bit_length()           # the smallest power of two >= size
    # h_pr reversed: a correlation is a convolution with the reversed filter.
    filters = np.fft.rfft(split.reshape(p_out, taps, p_in).transpose(2, 0, 1)[:, :, ::-1], nfft)  # [r, p, f]
    subs = [padded[r::p_in] for r in range(p_in)]
    out = np.empty((m_total, p_out))
    for m0 in range(0, m_total, block):
        b = min(block, m_total - m0)
        spectrum = sum(np.fft.rfft(x_r[m0:m0 + b + taps - 1], nfft)[None, :] * filters[r]
                       for r, x_r in enumerate(subs))                                          # [p, f]
        out[m0:m0 + b] = np.fft.irfft(spectrum, nfft)[:, taps - 1:taps - 1 + b].T
    return out.reshape(-1)
