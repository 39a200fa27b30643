"""Training: the one family-agnostic trainer (:mod:`.trainer`) on the fit loop (:mod:`.fit`), checkpoints
(:mod:`.checkpointer`, :mod:`.checkpoint`) and :class:`~.train_state.TrainState`; losses (a registry),
data streamed from a store, and the ``mtx train`` stage (:mod:`.loop`). What a model family trains comes
from ``musiccli.families``."""

from __future__ import annotations

from .config import DEFAULT_OBJECTIVE, TrainConfig, TrainResult, default_run_name
from .loop import run_train
from .losses import DEFAULT_LOSS, LOSSES, LossConfig, build_loss

__all__ = ["DEFAULT_LOSS", "DEFAULT_OBJECTIVE", "LOSSES", "LossConfig", "TrainConfig", "TrainResult", "build_loss",
           "default_run_name", "run_train"]
