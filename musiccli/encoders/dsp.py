"""``dsp``: the default offline audio encoder (hand-made features, no weights).

It exists so the whole pipeline runs without downloading a model, and so that a
text model has something musically meaningful to align to: timbre/instrumentation
(log-mel, spectral shape), harmony and mode (chroma, key profiles), and rhythm and
tempo (onset strength, tempogram).

Every feature is *standardised* with fixed affine maps and log compression chosen
so that it is roughly zero-mean and unit-scale on typical music. No statistic is
estimated from a data set, and every window is processed independently, so a
batch of one gives the same vector as a batch of many and the encoder is fully
deterministic.

Audio: 16 kHz mono, windows of 3.0 s (48,000 samples) every 1.5 s.
Two STFTs per window (real FFTs of Hann-windowed frames): n_fft 1024 / hop 512
(31.25 frames/s, 94 frames) for mel, spectral shape and onsets; n_fft 4096 / hop
4096 (3.9 Hz bins, 11 frames) for chroma. The hops are chosen for CPU speed: one
window costs about 2 ms of CPU time on one core. Output values are clamped to
[-8, 8] so that degenerate input (digital silence, isolated clicks) stays bounded.

Per-window dimensionality::

    log-mel            64 bands x (mean, std over frames)                     = 128
    spectral shape     6 (centroid, bandwidth, rolloff, flatness, ZCR, RMS;
                       rolloff and flatness on the mel spectrum)
                       x (mean, std over frames)                             =  12
    chroma             12 mean + 12 std (per-frame normalised)
                       + 12 mean rotated to the estimated tonic
                       + 2 mode scores (best major / best minor key-profile r;
                         keys are found on chroma + bass chroma < 260 Hz)      =  38
    rhythm             onset envelope mean, std; low-band (< 200 Hz) and
                       high-band (> 3 kHz) onset means;
                       10 tempogram bands (quarter-octave triangles on
                       log-tempo, centred 50.5-240 BPM);
                       pulse clarity; log2(tempo / 120 BPM)                   =  16
    ---------------------------------------------------------------------------
    window_dim                                                               = 194

Track aggregation (``encoders.base.aggregate``): ``mean`` -> 194,
``stats`` [mean, robust_sigma, dmean] -> 3 x 194 = 582 (the default).
"""

from __future__ import annotations

import math

import torch

from ..runtime import Runtime
from .base import AudioEncoder, EncoderOptions, EncoderSpec, register

SR = 16000
N_FFT = 1024
HOP = 512
FPS = SR / HOP
N_MELS = 64
FMIN, FMAX = 30.0, 8000.0
CHROMA_FFT = 4096
CHROMA_HOP = 4096
CHROMA_FMIN, CHROMA_FMAX = 55.0, 4200.0
BASS_FMAX = 260.0  # bass register (up to about C4), where roots and tonics live
TEMPO_MIN, TEMPO_MAX, TEMPO_BANDS = 40.0, 240.0, 10  # BPM range and tempogram bands
EPS = 1e-10
ONSET_LAMBDA = 1000.0

# Krumhansl-Kessler key profiles (tonic first).
MAJOR_PROFILE = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
MINOR_PROFILE = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)

