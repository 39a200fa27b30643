"""What an objective decides: which towers a run trains and which losses make sense for them.

The trainer is objective-agnostic: it asks the objective for fresh :class:`Towers`
(or checks loaded ones), sends the text batch through the text tower and the
standardised audio batch through the audio tower, and hands both to the loss.

An objective whose towers do not train on a store's vectors (``student``: a mel CNN on
audio) sets ``run_train`` to its own trainer; ``training.loop.run_train`` then hands it the
whole (resolved) :class:`~musiccli.training.loop.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

from ...encoders.towers import Towers
from ...errors import MtxError


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


# The shared trainer's optimiser defaults (a fine-tuned text backbone under small heads).
SHARED_DEFAULTS: dict[str, Any] = {"lr": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.1}


class Objective(Protocol):
    name: ClassVar[str]
    default_loss: ClassVar[str]
    # loss names (parts of a "+" combination) this objective refuses, with the reason
    refused_losses: ClassVar[dict[str, str]]
    # TrainConfig fields left None that this objective fills (TrainConfig.resolved())
    defaults: ClassVar[dict[str, Any]] = SHARED_DEFAULTS
    # None: the shared trainer builds towers with build()/check(); else (state, cfg, progress, on_epoch) -> result
    run_train: Callable[..., Any] | None = None

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
