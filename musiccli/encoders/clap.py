"""LAION CLAP (laion/larger_clap_music): the projected, L2-normalised audio embedding.

Loading: ``transformers.ClapModel.from_pretrained(model)`` and
``ClapFeatureExtractor.from_pretrained(model)`` (the audio half of ``ClapProcessor``;
the text half is only needed by :mod:`musiccli.encoders.native_text`).

Windows are 10 s at 48 kHz with a 10 s hop: CLAP's feature extractor is built for
10 s inputs (``max_length_s``), so a 10 s window is used whole, with no random crop
and no padding. Longer windows (``--window``) are cut to the extractor's maximum
before feature extraction, because the extractor would otherwise pick a *random*
crop and the stage must be deterministic.
Reference windowing: 10 s at 48 kHz, the extractor's ``max_length_s`` at its
``sampling_rate``; the stage's windows follow it (``window_s=10``, 48 kHz).

Per window: ``get_audio_features`` -> projection dim (512 for larger_clap_music),
L2-normalised (transformers 5 already normalises; older versions do not, so we do it
either way). Default aggregation ``mean`` -> 512; ``stats`` -> 1,536.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from ..hub import load_error
from .base import AudioEncoder, EncoderSpec, register

log = logging.getLogger(__name__)

SPEC = EncoderSpec(
    name="clap",
    description="LAION CLAP music audio tower, projected 512-d unit vectors",
    sample_rate=48_000,
    window_s=10.0,
    hop_s=10.0,
    default_aggregation="mean",
    default_model="laion/larger_clap_music",
    version="1",
    license="Apache-2.0 (model weights)",
    citation="Wu et al., Large-scale Contrastive Language-Audio Pretraining with Feature Fusion "
             "and Keyword-to-Caption Augmentation, ICASSP 2023",
)


def pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def load_clap(model_id: str) -> Any:
    from transformers import ClapModel

    try:
        return ClapModel.from_pretrained(model_id)
    except (OSError, ValueError) as e:
        raise load_error("CLAP model", model_id, e) from None


@register(SPEC)
class ClapEncoder(AudioEncoder):
    @cached_property
    def config(self) -> Any:
        from transformers import ClapConfig

        try:
            return ClapConfig.from_pretrained(self.model_id)
        except (OSError, ValueError) as e:
            raise load_error("CLAP config", self.model_id, e) from None

    @property
    def window_dim(self) -> int:
        return int(self.config.projection_dim)

    @cached_property
    def _model(self) -> tuple[Any, Any]:
        from transformers import ClapFeatureExtractor

        try:
            extractor = ClapFeatureExtractor.from_pretrained(self.model_id)
        except (OSError, ValueError) as e:
            raise load_error("CLAP feature extractor", self.model_id, e) from None
        model = load_clap(self.model_id)
        log.info("loaded CLAP %s (%d-d)", self.model_id, self.window_dim)
        return extractor, model.to(self.runtime.device).eval()

    @torch.inference_mode()
    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        extractor, model = self._model
        # The extractor works on numpy on the CPU (STFT + mel); the model runs on the device.
        waves = windows.detach().float().cpu()[:, : int(extractor.nb_max_samples)].numpy()
        feats = extractor(list(waves), sampling_rate=int(extractor.sampling_rate), return_tensors="pt")
        inputs = {"input_features": feats["input_features"].to(self.runtime.device)}
        if "is_longer" in feats:
            # Windows were cut to the extractor's maximum, so none is longer. The extractor
            # marks a *random* clip as longer when none is (a training-time trick for fusion
            # models); overriding it keeps fused checkpoints deterministic.
            inputs["is_longer"] = torch.zeros_like(feats["is_longer"]).to(self.runtime.device)
        with self.runtime.autocast():
            z = pooled(model.get_audio_features(**inputs))
        return F.normalize(z.float(), dim=-1)