DIMS = {"logmel": 2 * N_MELS, "spectral": 12, "chroma": 38, "rhythm": 6 + TEMPO_BANDS}
WINDOW_DIM = sum(DIMS.values())


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_fft: int = N_FFT, n_mels: int = N_MELS, sr: int = SR,
                   fmin: float = FMIN, fmax: float = FMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangular HTK-mel filters [n_bins, n_mels] (area-normalised) and band centres in Hz."""
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    pts = _mel_to_hz(torch.linspace(_hz_to_mel(torch.tensor(fmin)).item(), _hz_to_mel(torch.tensor(fmax)).item(),
                                    n_mels + 2, dtype=torch.float64))
    lo, mid, hi = pts[:-2], pts[1:-1], pts[2:]
    f = freqs[:, None]
    up = (f - lo) / (mid - lo)
    down = (hi - f) / (hi - mid)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    # Area normalisation keeps band energies comparable across widths (Slaney style).
    fb = fb * (2.0 / (hi - lo))[None, :] * (sr / n_fft)
    return fb.float(), mid.float()


def chroma_filterbank(n_fft: int = CHROMA_FFT, sr: int = SR) -> torch.Tensor:
    """Soft assignment of STFT bins to 12 pitch classes (C=0) [n_bins, 12]."""
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    valid = (freqs >= CHROMA_FMIN) & (freqs <= CHROMA_FMAX)
    midi = 12.0 * torch.log2(torch.clamp(freqs, min=1.0) / 440.0) + 69.0
    pc = torch.remainder(midi, 12.0)[:, None]
    d = torch.remainder(pc - torch.arange(12, dtype=torch.float64)[None, :] + 6.0, 12.0) - 6.0
    w = torch.exp(-0.5 * (d / 0.5) ** 2) * valid[:, None]
    return w.float()


def key_profiles() -> torch.Tensor:
    """[12, 24] z-scored profiles: columns 0-11 major keys with tonic r, 12-23 minor keys."""
    cols = []
    for prof in (MAJOR_PROFILE, MINOR_PROFILE):
        p = torch.tensor(prof, dtype=torch.float32)
        p = (p - p.mean()) / p.std(unbiased=False)
        for r in range(12):
            cols.append(torch.roll(p, r))
    return torch.stack(cols, dim=1)


def tempo_lag_weights(n_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tempogram band weights [n_lags, bands], the 40-240 BPM lag mask [n_lags] and each lag's BPM.

    Bands are triangles on a log-tempo axis, a quarter octave apart and centred on
    120 * 2^(k/4) (50.5 ... 240 BPM, so 60, 120 and 240 are band centres), so that a
    tempo between two centres is shared smoothly instead of jumping across a hard edge.
    """
    lags = torch.arange(n_frames, dtype=torch.float64)
    bpm = 60.0 * FPS / torch.clamp(lags, min=1e-9)
    centres = 120.0 * 2.0 ** ((torch.arange(TEMPO_BANDS, dtype=torch.float64) - 5) / 4.0)
    dist = (torch.log2(bpm)[:, None] - torch.log2(centres)[None, :]).abs() / 0.25
    in_range = (bpm >= TEMPO_MIN) & (bpm <= TEMPO_MAX) & (lags > 0)
    weights = torch.clamp(1.0 - dist, min=0.0) * in_range[:, None]
    return weights.float(), in_range, bpm.float()


def tempo_band_centres() -> list[float]:
    return [120.0 * 2.0 ** ((k - 5) / 4.0) for k in range(TEMPO_BANDS)]


