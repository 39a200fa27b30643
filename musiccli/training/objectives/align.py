"""``align``: the text tower regresses into the frozen audio encoder's standardised space."""

from __future__ import annotations

from ...encoders.text import TextEmbedder
from ...encoders.towers import AudioTower, Towers
from ...errors import MtxError
from .base import Objective, TowerSpec


class AlignObjective(Objective):
    name = "align"
    default_loss = "combined"
    refused_losses: dict[str, str] = {}

    def build(self, spec: TowerSpec) -> Towers:
        text = TextEmbedder.from_backbone(
            spec.backbone, out_dim=spec.store_dim, hidden_dim=spec.head_hidden, dropout=spec.dropout,
            pooling=spec.pooling, max_length=spec.max_length, audio_encoder=spec.audio_encoder,
            aggregation=spec.aggregation, space="audio")
        text.set_audio_stats(spec.mean, spec.std)
        return Towers(text, AudioTower.identity(text.audio_mean, text.audio_std))

    def check(self, towers: Towers, spec: TowerSpec, source: str) -> None:
        if towers.audio.has_head or towers.text.config.space != "audio":
            raise MtxError(f"{source} is a joint-space run; it cannot initialise an align run",
                           hint="pass --objective joint, or init from an align run")
        if towers.text.config.out_dim != spec.store_dim:
            raise MtxError(f"{source} predicts {towers.text.config.out_dim} dims but this store has "
                           f"{spec.store_dim}", hint="init from a run trained on the same audio encoder")
