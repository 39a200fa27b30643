"""MusiCNN (Pons & Serra, 2019): the 200-d penultimate layer, plus 50 zero-shot tags.

The network is :mod:`musiccli.encoders.musicnn_torch`, a PyTorch port with measured
parity to the original TensorFlow graph. Its weights come from the ``musicnn`` wheel
(``pip install --no-deps musicnn``), whose TF checkpoints are converted once to
``<state>/models/musicnn/<model>.safetensors`` and loaded from there afterwards.

- ``--model MSD_musicnn`` (default; Million Song Dataset tags) or ``MTT_musicnn``
  (MagnaTagATune tags).
- Per window: the penultimate features, 200-d (what AudioMuse-AI stores in its
  ``embedding`` table). ``mean`` (the default) -> 200, ``stats`` -> 3 x 200 = 600.
- ``--tags``: the 50 sigmoid tag probabilities of each window, mean-aggregated per
  track (``embed`` stores them as ``tag_probs``).

Framing. musicnn computes one log-mel of the whole file (centered STFT, n_fft 512,
hop 256 samples) and cuts 187-frame patches every 187 frames, i.e. every
187 x 256 = 47,872 samples = 2.992 s. The spec's hop is that 2.992 s (not a round
3 s, whose odd windows would fall between musicnn's frame grid points), and the
window is 3 s (48,000 samples: the 187 frames need 47,872 of them).

Left context. Frame 0 of a patch is centered on the patch start, so its analysis
window reaches 256 samples *before* the window. A bare 3 s window would see zero
padding there instead, which moves the penultimate features by up to ~0.4 away from
the file start. The encoder therefore declares ``context_samples = 256``: the embed
stage hands it those preceding samples (zeros at the file start) in front of every
window, [B, 256 + 48,000]. Frame 186, the last one used, reaches up to
187 x 256 = 47,872 samples after the window start, inside the window.

Front end (encoder version 3). musicnn runs on ``librosa.load(path, sr=16000)`` and
``librosa.feature.melspectrogram`` of the librosa its ``numpy<1.17`` pin allows (<= 0.8.1):
resampling with resampy's ``kaiser_best`` filter and a centred STFT that pads the file by
*reflection*. The spec asks the stage for the same (``resampler="kaiser_best"``,
:mod:`musiccli.kaiser_resample`; ``edge_pad="reflect"``: the 256 samples before the file start
and after its end are the reflected signal, then zeros), so frames straddling either end see
what musicnn sees. With torchaudio's resampler and zero edges (version 2) a 44.1 kHz noise
clip's patches were off by up to 1.8 and 16 kHz files' first patches by up to 0.12.

Reference and tolerance: ``tests/test_musicnn_reference.py`` runs ``run_embed`` on 18
generated clips (16 / 44.1 kHz; 3, 12, 31 s; tones, drums, noise) and compares every patch
with musicnn 0.1.0's own TensorFlow ``extractor`` output (committed fixture): <= 1e-3 per
patch, track-mean cosine >= 0.9999, tags <= 1e-3. Measured: <= 3e-5 per patch, cosine 1.000000.

Last patch. musicnn cuts patches ``for t in range(0, n_frames - 187 + 1, 187)``
with ``n_frames = 1 + n // 256``: a patch exists where its last frame's center,
start + 186 x 256 = start + 47,616 samples, is inside the file, and the incomplete
tail is dropped. The encoder declares ``patch_samples = 47,616``, so the stage plans
exactly those windows (a 12 s clip: 4, not 4 + a window flush with the end), and
pads a window that runs past the end of the file (reflection, then zeros, as above). Every window then equals musicnn's own whole-file patch,
STFT frame for STFT frame. A file shorter than one patch gets one zero-padded
window; musicnn zero-pads the mel instead, which differs only in the one frame
straddling the end of the audio. ``--max-windows`` picks evenly spaced windows of
this same grid.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import torch

from . import musicnn_torch as mt
from .base import AudioEncoder, EncoderSpec, register

log = logging.getLogger(__name__)

SPEC = EncoderSpec(
    name="musicnn",
    description="MusiCNN (MSD/MTT) penultimate layer (200) with 50 zero-shot tags",
    sample_rate=mt.SAMPLE_RATE,
    window_s=mt.WINDOW_SAMPLES / mt.SAMPLE_RATE,                # 3.0 s
    hop_s=mt.N_FRAMES * mt.FFT_HOP / mt.SAMPLE_RATE,           # 2.992 s: musicnn's patch hop
    default_aggregation="mean",
    default_model="MSD_musicnn",
    version="3",                 # 3: librosa 0.8's front end (resampy kaiser_best, reflect padding)
    resampler="kaiser_best",     # librosa.load (<= 0.9): resampy's kaiser_best filter
    edge_pad="reflect",          # librosa < 0.10's centred STFT reflects the signal at both ends
    license="ISC (musicnn code and weights)",
    citation="Pons & Serra, musicnn: Pre-trained convolutional neural networks for music audio "
             "tagging, ISMIR 2019 late-breaking/demo (arXiv:1909.06654)",
    tagger=True,
)


def default_cache_dir() -> Path:
    """``<state>/models/musicnn`` of the default (or MTX_HOME) state dir, for library use."""
    from ..state import StateDir

    return StateDir.resolve(None).root / "models" / "musicnn"


@register(SPEC)
class MusicnnEncoder(AudioEncoder):
    context_samples = mt.CONTEXT_SAMPLES
    patch_samples = (mt.N_FRAMES - 1) * mt.FFT_HOP  # 47,616: the last frame's center must be in the file

    @property
    def window_dim(self) -> int:
        return mt.EMBEDDING_DIM

    @property
    def tag_names(self) -> tuple[str, ...]:
        return mt.tag_names(self.model_id)  # also rejects an unsupported --model

    @property
    def cache_dir(self) -> Path:
        base = self.options.cache_dir
        return base / "musicnn" if base is not None else default_cache_dir()

    @cached_property
    def model(self) -> mt.MusiCNN:
        first = not (self.cache_dir / f"{self.model_id}.safetensors").is_file()
        model = mt.load_musicnn(self.model_id, self.cache_dir)
        log.info("loaded MusiCNN %s%s", self.model_id,
                 f" (converted once to {self.cache_dir})" if first else "")
        return model.requires_grad_(False).to(self.runtime.device)  # frozen

    def embed_windows_with_tags(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 256 + samples] (left context first) -> (penultimate [B, 200], tag probs [B, 50])."""
        ctx = self.context_samples
        if windows.shape[-1] < ctx + (mt.N_FRAMES - 1) * mt.FFT_HOP:
            raise ValueError(f"musicnn windows need {ctx} context + >= {(mt.N_FRAMES - 1) * mt.FFT_HOP} samples, "
                             f"got {windows.shape[-1]}")
        # The port's frontend computes the STFT in float32 and rounds mel power through
        # float16 like musicnn; autocast (bf16 on GPUs) must not lower the precision.
        # inference_mode here too: the stage calls under it, library users need not.
        with torch.inference_mode(), torch.autocast(device_type=windows.device.type, enabled=False):
            emb, probs = self.model.embed_audio(windows[:, ctx:].float(), left_context=windows[:, :ctx].float())
        return emb, probs

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        return self.embed_windows_with_tags(windows)[0]
