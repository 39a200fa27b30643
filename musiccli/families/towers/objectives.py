"""The towers family's objectives: which towers a run trains and which losses make sense for them.

- ``align`` regresses the text tower into the frozen audio encoder's standardised space; its audio
  tower is the identity after standardising (the Navidrome design).
- ``joint`` trains an audio projection head on the frozen stored vectors too; both towers meet in a
  shared ``--joint-dim`` space (CLAP-MusicGen, TTMR).

The towers family's training parts ask the objective for fresh :class:`Towers` (or to check loaded
ones), send the text batch through the text tower and the standardised audio batch through the
audio tower, and hand both to the loss. Adding an objective of this family = one class + one line
in ``OBJECTIVES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from ...encoders.text import TextEmbedder
from ...errors import MtxError, unknown_choice
from .model import AudioTower, AudioTowerConfig, Towers

DEFAULT_JOINT_DIM = 128   # TTMR's shared space


@dataclass
class TowerSpec:
    """Everything needed to build a run's towers from scratch."""

    backbone: str
    store_dim: int
    mean: np.ndarray
    std: np.ndarray
    head_hidden: int = 1024
    dropout: float = 0.1
    pooling: str = "mean"
    max_length: int = 64
    audio_encoder: str | None = None
    aggregation: str | None = None
    joint_dim: int | None = None
    native: str | None = None     # --init-from native: the encoder whose text tower is the backbone


class Objective(Protocol):
    name: ClassVar[str]
    default_loss: ClassVar[str]
    # loss names (parts of a "+" combination) this objective refuses, with the reason
    refused_losses: ClassVar[dict[str, str]]

    def build(self, spec: TowerSpec) -> Towers:
        """Fresh towers for a new run."""
        ...

    def check(self, towers: Towers, spec: TowerSpec, source: str) -> None:
        """Refuse loaded towers (``--init-from``) that do not fit this objective and store."""
        ...


def check_loss(objective: Objective, loss_parts: list[str]) -> None:
    for part in loss_parts:
        if part in objective.refused_losses:
            raise MtxError(f"the {objective.name} objective cannot train with the {part} loss: "
                           f"{objective.refused_losses[part]}",
                           hint=f"use --loss {objective.default_loss} (or a combination such as infonce+listmle)")


class AlignObjective(Objective):
    name = "align"
    default_loss = "combined"
    refused_losses: dict[str, str] = {}

    def build(self, spec: TowerSpec) -> Towers:
        text = TextEmbedder.from_backbone(
            spec.backbone, out_dim=spec.store_dim, hidden_dim=spec.head_hidden, dropout=spec.dropout,
            pooling=spec.pooling, max_length=spec.max_length, audio_encoder=spec.audio_encoder,
            aggregation=spec.aggregation, space="audio", native=spec.native)
        text.set_audio_stats(spec.mean, spec.std)
        return Towers(text, AudioTower.identity(text.audio_mean, text.audio_std))

    def check(self, towers: Towers, spec: TowerSpec, source: str) -> None:
        if towers.audio.has_head or towers.text.config.space != "audio":
            raise MtxError(f"{source} is a joint-space run; it cannot initialise an align run",
                           hint="pass --objective joint, or init from an align run")
        if towers.text.config.out_dim != spec.store_dim:
            raise MtxError(f"{source} predicts {towers.text.config.out_dim} dims but this store has "
                           f"{spec.store_dim}", hint="init from a run trained on the same audio encoder")


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


OBJECTIVES: dict[str, Callable[[], Objective]] = {"align": AlignObjective, "joint": JointObjective}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise unknown_choice("objective", name, OBJECTIVES)
    return OBJECTIVES[name]()
