"""LAION CLAP (default ``laion/clap-htsat-unfused``): the projected, L2-normalised audio embedding.

Default checkpoint. ``laion/clap-htsat-unfused``, because its text tower works: over
unrelated strings its mean pairwise text-text cosine is 0.180, against 0.9993 for
``laion/larger_clap_music`` (the previous default), whose text tower maps every input to
nearly one vector (embeddings-benchmark/mteb #5069; plyr.fm #854 found that checkpoint's
text-projection biases all zero and weights of std 0.006, "jazz standard" vs "heavy metal"
at cosine 0.999). With that default ``mtx search --text-model native`` returned the same
ranking for every query. ``laion/larger_clap_general`` (0.294) also works; pass it with
``--model``. The text tower is health-checked whenever it is loaded
(:mod:`musiccli.text_health`). Version 2: stores embedded with the old default are refused.

Loading: ``transformers.ClapModel.from_pretrained(model)`` and
``ClapFeatureExtractor.from_pretrained(model)`` (the audio half of ``ClapProcessor``;
the text half is only needed by :mod:`musiccli.encoders.native_text`).

Windows are 10 s at 48 kHz with a 10 s hop: CLAP's feature extractor is built for
10 s inputs (``max_length_s``), so a 10 s window is used whole, with no random crop
and no padding. Longer windows (``--window``) are cut to the extractor's maximum
before feature extraction, because the extractor would otherwise pick a *random*
crop and the stage must be deterministic. ``fusion`` checkpoints: the extractor marks
one random clip of a batch ``is_longer`` when none is (a training-time trick); every
window here is passed ``is_longer = False``, which is what the extractor says of it.

Per window: ``get_audio_features`` -> projection dim (512), L2-normalised (transformers 5
already normalises; older versions do not, so we do it either way). Default aggregation
``mean`` -> 512 (the mean of the unit window vectors; search L2-normalises it, so a track
scores the mean of its windows' cosines with the text, over the norm of that mean);
``stats`` -> 1,536.

Reference and tolerance (tests/test_encoder_clap.py, tiny CLAPs built from configs and
loaded through this module): window vectors equal transformers' ``ClapFeatureExtractor``
-> ``ClapModel.get_audio_features`` -> L2 within 1e-5, for a ``rand_trunc`` extractor
(Slaney filterbank) and a ``fusion`` one (HTK filterbank, fusion audio tower); the native
text tower plus this pooling equal ``ClapModel.forward``'s per-window cosines within 1e-5.
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
    description="LAION CLAP audio tower (clap-htsat-unfused), projected 512-d unit vectors",
    sample_rate=48_000,
    window_s=10.0,
    hop_s=10.0,
    default_aggregation="mean",
    default_model="laion/clap-htsat-unfused",   # its text tower works; larger_clap_music's collapsed
    version="2",                                  # 2: default checkpoint changed (old stores are refused)
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
