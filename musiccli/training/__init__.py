"""Training: data (pairs streamed from the store), losses and objectives (registries), the loop and its parts."""

from __future__ import annotations

from .losses import DEFAULT_LOSS, LOSSES, LossConfig, build_loss
from .loop import TrainConfig, TrainResult, default_run_name, run_train
from .objectives import DEFAULT_OBJECTIVE, OBJECTIVES

__all__ = ["DEFAULT_LOSS", "DEFAULT_OBJECTIVE", "LOSSES", "OBJECTIVES", "LossConfig", "TrainConfig", "TrainResult", "build_loss",
           "default_run_name", "run_train"]
