"""``joint``: a trainable audio projection head on the frozen stored vectors; both towers meet
in a shared ``--joint-dim`` space (CLAP-MusicGen, TTMR)."""

from __future__ import annotations

from ...encoders.text import TextEmbedder
from ...encoders.towers import AudioTower, AudioTowerConfig, Towers
from ...errors import MtxError
from .base import Objective, TowerSpec

DEFAULT_JOINT_DIM = 128   # TTMR's shared space


class JointObjective(Objective):
    name = "joint"
    default_loss = "infonce"
    refused_losses = {
        "mse": "both towers move, so regressing one onto the other collapses them (use a ranking loss)",
        "combined": "it contains an MSE term, which collapses two trainable towers",
        "distillation": "teacher distillation targets a frozen audio space (use --objective align)",
    }

    def build(self, spec: TowerSpec) -> Towers:
        joint_dim = spec.joint_dim or DEFAULT_JOINT_DIM
        text = TextEmbedder.from_backbone(
            spec.backbone, out_dim=joint_dim, hidden_dim=spec.head_hidden, dropout=spec.dropout,
            pooling=spec.pooling, max_length=spec.max_length, audio_encoder=spec.audio_encoder,
            aggregation=spec.aggregation, space="joint")
        audio = AudioTower(AudioTowerConfig(in_dim=spec.store_dim, out_dim=joint_dim, hidden_dim=spec.head_hidden,
                                            dropout=spec.dropout))
        audio.set_audio_stats(spec.mean, spec.std)
        return Towers(text, audio)

    def check(self, towers: Towers, spec: TowerSpec, source: str) -> None:
        if not towers.audio.has_head:
            raise MtxError(f"{source} is an align run; it has no audio tower to continue a joint run from",
                           hint="pass --objective align, or init from a joint run")
        if towers.audio.in_dim != spec.store_dim:
            raise MtxError(f"{source}'s audio tower reads {towers.audio.in_dim}-d vectors but this store has "
                           f"{spec.store_dim}", hint="init from a run trained on the same audio encoder")
        want = spec.joint_dim or DEFAULT_JOINT_DIM
        if towers.dim != want:
            raise MtxError(f"{source} has a {towers.dim}-d joint space but --joint-dim is {want}",
                           hint=f"pass --joint-dim {towers.dim}")
