"""Native text towers of joint audio-text encoders, behind the TextEmbedder interface.

Some audio encoders were trained with a text tower into the same space, so text
queries need no trained mtx head:

- ``clap``: ``ClapTextModelWithProjection.from_pretrained(model)`` (the text half of
  the same checkpoint the audio encoder loads) + ``AutoTokenizer``; text embeddings
  (projection dim, 512) are compared by cosine with the stored 512-d CLAP audio
  vectors (``mean`` aggregation; with ``stats`` the first 512 dims are the mean).
- ``muq``: MuQ-MuLan's text tower (``model(texts=...)``, one text per call: see
  :class:`MulanText`), 512-d, compared with the mean part of the stored 1,536-d
  ``stats`` vector, i.e. its first 512 dims.

Both spaces are cosine spaces, so ``space="retrieval"`` and ``space="audio"`` differ
only in normalisation.

Every tower is health-checked when it loads (:mod:`musiccli.text_health`): a tower whose
unrelated prompts embed to nearly one direction (mean pairwise cosine > 0.99, as
``laion/larger_clap_music``'s does at 0.9993) is refused unless ``allow_degenerate``
(``--allow-degenerate-text``); the figure is kept as ``text_health``. Encoders without a text tower (mert, musicgen,
music2latent, dsp, musicnn) need a trained text embedder instead.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MtxError
from ..text_health import check_text_tower
from .base import AUDIO_ENCODERS

log = logging.getLogger(__name__)


class NativeTextModel(abc.ABC):
    """Text -> vectors in an audio encoder's own joint space (same API as TextEmbedder for search/eval)."""

    encoder_name: str

    def __init__(self, model_id: str, dim: int, device: torch.device) -> None:
        self.model_id = model_id
        self.dim = dim
        self.device = device
        self.text_health: float | None = None   # mean pairwise prompt cosine, set by load_native_text_model

    @abc.abstractmethod
    def _embed(self, texts: list[str]) -> torch.Tensor:
        """A batch of texts -> [N, dim] (any float dtype)."""

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True,
               space: str = "retrieval") -> np.ndarray:
        if space not in ("retrieval", "audio"):
            raise MtxError(f"unknown space {space!r}", hint="use 'retrieval' or 'audio'")
        texts = list(texts)
        outs = []
        for s in range(0, len(texts), batch_size):
            z = self._embed(texts[s:s + batch_size]).float()
            if normalize and space == "retrieval":
                z = F.normalize(z, dim=-1)
            outs.append(z.cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32)

    def audio_for_retrieval(self, audio: np.ndarray) -> np.ndarray:
        """Stored audio vectors (``mean`` [D] or ``stats`` [3 D]) -> unit vectors of their mean part."""
        a = np.asarray(audio, dtype=np.float32)
        if a.shape[-1] not in (self.dim, 3 * self.dim):
            raise MtxError(f"stored {self.encoder_name} vectors are {a.shape[-1]}-d; the {self.encoder_name} "
                           f"text tower needs {self.dim}-d (mean) or {3 * self.dim}-d (stats) audio vectors",
                           hint=f"embed with --audio-encoder {self.encoder_name} --aggregation mean or stats")
        a = a[..., : self.dim]
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


class ClapText(NativeTextModel):
    encoder_name = "clap"

    def __init__(self, model_id: str, device: torch.device) -> None:
        from transformers import AutoTokenizer, ClapTextModelWithProjection

        from ..hub import half_checkpoint, load_error

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_id)
            with half_checkpoint():
                self.model = ClapTextModelWithProjection.from_pretrained(model_id).to(device).eval()
        except (OSError, ValueError) as e:
            raise load_error("CLAP text tower", model_id, e) from None
        super().__init__(model_id, int(self.model.config.projection_dim), device)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        limit = min(int(self.tokenizer.model_max_length), int(self.model.config.max_position_embeddings) - 2)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out = self.model(input_ids=tok["input_ids"].to(self.device),
                         attention_mask=tok["attention_mask"].to(self.device))
        return out.text_embeds


class MulanText(NativeTextModel):
    encoder_name = "muq"

    def __init__(self, model_id: str, device: torch.device) -> None:
        from .muq import load_muq_mulan

        self.model = load_muq_mulan(model_id, device)
        super().__init__(model_id, int(self.model.mulan_module.dim_latent), device)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        # MuLan's text tower mean-pools over *all* token positions, padding included, so a
        # padded batch changes a text's vector with its neighbours' lengths. One text per
        # call keeps each query's vector independent of the batch it arrives in.
        return torch.cat([self.model(texts=[t]) for t in texts])


TEXT_TOWERS: dict[str, Callable[[str, torch.device], NativeTextModel]] = {"clap": ClapText, "muq": MulanText}


def load_native_text_model(encoder_name: str, model: str | None = None,
                           device: str | torch.device = "cpu", allow_degenerate: bool = False) -> NativeTextModel:
    """The text tower matching ``encoder_name``'s audio embeddings (``model`` overrides the checkpoint).

    The tower is health-checked (:func:`musiccli.text_health.check_text_tower`): a collapsed one raises
    ``MtxError`` unless ``allow_degenerate``; the figure is ``tower.text_health``.
    """
    if encoder_name not in TEXT_TOWERS:
        kind = "has no native text tower" if encoder_name in AUDIO_ENCODERS else "is not a known audio encoder"
        raise MtxError(f"audio encoder {encoder_name!r} {kind}",
                       hint=f"native text towers exist for: {', '.join(sorted(TEXT_TOWERS))}; "
                            "for other encoders train a text embedder (mtx train)")
    model_id = model or AUDIO_ENCODERS[encoder_name][0].default_model
    log.info("loading the native %s text tower from %s", encoder_name, model_id)
    tower = TEXT_TOWERS[encoder_name](str(model_id), torch.device(device))
    tower.text_health = check_text_tower(tower.encode, f"{encoder_name} checkpoint {model_id}", allow_degenerate)
    return tower


__all__ = ["NativeTextModel", "TEXT_TOWERS", "load_native_text_model"]
