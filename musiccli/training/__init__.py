"""Training: data (pairs streamed from the store), losses (registry), loop, checkpoints."""

from __future__ import annotations

from .losses import DEFAULT_LOSS, LOSSES, LossConfig, build_loss
from .loop import TrainConfig, TrainResult, default_run_name, run_train

__all__ = ["DEFAULT_LOSS", "LOSSES", "LossConfig", "TrainConfig", "TrainResult", "build_loss",
           "default_run_name", "run_train"]