def _std_mean(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.std_mean(x, dim=dim, unbiased=False)


@register(EncoderSpec(
    name="dsp",
    description="Hand-made DSP features (log-mel, spectral shape, chroma/mode, onset/tempogram); "
                "offline, no weights.",
    sample_rate=SR,
    window_s=3.0,
    hop_s=1.5,
    default_aggregation="stats",
    default_model="dsp-v1",
    version="1",
))
class DSPEncoder(AudioEncoder):
    """Batched torch DSP features; runs on the runtime device."""

    def __init__(self, options: EncoderOptions, runtime: Runtime) -> None:
        super().__init__(options, runtime)
        dev = runtime.device
        fb, centres = mel_filterbank()
        self._mel_fb = fb.to(dev)
        self._low_bands = (centres < 200.0).to(dev)
        self._high_bands = (centres > 3000.0).to(dev)
        chroma_fb = chroma_filterbank()
        self._chroma_fb = chroma_fb.to(dev)
        chroma_freqs = torch.linspace(0, SR / 2, CHROMA_FFT // 2 + 1)
        self._bass_fb = (chroma_fb * (chroma_freqs <= BASS_FMAX)[:, None]).to(dev)
        self._profiles = key_profiles().to(dev)
        # Windows are scaled so that a full-scale sine has magnitude 1 (0 dB) in its bin.
        win = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32)
        self._win = (win / (win.sum() / 2)).to(dev)
        cwin = torch.hann_window(CHROMA_FFT, periodic=True, dtype=torch.float32)
        self._chroma_win = (cwin / (cwin.sum() / 2)).to(dev)
        self._freqs = torch.linspace(0, SR / 2, N_FFT // 2 + 1, device=dev)
        self._mel_centres = centres.to(dev)
        # One matmul gives mel bands plus the power moments for centroid and bandwidth.
        khz = self._freqs / 1000.0
        self._proj = torch.cat([self._mel_fb, torch.ones_like(khz)[:, None], khz[:, None], (khz ** 2)[:, None]], 1)
        self._rot = (torch.arange(12)[None, :] + torch.arange(12)[:, None]) % 12  # [tonic, i] -> pc
        self._rot = self._rot.to(dev)
        self._smooth = torch.tensor([[[0.05, 0.25, 0.4, 0.25, 0.05]]], device=dev)
        self._lag_masks: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def window_dim(self) -> int:
        return WINDOW_DIM

    def _masks(self, n_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if n_frames not in self._lag_masks:
            b, o, bpm = tempo_lag_weights(n_frames)
            self._lag_masks[n_frames] = (b.to(self.runtime.device), o.to(self.runtime.device),
                                         bpm.to(self.runtime.device))
        return self._lag_masks[n_frames]

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        # DSP needs fp32 (log of tiny powers); autocast would only lose precision here.
        with torch.autocast(device_type=windows.device.type, enabled=False):
            x = windows.to(self.runtime.device, torch.float32)
            if x.ndim != 2:
                raise ValueError(f"expected [batch, samples] windows, got shape {tuple(x.shape)}")
            # Rows are independent; slabs of 32 keep the spectrograms cache-sized on the CPU.
            slab = 32 if x.device.type == "cpu" else 1024
            out = [self._features(x[i:i + slab]) for i in range(0, len(x), slab)]
            return torch.cat(out, 0).clamp_(-8.0, 8.0)  # degenerate input (silence, clicks) stays bounded

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        spec = self._stft(x, N_FFT, HOP, self._win, center=True)  # [B, T, F]
        power = torch.view_as_real(spec).square().sum(-1)
        proj = power @ self._proj  # [B, T, M + 3]
        mel = proj[..., :N_MELS].transpose(1, 2)
        logmel = 10.0 * torch.log10(mel + EPS)  # dB re full scale, [B, M, T]
        feats = [
            self._logmel_features(logmel),
            self._spectral_features(x, mel, logmel, proj[..., N_MELS:]),
            self._chroma_features(x),
            self._rhythm_features(mel),
        ]
        return torch.cat(feats, dim=1).float()

    @staticmethod
    def _stft(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, center: bool) -> torch.Tensor:
        # rfft over unfolded frames is about twice as fast as torch.stft on the CPU.
        if center:
            x = torch.nn.functional.pad(x[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
        return torch.fft.rfft(x.unfold(1, n_fft, hop) * window, dim=-1)

    # ------------------------------------------------------------------ blocks
    def _logmel_features(self, logmel: torch.Tensor) -> torch.Tensor:
        std, mean = _std_mean(logmel, 2)
        # Band levels of music sit around -60..-20 dB re full scale; spread over frames ~3-12 dB.
        return torch.cat([(mean + 50.0) / 15.0, (std - 6.0) / 4.0], dim=1)

    def _spectral_features(self, x: torch.Tensor, mel: torch.Tensor, logmel: torch.Tensor,
                           moments: torch.Tensor) -> torch.Tensor:
        frame_power = moments[..., 0]  # [B, T]
        total = frame_power + EPS
        centroid = 1000.0 * moments[..., 1] / total
        bandwidth = 1000.0 * torch.sqrt(torch.clamp(moments[..., 2] / total - (centroid / 1000.0) ** 2, min=0.0))
        # Rolloff and flatness on the mel spectrum: 64 bands are plenty for a summary and 8x cheaper.
        cum = torch.cumsum(mel, dim=1)
        rolloff_idx = (cum < 0.85 * cum[:, -1:, :]).sum(1).clamp(max=N_MELS - 1)
        rolloff = self._mel_centres[rolloff_idx]
        flatness = torch.exp(logmel.mean(1) * (math.log(10.0) / 10.0)) / (mel.mean(1) + EPS)
        # Zero crossings per sample, pooled into hop-sized blocks (cheaper than framing twice).
        signs = torch.signbit(x)
        crossings = (signs[:, 1:] != signs[:, :-1]).float()
        n_blocks = crossings.shape[1] // HOP
        zcr = crossings[:, :n_blocks * HOP].reshape(len(x), n_blocks, HOP).mean(2)
        # Frame level from the (normalised) power spectrum: 0 dB = full-scale sine.
        level_db = 10.0 * torch.log10(frame_power + EPS)
        # Log compression puts each on a perceptually even scale; constants centre typical music.
        per_frame = [
            torch.log2(centroid + 1.0) - math.log2(1500.0),
            torch.log2(bandwidth + 1.0) - math.log2(1500.0),
            (torch.log2(rolloff + 1.0) - math.log2(3000.0)) / 1.5,
            (torch.log10(flatness + EPS) + 2.0) / 1.0,
            (torch.log2(zcr + 1e-4) - math.log2(0.05)) / 1.5,
            (level_db + 15.0) / 10.0,
        ]
        out = []
        for v in per_frame:
            std, mean = _std_mean(v, 1)
            out.append(mean)
            out.append(std * 2.0 - 1.0)
        return torch.stack(out, dim=1)

    def _chroma_features(self, x: torch.Tensor) -> torch.Tensor:
        spec = self._stft(x, CHROMA_FFT, CHROMA_HOP, self._chroma_win, center=False)
        mag = spec.abs()  # [B, T, F]
        chroma = (mag @ self._chroma_fb).transpose(1, 2)  # [B, 12, T]
        energy = chroma.sum(1, keepdim=True)
        # Per-frame normalisation (silence -> flat 1/12), so chroma reflects pitch content, not level.
        chroma = (chroma + 1e-6) / (energy + 12e-6)
        std, mean = _std_mean(chroma, 2)
        # Key finding adds the bass chroma: the bass tends to sit on roots, which separates a
        # key from its relative major/minor (same pitch set) better than the full chroma alone.
        bass = mag @ self._bass_fb
        bass = ((bass + 1e-6) / (bass.sum(2, keepdim=True) + 12e-6)).mean(1)
        key_chroma = mean + bass
        z = (key_chroma - key_chroma.mean(1, keepdim=True)) / (key_chroma.std(1, keepdim=True, unbiased=False)
                                                               + 1e-6)
        corr = z @ self._profiles / 12.0  # Pearson r with each of the 24 key profiles, [B, 24]
        best_major, _ = corr[:, :12].max(1)
        best_minor, _ = corr[:, 12:].max(1)
        tonic = corr.argmax(1) % 12
        aligned = torch.gather(mean, 1, self._rot[tonic])
        return torch.cat([
            (mean * 12.0 - 1.0) * 2.0,
            (std * 12.0 - 0.5) * 2.0,
            (aligned * 12.0 - 1.0) * 2.0,
            torch.stack([(best_major - 0.5) * 3.0, (best_minor - 0.5) * 3.0], dim=1),
        ], dim=1)

    def _rhythm_features(self, mel: torch.Tensor) -> torch.Tensor:
        # Spectral flux on log(1 + lambda * mel magnitude): loud bands dominate, while the
        # frame-to-frame jitter of quiet (noise-floor) bands, which dB flux would weight
        # equally, is compressed away. Positive changes per band, summed over bands.
        comp = torch.log1p(ONSET_LAMBDA * torch.sqrt(mel))
        flux = torch.relu(comp[:, :, 1:] - comp[:, :, :-1])  # [B, M, T-1]
        onset = flux.mean(1)
        low = flux[:, self._low_bands].mean(1)
        high = flux[:, self._high_bands].mean(1)
        o_std, o_mean = _std_mean(onset, 1)
        n = onset.shape[1]
        # A beat period is rarely a whole number of frames (120 BPM = 15.6 frames), so its
        # peaks land alternately on neighbouring lags; smoothing the envelope by about one
        # frame keeps the true period from losing to its double (an octave error).
        smooth = torch.nn.functional.conv1d(onset[:, None], self._smooth, padding=2)[:, 0]
        centred = smooth - smooth.mean(1, keepdim=True)
        spec = torch.fft.rfft(centred, n=2 * n)
        ac = torch.fft.irfft(spec.real ** 2 + spec.imag ** 2, n=2 * n)[:, :n]
        # Biased autocorrelation normalised by lag 0: 1 = perfectly periodic; silence -> 0.
        ac = ac / (ac[:, :1] + 1e-3 * n)
        weights, overall, bpm = self._masks(n)
        neg = torch.finfo(ac.dtype).min
        band_max = (ac[:, :, None] * weights[None]).amax(1)
        in_range = torch.where(overall[None], ac, torch.full_like(ac, neg))
        clarity, best_lag = in_range.max(1)
        # Without a pulse the best lag is arbitrary: report the neutral 120 BPM instead.
        tempo = torch.where(clarity > 0.1, torch.log2(bpm[best_lag] / 120.0), torch.zeros_like(clarity))

        def level(v: torch.Tensor) -> torch.Tensor:  # onset strengths span decades: log scale
            return (torch.log2(v + 1e-3) - math.log2(0.1)) / 2.0

        return torch.cat([
            torch.stack([level(o_mean), level(o_std), level(low.mean(1)), level(high.mean(1))], dim=1),
            (band_max - 0.1) * 4.0,
            ((clarity - 0.2) * 4.0)[:, None],
            tempo[:, None] * 2.0,
        ], dim=1)
